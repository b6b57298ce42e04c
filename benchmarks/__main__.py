"""Run every benchmark: ``python -m benchmarks`` (or ``make bench``). Each prints one JSON line.

Each compares against a baseline measured in the same run (timings on shared machines are noisy: read the
ratios). One benchmark alone: ``python -m benchmarks.<name>``.
"""

from benchmarks import auth_decisions, auth_http, expiry_scan, export, rebuild, revocation_propagation
from benchmarks.common import report


def main() -> None:
    auth_decisions.main()  # (issue 3a) decisions/s in-process vs computing the keyed digest alone
    for backend in ("sqlite", "postgres"):
        rebuild.report(rebuild.run(backend))  # (3b) rebuild events/s vs the library's read-and-decode
    revocation_propagation.main()  # (3c) revoke in process A, denied in process B: p50/p99
    auth_http.main()  # (4) auth checks/s over HTTP vs an empty route of the same app, with wrk
    report(auth_http.count_instructions())  # (4) the same comparison in instructions, under callgrind
    expiry_scan.main()  # (5) scan over 100,000 tokens with 1% due vs reading the due rows
    export.main()  # (6) 1,000,000-row export: rows/s and peak RSS vs plain reads


if __name__ == "__main__":
    main()
