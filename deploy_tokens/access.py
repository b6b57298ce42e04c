"""Who is calling, and what they may see: authentication, access levels and the visibility rules.

Levels are decided on the aggregates (strongly consistent: a just-removed Owner has no level left). A
member's level on a group applies to everything below it; a user owns the projects of their personal
namespace; administrators and automatic processes hold Owner everywhere. Everything is private: without a
role on a group or project (or above it), it does not exist for the caller (404); with too low a role, the
action is forbidden (403). Auditors read everything and change nothing (behaviour [auditors]): they pass
every visibility check, and ``Principal.can_write`` refuses their writes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

from deploy_tokens.unit_of_work import UnitOfWork
from domain import auditors
from domain.actors import Actor
from domain.clock import Clock
from domain.deploy_token import HolderKind
from domain.errors import NotFound, PermissionDenied, Unauthenticated
from domain.groups import Group
from domain.membership import AccessLevel
from domain.projects import Project
from domain.streams import stream_id
from domain.token_values import PERSONAL_ACCESS_TOKEN_PREFIX, is_well_formed
from domain.users import User, UserNamespace
from infrastructure.keys import Keyring
from projections.directory import UserRecord
from projections.views import ReadModel


def _nobody_is_an_auditor(_user_id: int) -> bool:
    return False


@dataclass(frozen=True)
class Principal:
    """An authenticated API caller: a user, with the scopes of the personal access token used.

    ``auditor_flag`` reads whether a user is an auditor from their aggregate; it is asked at most once per
    principal (one request), and only when a decision needs it: a write, not every read.
    """

    user: UserRecord
    scopes: tuple[str, ...]
    address: str | None = None
    auditor_flag: Callable[[int], bool] = field(default=_nobody_is_an_auditor, repr=False, compare=False)

    @cached_property
    def is_auditor(self) -> bool:
        """An administrator's auditor flag changes nothing they may do: it is not read for them."""
        return not self.user.is_admin and self.auditor_flag(self.user.user_id)

    @property
    def actor(self) -> Actor:
        return Actor.user(
            self.user.user_id, self.user.username, is_admin=self.user.is_admin, address=self.address
        )

    @property
    def can_write(self) -> bool:
        """The one place a caller's right to change anything is decided (API, UI forms, idempotent replays):
        a token with the ``api`` scope, held by anybody but an auditor (behaviour [auditors])."""
        if "api" not in self.scopes:
            return False  # refused whoever holds it: no need to read the flag
        return auditors.may_write(scopes=self.scopes, is_admin=self.user.is_admin, is_auditor=self.is_auditor)

    def require_write(self) -> None:
        """403 unless the caller may write, saying why: an auditor's account, or the token's scopes."""
        if self.can_write:
            return
        if self.is_auditor:
            raise PermissionDenied("403 Forbidden - auditors have read-only access")
        raise PermissionDenied("403 Forbidden - insufficient_scope: the token needs the api scope")


class AccessService:
    def __init__(self, uow: UnitOfWork, read: ReadModel, keys: Keyring, clock: Clock) -> None:
        self.uow = uow
        self.read = read
        self.keys = keys
        self.clock = clock

    # Authentication ----------------------------------------------------------------------------------

    def authenticate(self, value: str | None, *, address: str | None = None) -> Principal:
        """A personal access token for the management API. Deploy tokens are never accepted here (behaviour
        [api-routes])."""
        if not value or not is_well_formed(value, PERSONAL_ACCESS_TOKEN_PREFIX):
            raise Unauthenticated("401 Unauthorized")
        found = self.read.personal_access_token(self.keys.digest(value))
        if found is None:
            raise Unauthenticated("401 Unauthorized")
        pat, user = found
        if not pat.is_active(self.clock.now()) or user.blocked:
            raise Unauthenticated("401 Unauthorized")
        return Principal(user, pat.scopes, address, self._auditor_flag)

    def require_admin(self, actor: Actor) -> None:
        if not actor.is_admin:
            raise PermissionDenied("403 Forbidden")

    def require_audit_reader(self, actor: Actor | None) -> None:
        """Audit events, activity, point-in-time answers, exports and the auditor pages: administrators and
        auditors (behaviour [auditors]); anybody else 403, nobody at all 401."""
        if actor is None:
            raise Unauthenticated("401 Unauthorized")
        if actor.is_admin:
            return  # no need to read an administrator's flag
        if not auditors.reads_everything(is_admin=False, is_auditor=self.is_auditor(actor)):
            raise PermissionDenied("403 Forbidden")

    def is_auditor(self, actor: Actor | None) -> bool:
        """Whether the actor is a user holding the auditor flag now (read from the aggregate, like levels: a
        cleared flag counts at once)."""
        if actor is None or actor.kind != "user" or actor.user_id is None:
            return False
        return self._auditor_flag(actor.user_id)

    def _auditor_flag(self, user_id: int) -> bool:
        try:
            user = self.uow.get(User, stream_id("user", user_id), "404 User")
        except NotFound:
            return False
        return user.is_auditor

    def reads_everything(self, actor: Actor | None) -> bool:
        """Administrators, automatic processes and auditors see every group and project (behaviour
        [auditors]: read-only for auditors; their writes are refused with the principal's ``can_write``)."""
        if actor is None:
            return False
        if actor.kind == "system" or actor.is_admin:
            return True
        return auditors.reads_everything(is_admin=False, is_auditor=self.is_auditor(actor))

    # Access levels -----------------------------------------------------------------------------------

    def group(self, group_id: int) -> Group:
        """A group that exists: a deleted one is not found, for every command and every role."""
        group = self.uow.get(Group, stream_id("namespace", group_id), "404 Group")
        if group.deleted:
            raise NotFound("404 Group")
        return group

    def project(self, project_id: int) -> Project:
        project = self.uow.get(Project, stream_id("project", project_id), "404 Project")
        if project.deleted:
            raise NotFound("404 Project")
        return project

    def _group_view(self, group_id: int) -> Group:
        """``group`` for reading only (``UnitOfWork.views``): never to be changed or saved."""
        group = self.uow.views.get(Group, stream_id("namespace", group_id), "404 Group")
        if group.deleted:
            raise NotFound("404 Group")
        return group

    def _project_view(self, project_id: int) -> Project:
        """``project`` for reading only (``UnitOfWork.views``): never to be changed or saved."""
        project = self.uow.views.get(Project, stream_id("project", project_id), "404 Project")
        if project.deleted:
            raise NotFound("404 Project")
        return project

    def user_level(self, source: Group | Project, user_id: int) -> int:
        """A user's effective level on a group or project: direct, inherited from a group above it, or Owner of
        a project in their personal namespace. An administrator flag does not count: it is no membership."""
        if isinstance(source, Group):
            groups = [source, *(self._group_view(ancestor) for ancestor in source.ancestor_ids)]
            return max(group.members.get(user_id, 0) for group in groups)
        if source.namespace_kind == "user":
            namespace = self.uow.views.get(
                UserNamespace, stream_id("namespace", source.namespace_id), "404 Namespace"
            )
            if namespace.user_id == user_id:
                return AccessLevel.OWNER
        levels = [source.members.get(user_id, 0)]
        levels += [self._group_view(group_id).members.get(user_id, 0) for group_id in source.group_ids]
        return max(levels)

    def access_level(self, actor: Actor | None, source: Group | Project) -> int:
        """The highest level the actor holds on the group or project (nobody: no level at all)."""
        if actor is None:
            return AccessLevel.NO_ACCESS
        if actor.kind == "system" or actor.is_admin:
            return AccessLevel.OWNER
        assert actor.user_id is not None
        return self.user_level(source, actor.user_id)

    # Visibility --------------------------------------------------------------------------------------

    def visible_group(self, actor: Actor | None, group_id: int, needed: int = AccessLevel.GUEST) -> Group:
        """Groups are private: an actor without any role there gets 404, one with too low a role 403.

        By role alone, as every command asks: an auditor's flag opens reads only (``readable_group``)."""
        group = self.group(group_id)
        self._check(self.access_level(actor, group), needed, "404 Group")
        return group

    def visible_project(
        self, actor: Actor | None, project_id: int, needed: int = AccessLevel.GUEST
    ) -> Project:
        """As ``visible_group``, for a project."""
        project = self.project(project_id)
        self._check(self.access_level(actor, project), needed, "404 Project")
        return project

    def require_level(self, actor: Actor | None, kind: HolderKind, number: int, needed: int) -> None:
        """``visible_group`` or ``visible_project`` for a command that changes neither (creating a token, for
        instance): the same answers, decided on read-only views (``UnitOfWork.views``) instead of aggregates
        loaded in full."""
        if kind == "group":
            self._check(self.access_level(actor, self._group_view(number)), needed, "404 Group")
        else:
            self._check(self.access_level(actor, self._project_view(number)), needed, "404 Project")

    def readable_group(self, actor: Actor | None, group_id: int, needed: int = AccessLevel.GUEST) -> Group:
        """For reading only: as ``visible_group``, and an auditor reads every group whatever their role
        (behaviour [auditors]). Never for a command: a command asks ``visible_group``, so that no path to a
        write, present or future, opens to an auditor. The group is a read-only view: never to be changed."""
        group = self._group_view(group_id)
        level = self.access_level(actor, group)
        if level < needed and self.is_auditor(actor):
            return group
        self._check(level, needed, "404 Group")
        return group

    def readable_project(
        self, actor: Actor | None, project_id: int, needed: int = AccessLevel.GUEST
    ) -> Project:
        """For reading only: as ``readable_group``, for a project (a read-only view)."""
        project = self._project_view(project_id)
        level = self.access_level(actor, project)
        if level < needed and self.is_auditor(actor):
            return project
        self._check(level, needed, "404 Project")
        return project

    @staticmethod
    def _check(level: int, needed: int, hidden: str) -> None:
        if level < AccessLevel.GUEST:
            raise NotFound(hidden)
        if level < needed:
            raise PermissionDenied("403 Forbidden")

    def sees_group(self, actor: Actor | None, group_id: int) -> bool:
        """By role only: a listing asks ``reads_everything`` once for the whole list instead."""
        return self.access_level(actor, self._group_view(group_id)) >= AccessLevel.GUEST

    def sees_project(self, actor: Actor | None, project_id: int) -> bool:
        """By role only: a listing asks ``reads_everything`` once for the whole list instead."""
        return self.access_level(actor, self._project_view(project_id)) >= AccessLevel.GUEST

    @staticmethod
    def sees_whole_profile(viewer: Actor | None, user_id: int) -> bool:
        """Administrators and the user themselves see every field of a user; others GitLab's ``UserBasic``."""
        return viewer is not None and (viewer.is_admin or viewer.user_id == user_id)
