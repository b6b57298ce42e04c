"""Users and their personal namespaces (a user's id is their namespace's id)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from eventsourcing.domain import Aggregate

from domain.actors import Actor
from domain.errors import ErrorCollector
from domain.names import RESERVED_TOP_LEVEL_PATHS, validate_display_name, validate_email, validate_path
from domain.streams import stream_id


class User(Aggregate):
    TOPIC = "deploy_tokens:User"

    # A class default, so a user rebuilt from state saved before auditors existed (a snapshot) is no auditor.
    is_auditor: bool = False

    class Event(Aggregate.Event):
        TOPIC = "deploy_tokens:User.Event"

    class Registered(Aggregate.Created):
        TOPIC = "deploy_tokens:User.Registered"
        user_id: int
        username: str
        email: str
        name: str
        is_admin: bool
        namespace_id: int
        actor: dict[str, Any]

    class Blocked(Aggregate.Event):
        TOPIC = "deploy_tokens:User.Blocked"
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, User)
            aggregate.blocked = True

    class Unblocked(Aggregate.Event):
        TOPIC = "deploy_tokens:User.Unblocked"
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, User)
            aggregate.blocked = False

    class AdminChanged(Aggregate.Event):
        TOPIC = "deploy_tokens:User.AdminChanged"
        is_admin: bool
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, User)
            aggregate.is_admin = self.is_admin

    class AuditorChanged(Aggregate.Event):
        """The auditor flag set or cleared (behaviour [auditors]). Users registered before auditors existed have
        no such event: they replay as non-auditors."""

        TOPIC = "deploy_tokens:User.AuditorChanged"
        is_auditor: bool
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, User)
            aggregate.is_auditor = self.is_auditor

    class ProfileChanged(Aggregate.Event):
        """A new email address or display name (both fields hold the values after the change)."""

        TOPIC = "deploy_tokens:User.ProfileChanged"
        email: str
        name: str
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, User)
            aggregate.email = self.email
            aggregate.name = self.name

    def __init__(
        self,
        user_id: int,
        username: str,
        email: str,
        name: str,
        is_admin: bool,
        namespace_id: int,
        actor: dict[str, Any],
    ) -> None:
        self.user_id = user_id
        self.username = username
        self.email = email
        self.name = name
        self.is_admin = is_admin
        self.namespace_id = namespace_id
        self.blocked = False
        self.is_auditor = False

    @classmethod
    def register(
        cls,
        *,
        user_id: int,
        namespace_id: int,
        username: str,
        email: str,
        name: str | None,
        is_admin: bool,
        actor: Actor,
        now: datetime,
    ) -> User:
        errors = ErrorCollector()
        checked_username = errors.check(
            lambda value: validate_path(value, "username", RESERVED_TOP_LEVEL_PATHS), username
        )
        checked_email = errors.check(validate_email, email)
        checked_name = errors.check(validate_display_name, name or username)
        errors.raise_if_any()
        assert checked_username and checked_email and checked_name
        return cls._create(
            cls.Registered,
            id=stream_id("user", user_id),
            timestamp=now,
            user_id=user_id,
            username=checked_username,
            email=checked_email,
            name=checked_name,
            is_admin=is_admin,
            namespace_id=namespace_id,
            actor=actor.as_event_data(),
        )

    def block(self, *, actor: Actor, now: datetime) -> bool:
        if self.blocked:
            return False
        self.trigger_event(self.Blocked, timestamp=now, actor=actor.as_event_data())
        return True

    def unblock(self, *, actor: Actor, now: datetime) -> bool:
        if not self.blocked:
            return False
        self.trigger_event(self.Unblocked, timestamp=now, actor=actor.as_event_data())
        return True

    def set_admin(self, is_admin: bool, *, actor: Actor, now: datetime) -> bool:
        if self.is_admin == is_admin:
            return False
        self.trigger_event(self.AdminChanged, timestamp=now, is_admin=is_admin, actor=actor.as_event_data())
        return True

    def set_auditor(self, is_auditor: bool, *, actor: Actor, now: datetime) -> bool:
        if self.is_auditor == is_auditor:
            return False
        self.trigger_event(
            self.AuditorChanged, timestamp=now, is_auditor=is_auditor, actor=actor.as_event_data()
        )
        return True

    def change_profile(self, *, email: str | None, name: str | None, actor: Actor, now: datetime) -> bool:
        errors = ErrorCollector()
        checked_email = self.email if email is None else errors.check(validate_email, email)
        checked_name = self.name if name is None else errors.check(validate_display_name, name)
        errors.raise_if_any()
        assert checked_email is not None and checked_name is not None
        if (checked_email, checked_name) == (self.email, self.name):
            return False
        self.trigger_event(
            self.ProfileChanged,
            timestamp=now,
            email=checked_email,
            name=checked_name,
            actor=actor.as_event_data(),
        )
        return True


class UserNamespace(Aggregate):
    """A user's personal namespace: projects may live there (never reachable by group tokens)."""

    TOPIC = "deploy_tokens:UserNamespace"

    class Event(Aggregate.Event):
        TOPIC = "deploy_tokens:UserNamespace.Event"

    class Created(Aggregate.Created):
        TOPIC = "deploy_tokens:UserNamespace.Created"
        namespace_id: int
        user_id: int
        path: str

    def __init__(self, namespace_id: int, user_id: int, path: str) -> None:
        self.namespace_id = namespace_id
        self.user_id = user_id
        self.path = path

    @classmethod
    def open(cls, *, namespace_id: int, user_id: int, path: str, now: datetime) -> UserNamespace:
        return cls._create(
            cls.Created,
            id=stream_id("namespace", namespace_id),
            timestamp=now,
            namespace_id=namespace_id,
            user_id=user_id,
            path=path,
        )
