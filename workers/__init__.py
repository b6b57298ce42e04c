"""Entry points of the background jobs: RQ jobs and their dispatch, the rq cron schedule, the embedded
scheduler. What the jobs do is the application's (``deploy_tokens.expiry`` and ``deploy_tokens.expiry_sender``)."""
