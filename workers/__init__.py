"""Background jobs: the daily expiry scan and the expiry emails."""
