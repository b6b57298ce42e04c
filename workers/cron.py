"""``rq cron workers/cron.py --url $DEPLOY_TOKENS_REDIS_URL``: the schedule of the production shape.

rq cron evaluates expressions in UTC, has no catch-up and no leader election, so it only *triggers*: the
trigger enqueues the day's scan under a unique job id (see ``trigger_daily_scan``), which makes extra
ticks and extra cron processes harmless, and the 15-minute tick catches up a day whose 01:00 was missed.
"""

from rq import cron

from workers.jobs import QUEUE, trigger_daily_scan

cron.register(
    trigger_daily_scan,
    queue_name=QUEUE,
    cron="0 1 * * *",
    name="deploy-token-expiry-0100",
    result_ttl=86400,
    job_timeout=60,
)
cron.register(
    trigger_daily_scan,
    queue_name=QUEUE,
    interval=900,
    name="deploy-token-expiry-catch-up",
    result_ttl=3600,
    job_timeout=60,
)
