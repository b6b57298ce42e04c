"""The in-memory credential index: each API process's replica of the credential-lookup projection.

Auth checks are the hot path, so they never query the database: a live token is found by its keyed digest in
a dict (O(1)), dead ones (revoked, deleted, expired) in a compact table of digest prefixes that still gives the
reason they are refused (``projections.compact_tokens``), and the namespace tree and settings are in memory too.
A million tokens, half of them dead, take about 135 MB and load in about 2 to 2.5 s (benchmarks/index_scale.py;
the load itself is ``projections.credential_load``).

The replica follows the projection by position (every row carries the position of the event that last changed
it), so a refresh reads only what changed; tokens whose expiry (or a rotated-out value's grace) passed since the
last refresh are taken out of memory as the index's clock passes them. Freshness is checked, not assumed: a
refresh *confirms* the replica when the projection had reached the head of the event log, and a check made more
than ``max_staleness`` seconds after the last confirmation fails closed (``StaleIndex``: "try again", never an
allow).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, TypeVar, cast

from domain.clock import Clock, SystemClock
from domain.instance_settings import KNOWN_FEATURES
from domain.token_values import DEPLOY_TOKEN_PREFIX, has_token_length, is_well_formed
from infrastructure.db import Cursor, Database, to_datetime
from infrastructure.keys import Keyring
from infrastructure.store import EventStore
from projections.access import Action, AuthRequest, Decision, Reason, TokenFacts, decide
from projections.base import PROJECTIONS_CHANNEL
from projections.compact_tokens import (
    DELETED,
    EXPIRED,
    REVOKED,
    CustomNamedToken,
    DeadDigests,
    DeadToken,
    LiveToken,
    token_class,
)
from projections.credential_load import KEY_BYTES, load_tokens
from projections.credentials import (
    NAMESPACE_COLUMNS,
    PROJECT_COLUMNS,
    CredentialLookup,
    InstanceRecord,
    NamespaceRecord,
    ProjectRecord,
    namespace_from_row,
    project_from_row,
)
from projections.follower import Follower


class StaleIndex(Exception):
    """The replica could not be confirmed current within the bound: answer "try again", never allow."""


@dataclass(frozen=True)
class Resource:
    """What a request addresses: a project or a group, by id or full path."""

    kind: str  # "project" or "group"
    id: int | None = None
    path: str | None = None
    # Paths resolve case-insensitively, as GitLab's routes do; a name that another system compares exactly
    # (a container registry's repository) must match the canonical spelling or it names nothing.
    exact_path: bool = False


# The answers ``CredentialIndex.check`` gives before any token is found: immutable, so built once.
_NO_CREDENTIALS = Decision.deny(Reason.NO_CREDENTIALS)
_MALFORMED = Decision.deny(Reason.MALFORMED_TOKEN)


R = TypeVar("R", ProjectRecord, NamespaceRecord)


def _project_path(record: ProjectRecord) -> str:
    return record.full_path.lower()


def _namespace_path(record: NamespaceRecord) -> str:
    return record.full_path.lower()


def _drop(by_id: dict[int, R], by_path: dict[str, R], number: int, path_of: Callable[[R], str]) -> None:
    """Forget a group's or project's row, and its path unless another holder has that path now."""
    previous = by_id.pop(number, None)
    if previous is not None and by_path.get(path_of(previous)) is previous:
        del by_path[path_of(previous)]


# A token row as a refresh reads it. The username column is NULL where it is the default one, which the index
# derives from the id rather than keep (``compact_tokens``); ``state`` is why a token is dead (0: live), decided
# by the database against the index's clock. (The first load reads packed pages instead: ``credential_load``.)
_LIVE: Final = 0
_USERNAME = "CASE WHEN username = 'gitlab+deploy-token-' || token_id THEN NULL ELSE username END"
_TOKEN_ROW = (
    f"token_id, {_USERNAME}, holder_kind, holder_id, scopes, expires_at, CASE WHEN deleted_at IS NOT NULL "
    f"THEN {DELETED} WHEN revoked_at IS NOT NULL THEN {REVOKED} WHEN expires_at <= ? THEN {EXPIRED} "
    f"ELSE {_LIVE} END, substr(digest, 1, {2 * KEY_BYTES}), previous_digest, previous_valid_until"
)
# How often, at most, the index asks which tokens expired (and which rotated-out values' grace ended) since it
# last asked. Only memory waits for it: a token still held is refused at its expiry by ``decide`` itself.
SWEEP_EVERY_SECONDS: Final = 5.0


class CredentialIndex:
    def __init__(
        self,
        db: Database,
        store: EventStore,
        keys: Keyring,
        *,
        max_staleness: float = 2.0,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Clock | None = None,
    ) -> None:
        self._db = db
        self._store = store
        self._keys = keys
        self._digest_bytes = keys.digest_bytes  # bound once: every check calls it
        self.max_staleness = max_staleness
        self._monotonic = monotonic
        self._clock: Clock = clock or SystemClock()
        # Serialises refreshes. An auth check never waits for it (see ensure_fresh).
        self._lock = threading.Lock()
        self._following = False
        self._loaded = False
        # Live tokens by their current digest, and by id (ids come from one sequence, so a list is dense).
        self._live: dict[bytes, LiveToken] = {}
        self._by_id: list[LiveToken | None] = []
        # Rotated-out values still within their grace period: the token they stand for, and until when.
        self._grace: dict[bytes, tuple[TokenFacts, datetime]] = {}
        self._grace_by_id: dict[int, bytes] = {}
        self._dead = DeadDigests()
        self._swept_until: datetime | None = None
        self._projects: dict[int, ProjectRecord] = {}
        self._projects_by_path: dict[str, ProjectRecord] = {}
        self._namespaces: dict[int, NamespaceRecord] = {}
        self._namespaces_by_path: dict[str, NamespaceRecord] = {}
        self._instance = InstanceRecord(False, dict(KNOWN_FEATURES))
        self.position = 0
        self.confirmed_at: float | None = None

    # Following the projection --------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Apply the rows changed since the last refresh; returns whether the replica is confirmed current."""
        with self._lock:
            return self._refresh_locked()

    def _refresh_locked(self) -> bool:
        """The refresh itself; the caller holds ``_lock``.

        What changed is read in one snapshot together with the log's head, so the confirmation compares the
        projection's position with the head as of the very rows applied; on PostgreSQL the reads go in one
        pipeline, one network round trip (this runs after every command, for read-your-writes).
        """
        started = self._monotonic()
        now = self._clock.now()
        since = self.position
        loaded = self._loaded
        queries: list[tuple[str, Sequence[Any]]] = [
            (self._store.head_sql, ()),
            ("SELECT position FROM projection_tracking WHERE name = ?", (CredentialLookup.name,)),
            (f"SELECT {NAMESPACE_COLUMNS} FROM cred_namespaces WHERE position > ?", (since,)),
            (f"SELECT {PROJECT_COLUMNS} FROM cred_projects WHERE position > ?", (since,)),
            (
                "SELECT external_authorization_enabled, features FROM cred_settings WHERE position > ?",
                (since,),
            ),
            ("SELECT kind, removed_id FROM cred_removed WHERE position > ?", (since,)),
        ]
        if not loaded:
            with self._db.read() as cursor:
                self._load_tokens(cursor, now)
                results = [cursor.execute(sql, params).fetchall() for sql, params in queries]
        else:
            queries.append((f"SELECT {_TOKEN_ROW} FROM cred_tokens WHERE position > ?", (now, since)))
            sweep_from = self._sweep_due(now)
            if sweep_from is not None:
                queries += self._sweep_queries(sweep_from, now)
            results = self._db.read_each(queries)
            self._apply_tokens(results[6], now)
            if sweep_from is not None:
                self._sweep(results[7], results[8], now)
        head_rows, tracked, namespaces, projects, settings_rows, removed = results[:6]
        head = int(head_rows[0][0] or 0) if head_rows else 0
        projected = int(tracked[0][0]) if tracked else 0
        settings = settings_rows[0] if settings_rows else None
        # Deleted groups and projects first, then the rows that changed: a path freed by one and taken by
        # another in the same refresh ends up naming the new one, in whichever order they came.
        for kind, number in removed:
            if kind == "project":
                _drop(self._projects, self._projects_by_path, int(number), _project_path)
            else:
                _drop(self._namespaces, self._namespaces_by_path, int(number), _namespace_path)
        for namespace_row in namespaces:
            namespace = namespace_from_row(namespace_row)
            _drop(self._namespaces, self._namespaces_by_path, namespace.namespace_id, _namespace_path)
            self._namespaces[namespace.namespace_id] = namespace
            self._namespaces_by_path[namespace.full_path.lower()] = namespace
        for project_row in projects:
            project = project_from_row(project_row)
            _drop(self._projects, self._projects_by_path, project.project_id, _project_path)
            self._projects[project.project_id] = project
            self._projects_by_path[project.full_path.lower()] = project
        if settings is not None:
            self._instance = InstanceRecord(bool(settings[0]), dict(json.loads(settings[1])))
        self.position = max(self.position, projected)
        if projected >= head:
            self.confirmed_at = started
        return projected >= head

    # Tokens ------------------------------------------------------------------------------------------

    def _load_tokens(self, cursor: Cursor, now: datetime) -> None:
        """The first refresh: every token row, in the refresh's one snapshot (``credential_load``)."""
        loaded = load_tokens(cursor, self._db.dialect, now)
        self._live, self._by_id, self._dead = loaded.live, loaded.by_id, loaded.dead
        for token_id, previous, until, target in loaded.graced:
            self._keep_grace(token_id, previous, _moment(until), target, now)
        self._swept_until = now
        self._loaded = True

    def _apply_tokens(self, rows: Sequence[Sequence[Any]], now: datetime) -> None:
        """Rows changed since the last refresh: each token's old entries go, its new state comes in."""
        for (
            token_id,
            username,
            holder_kind,
            holder_id,
            scopes,
            expires,
            state,
            digest,
            previous,
            until,
        ) in rows:
            token_id, holder_id = int(token_id), int(holder_id)
            self._forget(token_id)
            key = bytes.fromhex(digest)
            target: TokenFacts
            if state == _LIVE:
                self._dead.discard(key, token_id)
                scope_set = _scope_set(scopes)
                token_class_ = token_class(holder_kind, scope_set, username is not None)
                expires_at = _moment(expires) if expires is not None else None
                token = (
                    token_class_(token_id, holder_id, expires_at, key)
                    if username is None
                    else cast(type[CustomNamedToken], token_class_)(
                        token_id, holder_id, expires_at, key, username
                    )
                )
                self._live[key] = token
                if token_id >= len(self._by_id):
                    self._by_id.extend([None] * (token_id + 1 - len(self._by_id)))
                self._by_id[token_id] = token
                target = token
            else:
                self._dead.put(key, token_id, int(state), holder_kind, holder_id)
                target = DeadToken(token_id, int(state), holder_kind, holder_id)
            if previous is not None and until is not None:
                self._keep_grace(token_id, previous, _moment(until), target, now)

    def _keep_grace(
        self, token_id: int, previous: str, until: datetime, target: TokenFacts, now: datetime
    ) -> None:
        """A rotated-out value stands for its token until its grace ends (behaviour [rotation])."""
        if now < until:
            key = bytes.fromhex(previous[: 2 * KEY_BYTES])
            self._grace[key] = (target, until)
            self._grace_by_id[token_id] = key

    def _forget(self, token_id: int) -> None:
        """Drop what the index holds for a live token, and its rotated-out value (dead entries are overwritten
        in place when the same digest comes again)."""
        if token_id < len(self._by_id):
            token = self._by_id[token_id]
            if token is not None:
                self._by_id[token_id] = None
                self._live.pop(token.digest, None)
        previous = self._grace_by_id.pop(token_id, None)
        if previous is not None:
            self._grace.pop(previous, None)

    def _sweep_due(self, now: datetime) -> datetime | None:
        """Since when to sweep, if a sweep is due: at most every ``SWEEP_EVERY_SECONDS``."""
        last = self._swept_until
        if last is None or (now - last).total_seconds() < SWEEP_EVERY_SECONDS:
            return None  # including a clock set back: what was swept stays swept
        return last

    @staticmethod
    def _sweep_queries(last: datetime, now: datetime) -> list[tuple[str, Sequence[Any]]]:
        """The tokens that expired since the last sweep, and the rotated-out values whose grace ended: the
        database tells which (indexed), so the index keeps no timetable of its own."""
        return [
            (
                "SELECT token_id FROM cred_tokens WHERE expires_at > ? AND expires_at <= ? "
                "AND revoked_at IS NULL AND deleted_at IS NULL",
                (last, now),
            ),
            (
                "SELECT token_id FROM cred_tokens WHERE previous_valid_until > ? AND previous_valid_until <= ?",
                (last, now),
            ),
        ]

    def _sweep(
        self, expired: Sequence[Sequence[Any]], graced: Sequence[Sequence[Any]], now: datetime
    ) -> None:
        """Take out of memory what ``_sweep_queries`` found."""
        for (number,) in expired:
            token_id = int(number)
            token = self._by_id[token_id] if token_id < len(self._by_id) else None
            if token is not None and token.is_expired(now):
                self._by_id[token_id] = None
                self._live.pop(token.digest, None)
                self._dead.put(token.digest, token_id, EXPIRED, token.holder_kind, token.holder_id)
        for (number,) in graced:
            previous = self._grace_by_id.get(int(number))
            if previous is not None and self._grace[previous][1] <= now:
                del self._grace_by_id[int(number)]
                del self._grace[previous]
        self._swept_until = now

    def on_projected(self, _position: int) -> None:
        """Projector listener: the process that wrote sees its write at once (read-your-writes)."""
        self.refresh()

    def follow(self, stop: threading.Event, *, interval: float = 0.1) -> None:
        """Keep refreshing until ``stop``: woken by the projector's NOTIFY on PostgreSQL, polling on SQLite.

        The interval also bounds how long a confirmation can age while nothing happens, so keep it well
        below ``max_staleness``. While this runs, auth checks never refresh themselves (``ensure_fresh``).
        """
        self._following = True
        try:
            Follower(
                self._db,
                self.refresh,
                channel=PROJECTIONS_CHANNEL if self._db.dialect == "postgresql" else None,
                interval=interval,
                activity="credential index refresh",
                # the replica ages meanwhile, and checks past the staleness bound answer "unavailable"
                when_failing="auth checks fail closed",
            ).run(stop)
        finally:
            self._following = False

    # Answering -----------------------------------------------------------------------------------------

    def ensure_fresh(self) -> None:
        """Fail closed when the replica's last confirmation is older than the bound, without waiting.

        An auth check never waits for the database: a stopped, frozen or unreachable one would hold every
        check (and every request thread) for as long as it lasts. While a follower runs, it alone refreshes,
        and a check only reads the age of its last confirmation. Without one (a CLI command, a test), a check
        refreshes inline, unless a refresh is already running.
        """
        confirmed = self.confirmed_at
        if confirmed is not None and self._monotonic() - confirmed <= self.max_staleness:
            return
        if self._following or not self._lock.acquire(blocking=False):
            raise StaleIndex("credential data is not current; try again")
        try:
            current = self._refresh_locked()
        except Exception as error:
            raise StaleIndex("credential data unavailable; try again") from error
        finally:
            self._lock.release()
        if not current:
            raise StaleIndex("credential data is behind the event log; try again")

    def lookup(self, value: str, now: datetime) -> TokenFacts | None:
        """The token a secret belongs to (a dead one too, to say why it is refused); a rotated-out secret only
        within its grace period."""
        digest = self._keys.digest_bytes(value)[:KEY_BYTES]
        token = self._live.get(digest)
        if token is not None:
            return token
        return self._missed(digest, now)

    def _missed(self, digest: bytes, now: datetime) -> TokenFacts | None:
        """A digest no live token has now: a rotated-out value in its grace, a dead token, or nothing."""
        grace = self._grace.get(digest)
        if grace is not None:
            return grace[0] if now < grace[1] else None
        return self._dead.get(digest)

    def resolve(self, resource: Resource | None) -> ProjectRecord | NamespaceRecord | None:
        if resource is None:
            return None
        if resource.kind == "project":
            if resource.id is not None:
                return self._projects.get(resource.id)
            project = self._projects_by_path.get((resource.path or "").lower())
            if project is not None and resource.exact_path and project.full_path != resource.path:
                return None
            return project
        if resource.id is not None:
            namespace = self._namespaces.get(resource.id)
        else:
            namespace = self._namespaces_by_path.get((resource.path or "").lower())
            if namespace is not None and resource.exact_path and namespace.full_path != resource.path:
                return None
        return namespace if namespace is not None and namespace.kind == "group" else None

    def check(
        self,
        *,
        value: str | None,
        username: str | None,
        action: Action,
        resource: Resource | None,
        now: datetime,
        check_username: bool,
        exact_group_only: bool = False,
        unreadable: bool = False,
    ) -> Decision:
        """One auth decision. Raises ``StaleIndex`` rather than answer from data it cannot vouch for.

        The one rule for a malformed token: credentials that were sent but could not be read
        (``unreadable``: a Basic header that is not base64 of ``user:password``, so there is no value), a value
        without the prefix and length of one we issue (refused before any lookup, so nothing else is ever
        hashed), or a value no token has whose checksum fails (mistyped, rather than unknown).
        """
        if not value:
            return _MALFORMED if unreadable else _NO_CREDENTIALS
        if not has_token_length(value, DEPLOY_TOKEN_PREFIX):
            return _MALFORMED
        self.ensure_fresh()
        # lookup(), inline: this runs on every check
        digest = self._digest_bytes(value)[:KEY_BYTES]
        token: TokenFacts | None = self._live.get(digest)
        if token is None:
            token = self._missed(digest, now)
            if token is None and not is_well_formed(value, DEPLOY_TOKEN_PREFIX):
                return _MALFORMED
        # tuple.__new__: a named tuple's generated __new__ is a Python call, and this runs on every check
        request = tuple.__new__(AuthRequest, (action, username, check_username, exact_group_only))
        return decide(
            request,
            token,
            self.resolve(resource),
            external_authorization=self._instance.external_authorization_enabled,
            now=now,
        )

    def instance(self) -> InstanceRecord:
        return self._instance

    def __len__(self) -> int:
        """Live tokens held (dead ones are counted by ``dead_tokens``)."""
        return len(self._live)

    @property
    def dead_tokens(self) -> int:
        return len(self._dead)

    @property
    def grace_values(self) -> int:
        return len(self._grace)


def _scope_set(scopes: str) -> frozenset[str]:
    return frozenset(scopes.split(",")) if scopes else frozenset()


def _moment(value: Any) -> datetime:
    moment = to_datetime(value)
    assert moment is not None
    return moment
