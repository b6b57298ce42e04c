"""Run every benchmark: ``python -m benchmarks`` (or ``make bench``). Each prints one JSON line per case.

Each compares against a baseline measured in the same run (timings on shared machines are noisy: read the
ratios) and carries its target; docs/performance.md explains each one and keeps the latest figures. One
benchmark alone: ``python -m benchmarks.<name>``.
"""

from benchmarks import (
    auth_decisions,
    auth_http,
    create_tokens,
    expiry_scan,
    export,
    index_scale,
    rebuild,
    revocation_propagation,
)
from benchmarks.common import report


def main() -> None:
    auth_decisions.main()  # decisions/s in-process vs computing the keyed digest alone
    index_scale.main()  # 1,000,000 tokens: the index's memory and time to ready in a fresh process
    for backend in ("sqlite", "postgres"):
        report(rebuild.run(backend))  # every projection's rebuild vs the library's read-and-decode
    create_tokens.main()  # token creation through the service vs a raw save of the same aggregates
    revocation_propagation.main()  # revoke in process A, denied in process B: p50/p99
    auth_http.main()  # auth checks/s over HTTP vs an empty route of the same app, with wrk
    report(auth_http.count_instructions())  # the same comparison in instructions, under callgrind
    expiry_scan.main()  # the daily scan vs its floor: the same mails over one connection + the same events saved
    export.main()  # 1,000,000-row export vs plain reads of the same rows; peak memory of fresh processes


if __name__ == "__main__":
    main()
