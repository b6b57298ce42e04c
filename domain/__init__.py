"""The deploy-token domain: aggregates, value objects and rules. No I/O lives here."""
