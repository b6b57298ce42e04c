"""``rq cron workers/cron.py --url $DEPLOY_TOKENS_REDIS_URL``: the schedule of the production shape.

rq cron evaluates expressions in UTC, has no catch-up and no leader election, so it only *triggers*: the
trigger enqueues the day's scan under a unique job id (see ``trigger_daily_scan``), which makes extra
ticks and extra cron processes harmless, and the 15-minute tick catches up a day whose 01:00 was missed.
Activity retention (behaviour [retention]) is triggered the same way at 02:00 (``trigger_daily_retention``).
"""

from rq import cron

from workers.jobs import QUEUE, trigger_daily_retention, trigger_daily_scan

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

# Activity retention: one run a UTC day, from 02:00 (nothing when DEPLOY_TOKENS_ACTIVITY_RETENTION_DAYS is unset).
cron.register(
    trigger_daily_retention,
    queue_name=QUEUE,
    cron="0 2 * * *",
    name="activity-retention-0200",
    result_ttl=86400,
    job_timeout=60,
)
cron.register(
    trigger_daily_retention,
    queue_name=QUEUE,
    interval=900,
    name="activity-retention-catch-up",
    result_ttl=3600,
    job_timeout=60,
)
