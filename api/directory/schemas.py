"""Marshmallow schemas of the directory API (users, groups, projects, members, settings, features).

Inputs follow Grape's parameter rules (``name is missing``, ``access_level does not have a valid value``);
outputs carry GitLab's field names so that ``python-gitlab`` parses them unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from api.params import PaginationSchema
from api.schemas import Flag, GitLabDateTime
from domain.instance_settings import MAX_OIDC_ISSUERS
from domain.membership import MEMBER_LEVELS
from domain.personal_access_tokens import PERSONAL_ACCESS_TOKEN_SCOPES

# Ids are stored as 64-bit integers; anything larger cannot name a stored object.
MAX_ID: Final = 2**63 - 1

# GitLab's feature access levels (``repository_access_level`` and friends).
ACCESS_LEVEL_NAMES: Final = ("disabled", "private", "enabled")

_MISSING: Final = {"required": "is missing"}


def _printable(value: str) -> None:
    """Text the stores can keep: PostgreSQL refuses NUL, and both stores need encodable UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("is invalid") from None
    if "\x00" in value:
        raise ValidationError("is invalid")


class Text(fields.String):
    """A string without NUL characters or lone surrogates (they would break a projection, not the request)."""

    default_error_messages = {"invalid": "is invalid"}

    def __init__(self, **kwargs: Any) -> None:
        validators = kwargs.pop("validate", None)
        extra = [validators] if callable(validators) else list(validators or [])
        super().__init__(validate=[_printable, *extra], **kwargs)


class ChoiceList(fields.List[str]):
    """A JSON array, repeated ``key[]`` parameters or one comma-separated string, each value from ``choices``."""

    default_error_messages = {"invalid": "does not have a valid value"}

    def __init__(self, choices: Iterable[str], **kwargs: Any) -> None:
        self.choices = tuple(choices)
        super().__init__(fields.String(validate=validate.OneOf(self.choices)), **kwargs)

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> list[str | None]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self.make_error("invalid")
        items: list[str | None] = [part.strip() for item in value for part in item.split(",") if part.strip()]
        if not items or any(item not in self.choices for item in items):
            raise self.make_error("invalid")
        return items


def _identifier(**kwargs: Any) -> fields.Integer:
    return fields.Integer(
        validate=validate.Range(min=1, max=MAX_ID, error="does not have a valid value"),
        error_messages={"invalid": "is invalid", **_MISSING},
        **kwargs,
    )


def _at_least_one(data: Mapping[str, Any], names: tuple[str, ...]) -> None:
    """Grape's ``at_least_one_of``: ``a, b are missing, at least one parameter must be provided``."""
    if all(data.get(name) is None for name in names):
        raise ValidationError(
            "are missing, at least one parameter must be provided", field_name=", ".join(names)
        )


# Inputs ------------------------------------------------------------------------------------------------


class UserCreateSchema(Schema):
    username = Text(required=True, validate=validate.Length(min=1), error_messages=_MISSING)
    email = Text(required=True, validate=validate.Length(min=1), error_messages=_MISSING)
    name = Text(required=True, validate=validate.Length(min=1), error_messages=_MISSING)
    password = fields.String(
        load_default=None,
        allow_none=True,
        error_messages={"invalid": "is invalid"},
        metadata={"description": "ignored: users never sign in here"},
    )
    admin = Flag(load_default=False)
    auditor = Flag(load_default=False, metadata={"description": "read-only access to everything (auditors)"})
    skip_confirmation = Flag(load_default=True, metadata={"description": "ignored"})


class UserUpdateSchema(Schema):
    """GitLab's ``PUT /users/:id`` (administrators), for the fields this service keeps."""

    email = Text(load_default=None, validate=validate.Length(min=1))
    name = Text(load_default=None, validate=validate.Length(min=1))
    auditor = Flag(load_default=None, metadata={"description": "read-only access to everything (auditors)"})

    @validates_schema
    def something_to_change(self, data: dict[str, Any], **kwargs: Any) -> None:
        _at_least_one(data, ("email", "name", "auditor"))


class UserListSchema(PaginationSchema):
    username = Text(load_default=None, metadata={"description": "exact username (case-insensitive)"})
    search = Text(load_default=None, metadata={"description": "part of the username, name or email"})


class PersonalAccessTokenCreateSchema(Schema):
    name = Text(required=True, validate=validate.Length(min=1), error_messages=_MISSING)
    scopes = ChoiceList(PERSONAL_ACCESS_TOKEN_SCOPES, required=True, error_messages=_MISSING)
    expires_at = fields.Date(load_default=None, allow_none=True, error_messages={"invalid": "is invalid"})


class GroupCreateSchema(Schema):
    name = Text(required=True, validate=validate.Length(min=1), error_messages=_MISSING)
    path = Text(required=True, validate=validate.Length(min=1), error_messages=_MISSING)
    parent_id = _identifier(load_default=None, allow_none=True)


class GroupListSchema(PaginationSchema):
    search = Text(load_default=None, metadata={"description": "part of the name or path"})
    top_level_only = Flag(load_default=False)


class GroupUpdateSchema(Schema):
    """GitLab's ``name`` and ``path`` (Owner; a new path moves everything below the group), and the
    dependency-proxy switch (a GitLab-style extension)."""

    name = Text(load_default=None, validate=validate.Length(min=1))
    path = Text(load_default=None, validate=validate.Length(min=1))
    dependency_proxy_enabled = Flag(load_default=None, allow_none=True)

    @validates_schema
    def something_to_change(self, data: dict[str, Any], **kwargs: Any) -> None:
        _at_least_one(data, ("name", "path", "dependency_proxy_enabled"))


class GroupTransferSchema(Schema):
    """GitLab's ``POST /groups/:id/transfer``: the new parent; none makes the group top-level."""

    group_id = _identifier(load_default=None, allow_none=True)


def _feature_level() -> fields.String:
    return fields.String(
        validate=validate.OneOf(ACCESS_LEVEL_NAMES, error="does not have a valid value"),
        load_default=None,
        allow_none=True,
        error_messages={"invalid": "does not have a valid value"},
    )


class ProjectFeaturesSchema(Schema):
    repository_access_level = _feature_level()
    container_registry_access_level = _feature_level()
    container_registry_enabled = Flag(load_default=None, allow_none=True)


class ProjectCreateSchema(ProjectFeaturesSchema):
    name = Text(load_default=None, validate=validate.Length(min=1))
    path = Text(load_default=None, validate=validate.Length(min=1))
    namespace_id = _identifier(load_default=None, allow_none=True)

    @validates_schema
    def named(self, data: dict[str, Any], **kwargs: Any) -> None:
        _at_least_one(data, ("name", "path"))


class ProjectUpdateSchema(ProjectFeaturesSchema):
    name = Text(load_default=None, validate=validate.Length(min=1))
    path = Text(load_default=None, validate=validate.Length(min=1))

    @validates_schema
    def something_to_change(self, data: dict[str, Any], **kwargs: Any) -> None:
        _at_least_one(
            data,
            (
                "name",
                "path",
                "repository_access_level",
                "container_registry_access_level",
                "container_registry_enabled",
            ),
        )


class NamespaceReference(fields.Field[Any]):
    """A namespace's id (a number, or digits), or its full path."""

    default_error_messages = {"invalid": "is invalid"}

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise self.make_error("invalid")
        _printable(value)
        if not value:
            raise ValidationError("is empty")
        if value.isascii() and value.isdigit():
            number = int(value)
            if not 1 <= number <= MAX_ID:
                raise ValidationError("does not have a valid value")
            return number
        return value


class ProjectTransferSchema(Schema):
    """GitLab's ``PUT /projects/:id/transfer``: the target namespace, by id or full path."""

    namespace = NamespaceReference(required=True, error_messages={"required": "is missing"})


class ProjectListSchema(PaginationSchema):
    search = Text(load_default=None, metadata={"description": "part of the name or path"})


def _access_level() -> fields.Integer:
    return fields.Integer(
        required=True,
        validate=validate.OneOf(sorted(MEMBER_LEVELS), error="does not have a valid value"),
        error_messages={"invalid": "is invalid", **_MISSING},
    )


class MemberCreateSchema(Schema):
    user_id = _identifier(required=True)
    access_level = _access_level()


class MemberUpdateSchema(Schema):
    access_level = _access_level()


class TextList(fields.List[str]):
    """A JSON array of strings, repeated ``key[]`` parameters, or one comma-separated string (an empty one: an
    empty list). Array items are kept whole; what each must be is the domain's to say."""

    default_error_messages = {"invalid": "is invalid"}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(fields.String(), **kwargs)

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> list[str | None]:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self.make_error("invalid")
        return list(value)


class ApplicationSettingsUpdateSchema(Schema):
    external_authorization_service_enabled = Flag(load_default=None, allow_none=True)
    # behaviour [federation]: bounded here (ten times the domain's limit, which it reports after dropping
    # duplicates), so that a huge list is refused before each item is checked and named in the answer.
    deploy_token_oidc_issuers = TextList(
        load_default=None,
        allow_none=True,
        validate=validate.Length(
            max=10 * MAX_OIDC_ISSUERS, error=f"is too long (maximum is {MAX_OIDC_ISSUERS} issuers)"
        ),
        metadata={
            "description": "the OIDC issuers whose ID tokens may be exchanged for deploy tokens (https URLs)"
        },
    )

    @validates_schema
    def something_to_change(self, data: dict[str, Any], **kwargs: Any) -> None:
        _at_least_one(data, ("external_authorization_service_enabled", "deploy_token_oidc_issuers"))


class FeatureSetSchema(Schema):
    value = Flag(required=True, error_messages={"required": "is missing", "invalid": "is invalid"})


# Outputs -----------------------------------------------------------------------------------------------


class UserSchema(Schema):
    """GitLab's ``UserBasic``; administrators and the user themselves also see ``email``, ``is_admin``,
    ``is_auditor``..."""

    id = fields.Integer(dump_only=True)
    username = fields.String(dump_only=True)
    name = fields.String(dump_only=True)
    state = fields.String(dump_only=True, metadata={"enum": ["active", "blocked"]})
    locked = fields.Boolean(dump_only=True)
    avatar_url = fields.String(dump_only=True, allow_none=True)
    web_url = fields.String(dump_only=True)
    created_at = GitLabDateTime(dump_only=True, metadata={"type": "string", "format": "date-time"})
    bot = fields.Boolean(dump_only=True)
    email = fields.String(dump_only=True)
    is_admin = fields.Boolean(dump_only=True)
    is_auditor = fields.Boolean(dump_only=True)


USER_BASIC_FIELDS: Final = ("id", "username", "name", "state", "locked", "avatar_url", "web_url")


class PersonalAccessTokenSchema(Schema):
    id = fields.Integer(dump_only=True)
    name = fields.String(dump_only=True)
    revoked = fields.Boolean(dump_only=True)
    created_at = GitLabDateTime(dump_only=True, metadata={"type": "string", "format": "date-time"})
    description = fields.String(dump_only=True, allow_none=True)
    scopes = fields.List(fields.String(), dump_only=True)
    user_id = fields.Integer(dump_only=True)
    last_used_at = fields.String(dump_only=True, allow_none=True)
    active = fields.Boolean(dump_only=True)
    expires_at = fields.Date(dump_only=True, allow_none=True)


class CreatedPersonalAccessTokenSchema(PersonalAccessTokenSchema):
    token = fields.String(dump_only=True)


class NamespaceSchema(Schema):
    id = fields.Integer(dump_only=True)
    name = fields.String(dump_only=True)
    path = fields.String(dump_only=True)
    kind = fields.String(dump_only=True, metadata={"enum": ["group", "user"]})
    full_path = fields.String(dump_only=True)
    parent_id = fields.Integer(dump_only=True, allow_none=True)
    avatar_url = fields.String(dump_only=True, allow_none=True)
    web_url = fields.String(dump_only=True)


class GroupSchema(Schema):
    id = fields.Integer(dump_only=True)
    web_url = fields.String(dump_only=True)
    name = fields.String(dump_only=True)
    path = fields.String(dump_only=True)
    description = fields.String(dump_only=True)
    visibility = fields.String(dump_only=True)
    full_name = fields.String(dump_only=True)
    full_path = fields.String(dump_only=True)
    parent_id = fields.Integer(dump_only=True, allow_none=True)
    avatar_url = fields.String(dump_only=True, allow_none=True)
    created_at = GitLabDateTime(dump_only=True, metadata={"type": "string", "format": "date-time"})
    dependency_proxy_enabled = fields.Boolean(dump_only=True)


class ProjectSchema(Schema):
    id = fields.Integer(dump_only=True)
    description = fields.String(dump_only=True, allow_none=True)
    name = fields.String(dump_only=True)
    name_with_namespace = fields.String(dump_only=True)
    path = fields.String(dump_only=True)
    path_with_namespace = fields.String(dump_only=True)
    created_at = GitLabDateTime(dump_only=True, metadata={"type": "string", "format": "date-time"})
    default_branch = fields.String(dump_only=True, allow_none=True)
    visibility = fields.String(dump_only=True)
    web_url = fields.String(dump_only=True)
    http_url_to_repo = fields.String(dump_only=True)
    avatar_url = fields.String(dump_only=True, allow_none=True)
    namespace = fields.Nested(NamespaceSchema, dump_only=True)
    repository_access_level = fields.String(dump_only=True, metadata={"enum": list(ACCESS_LEVEL_NAMES)})
    container_registry_access_level = fields.String(
        dump_only=True, metadata={"enum": list(ACCESS_LEVEL_NAMES)}
    )
    container_registry_enabled = fields.Boolean(dump_only=True)


class MemberSchema(Schema):
    id = fields.Integer(dump_only=True)
    username = fields.String(dump_only=True)
    name = fields.String(dump_only=True)
    state = fields.String(dump_only=True)
    locked = fields.Boolean(dump_only=True)
    avatar_url = fields.String(dump_only=True, allow_none=True)
    web_url = fields.String(dump_only=True)
    access_level = fields.Integer(dump_only=True)
    expires_at = fields.String(dump_only=True, allow_none=True)
    membership_state = fields.String(dump_only=True)


class ApplicationSettingsSchema(Schema):
    id = fields.Integer(dump_only=True)
    external_authorization_service_enabled = fields.Boolean(dump_only=True)
    deploy_token_oidc_issuers = fields.List(fields.String(), dump_only=True)


class FeatureGateSchema(Schema):
    key = fields.String(dump_only=True)
    value = fields.Boolean(dump_only=True)


class FeatureSchema(Schema):
    name = fields.String(dump_only=True)
    state = fields.String(dump_only=True, metadata={"enum": ["on", "off"]})
    gates = fields.List(fields.Nested(FeatureGateSchema), dump_only=True)
    definition = fields.Dict(dump_only=True, allow_none=True)
