"""The in-memory credential index: each API process's replica of the credential-lookup projection.

Auth checks are the hot path, so they never query the database: a token is found by its keyed digest in a
dict (O(1)), and the namespace tree and settings are in memory too. The replica follows the projection by
position (every row carries the position of the event that last changed it), so a refresh reads only what
changed. Freshness is checked, not assumed: a refresh *confirms* the replica when the projection had reached
the head of the event log, and a check made more than ``max_staleness`` seconds after the last confirmation
fails closed (``StaleIndex``: "try again", never an allow).
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from domain.instance_settings import KNOWN_FEATURES
from domain.token_values import DEPLOY_TOKEN_PREFIX, has_token_length, is_well_formed
from infrastructure.db import Database
from infrastructure.keys import Keyring
from infrastructure.store import EventStore
from projections.access import Action, AuthRequest, Decision, Reason, decide
from projections.base import PROJECTIONS_CHANNEL
from projections.credentials import (
    NAMESPACE_COLUMNS,
    PROJECT_COLUMNS,
    TOKEN_COLUMNS,
    CredentialLookup,
    InstanceRecord,
    NamespaceRecord,
    ProjectRecord,
    TokenRecord,
    namespace_from_row,
    project_from_row,
    token_from_row,
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


class CredentialIndex:
    def __init__(
        self,
        db: Database,
        store: EventStore,
        keys: Keyring,
        *,
        max_staleness: float = 2.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._store = store
        self._keys = keys
        self.max_staleness = max_staleness
        self._monotonic = monotonic
        # Serialises refreshes. An auth check never waits for it (see ensure_fresh).
        self._lock = threading.Lock()
        self._following = False
        self._tokens_by_digest: dict[str, TokenRecord] = {}
        self._tokens: dict[int, TokenRecord] = {}
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
        """The refresh itself; the caller holds ``_lock``."""
        started = self._monotonic()
        head = self._store.head()
        with self._db.read() as cursor:
            row = cursor.execute(
                "SELECT position FROM projection_tracking WHERE name = ?", (CredentialLookup.name,)
            ).fetchone()
            projected = int(row[0]) if row else 0
            since = self.position
            tokens = cursor.execute(
                f"SELECT {TOKEN_COLUMNS} FROM cred_tokens WHERE position > ?", (since,)
            ).fetchall()
            namespaces = cursor.execute(
                f"SELECT {NAMESPACE_COLUMNS} FROM cred_namespaces WHERE position > ?", (since,)
            ).fetchall()
            projects = cursor.execute(
                f"SELECT {PROJECT_COLUMNS} FROM cred_projects WHERE position > ?", (since,)
            ).fetchall()
            settings = cursor.execute(
                "SELECT external_authorization_enabled, features FROM cred_settings WHERE position > ?",
                (since,),
            ).fetchone()
            removed = cursor.execute(
                "SELECT kind, removed_id FROM cred_removed WHERE position > ?", (since,)
            ).fetchall()
        for token_row in tokens:
            self._put_token(token_from_row(token_row))
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

    def _put_token(self, token: TokenRecord) -> None:
        previous = self._tokens.get(token.token_id)
        if previous is not None:
            self._tokens_by_digest.pop(previous.digest, None)
            if previous.previous_digest:
                self._tokens_by_digest.pop(previous.previous_digest, None)
        self._tokens[token.token_id] = token
        self._tokens_by_digest[token.digest] = token
        if token.previous_digest:
            self._tokens_by_digest[token.previous_digest] = token

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

    def lookup(self, value: str, now: datetime) -> TokenRecord | None:
        """The token a secret belongs to; a rotated-out secret only within its grace period."""
        digest = self._keys.digest(value)
        token = self._tokens_by_digest.get(digest)
        if token is None:
            return None
        if hmac.compare_digest(token.digest, digest):
            return token
        if token.previous_valid_until is not None and now < token.previous_valid_until:
            return token
        return None

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
        token = self.lookup(value, now)
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

    def token(self, token_id: int) -> TokenRecord | None:
        return self._tokens.get(token_id)

    def instance(self) -> InstanceRecord:
        return self._instance

    def __len__(self) -> int:
        return len(self._tokens)
