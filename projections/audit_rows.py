"""How the audit trail writes: its columns, the subjects it remembers per stream, and one way to add a row.

Every handler of the audit projection (``projections.audit``) writes through ``record``, ``record_for`` or
``record_creation``, so every row is built the same way from its event: the position, the event's time and
actor (the system when it has none), its stream and version.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Final, NamedTuple, Protocol

from domain.membership import AccessLevel
from domain.streams import stream_id
from infrastructure.db import Cursor, as_utc_text
from projections.projection import StreamEvent

TARGET_DEPLOY_TOKEN: Final = "DeployToken"
TARGET_USER: Final = "User"
TARGET_PERSONAL_ACCESS_TOKEN: Final = "PersonalAccessToken"
TARGET_GROUP: Final = "Group"
TARGET_PROJECT: Final = "Project"
TARGET_INSTANCE_SETTINGS: Final = "InstanceSettings"

# A subject is the target of the rows of its own stream.
_TARGET_OF_KIND: Final[dict[str, str]] = {
    "deploy_token": TARGET_DEPLOY_TOKEN,
    "user": TARGET_USER,
    "personal_access_token": TARGET_PERSONAL_ACCESS_TOKEN,
    "group": TARGET_GROUP,
    "project": TARGET_PROJECT,
}

AUDIT_COLUMNS: Final = (
    "position",
    "occurred_at",
    "event_type",
    "actor_kind",
    "actor_id",
    "actor_username",
    "actor_address",
    "target_type",
    "target_id",
    "target_name",
    "namespace_kind",
    "namespace_id",
    "message",
    "details",
    "stream_id",
    "version",
)
_MESSAGE: Final = AUDIT_COLUMNS.index("message")
_DETAILS: Final = AUDIT_COLUMNS.index("details")

_CHUNK: Final = 500  # streams per statement that names them (SQLite: one parameter each)
_SYSTEM_ACTOR: Final[dict[str, Any]] = {"kind": "system", "id": None, "username": "system", "address": None}


class AuditedEvent(StreamEvent, Protocol):
    """Every audited event says who caused it."""

    @property
    def actor(self) -> dict[str, Any]: ...


def _unencodable(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _json_encoder() -> Callable[[Any], str]:
    """``json.dumps(value, sort_keys=True)``, at a fraction of its cost per call (one call per audit row).

    ``JSONEncoder.encode`` builds a new C encoder on every call, which costs more than encoding a row's few
    details; this builds CPython's C encoder once, with the very arguments ``json.dumps`` gives it (the
    default separators, ASCII escaping, NaN allowed; no circularity check: details are plain, acyclic data),
    so the text is the same (``tests/unit/test_audit_json.py``). Without the C accelerator, the encoder.
    """
    make_encoder = getattr(json.encoder, "c_make_encoder", None)
    if make_encoder is None:
        return json.JSONEncoder(sort_keys=True).encode
    chunks = make_encoder(
        None, _unencodable, json.encoder.encode_basestring_ascii, None, ": ", ", ", True, False, True
    )
    return lambda value: "".join(chunks(value, 0))


to_json: Final = _json_encoder()

# Formatting ---------------------------------------------------------------------------------------------


def symbols(scopes: Sequence[str]) -> str:
    """Ruby's ``Array#to_s`` of symbols, as GitLab prints scopes: ``[:read_repository, :read_registry]``."""
    return "[:" + ", :".join(scopes) + "]" if scopes else "[]"


# Cached: the instants of a log repeat (a token's expiry in its creation and expiry rows, the same "now" for
# every event of one command or scan page), and formatting costs several times a look-up. Equal instants
# (the same moment, whatever the offset) give the same UTC text, so the cache cannot mix two up.
@lru_cache(maxsize=4096)
def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def level_name(level: int | None) -> str | None:
    if level is None:
        return None
    try:
        return AccessLevel(level).name.title()
    except ValueError:
        return str(level)


def enabled_word(flag: bool) -> str:
    return "enabled" if flag else "disabled"


# Subjects ---------------------------------------------------------------------------------------------


class Subject(NamedTuple):
    """What later events of a stream need to render their rows: name, namespace, scopes.

    A named tuple, built from positional values (``created_by``, ``changed_by``): keywords and ``_replace``
    cost several times as much, and a rebuild builds a subject for every token's first two events.
    """

    stream_id: str
    kind: str
    subject_id: int
    name: str
    namespace_kind: str
    namespace_id: int | None
    scopes: tuple[str, ...]
    created_position: int
    data: dict[str, Any]
    position: int  # of the event that last changed it

    @classmethod
    def created_by(
        cls,
        stream: str,
        position: int,
        *,
        kind: str,
        subject_id: int,
        name: str,
        namespace: tuple[str, int | None],
        scopes: Sequence[str] = (),
        data: dict[str, Any] | None = None,
    ) -> Subject:
        """The subject of ``stream`` (its id as text: ``AuditBatch.stream_of``), created at ``position``."""
        namespace_kind, namespace_id = namespace
        return cls(
            stream,
            kind,
            subject_id,
            name,
            namespace_kind,
            namespace_id,
            tuple(scopes),
            position,  # created_position
            data or {},
            position,
        )

    def changed_by(
        self,
        position: int,
        *,
        name: str | None = None,
        scopes: Sequence[str] | None = None,
        data: dict[str, Any] | None = None,
    ) -> Subject:
        """The subject as the event at ``position`` leaves it: another name, other scopes or other data."""
        return Subject(
            self.stream_id,
            self.kind,
            self.subject_id,
            self.name if name is None else name,
            self.namespace_kind,
            self.namespace_id,
            self.scopes if scopes is None else tuple(scopes),
            self.created_position,
            self.data if data is None else data,
            position,
        )

    def with_scopes(self, position: int, scopes: Sequence[str]) -> Subject:
        """``changed_by(position, scopes=scopes)``, without keywords: every token is scoped at least once."""
        return Subject(
            self.stream_id,
            self.kind,
            self.subject_id,
            self.name,
            self.namespace_kind,
            self.namespace_id,
            tuple(scopes),
            self.created_position,
            self.data,
            position,
        )

    def row(self) -> tuple[Any, ...]:
        """Its ``audit_subjects`` row, in the order of ``SUBJECT_COLUMNS``."""
        return (
            self.stream_id,
            self.kind,
            self.subject_id,
            self.name,
            self.namespace_kind,
            self.namespace_id,
            ",".join(self.scopes),
            self.created_position,
            to_json(self.data) if self.data else "{}",
            self.position,
        )


SUBJECT_COLUMNS: Final = (
    "stream_id",
    "kind",
    "subject_id",
    "name",
    "namespace_kind",
    "namespace_id",
    "scopes",
    "created_position",
    "data",
    "position",
)


def _subject_from_row(row: Sequence[Any]) -> Subject:
    """The subject of an ``audit_subjects`` row (in the order of ``SUBJECT_COLUMNS``)."""
    return Subject(
        row[0],
        row[1],
        int(row[2]),
        row[3],
        row[4],
        None if row[5] is None else int(row[5]),
        tuple(row[6].split(",")) if row[6] else (),
        int(row[7]),
        {} if row[8] == "{}" else dict(json.loads(row[8])),  # "{}": most subjects (tokens')
        int(row[9]),
    )


# One batch --------------------------------------------------------------------------------------------


class AuditBatch:
    """What the audit handlers of one projector batch share, and what they write, in bulk at the end.

    The handlers of a batch read subjects and access levels many times and write a row per event. One by
    one, every read would be a round trip (on PostgreSQL it interrupts the pipeline) and every row a
    statement. Instead the subjects of the batch's own streams are read in one query when it opens, any
    other subject or level at most once; changes are made here, in memory, where later events of the same
    batch see them; and ``flush`` writes each changed subject and membership once and the new rows in bulk.
    The rows are those the events give one by one (a batch of one is the old one-by-one projector).

    ``streams`` maps the position of each event the batch applies to its stream's id as text: the text of a
    UUID is worked out once per event, not again by every lookup and row. ``created`` are the streams whose
    first event the batch applies: none has a subject or a member yet, so neither is looked for. ``known``
    are subjects as they stand in the tables at the batch's start (the previous batch's, ``AuditTrail``):
    those are not read again.
    """

    def __init__(
        self,
        cursor: Cursor,
        streams: dict[int, str],
        created: Iterable[str] = (),
        known: Mapping[str, Subject] | None = None,
    ) -> None:
        self.cursor = cursor
        self._streams = streams
        # Each row's time as UTC text, formatted once per distinct instant (the events of one command, or of
        # one page of a scan, share theirs). The text is what SQLite's TIMESTAMPTZ (TEXT) columns hold; on
        # PostgreSQL the server reads the same instant from it, and the driver's COPY writes a str at half
        # the cost per row of a datetime (which it must first inspect for its time zone).
        self._times: dict[datetime, str] = {}
        self._subjects: dict[str, Subject | None] = {}
        self._new_subjects: dict[str, None] = {}  # ordered set: subjects to insert
        self._changed_subjects: dict[str, None] = {}  # stored subjects to update
        self._group_streams: dict[int, str | None] = {}
        self._levels: dict[tuple[str, int], int | None] = {}
        self._changed_levels: dict[tuple[str, int], int] = {}  # the position of the last change
        self._paths: list[tuple[str, int, int, str, bool]] = []
        self._rows: dict[int, list[Any]] = {}  # position -> audit_events row, completed in place
        self._encoded: dict[Hashable, str] = {}  # details shared by many rows, as JSON (``encoded``)
        self._completions: list[tuple[str, str, int]] = []  # rows of earlier batches: message, details
        self._created = frozenset(created)
        self._subjects.update(dict.fromkeys(self._created))
        unknown = []
        for stream in dict.fromkeys(streams.values()):
            if stream in self._subjects:
                continue
            subject = known.get(stream) if known else None
            if subject is None:
                unknown.append(stream)
            else:
                self._remember(subject)
        self._load_subjects(unknown)

    # Subjects

    def _load_subjects(self, streams: Sequence[str]) -> None:
        for offset in range(0, len(streams), _CHUNK):
            part = streams[offset : offset + _CHUNK]
            condition, params = self.cursor.any_of("stream_id", part)
            rows = self.cursor.execute(
                f"SELECT {', '.join(SUBJECT_COLUMNS)} FROM audit_subjects WHERE {condition}", params
            ).fetchall()
            for stream in part:
                self._subjects[stream] = None
            for row in rows:
                self._remember(_subject_from_row(row))

    def _remember(self, subject: Subject) -> None:
        """A subject as stored."""
        self._subjects[subject.stream_id] = subject
        if subject.kind == "group":
            self._group_streams[subject.subject_id] = subject.stream_id

    def subjects(self) -> Iterator[tuple[str, Subject]]:
        """Every subject the batch read or wrote, as it leaves them (once ``flush`` has written them)."""
        return ((stream, subject) for stream, subject in self._subjects.items() if subject is not None)

    def find_subject(self, stream: str) -> Subject | None:
        if stream not in self._subjects:
            self._load_subjects([stream])
        return self._subjects[stream]

    def stream_of(self, event: StreamEvent, position: int) -> str:
        """The id of the stream of ``event`` (at ``position``), as text."""
        stream = self._streams.get(position)
        return str(event.originator_id) if stream is None else stream

    def subject_of(self, event: StreamEvent, position: int) -> Subject:
        """The subject of the event's own stream; its creation event always comes first in the log."""
        subject = self.find_subject(self.stream_of(event, position))
        if subject is None:
            raise LookupError(
                f"audit trail: {type(event).__qualname__} of stream {event.originator_id} came before its "
                "creation"
            )
        return subject

    def put_subject(self, subject: Subject) -> None:
        """A new stream's subject."""
        self._subjects[subject.stream_id] = subject
        self._new_subjects[subject.stream_id] = None
        if subject.kind == "group":
            self._group_streams[subject.subject_id] = subject.stream_id

    def update_subject(self, subject: Subject) -> None:
        """The subject of an existing stream, as changed by the event at ``subject.position``."""
        self._subjects[subject.stream_id] = subject
        if subject.stream_id not in self._new_subjects:
            self._changed_subjects[subject.stream_id] = None

    def group_subject(self, group_id: int) -> Subject | None:
        if group_id not in self._group_streams:
            row = self.cursor.execute(
                "SELECT stream_id FROM audit_subjects WHERE kind = 'group' AND subject_id = ?", (group_id,)
            ).fetchone()
            self._group_streams[group_id] = None if row is None else str(row[0])
        stream = self._group_streams[group_id]
        return None if stream is None else self.find_subject(stream)

    def username_of(self, user_id: int) -> str:
        user = self.find_subject(str(stream_id("user", user_id)))
        return user.name if user is not None else f"#{user_id}"

    # Memberships

    def access_level(self, source: Subject, user_id: int) -> int | None:
        key = (source.stream_id, user_id)
        if key not in self._levels:
            if source.stream_id in self._created:  # created in this batch: no member stored yet
                self._levels[key] = None
            else:
                row = self.cursor.execute(
                    "SELECT access_level FROM audit_memberships WHERE stream_id = ? AND user_id = ?", key
                ).fetchone()
                self._levels[key] = None if row is None else int(row[0])
        return self._levels[key]

    def set_access_level(self, source: Subject, user_id: int, level: int | None, position: int) -> None:
        """``level`` None: the user is no longer a member."""
        key = (source.stream_id, user_id)
        self._levels[key] = level
        self._changed_levels[key] = position

    # Paths and rows

    def encoded(self, key: Hashable, details: dict[str, Any]) -> str:
        """``details`` as JSON, encoded once per batch for each ``key``, which must determine them wholly.

        For the details many rows share (a revocation's reason and scopes, an interval): encoding costs more
        than the rest of such a row, and most of a batch's rows repeat a handful of them.
        """
        text = self._encoded.get(key)
        if text is None:
            text = self._encoded[key] = to_json(details)
        return text

    def remember_path(
        self, kind: str, subject_id: int, full_path: str, position: int, *, deleted: bool = False
    ) -> None:
        self._paths.append((kind, subject_id, position, full_path, deleted))

    def add_row(
        self,
        event: AuditedEvent,
        position: int,
        stream: str,
        event_type: str,
        target_type: str,
        target_id: int | None,
        target_name: str,
        namespace_kind: str,
        namespace_id: int | None,
        message: str,
        details: dict[str, Any] | str,
    ) -> None:
        """The ``audit_events`` row of ``event``, of ``stream`` (``stream_of``). Its details are encoded when
        written (a later event of the batch may complete them), unless they already are (``encoded``)."""
        actor = event.actor or _SYSTEM_ACTOR
        moment = event.timestamp
        occurred = self._times.get(moment)
        if occurred is None:
            occurred = self._times[moment] = as_utc_text(moment)
        self._rows[position] = [
            position,
            occurred,
            event_type,
            actor.get("kind") or "system",
            actor.get("id"),
            actor.get("username") or "system",
            actor.get("address"),
            target_type,
            target_id,
            target_name,
            namespace_kind,
            namespace_id,
            message,
            details,
            stream,
            event.originator_version,
        ]

    def complete_row(self, position: int, message: str, details: dict[str, Any]) -> None:
        """Give the row at ``position`` (an earlier event's) another message and more details."""
        row = self._rows.get(position)
        if row is not None:
            row[_MESSAGE] = message
            current = row[_DETAILS]
            if isinstance(current, str):
                row[_DETAILS] = {**json.loads(current), **details}
            else:
                current.update(details)  # the row's own dict, made by its handler
            return
        stored = self.cursor.execute(
            "SELECT details FROM audit_events WHERE position = ?", (position,)
        ).fetchone()
        if stored is None:
            return
        merged = {**json.loads(stored[0]), **details}
        self._completions.append((message, to_json(merged), position))

    def flush(self) -> None:
        cursor = self.cursor
        # A changed subject's row is deleted and inserted whole with the new ones (it was read whole): one
        # statement and one bulk insert, where an UPDATE per subject was a statement each (on PostgreSQL, a
        # rebuild's narrowed tokens cost more than all its other subjects).
        changed = [stream for stream in self._changed_subjects if self._subjects[stream] is not None]
        for offset in range(0, len(changed), _CHUNK):
            condition, params = cursor.any_of("stream_id", changed[offset : offset + _CHUNK])
            cursor.execute(f"DELETE FROM audit_subjects WHERE {condition}", params)
        cursor.insert_many(
            "audit_subjects",
            SUBJECT_COLUMNS,
            [
                subject.row()
                for stream in (*self._new_subjects, *changed)
                if (subject := self._subjects[stream]) is not None
            ],
        )
        gone = [key for key, position in self._changed_levels.items() if self._levels[key] is None]
        cursor.executemany("DELETE FROM audit_memberships WHERE stream_id = ? AND user_id = ?", gone)
        cursor.executemany(
            "INSERT INTO audit_memberships (stream_id, user_id, access_level, position) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (stream_id, user_id) DO UPDATE SET access_level = excluded.access_level, "
            "position = excluded.position",
            [
                (stream, user_id, level, position)
                for (stream, user_id), position in self._changed_levels.items()
                if (level := self._levels[(stream, user_id)]) is not None
            ],
        )
        cursor.insert_many(
            "audit_paths", ("kind", "subject_id", "position", "full_path", "deleted"), self._paths
        )
        cursor.executemany(
            "UPDATE audit_events SET message = ?, details = ? WHERE position = ?", self._completions
        )
        for row in self._rows.values():
            if not isinstance(details := row[_DETAILS], str):
                row[_DETAILS] = to_json(details)
        cursor.insert_many("audit_events", AUDIT_COLUMNS, list(self._rows.values()))


# Rows ---------------------------------------------------------------------------------------------------


def record(
    trail: AuditBatch,
    event: AuditedEvent,
    position: int,
    *,
    event_type: str,
    target: tuple[str, int | None, str],
    namespace: tuple[str, int | None],
    message: str,
    details: dict[str, Any] | str,
) -> None:
    trail.add_row(
        event, position, trail.stream_of(event, position), event_type, *target, *namespace, message, details
    )


def record_for(
    trail: AuditBatch,
    event: AuditedEvent,
    position: int,
    subject: Subject,
    event_type: str,
    message: str,
    details: dict[str, Any] | str,
) -> None:
    """A row whose target is the subject of the event's own stream, in the subject's namespace."""
    trail.add_row(
        event,
        position,
        subject.stream_id,  # the event's own stream
        event_type,
        _TARGET_OF_KIND[subject.kind],
        subject.subject_id,
        subject.name,
        subject.namespace_kind,
        subject.namespace_id,
        message,
        details,
    )


def record_creation(
    trail: AuditBatch,
    event: AuditedEvent,
    position: int,
    subject: Subject,
    event_type: str,
    message: str,
    details: dict[str, Any],
) -> None:
    """The first row of a stream: remembers its subject for the events that follow, then adds the row."""
    trail.put_subject(subject)
    record_for(trail, event, position, subject, event_type, message, details)
