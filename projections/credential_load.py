"""The credential index's first load: every token of the credential-lookup read model, packed by the database.

A process loads a million tokens at start-up, so what it pays per token decides its time to ready. Python rows
are the dear part (a tuple and an object per column), so the database does the per-row work in C:

- Live tokens come a page at a time as five long values: their keys end to end, their ids, their holder ids,
  their *shapes* (holder kind, scopes, expiry: a string thousands of tokens share, turned into a record class
  and an instant once) and their own usernames. The records are made by ``map`` over those columns, so what
  runs in Python per live token is its record's ``__init__``; what stays is what the index keeps.
- Dead tokens come sorted by their digests' prefixes (the database sorts in a fraction of the time Python
  takes), and their columns go into ``DeadDigests``' arrays by C loops, with no Python object kept per token.
  They are read before any live record exists, so nothing of theirs is left between the records.
- The rare token, live or dead, whose rotated-out value is still within its grace comes from the grace index.

Measured at a million tokens, half dead, and what was tried: docs/performance.md.
"""

from __future__ import annotations

import gc
import queue
import threading
from array import array
from collections.abc import Generator, Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import compress
from operator import itemgetter, not_, truth
from typing import Any, Final, TypeVar

from infrastructure.db import Cursor, to_datetime
from projections.access import TokenFacts
from projections.compact_tokens import (
    DEAD_PACKED_SQL,
    DeadDigests,
    LiveToken,
    big_endian_numbers,
    token_class,
    unpack_dead,
)

# The index keys tokens by the first 16 bytes of their keyed digest (HMAC-SHA256), not all 32: half a million
# keys take 8 MB less, and 128 bits still part every token from every other (two of a million tokens share a
# key with a chance of about 10^-27) and from any value an attacker can try (the digest is keyed, and finding
# a value for a given 128-bit prefix would take some 2^128 tries even with the key).
KEY_BYTES: Final = 16

# Which tokens are dead (revoked, deleted, expired) and which live, against the index's clock (the one parameter).
DEAD_WHERE: Final = "(deleted_at IS NOT NULL OR revoked_at IS NOT NULL OR expires_at <= ?)"
LIVE_WHERE: Final = "revoked_at IS NULL AND deleted_at IS NULL AND (expires_at IS NULL OR expires_at > ?)"

# Rows per page of live tokens: a page is read as five values of a few hundred kilobytes, taken apart and dropped
# before the next one is (``_live_pages``). Larger pages leave larger holes in the C heap once freed.
PAGE_ROWS: Final = 20_000

# Dead tokens, a row each, sorted by their digests' prefixes (the database sorts in a fraction of the time
# Python takes): the prefix (hex on SQLite, which has no function that writes bytes), the packed answer
# (``DEAD_PACKED_SQL``) and the holder id. Rows rather than values aggregated by the database: a value for every
# dead token would be a buffer of many megabytes, and such a buffer freed during the load leaves a hole in the C
# heap under what the load allocates next, resident for good (some 30 MB at a million tokens); neither database
# aggregates sorted rows a chunk at a time without sorting them twice.
DEAD_ROWS_SQL: Final = {
    "sqlite": (
        f"SELECT substr(digest, 1, 16) AS prefix, {DEAD_PACKED_SQL}, holder_id FROM cred_tokens "
        f"WHERE {DEAD_WHERE} ORDER BY prefix"
    ),
    "postgresql": (
        f"SELECT decode(substr(digest, 1, 16), 'hex') AS prefix, ({DEAD_PACKED_SQL})::bigint, holder_id "
        f"FROM cred_tokens WHERE {DEAD_WHERE} ORDER BY prefix"
    ),
}
# Dead rows fetched at a time.
DEAD_CHUNK_ROWS: Final = 8192

# A page of live tokens in five values: their keys end to end (hex on SQLite), their ids and their holder ids
# in decimal between commas, their shapes ("holder_kind scopes expiry": the expiry as SQLite stores it, or in
# microseconds since the epoch from PostgreSQL) between semicolons, and their own usernames (behaviour
# [username]: letters, digits and ".+_-" only), empty where the username is the default one. The aggregates of
# one query see its rows in the same order, so the n-th entries belong together.
_OWN_USERNAME = "CASE WHEN username = 'gitlab+deploy-token-' || token_id THEN '' ELSE username END"
# Exact, and a fraction of the server's time that formatting it as text takes.
_PG_EXPIRY = "(extract(epoch FROM expires_at) * 1000000)::bigint::text"
LIVE_PAGE_SQL: Final = {
    "sqlite": (
        f"SELECT group_concat(substr(digest, 1, {2 * KEY_BYTES}), ''), group_concat(token_id, ','), "
        "group_concat(holder_id, ','), "
        "group_concat(holder_kind || ' ' || scopes || ' ' || coalesce(expires_at, ''), ';'), "
        f"group_concat({_OWN_USERNAME}, char(31)) FROM cred_tokens WHERE {LIVE_WHERE} AND rowid > ? AND rowid <= ?"
    ),
    "postgresql": (
        f"SELECT string_agg(decode(substr(digest, 1, {2 * KEY_BYTES}), 'hex'), ''::bytea), "
        "string_agg(token_id::text, ','), string_agg(holder_id::text, ','), "
        f"string_agg(holder_kind || ' ' || scopes || ' ' || coalesce({_PG_EXPIRY}, ''), ';'), "
        f"string_agg({_OWN_USERNAME}, chr(31)) FROM cred_tokens WHERE {LIVE_WHERE} AND token_id > ? AND token_id <= ?"
    ),
}
_USERNAMES: Final = "\x1f"
_FIRST, _SECOND, _THIRD = itemgetter(0), itemgetter(1), itemgetter(2)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
T = TypeVar("T")

# Every token whose rotated-out value is still within its grace (found through the grace index): a live one
# stands for its record, a dead one for its refusal (``DEAD_PACKED_SQL`` reads it as dead).
GRACED_SQL: Final = (
    f"SELECT token_id, {DEAD_PACKED_SQL}, holder_id, previous_digest, previous_valid_until FROM cred_tokens "
    "WHERE previous_valid_until > ? AND previous_digest IS NOT NULL"
)


@dataclass
class LoadedTokens:
    """What the first load gives the index."""

    live: dict[bytes, LiveToken] = field(default_factory=dict)
    by_id: list[LiveToken | None] = field(default_factory=list)
    dead: DeadDigests = field(default_factory=DeadDigests)
    # (token id, rotated-out digest, until, the token it stands for): kept by the index if still in grace
    graced: list[tuple[int, str, Any, TokenFacts]] = field(default_factory=list)


def load_tokens(cursor: Cursor, dialect: str, now: datetime) -> LoadedTokens:
    """Every token in the read model as of ``cursor``'s snapshot, judged live or dead at ``now``."""
    with _collector_paused():
        return _load(cursor, dialect, now)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off for the load. The load makes half a million records that live as long
    as the process and form no cycle; the collector, triggered by their very allocation, would walk them again
    and again (a third of the live records' build time) and free none of them."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _load(cursor: Cursor, dialect: str, now: datetime) -> LoadedTokens:
    loaded = LoadedTokens()
    loaded.dead = _dead_tokens(cursor, dialect, now)
    row = cursor.execute("SELECT MAX(token_id) FROM cred_tokens").fetchone()
    highest = int(row[0]) if row and row[0] is not None else -1
    loaded.by_id = [None] * (highest + 1)
    builder = _LiveBuilder(loaded.live, loaded.by_id, _EPOCH if dialect == "postgresql" else None)
    # closing: the pages' helper thread (SQLite) is stopped here, whatever happens, before the snapshot ends
    with closing(_live_pages(cursor, dialect, now)) as pages:
        for page in pages:
            builder.add_page(*page)
    for token_id, packed, holder_id, previous, until in cursor.execute(GRACED_SQL, (now,)).fetchall():
        live = loaded.by_id[token_id] if token_id <= highest else None
        target: TokenFacts = live if live is not None else unpack_dead(int(packed), int(holder_id))
        loaded.graced.append((int(token_id), previous, until, target))
    return loaded


def _dead_tokens(cursor: Cursor, dialect: str, now: datetime) -> DeadDigests:
    """``DEAD_ROWS_SQL``'s rows, ``DEAD_CHUNK_ROWS`` at a time, into arrays (each chunk's columns taken out by C
    loops). SQLite steps through a result as it is fetched. A psycopg cursor receives a whole result at once, so
    on PostgreSQL the query runs behind a server-side cursor, in the load's own snapshot."""
    prefixes, packed, holders = array("Q"), array("q"), array("q")
    if dialect == "postgresql":
        cursor.execute(f"DECLARE dead_token_rows NO SCROLL CURSOR FOR {DEAD_ROWS_SQL[dialect]}", (now,))
        fetch = f"FETCH {DEAD_CHUNK_ROWS} FROM dead_token_rows"
        chunks = iter(lambda: cursor.execute(fetch).fetchall(), [])
    else:
        cursor.execute(DEAD_ROWS_SQL[dialect], (now,))
        chunks = iter(lambda: cursor.fetchmany(DEAD_CHUNK_ROWS), [])
    nothing: Any = b"" if dialect == "postgresql" else ""  # joins the prefixes: bytes, or hex on SQLite
    for rows in chunks:
        prefixes += big_endian_numbers(nothing.join(map(_FIRST, rows)))
        packed.extend(map(_SECOND, rows))
        holders.extend(map(_THIRD, rows))
    if dialect == "postgresql":
        cursor.execute("CLOSE dead_token_rows")
    return DeadDigests.from_arrays(prefixes, packed, holders)


def _live_pages(cursor: Cursor, dialect: str, now: datetime) -> Generator[tuple[Any, ...], None, None]:
    """The live tokens as ``LIVE_PAGE_SQL`` pages, by ranges of ``PAGE_ROWS`` rows in storage order: SQLite's
    rowid (its primary key on token_id is a separate index), PostgreSQL's token ids (dense). A range, not a
    LIMIT, so that each query reads only its range whatever the planner believes of the filter.

    The database aggregates the next page while the caller turns this one into records: PostgreSQL because
    the next query is sent first (``read_ahead``), SQLite because a helper thread steps it (the sqlite3 module
    lets go of the GIL while SQLite works), so the load takes about the larger of the two, not their sum."""
    key = "rowid" if dialect == "sqlite" else "token_id"
    row = cursor.execute(f"SELECT MAX({key}) FROM cred_tokens").fetchone()
    highest = int(row[0]) if row and row[0] is not None else 0
    select = LIVE_PAGE_SQL[dialect]
    queries = ((select, (now, start, start + PAGE_ROWS)) for start in range(0, highest, PAGE_ROWS))
    pages = cursor.read_ahead(queries)
    for rows in _stepped_ahead(pages) if dialect == "sqlite" else pages:
        if rows and rows[0][0] is not None:  # NULL: a range with no live token
            yield rows[0]


_DONE: Final = object()


def _stepped_ahead(items: Iterator[T]) -> Generator[T, None, None]:
    """``items``, each one made by a helper thread while the caller works on the one before.

    The helper is the only user of the database connection meanwhile (the caller only reads what it hands
    over), and it is stopped and waited for before this returns, however the caller stops: the caller's
    transaction never ends under it.
    """
    handoff: queue.Queue[Any] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def hand(item: Any) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not hand(item):
                    return
            hand(_DONE)
        except BaseException as error:  # handed to the caller, which raises it
            hand(error)

    helper = threading.Thread(target=produce, name="credential-index-load", daemon=True)
    helper.start()
    try:
        while (item := handoff.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        helper.join()


class _LiveBuilder:
    """Turns pages of live tokens into records.

    Values that many tokens share (holder ids, record classes, expiry instants) are made once. The records are
    made by ``map`` over the page's columns rather than by a loop of Python statements: per token, what runs
    in Python is the record's ``__init__`` alone.
    """

    def __init__(
        self, live: dict[bytes, LiveToken], by_id: list[LiveToken | None], epoch: datetime | None = None
    ) -> None:
        self._live = live
        self._epoch = epoch  # expiries are microseconds after this (PostgreSQL), else stored text (SQLite)
        self._by_id = by_id
        self._holders: dict[str, int] = {}
        # shape -> its expiry instant, and its record class for tokens with the default username and their own
        self._expiries: dict[str, datetime | None] = {}
        self._classes: tuple[dict[str, type[LiveToken]], dict[str, type[LiveToken]]] = ({}, {})

    def _add_shape(self, shape: str) -> None:
        holder_kind, scopes, expires = shape.split(" ", 2)
        scope_set = frozenset(scopes.split(",")) if scopes else frozenset()
        if not expires:
            self._expiries[shape] = None
        elif self._epoch is not None:
            self._expiries[shape] = self._epoch + timedelta(microseconds=int(expires))
        else:
            self._expiries[shape] = to_datetime(expires)
        for custom, classes in enumerate(self._classes):
            classes[shape] = token_class(holder_kind, scope_set, bool(custom))

    def add_page(self, keys: str | bytes, ids: str, holders: str, shapes_text: str, usernames: str) -> None:
        key_bytes = bytes.fromhex(keys) if isinstance(keys, str) else keys
        key_list = [key_bytes[at : at + KEY_BYTES] for at in range(0, len(key_bytes), KEY_BYTES)]
        id_list = list(map(int, ids.split(",")))
        holder_texts = holders.split(",")
        known_holders = self._holders
        for text in set(holder_texts).difference(known_holders):
            known_holders[text] = int(text)
        holder_list = list(map(known_holders.__getitem__, holder_texts))
        shapes = shapes_text.split(";")
        for shape in set(shapes).difference(self._expiries):
            self._add_shape(shape)
        names = usernames.split(_USERNAMES)
        if len(key_bytes) % KEY_BYTES or not (
            len(key_list) == len(id_list) == len(holder_list) == len(shapes) == len(names)
        ):
            raise ValueError("a page of live tokens whose parts differ in length")
        for custom, classes in enumerate(self._classes):
            chosen = list(map(truth if custom else not_, names))
            picked_ids = list(compress(id_list, chosen))
            picked_keys = list(compress(key_list, chosen))
            picked_shapes = list(compress(shapes, chosen))
            columns: list[Iterable[Any]] = [
                map(classes.__getitem__, picked_shapes),
                picked_ids,
                compress(holder_list, chosen),
                map(self._expiries.__getitem__, picked_shapes),
                picked_keys,
            ]
            if custom:
                columns.append(compress(names, chosen))
            # type.__call__(cls, ...) is cls(...): a record of the class its shape names
            tokens: list[LiveToken] = list(map(type.__call__, *columns))
            self._live.update(zip(picked_keys, tokens, strict=True))
            by_id = self._by_id
            for token_id, token in zip(picked_ids, tokens, strict=True):
                by_id[token_id] = token
