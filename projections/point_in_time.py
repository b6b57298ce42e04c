"""Point-in-time answers by replaying the event log (behaviour [history]): what a token was, and who could do
what, at T.

Nothing here reads the live read models: the log is replayed up to the instant asked about, through the
same projection code, into a private in-memory database, and the same pure decision function answers. So
the answer is what the service itself would have decided at that instant, from the facts recorded then.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from eventsourcing.domain import Aggregate
from eventsourcing.persistence import Notification

from domain.deploy_token import DeployToken, deploy_token_uuid
from domain.errors import NotFound
from domain.groups import Group
from domain.projects import Project
from domain.streams import stream_id
from infrastructure.db import Cursor, Database
from infrastructure.settings import DatabaseLocation
from infrastructure.store import EventStore
from projections.access import Action, AuthRequest, decide
from projections.base import Projector
from projections.credential_queries import CredentialQueries
from projections.credentials import CredentialLookup, TokenRecord
from projections.directory import Directory
from projections.projection import BatchedEventProjection, Decode, Projection


@dataclass(frozen=True)
class TokenStateAt:
    token_id: int
    at: datetime
    version: int
    name: str
    username: str
    holder_kind: str
    holder_id: int
    scopes: tuple[str, ...]
    expires_at: datetime | None
    revoked: bool
    expired: bool
    deleted: bool
    holder_path: str | None  # the holder's full path at that instant (it may have moved or gone since)
    holder_deleted: bool

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def holder_at(store: EventStore, kind: str, holder_id: int, at: datetime) -> tuple[str | None, bool]:
    """A project's or group's full path as of instant ``at``, and whether it had been deleted by then."""
    stream = stream_id("project" if kind == "project" else "namespace", holder_id)
    events = [event for event in store.events.get(stream) if _timestamp(event) <= at]
    if not events:
        return None, False
    holder: Aggregate = store.repository.get(stream, version=events[-1].originator_version)
    if not isinstance(holder, Project | Group):
        return None, False
    return holder.full_path, holder.deleted


def token_state_at(store: EventStore, token_id: int, at: datetime) -> TokenStateAt:
    """The token as of instant ``at``: its events up to then, replayed."""
    events = [event for event in store.events.get(deploy_token_uuid(token_id)) if _timestamp(event) <= at]
    if not events:
        raise NotFound("404 Token")
    token: DeployToken = store.repository.get(
        deploy_token_uuid(token_id), version=events[-1].originator_version
    )
    holder_path, holder_deleted = holder_at(store, token.holder_kind, token.holder_id, at)
    return TokenStateAt(
        token_id=token_id,
        at=at,
        version=token.version,
        name=token.name,
        username=token.username,
        holder_kind=token.holder_kind,
        holder_id=token.holder_id,
        scopes=token.scopes,
        expires_at=token.expires_at,
        revoked=token.revoked,
        expired=token.is_expired(at),
        deleted=token.deleted,
        holder_path=holder_path,
        holder_deleted=holder_deleted,
    )


@dataclass(frozen=True)
class AccessAt:
    token_id: int
    name: str
    username: str
    holder_kind: str
    holder_id: int
    scopes: tuple[str, ...]
    created_at: datetime
    created_by: str | None
    holder_path: str | None  # where the holder was at the instant asked about

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _AsOf(Projection):
    """Projections replayed as one, applying only the events recorded at or before ``at``: the past as it was.

    One projection, not one each: the log is read and each event decoded once for all of them.
    """

    name = "as_of"

    def __init__(self, projections: Sequence[BatchedEventProjection[Any]], at: datetime) -> None:
        self.tables = tuple(table for projection in projections for table in projection.tables)
        self._projections = projections
        self._at = at

    def schema(self) -> Sequence[str]:
        return [statement for projection in self._projections for statement in projection.schema()]

    def apply_stored(self, cursor: Cursor, notification: Notification, decode: Decode) -> None:
        handling = [
            projection
            for projection in self._projections
            if projection.handlers.for_topic(notification.topic) is not None
        ]
        if not handling:
            return
        event = decode(notification)
        # Filtered one by one, not cut at the first later one: positions are given at commit, so an event of
        # a slower concurrent command can follow a later-timed one in the log.
        if _timestamp(event) <= self._at:
            for projection in handling:
                projection.apply_batch(cursor, (notification,), lambda _: event)


def replay_until(store: EventStore, at: datetime) -> Database:
    """A private in-memory copy of the credential and directory read models as they were at ``at``."""
    db = Database(DatabaseLocation("sqlite", sqlite_path=Path(":memory:")))
    projector = Projector(store, db, [_AsOf([CredentialLookup(), Directory()], at)])
    projector.setup()
    projector.catch_up()
    return db


def who_could(store: EventStore, *, action: Action, project: int | str, at: datetime) -> list[AccessAt]:
    """Which deploy tokens could perform ``action`` on ``project`` at instant ``at``, and who created them.

    ``project`` is an id, or the full path the project had at ``at`` (it may have moved or gone since, and
    another project may have its old path now).

    The username check is left out: the question is about the credential, whoever presented it.
    """
    db = replay_until(store, at)
    try:
        read = CredentialQueries(db)
        target = read.project(project) if isinstance(project, int) else read.project_by_path(project)
        if target is None:
            raise NotFound("404 Project")
        instance = read.instance()
        answers = []
        page_number = 1
        while True:
            page = read.tokens(
                holder_kind=None, holder_id=None, active_only=False, now=at, page=page_number, per_page=1000
            )
            for token in page.items:
                decision = decide(
                    AuthRequest(action, None, check_username=False),
                    token,
                    target,
                    external_authorization=instance.external_authorization_enabled,
                    now=at,
                )
                if decision.allowed:
                    answers.append(_access(store, read, token))
            if page_number * page.per_page >= page.total:
                break
            page_number += 1
        return answers
    finally:
        db.close()


def _timestamp(event: object) -> datetime:
    moment = getattr(event, "timestamp", None)
    assert isinstance(moment, datetime)
    return moment


def _created_by(store: EventStore, token_id: int) -> str | None:
    """The actor recorded on the Created event (a user, or a system process such as the CLI)."""
    for event in store.events.get(deploy_token_uuid(token_id), limit=1):
        actor = getattr(event, "actor", None)
        if isinstance(actor, dict):
            return str(actor.get("username"))
    return None


def _access(store: EventStore, read: CredentialQueries, token: TokenRecord) -> AccessAt:
    holder = (
        read.project(token.holder_id) if token.holder_kind == "project" else read.namespace(token.holder_id)
    )
    return AccessAt(
        token_id=token.token_id,
        name=token.name,
        username=token.username,
        holder_kind=token.holder_kind,
        holder_id=token.holder_id,
        scopes=token.scopes,
        created_at=token.created_at,
        created_by=_created_by(store, token.token_id),
        holder_path=None if holder is None else holder.full_path,
    )
