"""The instance's settings, changed by administrators: external authorization and feature flags."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from eventsourcing.domain import Aggregate

from domain.actors import Actor
from domain.errors import ValidationError
from domain.streams import SETTINGS_ID

EXPIRING_NOTIFICATIONS_FLAG: Final = "project_deploy_token_expiring_notifications"
KNOWN_FEATURES: Final[dict[str, bool]] = {EXPIRING_NOTIFICATIONS_FLAG: True}


class InstanceSettings(Aggregate):
    """Instance-wide settings: external authorization (behaviour [external-authorization]) and feature flags
    (behaviour [notifications])."""

    TOPIC = "deploy_tokens:InstanceSettings"

    class Event(Aggregate.Event):
        TOPIC = "deploy_tokens:InstanceSettings.Event"

    class Created(Aggregate.Created):
        TOPIC = "deploy_tokens:InstanceSettings.Created"

    class ExternalAuthorizationChanged(Aggregate.Event):
        TOPIC = "deploy_tokens:InstanceSettings.ExternalAuthorizationChanged"
        enabled: bool
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, InstanceSettings)
            aggregate.external_authorization_enabled = self.enabled

    class FeatureChanged(Aggregate.Event):
        TOPIC = "deploy_tokens:InstanceSettings.FeatureChanged"
        name: str
        enabled: bool
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, InstanceSettings)
            aggregate.features[self.name] = self.enabled

    def __init__(self) -> None:
        self.external_authorization_enabled = False
        self.features: dict[str, bool] = dict(KNOWN_FEATURES)

    @classmethod
    def initial(cls, now: datetime) -> InstanceSettings:
        return cls._create(cls.Created, id=SETTINGS_ID, timestamp=now)

    def feature_enabled(self, name: str) -> bool:
        return self.features.get(name, False)

    def set_external_authorization(self, enabled: bool, *, actor: Actor, now: datetime) -> bool:
        if self.external_authorization_enabled == enabled:
            return False
        self.trigger_event(
            self.ExternalAuthorizationChanged, timestamp=now, enabled=enabled, actor=actor.as_event_data()
        )
        return True

    def set_feature(self, name: str, enabled: bool, *, actor: Actor, now: datetime) -> bool:
        if name not in KNOWN_FEATURES:
            raise ValidationError.single("name", f"is not a known feature: {name}")
        if self.features.get(name) == enabled:
            return False
        self.trigger_event(
            self.FeatureChanged, timestamp=now, name=name, enabled=enabled, actor=actor.as_event_data()
        )
        return True
