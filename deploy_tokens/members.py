"""Members of groups and projects: who may add, change and remove whom.

Group members are managed by Owners, project members by Maintainers, and nobody acts above their own role:
no level above the actor's, no change to a member above the actor. A group keeps an Owner.
"""

from __future__ import annotations

from deploy_tokens.access import AccessService
from deploy_tokens.directory import DirectoryService
from deploy_tokens.unit_of_work import UnitOfWork
from domain.actors import Actor
from domain.clock import Clock
from domain.deploy_token import HolderKind
from domain.errors import Conflict, NotFound, PermissionDenied
from domain.groups import Group
from domain.membership import AccessLevel, validate_access_level
from domain.projects import Project
from infrastructure.idempotency import IdempotencySlot
from projections.directory import MemberRecord, UserRecord
from projections.views import ReadModel

Member = tuple[MemberRecord, UserRecord]


class MembersService:
    def __init__(
        self,
        uow: UnitOfWork,
        access: AccessService,
        directory: DirectoryService,
        read: ReadModel,
        clock: Clock,
    ) -> None:
        self.uow = uow
        self.access = access
        self.directory = directory
        self.read = read
        self.clock = clock

    # Queries -----------------------------------------------------------------------------------------

    def visible_source(self, viewer: Actor | None, source_kind: HolderKind, source_id: int) -> None:
        """Members are seen by whoever sees their group or project (404 for anybody else)."""
        if source_kind == "project":
            self.directory.project(viewer, source_id)
        else:
            self.directory.group(viewer, source_id)

    def members(self, viewer: Actor | None, source_kind: HolderKind, source_id: int) -> list[Member]:
        """The direct members of a group or project, by user id."""
        self.visible_source(viewer, source_kind, source_id)
        return self.read.members(source_kind, source_id)

    def member(self, viewer: Actor | None, source_kind: HolderKind, source_id: int, user_id: int) -> Member:
        self.visible_source(viewer, source_kind, source_id)
        return self.recorded_member(source_kind, source_id, user_id)

    def recorded_member(self, source_kind: HolderKind, source_id: int, user_id: int) -> Member:
        """A direct member as the read model has it, with no rule applied: for answering an Idempotency-Key
        replay, which hands back what its caller was already given."""
        for member, user in self.read.members(source_kind, source_id):
            if user.user_id == user_id:
                return member, user
        raise NotFound("404 Member")

    # Commands ----------------------------------------------------------------------------------------

    def add_member(
        self,
        actor: Actor,
        source_kind: HolderKind,
        source_id: int,
        user_id: int,
        access_level: int,
        *,
        idempotency: IdempotencySlot | None = None,
    ) -> Member:
        """A new member; someone who is a member already is a conflict (whoever sees the source can list its
        members, so saying so reveals nothing)."""
        if any(user.user_id == user_id for _, user in self.read.members(source_kind, source_id)):
            raise Conflict("Member already exists")
        self.set_member(actor, source_kind, source_id, user_id, access_level, idempotency=idempotency)
        return self.recorded_member(source_kind, source_id, user_id)

    def change_member(
        self, actor: Actor, source_kind: HolderKind, source_id: int, user_id: int, access_level: int
    ) -> Member:
        """As GitLab: the member is looked up (404) before the caller's role is checked (403)."""
        self.recorded_member(source_kind, source_id, user_id)
        self.set_member(actor, source_kind, source_id, user_id, access_level)
        return self.recorded_member(source_kind, source_id, user_id)

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
        """Adds a member or changes a member's level, within the actor's reach."""
        now = self.clock.now()
        level = validate_access_level(access_level)
        if self.read.user(user_id) is None:
            raise NotFound("404 User")

        def attempt() -> list[Group | Project]:
            source, actor_level = self._managed_source(actor, source_kind, source_id)
            if level > actor_level:
                raise PermissionDenied("403 Forbidden - you cannot give a role above your own")
            if user_id in source.members:
                self._check_member_within_reach(source, user_id, actor_level)
                if level < AccessLevel.OWNER:
                    self._check_group_keeps_an_owner(source, user_id)
            source.set_member(user_id, level, actor=actor, now=now)
            return [source]

        self.uow.retry(attempt, idempotency=idempotency, result={"user_id": user_id})

    def remove_member(self, actor: Actor, source_kind: HolderKind, source_id: int, user_id: int) -> None:
        now = self.clock.now()

        def attempt() -> list[Group | Project]:
            source, actor_level = self._managed_source(actor, source_kind, source_id)
            if user_id not in source.members:
                raise NotFound("404 Member")
            self._check_member_within_reach(source, user_id, actor_level)
            self._check_group_keeps_an_owner(source, user_id)
            source.remove_member(user_id, actor=actor, now=now)
            return [source]

        self.uow.retry(attempt)

    # Rules -------------------------------------------------------------------------------------------

    def _managed_source(
        self, actor: Actor, source_kind: HolderKind, source_id: int
    ) -> tuple[Group | Project, int]:
        """The group or project whose members the actor manages, loaded fresh, and the actor's level there.

        Called inside each retried attempt: every rule below decides on the state the save is checked against.
        """
        source: Group | Project
        if source_kind == "group":
            source = self.access.visible_group(actor, source_id, AccessLevel.OWNER)
        else:
            source = self.access.visible_project(actor, source_id, AccessLevel.MAINTAINER)
        return source, self.access.access_level(actor, source)

    def _check_member_within_reach(self, source: Group | Project, user_id: int, actor_level: int) -> None:
        """A Maintainer may not demote or remove an Owner (administrators and the system hold Owner here).
        The member's level counts as the actor's does: direct or inherited from a group above."""
        if self.access.user_level(source, user_id) > actor_level:
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
        if any(self.access.group(ancestor).owner_ids() for ancestor in source.ancestor_ids):
            return
        raise PermissionDenied("403 Forbidden - the last Owner of a group cannot be removed or demoted")
