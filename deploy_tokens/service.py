"""The service layer: commands in (with the actor), events out. Permission rules R14/R15 live here.

Each command loads aggregates from the event store, checks the actor's rights against them (strongly
consistent: a just-removed Owner cannot create a token), runs the domain command and saves. A lost
optimistic-concurrency race is retried on fresh state, so N concurrent revokes record one event. After a
save the process brings its projections up to that position, so its own reads see its own writes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError, Recording

from domain.actors import Actor
from domain.clock import Clock
from domain.deploy_token import CI_TOKEN_NAME, DeployToken, HolderKind, deploy_token_uuid
from domain.directory import (
    SETTINGS_ID,
    AccessLevel,
    Group,
    InstanceSettings,
    PathClaim,
    PersonalAccessToken,
    Project,
    User,
    UserNamespace,
    stream_id,
    validate_access_level,
)
from domain.errors import Conflict, NotFound, PermissionDenied, Unauthenticated, ValidationError
from domain.token_values import (
    DEPLOY_TOKEN_PREFIX,
    PERSONAL_ACCESS_TOKEN_PREFIX,
    generate_token,
    is_well_formed,
)
from infrastructure.idempotency import IdempotencySlot, saving_with
from infrastructure.keys import Keyring
from infrastructure.store import EventStore, IdAllocator
from infrastructure.vault import CiTokenVault
from projections.base import Projector
from projections.credentials import TokenRecord
from projections.directory import PersonalAccessTokenRecord, UserRecord
from projections.views import ReadModel

log = logging.getLogger(__name__)

A = TypeVar("A", bound=Aggregate)

_RETRIES = 50


@dataclass(frozen=True)
class IssuedToken:
    """The only object that ever holds a new token's value; it is returned once and never stored."""

    token: TokenRecord
    value: str

    def __repr__(self) -> str:
        return f"IssuedToken(token_id={self.token.token_id}, value=<hidden>)"


@dataclass(frozen=True)
class IssuedPersonalAccessToken:
    token: PersonalAccessTokenRecord
    value: str

    def __repr__(self) -> str:
        return f"IssuedPersonalAccessToken(pat_id={self.token.pat_id}, value=<hidden>)"


@dataclass(frozen=True)
class Principal:
    """An authenticated API caller: a user, with the scopes of the personal access token used."""

    user: UserRecord
    scopes: tuple[str, ...]
    address: str | None = None

    @property
    def actor(self) -> Actor:
        return Actor.user(
            self.user.user_id, self.user.username, is_admin=self.user.is_admin, address=self.address
        )

    @property
    def can_write(self) -> bool:
        return "api" in self.scopes


class DeployTokenService:
    def __init__(
        self,
        store: EventStore,
        read: ReadModel,
        projector: Projector,
        keys: Keyring,
        vault: CiTokenVault,
        clock: Clock,
    ) -> None:
        self.store = store
        self.read = read
        self.projector = projector
        self.keys = keys
        self.vault = vault
        self.clock = clock
        self._token_ids = IdAllocator(store, deploy_token_uuid)
        self._user_ids = IdAllocator(store, lambda n: stream_id("user", n))
        self._namespace_ids = IdAllocator(store, lambda n: stream_id("namespace", n))
        self._project_ids = IdAllocator(store, lambda n: stream_id("project", n))
        self._pat_ids = IdAllocator(store, lambda n: stream_id("pat", n))
        self._deferral = threading.local()

    # Plumbing ----------------------------------------------------------------------------------------

    def _saved(self, recordings: Sequence[Recording[Any]]) -> None:
        """Read-your-writes: this process's read models include what it just wrote before it answers."""
        if recordings and not getattr(self._deferral, "active", False):
            self.projector.catch_up(until=recordings[-1].notification.id)

    @contextmanager
    def batch_of_commands(self) -> Iterator[None]:
        """Many automatic commands in a row (the expiry scan): catch the read models up once, at the end.

        Each command still decides on fresh aggregates from the event store; only the read models wait.
        Scoped to the calling thread, so API requests served meanwhile keep read-your-writes.
        """
        self._deferral.active = True
        try:
            yield
        finally:
            self._deferral.active = False
            self.projector.catch_up()

    def _get(self, cls: type[A], stream: UUID, what: str) -> A:
        try:
            aggregate: Aggregate = self.store.repository.get(stream)
        except AggregateNotFoundError:
            raise NotFound(what) from None
        if not isinstance(aggregate, cls):
            raise NotFound(what)
        return aggregate

    def _retry(self, attempt: Callable[[], Sequence[Aggregate]]) -> list[Recording[Any]]:
        """Run a load-decide-save attempt; on a lost race, reload and decide again."""
        for _ in range(_RETRIES):
            aggregates = attempt()
            if not any(aggregate.pending_events for aggregate in aggregates):
                return []
            try:
                recordings = self.store.save(*aggregates)
            except IntegrityError:
                continue
            self._saved(recordings)
            return recordings
        raise Conflict("the command kept losing concurrent races; try again")

    def settings(self) -> InstanceSettings:
        try:
            aggregate: Aggregate = self.store.repository.get(SETTINGS_ID)
        except AggregateNotFoundError:
            return InstanceSettings.initial(self.clock.now())
        assert isinstance(aggregate, InstanceSettings)
        return aggregate

    # Authentication ----------------------------------------------------------------------------------

    def authenticate(self, value: str | None, *, address: str | None = None) -> Principal:
        """A personal access token for the management API. Deploy tokens are never accepted here (R13)."""
        if not value or not is_well_formed(value, PERSONAL_ACCESS_TOKEN_PREFIX):
            raise Unauthenticated("401 Unauthorized")
        found = self.read.personal_access_token(self.keys.digest(value))
        if found is None:
            raise Unauthenticated("401 Unauthorized")
        pat, user = found
        if not pat.is_active(self.clock.now()) or user.blocked:
            raise Unauthenticated("401 Unauthorized")
        return Principal(user, pat.scopes, address)

    # Access levels -----------------------------------------------------------------------------------

    def _group(self, group_id: int) -> Group:
        return self._get(Group, stream_id("namespace", group_id), "404 Group")

    def _project(self, project_id: int) -> Project:
        return self._get(Project, stream_id("project", project_id), "404 Project")

    def group_access(self, actor: Actor, group: Group) -> int:
        """The highest level the actor holds on the group or any ancestor (levels inherit downwards)."""
        if actor.kind == "system" or actor.is_admin:
            return AccessLevel.OWNER
        assert actor.user_id is not None
        levels = [group.members.get(actor.user_id, 0)]
        levels += [self._group(ancestor).members.get(actor.user_id, 0) for ancestor in group.ancestor_ids]
        return max(levels)

    def project_access(self, actor: Actor, project: Project) -> int:
        if actor.kind == "system" or actor.is_admin:
            return AccessLevel.OWNER
        assert actor.user_id is not None
        if project.namespace_kind == "user":
            namespace = self._get(
                UserNamespace, stream_id("namespace", project.namespace_id), "404 Namespace"
            )
            if namespace.user_id == actor.user_id:
                return AccessLevel.OWNER
        levels = [project.members.get(actor.user_id, 0)]
        levels += [self._group(group_id).members.get(actor.user_id, 0) for group_id in project.group_ids]
        return max(levels)

    def _visible_project(self, actor: Actor, project_id: int, needed: int) -> Project:
        """Projects are private: an actor without any role gets 404, one with too low a role gets 403."""
        project = self._project(project_id)
        level = self.project_access(actor, project)
        if level < AccessLevel.GUEST:
            raise NotFound("404 Project")
        if level < needed:
            raise PermissionDenied("403 Forbidden")
        return project

    def _visible_group(self, actor: Actor, group_id: int, needed: int) -> Group:
        group = self._group(group_id)
        level = self.group_access(actor, group)
        if level < AccessLevel.GUEST:
            raise NotFound("404 Group")
        if level < needed:
            raise PermissionDenied("403 Forbidden")
        return group

    def _require_admin(self, actor: Actor) -> None:
        if not actor.is_admin:
            raise PermissionDenied("403 Forbidden")

    # Deploy tokens: reads ----------------------------------------------------------------------------

    def check_token_reader(self, actor: Actor, holder_kind: HolderKind, holder_id: int) -> None:
        """Reading a holder's tokens needs Maintainer or higher there (project and group alike)."""
        if holder_kind == "project":
            self._visible_project(actor, holder_id, AccessLevel.MAINTAINER)
        else:
            self._visible_group(actor, holder_id, AccessLevel.MAINTAINER)

    def token_of(self, actor: Actor, holder_kind: HolderKind, holder_id: int, token_id: int) -> TokenRecord:
        self.check_token_reader(actor, holder_kind, holder_id)
        return self._token_record_of(holder_kind, holder_id, token_id)

    def check_token_manager(self, actor: Actor, holder_kind: HolderKind, holder_id: int) -> None:
        """R14/R15: managing a project's tokens needs Maintainer or higher; a group's needs Owner."""
        if holder_kind == "project":
            self._visible_project(actor, holder_id, AccessLevel.MAINTAINER)
        else:
            self._visible_group(actor, holder_id, AccessLevel.OWNER)

    def _token_record_of(self, holder_kind: str, holder_id: int, token_id: int) -> TokenRecord:
        """Tokens are looked up within the given holder: another holder's id is "not found"."""
        record = self.read.token(token_id)
        if (
            record is None
            or record.deleted_at is not None
            or record.holder_kind != holder_kind
            or record.holder_id != holder_id
        ):
            raise NotFound("404 Token")
        return record

    # Deploy tokens: commands -------------------------------------------------------------------------

    def create_token(
        self,
        actor: Actor,
        holder_kind: HolderKind,
        holder_id: int,
        *,
        name: str,
        scopes: Iterable[str],
        expires_at: date | datetime | None = None,
        username: str | None = None,
        idempotency: IdempotencySlot | None = None,
    ) -> IssuedToken:
        """With ``idempotency``, the key's record (the new id and value) commits with the token's events."""
        self.check_token_manager(actor, holder_kind, holder_id)
        value = generate_token(DEPLOY_TOKEN_PREFIX)
        digest = self.keys.digest(value)
        scope_list = list(scopes)
        now = self.clock.now()

        def build(token_id: int) -> list[Aggregate]:
            if idempotency is not None:
                idempotency.result = {"token_id": token_id, "token": value}
            return [
                DeployToken.issue(
                    token_id=token_id,
                    name=name,
                    username=username,
                    holder_kind=holder_kind,
                    holder_id=holder_id,
                    scopes=scope_list,
                    expires_at=expires_at,
                    digest=digest,
                    actor=actor,
                    now=now,
                )
            ]

        with saving_with(idempotency):
            token_id, recordings = self._token_ids.save_new(build)
        if name == CI_TOKEN_NAME:
            self.vault.put(token_id, value)
        self._saved(recordings)
        record = self.read.token(token_id)
        assert record is not None
        log.info("deploy token created", extra={"token_id": token_id, "holder": f"{holder_kind}:{holder_id}"})
        return IssuedToken(record, value)

    def _manage_token(
        self,
        actor: Actor,
        holder_kind: HolderKind,
        holder_id: int,
        token_id: int,
        command: Callable[[DeployToken], object],
    ) -> DeployToken:
        """R15: revoking and deleting need the same role as creating, within the token's own holder."""
        self.check_token_manager(actor, holder_kind, holder_id)
        result: list[DeployToken] = []

        def attempt() -> list[Aggregate]:
            token = self._get(DeployToken, deploy_token_uuid(token_id), "404 Token")
            if token.holder_kind != holder_kind or token.holder_id != holder_id or token.deleted:
                raise NotFound("404 Token")
            command(token)
            result[:] = [token]
            return [token]

        self._retry(attempt)
        return result[0]

    def revoke_token(
        self, actor: Actor, holder_kind: HolderKind, holder_id: int, token_id: int
    ) -> TokenRecord:
        now = self.clock.now()
        self._manage_token(actor, holder_kind, holder_id, token_id, lambda t: t.revoke(actor=actor, now=now))
        self.vault.destroy(token_id)
        record = self.read.token(token_id)
        assert record is not None
        return record

    def delete_token(self, actor: Actor, holder_kind: HolderKind, holder_id: int, token_id: int) -> None:
        now = self.clock.now()
        self._manage_token(actor, holder_kind, holder_id, token_id, lambda t: t.delete(actor=actor, now=now))
        self.vault.destroy(token_id)

    def rotate_token(
        self,
        actor: Actor,
        holder_kind: HolderKind,
        holder_id: int,
        token_id: int,
        *,
        grace: timedelta | None = None,
        idempotency: IdempotencySlot | None = None,
    ) -> IssuedToken:
        """A new secret for the same token; the old one may stay valid for ``grace`` (recorded as events).

        With ``idempotency``, the key's record (the token id and new value) commits with the rotation.
        """
        value = generate_token(DEPLOY_TOKEN_PREFIX)
        digest = self.keys.digest(value)
        now = self.clock.now()
        grace_until = now + grace if grace else None
        if idempotency is not None:
            idempotency.result = {"token_id": token_id, "token": value}
        with saving_with(idempotency):
            token = self._manage_token(
                actor,
                holder_kind,
                holder_id,
                token_id,
                lambda t: t.rotate(digest=digest, grace_until=grace_until, actor=actor, now=now),
            )
        if token.name == CI_TOKEN_NAME:
            self.vault.put(token_id, value)
        record = self.read.token(token_id)
        assert record is not None
        return IssuedToken(record, value)

    def revoke_by_value(self, actor: Actor, value: str) -> TokenRecord:
        """Leak response (R20): an admin revokes whatever token has this value, wherever it belongs."""
        self._require_admin(actor)
        if not value or not value.startswith(DEPLOY_TOKEN_PREFIX):
            raise ValidationError.single("token", "is not a deploy token")
        digest = self.keys.digest(value)
        found = self._token_by_digest(digest)
        if found is None:
            raise NotFound("404 Token")
        now = self.clock.now()

        def attempt() -> list[Aggregate]:
            token = self._get(DeployToken, deploy_token_uuid(found.token_id), "404 Token")
            if not token.deleted:
                token.revoke(actor=actor, now=now, reason="revoked by value (leak response)")
            return [token]

        self._retry(attempt)
        self.vault.destroy(found.token_id)
        record = self.read.token(found.token_id)
        assert record is not None
        return record

    def _token_by_digest(self, digest: str) -> TokenRecord | None:
        with self.read.db.read() as cursor:
            row = cursor.execute(
                "SELECT token_id FROM cred_tokens WHERE digest = ? OR previous_digest = ?", (digest, digest)
            ).fetchone()
        return None if row is None else self.read.token(int(row[0]))

    def _system_token_command(self, token_id: int, command: Callable[[DeployToken], bool]) -> bool:
        """Run an automatic process's command on one token; returns whether it recorded an event.

        A deleted token is left alone (nothing happens to it, and there is nothing to report).
        """
        changed: list[bool] = []

        def attempt() -> list[Aggregate]:
            token = self._get(DeployToken, deploy_token_uuid(token_id), "404 Token")
            changed[:] = [False] if token.deleted else [command(token)]
            return [token]

        self._retry(attempt)
        return bool(changed and changed[0])

    def record_expiry(self, token_id: int) -> bool:
        """R19. Also destroys a CI token's recoverable value: an expired token has no use for it."""
        now = self.clock.now()
        recorded = self._system_token_command(token_id, lambda token: token.record_expiry(now=now))
        if recorded:
            self.vault.destroy(token_id)
        return recorded

    def mark_notification_due(self, token_id: int, interval: int) -> bool:
        """The scan's intent to send one interval's email, recorded once per interval."""
        now = self.clock.now()
        return self._system_token_command(
            token_id, lambda token: token.mark_notification_due(interval, now=now)
        )

    def record_notification(
        self, token_id: int, interval: int, *, message_id: str, recipients: Iterable[str]
    ) -> bool:
        """Records that an interval's email was accepted; at most once per interval (R18)."""
        now = self.clock.now()
        emails = list(recipients)
        actor = Actor.system("expiry-notifier")
        return self._system_token_command(
            token_id,
            lambda token: token.record_notification(
                interval, message_id=message_id, recipients=emails, actor=actor, now=now
            ),
        )

    def release_notification(self, token_id: int, interval: int, *, message_id: str, error: str) -> bool:
        now = self.clock.now()
        actor = Actor.system("expiry-notifier")
        return self._system_token_command(
            token_id,
            lambda token: token.release_notification(
                interval, message_id=message_id, error=error, actor=actor, now=now
            ),
        )

    def claim_notification(self, token_id: int, interval: int, *, message_id: str, lease: timedelta) -> bool:
        """Only one sender wins an interval's lease; losers of the race see the winner's claim and back off."""
        now = self.clock.now()
        actor = Actor.system("expiry-notifier")
        try:
            return self._system_token_command(
                token_id,
                lambda token: token.claim_notification(
                    interval, message_id=message_id, lease_until=now + lease, actor=actor, now=now
                ),
            )
        except Conflict:
            return False

    def ci_variables(self, project_id: int) -> tuple[str, str] | None:
        """R9: the project's own ``gitlab-deploy-token``, else its direct parent group's; only while active."""
        project = self._project(project_id)
        now = self.clock.now()
        candidates = [("project", project_id)]
        if project.group_id is not None:
            candidates.append(("group", project.group_id))
        for holder_kind, holder_id in candidates:
            page = self.read.tokens(
                holder_kind=holder_kind, holder_id=holder_id, active_only=True, now=now, per_page=1000
            )
            for record in reversed(page.items):
                if record.name == CI_TOKEN_NAME and record.is_active(now):
                    value = self.vault.get(record.token_id)
                    if value is not None:
                        return record.username, value
        return None

    def history(self, token_id: int) -> list[dict[str, Any]]:
        """Every event of one token, in order, with version, time, actor, address and what changed."""
        stream = deploy_token_uuid(token_id)
        entries = []
        for event in self.store.events.get(stream):
            state = {
                key: value
                for key, value in event.__dict__.items()
                if key
                not in ("originator_id", "originator_version", "timestamp", "originator_topic", "actor")
            }
            state.pop("digest", None)  # a keyed digest is not secret, but it is no auditor's business either
            actor = getattr(event, "actor", None) or {"kind": "system", "username": "system"}
            entries.append(
                {
                    "version": event.originator_version,
                    "event": type(event).__name__,
                    "timestamp": getattr(event, "timestamp", None),
                    "actor": actor,
                    "changes": state,
                }
            )
        if not entries:
            raise NotFound("404 Token")
        return entries

    # Directory ---------------------------------------------------------------------------------------

    def register_user(
        self,
        actor: Actor,
        *,
        username: str,
        email: str,
        name: str | None = None,
        is_admin: bool = False,
        idempotency: IdempotencySlot | None = None,
    ) -> UserRecord:
        self._require_admin(actor)
        return self._register_user(
            actor, username=username, email=email, name=name, is_admin=is_admin, idempotency=idempotency
        )

    def _register_user(
        self,
        actor: Actor,
        *,
        username: str,
        email: str,
        name: str | None,
        is_admin: bool,
        idempotency: IdempotencySlot | None = None,
    ) -> UserRecord:
        """A user and their personal namespace share one id: a user's id is their namespace's id."""
        now = self.clock.now()

        def build(number: int) -> list[Aggregate]:
            if idempotency is not None:
                idempotency.result = {"user_id": number}
            user = User.register(
                user_id=number,
                namespace_id=number,
                username=username,
                email=email,
                name=name,
                is_admin=is_admin,
                actor=actor,
                now=now,
            )
            namespace = UserNamespace.open(namespace_id=number, user_id=number, path=username, now=now)
            return [namespace, user, PathClaim.claim(username, "user", number, now)]

        with saving_with(idempotency):
            user_id, recordings = self._save_claiming_path(self._namespace_ids, build, "username")
        self._saved(recordings)
        user = self.read.user(user_id)
        assert user is not None
        return user

    def _save_claiming_path(
        self, allocator: IdAllocator, build: Callable[[int], list[Aggregate]], field: str
    ) -> tuple[int, list[Recording[Any]]]:
        try:
            return allocator.save_new(build)
        except IntegrityError:
            # Not the id (the allocator retries those): the path is claimed already.
            raise ValidationError.single(field, "has already been taken") from None

    def bootstrap_admin(self, *, username: str, email: str) -> tuple[UserRecord, IssuedPersonalAccessToken]:
        """The first admin and its personal access token; refused once any admin exists."""
        if self.read.any_admin():
            raise Conflict("an administrator already exists")
        system = Actor.system("bootstrap")
        user = self._register_user(system, username=username, email=email, name=None, is_admin=True)
        issued = self._issue_personal_access_token(
            system,
            user.user_id,
            name="bootstrap",
            scopes=["api", "read_api", "sudo", "admin_mode"],
            expires_at=None,
        )
        return user, issued

    def create_personal_access_token(
        self,
        actor: Actor,
        user_id: int,
        *,
        name: str,
        scopes: Iterable[str],
        expires_at: date | datetime | None = None,
        idempotency: IdempotencySlot | None = None,
    ) -> IssuedPersonalAccessToken:
        """GitLab's admin-only ``POST /users/:user_id/personal_access_tokens``."""
        self._require_admin(actor)
        if self.read.user(user_id) is None:
            raise NotFound("404 User")
        return self._issue_personal_access_token(
            actor, user_id, name=name, scopes=scopes, expires_at=expires_at, idempotency=idempotency
        )

    def _issue_personal_access_token(
        self,
        actor: Actor,
        user_id: int,
        *,
        name: str,
        scopes: Iterable[str],
        expires_at: date | datetime | None,
        idempotency: IdempotencySlot | None = None,
    ) -> IssuedPersonalAccessToken:
        value = generate_token(PERSONAL_ACCESS_TOKEN_PREFIX)
        digest = self.keys.digest(value)
        scope_list = list(scopes)
        now = self.clock.now()

        def build(pat_id: int) -> list[Aggregate]:
            if idempotency is not None:
                idempotency.result = {"pat_id": pat_id, "token": value}
            return [
                PersonalAccessToken.issue(
                    pat_id=pat_id,
                    user_id=user_id,
                    name=name,
                    scopes=scope_list,
                    expires_at=expires_at,
                    digest=digest,
                    actor=actor,
                    now=now,
                )
            ]

        with saving_with(idempotency):
            pat_id, recordings = self._pat_ids.save_new(build)
        self._saved(recordings)
        found = self.read.personal_access_token(digest)
        assert found is not None and found[0].pat_id == pat_id
        return IssuedPersonalAccessToken(found[0], value)

    def _user(self, user_id: int) -> User:
        return self._get(User, stream_id("user", user_id), "404 User")

    def set_user_blocked(self, actor: Actor, user_id: int, blocked: bool) -> UserRecord:
        self._require_admin(actor)
        if actor.user_id == user_id and blocked:
            raise PermissionDenied("403 Forbidden - an administrator cannot block themselves")
        now = self.clock.now()

        def attempt() -> list[Aggregate]:
            user = self._user(user_id)
            if blocked:
                user.block(actor=actor, now=now)
            else:
                user.unblock(actor=actor, now=now)
            return [user]

        self._retry(attempt)
        record = self.read.user(user_id)
        assert record is not None
        return record

    def create_group(
        self,
        actor: Actor,
        *,
        name: str,
        path: str,
        parent_id: int | None = None,
        idempotency: IdempotencySlot | None = None,
    ) -> int:
        """Top-level groups may be created by any user; subgroups need Owner on the parent. Creator: Owner."""
        if actor.kind != "system" and actor.user_id is None:
            raise Unauthenticated("401 Unauthorized")
        parent = self._visible_group(actor, parent_id, AccessLevel.OWNER) if parent_id is not None else None
        now = self.clock.now()

        def build(group_id: int) -> list[Aggregate]:
            if idempotency is not None:
                idempotency.result = {"group_id": group_id}
            group = Group.found(group_id=group_id, name=name, path=path, parent=parent, actor=actor, now=now)
            if actor.user_id is not None:
                group.set_member(actor.user_id, AccessLevel.OWNER, actor=actor, now=now)
            return [group, PathClaim.claim(group.full_path, "group", group_id, now)]

        with saving_with(idempotency):
            group_id, recordings = self._save_claiming_path(self._namespace_ids, build, "path")
        self._saved(recordings)
        return group_id

    def create_project(
        self,
        actor: Actor,
        *,
        name: str,
        path: str | None = None,
        namespace_id: int | None = None,
        repository_enabled: bool = True,
        container_registry_enabled: bool = True,
        idempotency: IdempotencySlot | None = None,
    ) -> int:
        """In a group: Maintainer+ there (the creator becomes Maintainer). Else: the actor's own namespace."""
        if actor.user_id is None and namespace_id is None:
            raise ValidationError.single("namespace_id", "is missing")
        target = namespace_id if namespace_id is not None else actor.user_id
        assert target is not None
        namespace: Group | UserNamespace
        try:
            namespace = self._visible_group(actor, target, AccessLevel.MAINTAINER)
        except NotFound:
            namespace = self._get(UserNamespace, stream_id("namespace", target), "404 Namespace")
            if namespace.user_id != actor.user_id and not actor.is_admin:
                raise NotFound("404 Namespace") from None
        now = self.clock.now()

        def build(project_id: int) -> list[Aggregate]:
            if idempotency is not None:
                idempotency.result = {"project_id": project_id}
            project = Project.found(
                project_id=project_id,
                name=name,
                path=path,
                namespace=namespace,
                repository_enabled=repository_enabled,
                container_registry_enabled=container_registry_enabled,
                actor=actor,
                now=now,
            )
            if isinstance(namespace, Group) and actor.user_id is not None:
                project.set_member(actor.user_id, AccessLevel.MAINTAINER, actor=actor, now=now)
            return [project, PathClaim.claim(project.full_path, "project", project_id, now)]

        with saving_with(idempotency):
            project_id, recordings = self._save_claiming_path(self._project_ids, build, "path")
        self._saved(recordings)
        return project_id

    def change_project_features(
        self,
        actor: Actor,
        project_id: int,
        *,
        repository_enabled: bool | None = None,
        container_registry_enabled: bool | None = None,
    ) -> None:
        now = self.clock.now()

        def attempt() -> list[Aggregate]:
            project = self._visible_project(actor, project_id, AccessLevel.MAINTAINER)
            project.change_features(
                repository_enabled=repository_enabled,
                container_registry_enabled=container_registry_enabled,
                actor=actor,
                now=now,
            )
            return [project]

        self._retry(attempt)

    def set_dependency_proxy(self, actor: Actor, group_id: int, enabled: bool) -> None:
        now = self.clock.now()

        def attempt() -> list[Aggregate]:
            group = self._visible_group(actor, group_id, AccessLevel.OWNER)
            group.set_dependency_proxy(enabled, actor=actor, now=now)
            return [group]

        self._retry(attempt)

    def set_member(
        self,
        actor: Actor,
        source_kind: HolderKind,
        source_id: int,
        user_id: int,
        access_level: int,
        *,
        idempotency: IdempotencySlot | None = None,
    ) -> None:
        """Group members are managed by Owners, project members by Maintainers, and nobody acts above their own
        role: no level above the actor's, no change to a member above the actor. A group keeps an Owner."""
        now = self.clock.now()
        level = validate_access_level(access_level)
        if self.read.user(user_id) is None:
            raise NotFound("404 User")
        if idempotency is not None:
            idempotency.result = {"user_id": user_id}

        def attempt() -> list[Aggregate]:
            source, actor_level = self._managed_source(actor, source_kind, source_id)
            if level > actor_level:
                raise PermissionDenied("403 Forbidden - you cannot give a role above your own")
            if user_id in source.members:
                self._check_member_within_reach(source, user_id, actor_level)
                if level < AccessLevel.OWNER:
                    self._check_group_keeps_an_owner(source, user_id)
            source.set_member(user_id, level, actor=actor, now=now)
            return [source]

        with saving_with(idempotency):
            self._retry(attempt)

    def remove_member(self, actor: Actor, source_kind: HolderKind, source_id: int, user_id: int) -> None:
        now = self.clock.now()

        def attempt() -> list[Aggregate]:
            source, actor_level = self._managed_source(actor, source_kind, source_id)
            if user_id not in source.members:
                raise NotFound("404 Member")
            self._check_member_within_reach(source, user_id, actor_level)
            self._check_group_keeps_an_owner(source, user_id)
            source.remove_member(user_id, actor=actor, now=now)
            return [source]

        self._retry(attempt)

    def _managed_source(
        self, actor: Actor, source_kind: HolderKind, source_id: int
    ) -> tuple[Group | Project, int]:
        """The group or project whose members the actor manages, loaded fresh, and the actor's level there.

        Called inside each retried attempt: every rule below decides on the state the save is checked against.
        """
        if source_kind == "group":
            group = self._visible_group(actor, source_id, AccessLevel.OWNER)
            return group, self.group_access(actor, group)
        project = self._visible_project(actor, source_id, AccessLevel.MAINTAINER)
        return project, self.project_access(actor, project)

    def _member_level(self, source: Group | Project, user_id: int) -> int:
        """A member's effective level on the source: direct, or inherited from a group above it, as the actor's is
        counted. An administrator flag does not count: it is no membership, and no member change takes it away."""
        if isinstance(source, Group):
            groups = [source, *(self._group(ancestor) for ancestor in source.ancestor_ids)]
            return max(group.members.get(user_id, 0) for group in groups)
        if source.namespace_kind == "user":
            namespace = self._get(UserNamespace, stream_id("namespace", source.namespace_id), "404 Namespace")
            if namespace.user_id == user_id:
                return AccessLevel.OWNER
        levels = [source.members.get(user_id, 0)]
        levels += [self._group(group_id).members.get(user_id, 0) for group_id in source.group_ids]
        return max(levels)

    def _check_member_within_reach(self, source: Group | Project, user_id: int, actor_level: int) -> None:
        """A Maintainer may not demote or remove an Owner (administrators and the system hold Owner here)."""
        if self._member_level(source, user_id) > actor_level:
            raise PermissionDenied("403 Forbidden - you cannot change a member whose role is above your own")

    def _check_group_keeps_an_owner(self, source: Group | Project, user_id: int) -> None:
        """A group must keep an Owner: removing or demoting ``user_id``'s direct Owner membership is refused
        when no other Owner remains, counting Owners of the groups above it (they own it too). Administrators
        included: nobody could manage the group's members and tokens without an administrator any more.

        Deciding on this group's own state is enough under concurrency: two commands on its members both
        save this aggregate, so the later one retries on the earlier one's result. Owners inherited from above
        stay safe too: each of those groups keeps an Owner by the same rule, who owns this group as well."""
        if not isinstance(source, Group) or source.members.get(user_id, 0) < AccessLevel.OWNER:
            return
        if any(other != user_id for other in source.owner_ids()):
            return
        if any(self._group(ancestor).owner_ids() for ancestor in source.ancestor_ids):
            return
        raise PermissionDenied("403 Forbidden - the last Owner of a group cannot be removed or demoted")

    def set_external_authorization(self, actor: Actor, enabled: bool) -> None:
        self._require_admin(actor)
        now = self.clock.now()

        def attempt() -> list[Aggregate]:
            settings = self.settings()
            settings.set_external_authorization(enabled, actor=actor, now=now)
            return [settings]

        self._retry(attempt)

    def set_feature(self, actor: Actor, name: str, enabled: bool) -> None:
        self._require_admin(actor)
        now = self.clock.now()

        def attempt() -> list[Aggregate]:
            settings = self.settings()
            settings.set_feature(name, enabled, actor=actor, now=now)
            return [settings]

        self._retry(attempt)
