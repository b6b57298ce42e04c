"""Infrastructure: settings, the database and the event store, keys and the vault, logging, mail transport,
and the stores of activity, bans, idempotency keys and web UI sessions. Imports nothing from the layers
above."""
