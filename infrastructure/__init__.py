"""Infrastructure: settings, the database and the event store, keys and the vault, logging, mail transport,
and the stores of activity, bans and idempotency keys. Imports nothing from the layers above."""
