"""The directory's lifecycle: renaming, transferring and deleting projects and groups.

Every holder keeps its id for life, and deploy tokens belong to that id (behaviour [holder-id]): a
project token follows its project wherever it moves, a group token reaches whatever is below its group now.
A move records ``Moved`` on the project or group and on everything below it, and moves their path claims,
in one transaction; a deletion ([holder-delete]) records ``Deleted`` on all of them, deletes their deploy
tokens (GitLab's ``..._destroyed`` audit rows), frees their paths and destroys the CI variables' values.
Who may do which is [holder-lifecycle-roles].

Consistency. What lies below a group is read from the read model, which may miss a subgroup or project
created a moment ago; so the command reads it, loads it, and reads it again until both readings agree. A
subgroup or project created or moved into a group records ``ChildAdded`` there, so one that commits after
the group was loaded makes this command's save fail, and the unit of work decides again on fresh state.

A token created on a holder while the holder is being deleted (token creation does not write to its holder)
is deleted right after, by the same command; until then it reaches nothing, since reach is by id and the
holder is gone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from eventsourcing.domain import Aggregate

from deploy_tokens.access import AccessService
from deploy_tokens.claims import Claims
from deploy_tokens.unit_of_work import UnitOfWork
from domain.actors import Actor
from domain.clock import Clock
from domain.deploy_token import DeployToken, deploy_token_uuid
from domain.errors import Conflict, NotFound, Refused, ValidationError
from domain.groups import Group, checked_group_path
from domain.membership import AccessLevel
from domain.projects import Project, checked_project_path
from domain.streams import stream_id
from domain.users import UserNamespace
from infrastructure.vault import CiTokenVault
from projections.views import ReadModel

_SUBTREE_READS = 20

HolderKind = Literal["project", "group"]


@dataclass
class _Subtree:
    """A group and everything below it, loaded fresh: groups parents first, then projects."""

    root: Group
    groups: list[Group]
    projects: list[Project]


class DirectoryLifecycle:
    def __init__(
        self, uow: UnitOfWork, access: AccessService, read: ReadModel, vault: CiTokenVault, clock: Clock
    ) -> None:
        self.uow = uow
        self.access = access
        self.read = read
        self.vault = vault
        self.clock = clock

    # Reading what lies below a group -----------------------------------------------------------------

    def _subtree(self, root: Group) -> _Subtree:
        for _ in range(_SUBTREE_READS):
            self.uow.projector.catch_up()
            group_ids, project_ids = self.read.subtree(root.group_id)
            groups = [self.uow.get(Group, stream_id("namespace", n), "404 Group") for n in group_ids]
            projects = [self.uow.get(Project, stream_id("project", n), "404 Project") for n in project_ids]
            self.uow.projector.catch_up()
            if self.read.subtree(root.group_id) == (group_ids, project_ids):
                return _Subtree(
                    root,
                    [group for group in groups if not group.deleted],
                    [project for project in projects if not project.deleted],
                )
        raise Conflict("the group kept changing; try again")

    def _live_tokens(self, holders: list[tuple[HolderKind, int]]) -> list[DeployToken]:
        tokens = []
        for kind, number in holders:
            for token_id in self.read.live_token_ids(kind, number):
                token = self.uow.get(DeployToken, deploy_token_uuid(token_id), "404 Token")
                if not token.deleted:
                    tokens.append(token)
        return tokens

    # Deleting --------------------------------------------------------------------------------------------

    def delete_project(self, actor: Actor, project_id: int) -> None:
        """GitLab's ``DELETE /projects/:id`` (Owner): the project, its deploy tokens and its path."""
        now = self.clock.now()
        self.access.visible_project(actor, project_id, AccessLevel.OWNER)

        def attempt() -> list[Aggregate]:
            project = self.access.visible_project(actor, project_id, AccessLevel.OWNER)
            self.uow.projector.catch_up()
            tokens = self._live_tokens([("project", project_id)])
            claims = Claims(self.uow, now)
            for token in tokens:
                token.delete(actor=actor, now=now)
            claims.free_path(project.full_path, "project", project_id)
            project.delete(deleted_with=0, actor=actor, now=now)
            return [*tokens, project, *claims.pending()]

        self.uow.retry(attempt)
        self._after_deletion(actor, [("project", project_id)])

    def delete_group(self, actor: Actor, group_id: int) -> None:
        """GitLab's ``DELETE /groups/:id`` (Owner): the group, its subgroups and projects, their tokens, paths."""
        now = self.clock.now()
        self.access.visible_group(actor, group_id, AccessLevel.OWNER)
        holders: list[tuple[HolderKind, int]] = []

        def attempt() -> list[Aggregate]:
            root = self.access.visible_group(actor, group_id, AccessLevel.OWNER)
            tree = self._subtree(root)
            groups = [root, *tree.groups]
            holders[:] = [("group", group.group_id) for group in groups]
            holders.extend(("project", project.project_id) for project in tree.projects)
            tokens = self._live_tokens(holders)
            claims = Claims(self.uow, now)
            for token in tokens:
                token.delete(actor=actor, now=now)
            for project in tree.projects:
                claims.free_path(project.full_path, "project", project.project_id)
                project.delete(deleted_with=group_id, actor=actor, now=now)
            for group in reversed(groups):  # children before their parents
                claims.free_path(group.full_path, "group", group.group_id)
                group.delete(deleted_with=0 if group is root else group_id, actor=actor, now=now)
            return [*tokens, *tree.projects, *reversed(groups), *claims.pending()]

        self.uow.retry(attempt)
        self._after_deletion(actor, holders)

    def _after_deletion(self, actor: Actor, holders: list[tuple[HolderKind, int]]) -> None:
        """A token created on a holder while it was being deleted is deleted too; no deleted token keeps a
        recoverable CI value."""
        now = self.clock.now()
        self.uow.projector.catch_up()
        for kind, number in holders:
            for token_id in self.read.live_token_ids(kind, number):

                def attempt(token_id: int = token_id) -> list[Aggregate]:
                    token = self.uow.get(DeployToken, deploy_token_uuid(token_id), "404 Token")
                    if not token.deleted:
                        token.delete(actor=actor, now=now)
                    return [token]

                self.uow.retry(attempt)
        for kind, number in holders:
            for token_id in self.read.token_ids_of(kind, number):
                self.vault.destroy(token_id)

    # Renaming ----------------------------------------------------------------------------------------------

    def update_project(
        self,
        actor: Actor,
        project_id: int,
        *,
        name: str | None = None,
        path: str | None = None,
        repository_enabled: bool | None = None,
        container_registry_enabled: bool | None = None,
    ) -> None:
        """GitLab's ``PUT /projects/:id``, all or nothing: a new name or features need Maintainer, a new path
        Owner (GitLab's ``change_path``)."""
        now = self.clock.now()

        def attempt() -> list[Aggregate]:
            project = self.access.visible_project(actor, project_id, AccessLevel.MAINTAINER)
            claims = Claims(self.uow, now)
            if path is not None and path != project.path:
                self.access.visible_project(actor, project_id, AccessLevel.OWNER)
                checked = checked_project_path(path)
                self._move_project(
                    project, checked, self._namespace_of(project), claims, "path_changed", actor
                )
            if name is not None:
                project.change_name(name, actor=actor, now=now)
            project.change_features(
                repository_enabled=repository_enabled,
                container_registry_enabled=container_registry_enabled,
                actor=actor,
                now=now,
            )
            return [project, *claims.pending()]

        self.uow.retry(attempt)

    def update_group(
        self,
        actor: Actor,
        group_id: int,
        *,
        name: str | None = None,
        path: str | None = None,
        dependency_proxy_enabled: bool | None = None,
    ) -> None:
        """GitLab's ``PUT /groups/:id`` (Owner), all or nothing; a new path moves everything below it."""
        now = self.clock.now()

        def attempt() -> list[Aggregate]:
            group = self.access.visible_group(actor, group_id, AccessLevel.OWNER)
            changed: list[Aggregate] = [group]
            claims = Claims(self.uow, now)
            if path is not None and path != group.path:
                checked = checked_group_path(path, top_level=group.parent_id is None)
                parent = self.access.group(group.parent_id) if group.parent_id is not None else None
                changed += self._move_group(group, checked, parent, claims, "path_changed", actor)
            if name is not None:
                group.change_name(name, actor=actor, now=now)
            if dependency_proxy_enabled is not None:
                group.set_dependency_proxy(dependency_proxy_enabled, actor=actor, now=now)
            return [*changed, *claims.pending()]

        self.uow.retry(attempt)

    # Transferring ------------------------------------------------------------------------------------------

    def transfer_project(self, actor: Actor, project_id: int, namespace: int | str) -> None:
        """GitLab's ``PUT /projects/:id/transfer``: Owner of the project, and allowed to create projects in
        the target namespace (Maintainer of a group, or the actor's own namespace)."""
        now = self.clock.now()

        def attempt() -> list[Aggregate]:
            project = self.access.visible_project(actor, project_id, AccessLevel.OWNER)
            target = self._target_namespace(actor, namespace)
            target_id = target.group_id if isinstance(target, Group) else target.namespace_id
            if target_id == project.namespace_id:
                raise Refused("Failed to transfer project: Please select a new namespace for your project.")
            claims = Claims(self.uow, now)
            try:
                self._move_project(project, project.path, target, claims, "transferred", actor)
            except ValidationError:
                raise Refused(
                    "Failed to transfer project: Project with same name or path in target namespace "
                    "already exists"
                ) from None
            changed: list[Aggregate] = [project]
            if isinstance(target, Group):
                target.add_child("project", project_id, actor=actor, now=now)
                changed.append(target)
            return [*changed, *claims.pending()]

        self.uow.retry(attempt)

    def transfer_group(self, actor: Actor, group_id: int, parent_id: int | None) -> None:
        """GitLab's ``POST /groups/:id/transfer``: Owner of the group and of the new parent (a subgroup's
        creator needs Owner there too); no parent makes it a top-level group."""
        now = self.clock.now()

        def attempt() -> list[Aggregate]:
            group = self.access.visible_group(actor, group_id, AccessLevel.OWNER)
            parent = self.access.visible_group(actor, parent_id, AccessLevel.OWNER) if parent_id else None
            if parent is None and group.parent_id is None:
                raise Refused("Transfer failed: Group is already a root group.")
            if parent is not None and parent.group_id == group.parent_id:
                raise Refused("Transfer failed: Group is already associated to the parent group.")
            if parent is not None and (parent.group_id == group_id or group_id in parent.ancestor_ids):
                raise Refused("Transfer failed: Cannot transfer group to one of its subgroup.")
            try:
                checked_group_path(group.path, top_level=parent is None)
            except ValidationError:
                raise Refused(f"Transfer failed: {group.path} is a reserved name.") from None
            claims = Claims(self.uow, now)
            try:
                changed = self._move_group(group, group.path, parent, claims, "transferred", actor)
            except ValidationError:
                raise Refused(
                    "Transfer failed: The parent group already has a subgroup or a project with the same path."
                ) from None
            if parent is not None:
                parent.add_child("group", group_id, actor=actor, now=now)
                changed.append(parent)
            return [*changed, *claims.pending()]

        self.uow.retry(attempt)

    # Moving, shared --------------------------------------------------------------------------------------

    def _namespace_of(self, project: Project) -> Group | UserNamespace:
        if project.namespace_kind == "group":
            return self.access.group(project.namespace_id)
        return self.uow.get(UserNamespace, stream_id("namespace", project.namespace_id), "404 Namespace")

    def _target_namespace(self, actor: Actor, reference: int | str) -> Group | UserNamespace:
        """A namespace by id or full path: a group where the actor may create projects, or their own."""
        if isinstance(reference, str):
            found = self.read.namespace_by_path(reference)
            if found is None:
                raise NotFound("404 Namespace")
            reference = found.namespace_id
        try:
            return self.access.visible_group(actor, reference, AccessLevel.MAINTAINER)
        except NotFound:
            pass
        namespace = self.uow.get(UserNamespace, stream_id("namespace", reference), "404 Namespace")
        if namespace.user_id != actor.user_id and not actor.is_admin:
            raise NotFound("404 Namespace")
        return namespace

    def _move_project(
        self,
        project: Project,
        path: str,
        namespace: Group | UserNamespace,
        claims: Claims,
        cause: str,
        actor: Actor,
        moved_with: int = 0,
    ) -> None:
        previous = project.full_path
        if project.move(
            path=path, namespace=namespace, cause=cause, moved_with=moved_with, actor=actor, now=claims.now
        ):
            claims.move_path(previous, project.full_path, "project", project.project_id)

    def _move_group(
        self, group: Group, path: str, parent: Group | None, claims: Claims, cause: str, actor: Actor
    ) -> list[Aggregate]:
        """Move ``group`` and everything below it; returns every aggregate that changed."""
        tree = self._subtree(group)
        previous = group.full_path
        if not group.move(path=path, parent=parent, cause=cause, moved_with=0, actor=actor, now=claims.now):
            return [group]
        claims.move_path(previous, group.full_path, "group", group.group_id)
        moved = {group.group_id: group}
        for child in tree.groups:  # parents first: each child's parent has moved already
            assert child.parent_id is not None
            before = child.full_path
            child.move(
                path=child.path,
                parent=moved[child.parent_id],
                cause="group_moved",
                moved_with=group.group_id,
                actor=actor,
                now=claims.now,
            )
            claims.move_path(before, child.full_path, "group", child.group_id)
            moved[child.group_id] = child
        for project in tree.projects:
            self._move_project(
                project,
                project.path,
                moved[project.namespace_id],
                claims,
                "group_moved",
                actor,
                moved_with=group.group_id,
            )
        return [group, *tree.groups, *tree.projects]
