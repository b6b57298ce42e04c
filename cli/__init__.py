"""The console script ``deploy-tokens``: administers, runs jobs, and starts the processes of the service."""
