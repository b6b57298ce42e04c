"""Application layer of the deploy-token service: settings, persistence wiring, the service, the CLI."""
