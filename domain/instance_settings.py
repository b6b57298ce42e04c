"""The instance's settings, changed by administrators: external authorization, feature flags and the OIDC
issuers federation trusts."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from eventsourcing.domain import Aggregate

from domain.actors import Actor
from domain.errors import ValidationError
from domain.federation import check_issuer
from domain.streams import SETTINGS_ID

EXPIRING_NOTIFICATIONS_FLAG: Final = "project_deploy_token_expiring_notifications"
KNOWN_FEATURES: Final[dict[str, bool]] = {EXPIRING_NOTIFICATIONS_FLAG: True}
OIDC_ISSUERS_FIELD: Final = "deploy_token_oidc_issuers"
MAX_OIDC_ISSUERS: Final = 20


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

    class OidcIssuersChanged(Aggregate.Event):
        """The OIDC issuers whose ID tokens may be exchanged for deploy tokens (behaviour [federation])."""

        TOPIC = "deploy_tokens:InstanceSettings.OidcIssuersChanged"
        issuers: list[str]
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, InstanceSettings)
            aggregate.oidc_issuers = tuple(self.issuers)

    def __init__(self) -> None:
        self.external_authorization_enabled = False
        self.features: dict[str, bool] = dict(KNOWN_FEATURES)
        self.oidc_issuers: tuple[str, ...] = ()

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

    def set_oidc_issuers(
        self, issuers: list[str], *, allow_insecure: bool, actor: Actor, now: datetime
    ) -> bool:
        """Replace the list of trusted issuers (exact URLs, duplicates collapse, order kept); all errors at once."""
        chosen = tuple(dict.fromkeys(issuers))
        errors: list[str] = []
        if len(chosen) > MAX_OIDC_ISSUERS:
            errors.append(f"is too long (maximum is {MAX_OIDC_ISSUERS} issuers)")
        for issuer in chosen:
            try:
                check_issuer(issuer, allow_insecure=allow_insecure)
            except ValidationError as error:
                errors += [f"{issuer[:255]!r} {message}" for message in error.errors.get("issuer", [])]
        if errors:
            raise ValidationError({OIDC_ISSUERS_FIELD: errors})
        if chosen == self.oidc_issuers:
            return False
        self.trigger_event(
            self.OidcIssuersChanged, timestamp=now, issuers=list(chosen), actor=actor.as_event_data()
        )
        return True
