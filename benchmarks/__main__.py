"""Run every benchmark: ``python -m benchmarks`` (or ``make bench``). Each prints one JSON line."""

from benchmarks import auth_decisions, rebuild, revocation_propagation


def main() -> None:
    auth_decisions.main()
    for backend in ("sqlite", "postgres"):
        rebuild.report(rebuild.run(backend))
    revocation_propagation.main()


if __name__ == "__main__":
    main()
