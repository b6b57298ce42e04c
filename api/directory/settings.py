"""Application settings and feature flags (administrators)."""

from __future__ import annotations

from flask import jsonify
from flask.typing import ResponseReturnValue

from api.auth import require_admin
from api.context import runtime
from api.directory.blueprint import created, directory
from api.directory.representations import feature_fields, settings_fields
from api.directory.schemas import (
    ApplicationSettingsSchema,
    ApplicationSettingsUpdateSchema,
    FeatureSchema,
    FeatureSetSchema,
)
from api.openapi import operation
from api.params import load


@directory.get("/application/settings")
@operation("Application settings (administrators)", tag="settings", response=ApplicationSettingsSchema)
def get_settings() -> ResponseReturnValue:
    require_admin()
    return jsonify(ApplicationSettingsSchema().dump(settings_fields()))


@directory.put("/application/settings")
@operation(
    "Change application settings: external authorization, trusted OIDC issuers (administrators)",
    tag="settings",
    body=ApplicationSettingsUpdateSchema,
    response=ApplicationSettingsSchema,
)
def update_settings() -> ResponseReturnValue:
    principal = require_admin(writes=True)
    params = load(ApplicationSettingsUpdateSchema())
    # The issuers first: they are the setting the domain may refuse, and a refused request changes nothing.
    if params["deploy_token_oidc_issuers"] is not None:
        runtime().trust_policies.set_trusted_issuers(principal.actor, params["deploy_token_oidc_issuers"])
    if params["external_authorization_service_enabled"] is not None:
        runtime().directory.set_external_authorization(
            principal.actor, params["external_authorization_service_enabled"]
        )
    return jsonify(ApplicationSettingsSchema().dump(settings_fields()))


# python-gitlab lists ``/features/`` (its path ends in a slash), so the rule accepts both spellings.
@directory.route("/features", methods=["GET"], strict_slashes=False)
@operation("List feature flags (administrators)", tag="features", response=FeatureSchema, many=True)
def list_features() -> ResponseReturnValue:
    require_admin()
    features = runtime().read.instance().features
    return jsonify(
        FeatureSchema(many=True).dump([feature_fields(*item) for item in sorted(features.items())])
    )


@directory.post("/features/<name>")
@operation(
    "Switch a feature flag on or off (administrators)",
    tag="features",
    body=FeatureSetSchema,
    response=FeatureSchema,
    status=201,
)
def set_feature(name: str) -> ResponseReturnValue:
    principal = require_admin(writes=True)
    params = load(FeatureSetSchema())
    runtime().directory.set_feature(principal.actor, name, params["value"])
    enabled = runtime().read.instance().features.get(name, False)
    return created(FeatureSchema().dump(feature_fields(name, enabled)))
