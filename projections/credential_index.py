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
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from domain.directory import KNOWN_FEATURES
from domain.token_values import DEPLOY_TOKEN_PREFIX, has_token_length, is_well_formed
from infrastructure.db import POSTGRES_BOUNDS, Database
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

log = logging.getLogger(__name__)


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
        self._refresh_failing = False
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
        for token_row in tokens:
            self._put_token(token_from_row(token_row))
        for namespace_row in namespaces:
            namespace = namespace_from_row(namespace_row)
            self._namespaces[namespace.namespace_id] = namespace
            self._namespaces_by_path[namespace.full_path.lower()] = namespace
        for project_row in projects:
            project = project_from_row(project_row)
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
        """Keep refreshing until ``stop``: woken by NOTIFY on PostgreSQL, polling on SQLite.

        The interval also bounds how long a confirmation can age while nothing happens, so keep it well
        below ``max_staleness``. While this runs, auth checks never refresh themselves (``ensure_fresh``).
        """
        self._following = True
        try:
            if self._db.dialect == "postgresql":
                self._follow_postgres(stop, interval)
                return
            while not stop.is_set():
                self._refresh_logged()
                stop.wait(interval)
        finally:
            self._following = False

    def _refresh_logged(self) -> None:
        try:
            self.refresh()
        except Exception:  # the database may be down: the replica ages and checks fail closed
            if not self._refresh_failing:  # once per outage, not ten times a second
                log.warning("credential index refresh failed; auth checks fail closed", exc_info=True)
            self._refresh_failing = True
            return
        if self._refresh_failing:
            log.warning("credential index refreshes again")
        self._refresh_failing = False

    def _follow_postgres(self, stop: threading.Event, interval: float) -> None:
        import psycopg

        while not stop.is_set():
            try:
                with psycopg.connect(self._db.conninfo(), autocommit=True, **POSTGRES_BOUNDS) as connection:
                    connection.execute(f"LISTEN {PROJECTIONS_CHANNEL}")
                    while not stop.is_set():
                        self._refresh_logged()
                        for _ in connection.notifies(timeout=interval, stop_after=1):
                            pass
            except psycopg.OperationalError:
                if not self._refresh_failing:  # once per outage; it retries every interval meanwhile
                    log.warning("credential index lost its database connection; auth checks fail closed")
                self._refresh_failing = True
                stop.wait(interval)

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
    ) -> Decision:
        """One auth decision. Raises ``StaleIndex`` rather than answer from data it cannot vouch for."""
        if not value:
            return Decision.deny(Reason.NO_CREDENTIALS)
        if not has_token_length(value, DEPLOY_TOKEN_PREFIX):
            return Decision.deny(Reason.MALFORMED_TOKEN)  # rejected before any lookup
        self.ensure_fresh()
        token = self.lookup(value, now)
        if token is None and not is_well_formed(value, DEPLOY_TOKEN_PREFIX):
            return Decision.deny(Reason.MALFORMED_TOKEN)  # a mistyped value: its checksum fails
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
