"""The directory: users and their personal access tokens, groups, projects, instance settings and features.

Commands check the actor's role on fresh aggregates (``AccessService``); queries return the read models'
records, hiding what the caller may not see. Everything is private, as on an instance whose public
visibility level is restricted: anonymous callers see no groups, projects or users.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import TypeVar

from eventsourcing.domain import Aggregate

from deploy_tokens.access import AccessService
from deploy_tokens.claims import TAKEN, Claims
from deploy_tokens.issuing import CredentialIssuer
from deploy_tokens.unit_of_work import UnitOfWork
from domain.actors import Actor
from domain.clock import Clock
from domain.errors import Conflict, NotFound, PermissionDenied, Unauthenticated, ValidationError
from domain.groups import Group
from domain.membership import AccessLevel
from domain.personal_access_tokens import PersonalAccessToken
from domain.projects import Project
from domain.streams import stream_id
from domain.token_values import PERSONAL_ACCESS_TOKEN_PREFIX
from domain.users import User, UserNamespace
from infrastructure.idempotency import IdempotencySlot
from infrastructure.stream_batches import load_aggregates
from projections.credentials import NamespaceRecord, ProjectRecord
from projections.directory import PersonalAccessTokenRecord, UserRecord
from projections.views import ReadModel


@dataclass(frozen=True)
class IssuedPersonalAccessToken:
    token: PersonalAccessTokenRecord
    value: str

    def __repr__(self) -> str:
        return f"IssuedPersonalAccessToken(pat_id={self.token.pat_id}, value=<hidden>)"


R = TypeVar("R")


def _matches(search: str | None, *values: str) -> bool:
    return search is None or any(search.lower() in value.lower() for value in values)


class DirectoryService:
    def __init__(
        self, uow: UnitOfWork, access: AccessService, issuer: CredentialIssuer, read: ReadModel, clock: Clock
    ) -> None:
        self.uow = uow
        self.access = access
        self.issuer = issuer
        self.read = read
        self.clock = clock

    # Users -------------------------------------------------------------------------------------------

    def register_user(
        self,
        actor: Actor,
        *,
        username: str,
        email: str,
        name: str | None = None,
        is_admin: bool = False,
        is_auditor: bool = False,
        idempotency: IdempotencySlot | None = None,
    ) -> UserRecord:
        self.access.require_admin(actor)
        return self._register_user(
            actor,
            username=username,
            email=email,
            name=name,
            is_admin=is_admin,
            is_auditor=is_auditor,
            idempotency=idempotency,
        )

    def _register_user(
        self,
        actor: Actor,
        *,
        username: str,
        email: str,
        name: str | None,
        is_admin: bool,
        is_auditor: bool = False,
        idempotency: IdempotencySlot | None = None,
    ) -> UserRecord:
        """A user and their personal namespace share one id: a user's id is their namespace's id. An auditor
        is registered, then flagged, in the same commit (behaviour [auditors])."""
        now = self.clock.now()

        self._require_email_free(email, None)

        def build(number: int) -> list[Aggregate]:
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
            user.set_auditor(is_auditor, actor=actor, now=now)
            namespace = UserNamespace.open(namespace_id=number, user_id=number, path=username, now=now)
            claims = Claims(self.uow, now)
            claims.take_path(username, "user", number, field="username")
            claims.take_email(user.email, number)
            return [namespace, user, *claims.pending()]

        user_id, recordings = self.uow.save_new(
            self.uow.namespace_ids,
            build,
            idempotency=idempotency,
            result=lambda number: {"user_id": number},
            claims_path_of="username",
        )
        self.uow.caught_up(recordings)
        user = self.read.user(user_id)
        assert user is not None
        return user

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
        self.access.require_admin(actor)
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
        scope_list = list(scopes)
        now = self.clock.now()

        def build(pat_id: int, digest: str) -> Aggregate:
            return PersonalAccessToken.issue(
                pat_id=pat_id,
                user_id=user_id,
                name=name,
                scopes=scope_list,
                expires_at=expires_at,
                digest=digest,
                actor=actor,
                now=now,
            )

        pat_id, secret = self.issuer.issue(
            PERSONAL_ACCESS_TOKEN_PREFIX, self.uow.pat_ids, build, id_field="pat_id", idempotency=idempotency
        )
        found = self.read.personal_access_token(secret.digest)
        assert found is not None and found[0].pat_id == pat_id
        return IssuedPersonalAccessToken(found[0], secret.value)

    def _require_email_free(self, email: str, user_id: int | None) -> None:
        """Users recorded before emails were claimed hold no claim: the read model knows their addresses."""
        for user in self.read.users_by_email(email):
            if user.user_id != user_id:
                raise ValidationError.single("email", TAKEN)

    def update_user(
        self,
        actor: Actor,
        user_id: int,
        *,
        email: str | None = None,
        name: str | None = None,
        is_auditor: bool | None = None,
    ) -> UserRecord:
        """GitLab's ``PUT /users/:id`` (administrators): a new email (unique, any case), display name or
        auditor flag (behaviour [auditors])."""
        self.access.require_admin(actor)
        if email is not None:
            self._require_email_free(email, user_id)
        now = self.clock.now()

        def attempt() -> list[Aggregate]:
            user = self.uow.get(User, stream_id("user", user_id), "404 User")
            previous = user.email
            user.change_profile(email=email, name=name, actor=actor, now=now)
            if is_auditor is not None:
                user.set_auditor(is_auditor, actor=actor, now=now)
            claims = Claims(self.uow, now)
            if user.email.lower() != previous.lower():
                claims.free_email(previous, user_id)
                claims.take_email(user.email, user_id)
            return [user, *claims.pending()]

        self.uow.retry(attempt)
        record = self.read.user(user_id)
        assert record is not None
        return record

    def set_user_blocked(self, actor: Actor, user_id: int, blocked: bool) -> UserRecord:
        self.access.require_admin(actor)
        if actor.user_id == user_id and blocked:
            raise PermissionDenied("403 Forbidden - an administrator cannot block themselves")
        now = self.clock.now()

        def attempt() -> list[Aggregate]:
            user = self.uow.get(User, stream_id("user", user_id), "404 User")
            if blocked:
                user.block(actor=actor, now=now)
            else:
                user.unblock(actor=actor, now=now)
            return [user]

        self.uow.retry(attempt)
        record = self.read.user(user_id)
        assert record is not None
        return record

    def user(self, viewer: Actor | None, user_id: int) -> UserRecord:
        """Users exist for signed-in callers only."""
        user = None if viewer is None else self.read.user(user_id)
        if user is None:
            raise NotFound("404 User")
        return user

    def auditor_ids(self, user_ids: Iterable[int]) -> set[int]:
        """Which of these users are auditors now, read from their aggregates in one go (the read model does
        not keep the flag)."""
        streams = {stream_id("user", user_id): user_id for user_id in user_ids}
        found = load_aggregates(self.uow.store, streams)
        return {
            streams[stream] for stream, user in found.items() if isinstance(user, User) and user.is_auditor
        }

    def users(self, *, username: str | None, search: str | None) -> list[UserRecord]:
        """Users by exact username (any case) or by a search in username, name and email."""
        return [
            user
            for user in self.read.users()
            if (username is None or user.username.lower() == username.lower())
            and _matches(search, user.username, user.name, user.email)
        ]

    # Groups ------------------------------------------------------------------------------------------

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
        parent = (
            self.access.visible_group(actor, parent_id, AccessLevel.OWNER) if parent_id is not None else None
        )
        now = self.clock.now()

        def build(group_id: int) -> list[Aggregate]:
            # The parent as it is now: it may have moved since it was checked (see domain.groups).
            fresh = self.access.group(parent.group_id) if parent is not None else None
            group = Group.found(group_id=group_id, name=name, path=path, parent=fresh, actor=actor, now=now)
            if actor.user_id is not None:
                group.set_member(actor.user_id, AccessLevel.OWNER, actor=actor, now=now)
            claims = Claims(self.uow, now)
            claims.take_path(group.full_path, "group", group_id)
            if fresh is not None:
                fresh.add_child("group", group_id, actor=actor, now=now)
            return [group, *claims.pending(), *([fresh] if fresh is not None else [])]

        group_id, recordings = self.uow.save_new(
            self.uow.namespace_ids,
            build,
            idempotency=idempotency,
            result=lambda number: {"group_id": number},
            claims_path_of="path",
        )
        self.uow.caught_up(recordings)
        return group_id

    def set_dependency_proxy(self, actor: Actor, group_id: int, enabled: bool) -> None:
        now = self.clock.now()

        def attempt() -> list[Aggregate]:
            group = self.access.visible_group(actor, group_id, AccessLevel.OWNER)
            group.set_dependency_proxy(enabled, actor=actor, now=now)
            return [group]

        self.uow.retry(attempt)

    def group(self, viewer: Actor | None, group_id: int) -> NamespaceRecord:
        """Groups are private: without a role there (or above it) a group does not exist (404)."""
        self.access.readable_group(viewer, group_id)
        group = self.read.namespace(group_id)
        if group is None or group.kind != "group":
            raise NotFound("404 Group")
        return group

    def groups(
        self, viewer: Actor | None, *, search: str | None, top_level_only: bool = False
    ) -> list[NamespaceRecord]:
        """The groups the viewer can see, by a search in their name and path."""
        found = [
            group
            for group in self.read.groups()
            if (group.parent_id is None or not top_level_only) and _matches(search, group.name, group.path)
        ]
        return self._visible(viewer, found, lambda group: self.access.sees_group(viewer, group.namespace_id))

    def subgroups(self, viewer: Actor | None, parent_id: int, *, search: str | None) -> list[NamespaceRecord]:
        """A visible group's direct subgroups that the viewer can see."""
        self.group(viewer, parent_id)
        children = [
            group
            for group in self.read.groups(parent_id=parent_id, only_children=True)
            if _matches(search, group.name, group.path)
        ]
        return self._visible(
            viewer, children, lambda group: self.access.sees_group(viewer, group.namespace_id)
        )

    def _visible(self, viewer: Actor | None, records: list[R], sees: Callable[[R], bool]) -> list[R]:
        if viewer is None:
            return []
        if self.access.reads_everything(viewer):  # administrators, and auditors (behaviour [auditors])
            return records
        return [record for record in records if sees(record)]

    # Projects ----------------------------------------------------------------------------------------

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
            namespace = self.access.visible_group(actor, target, AccessLevel.MAINTAINER)
        except NotFound:
            namespace = self.uow.get(UserNamespace, stream_id("namespace", target), "404 Namespace")
            if namespace.user_id != actor.user_id and not actor.is_admin:
                raise NotFound("404 Namespace") from None
        now = self.clock.now()

        def build(project_id: int) -> list[Aggregate]:
            # The group as it is now: it may have moved since it was checked (see domain.groups).
            fresh = self.access.group(namespace.group_id) if isinstance(namespace, Group) else namespace
            project = Project.found(
                project_id=project_id,
                name=name,
                path=path,
                namespace=fresh,
                repository_enabled=repository_enabled,
                container_registry_enabled=container_registry_enabled,
                actor=actor,
                now=now,
            )
            if isinstance(fresh, Group) and actor.user_id is not None:
                project.set_member(actor.user_id, AccessLevel.MAINTAINER, actor=actor, now=now)
            claims = Claims(self.uow, now)
            claims.take_path(project.full_path, "project", project_id)
            if isinstance(fresh, Group):
                fresh.add_child("project", project_id, actor=actor, now=now)
            return [project, *claims.pending(), *([fresh] if isinstance(fresh, Group) else [])]

        project_id, recordings = self.uow.save_new(
            self.uow.project_ids,
            build,
            idempotency=idempotency,
            result=lambda number: {"project_id": number},
            claims_path_of="path",
        )
        self.uow.caught_up(recordings)
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
            project = self.access.visible_project(actor, project_id, AccessLevel.MAINTAINER)
            project.change_features(
                repository_enabled=repository_enabled,
                container_registry_enabled=container_registry_enabled,
                actor=actor,
                now=now,
            )
            return [project]

        self.uow.retry(attempt)

    def project(self, viewer: Actor | None, project_id: int) -> ProjectRecord:
        """Projects are private: without a role there (or above it) a project does not exist (404)."""
        self.access.readable_project(viewer, project_id)
        project = self.read.project(project_id)
        if project is None:
            raise NotFound("404 Project")
        return project

    def projects(self, viewer: Actor | None, *, search: str | None) -> list[ProjectRecord]:
        """The projects the viewer can see, by a search in their name, path and full path."""
        found = [
            project
            for project in self.read.projects()
            if _matches(search, project.name, project.path, project.full_path)
        ]
        return self._visible(
            viewer, found, lambda project: self.access.sees_project(viewer, project.project_id)
        )

    # Instance settings and features ------------------------------------------------------------------

    def set_external_authorization(self, actor: Actor, enabled: bool) -> None:
        self.access.require_admin(actor)
        now = self.clock.now()

        def attempt() -> list[Aggregate]:
            settings = self.uow.settings()
            settings.set_external_authorization(enabled, actor=actor, now=now)
            return [settings]

        self.uow.retry(attempt)

    def set_feature(self, actor: Actor, name: str, enabled: bool) -> None:
        self.access.require_admin(actor)
        now = self.clock.now()

        def attempt() -> list[Aggregate]:
            settings = self.uow.settings()
            settings.set_feature(name, enabled, actor=actor, now=now)
            return [settings]

        self.uow.retry(attempt)
