"""Per-token activity (behaviour [value], [history]): every auth decision becomes one ``token_activity`` row,
off the hot path.

What a row holds: the token id, or, for a value that matched no token, the first 12 hex characters of its
keyed digest (a pseudonym that lets repeated attempts with one unknown value be correlated; never the
value, behaviour [value]); when; which endpoint, action and resource; the result, reason and HTTP status; the client
address (``X-Original-Remote-Addr`` from nginx, else the peer address) and the user agent.

One job per module: ``table`` declares the row once (``ActivityEvent``: the columns, their order and SQL
types) and holds the table's definition and queries; ``text`` makes any text storable and readable;
``writer`` queues on the request thread and writes in batches in the background; ``pruning`` deletes rows
once retention has archived them (behaviour [retention]). Code outside this package imports from the package
itself.
"""

from infrastructure.activity.pruning import (
    ArchiveRange,
    archive_range,
    delete_range,
    frozen_bound,
    remaining_rows,
    retention_lock,
)
from infrastructure.activity.table import (
    TOKEN_REF_LENGTH,
    ActivityEvent,
    ActivityRow,
    RejectedActivityRow,
    activity_rows,
    create_activity_table,
    rejected_activity_rows,
)
from infrastructure.activity.text import ACTIVITY_TEXT_LIMIT, storable_text
from infrastructure.activity.writer import STALL_AFTER, ActivityRecorder, ActivityStats

__all__ = [
    "ACTIVITY_TEXT_LIMIT",
    "STALL_AFTER",
    "TOKEN_REF_LENGTH",
    "ActivityEvent",
    "ActivityRecorder",
    "ActivityRow",
    "ActivityStats",
    "ArchiveRange",
    "RejectedActivityRow",
    "activity_rows",
    "archive_range",
    "create_activity_table",
    "delete_range",
    "frozen_bound",
    "rejected_activity_rows",
    "remaining_rows",
    "retention_lock",
    "storable_text",
]
