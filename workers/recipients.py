"""Who is told that a token expires: people who can act on it (R17), never blocked users."""

from __future__ import annotations

from domain.directory import AccessLevel
from projections.views import ReadModel
from workers.mail import Recipient


def expiry_recipients(read: ReadModel, holder_kind: str, holder_id: int) -> tuple[Recipient, ...]:
    """A project token: the project's Maintainers and Owners, including roles inherited from ancestor
    groups (GitLab users ask for this). A group token: the group's Owners, including inherited ones
    (GitLab sends nothing for group tokens; users ask for it). A project in a personal namespace is owned
    by that namespace's user, as ``project_access`` grants them Owner, though they have no member row."""
    chosen: dict[int, Recipient] = {}
    if holder_kind == "project":
        project = read.project(holder_id)
        if project is None:
            return ()
        sources = [("project", holder_id), *(("group", group_id) for group_id in project.group_ids)]
        minimum = AccessLevel.MAINTAINER
        if project.namespace_kind == "user":
            owner = read.user(project.namespace_id)  # a user's id is their personal namespace's id
            if owner is not None and owner.namespace_id == project.namespace_id and not owner.blocked:
                chosen[owner.user_id] = Recipient(owner.name, owner.email)
    else:
        group = read.namespace(holder_id)
        if group is None:
            return ()
        sources = [("group", holder_id), *(("group", ancestor) for ancestor in group.ancestor_ids)]
        minimum = AccessLevel.OWNER
    for source_kind, source_id in sources:
        for member, user in read.members(source_kind, source_id):
            if member.access_level >= minimum and not user.blocked:
                chosen[user.user_id] = Recipient(user.name, user.email)
    return tuple(chosen[user_id] for user_id in sorted(chosen))
