"""Users and their personal access tokens."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Response, jsonify, request
from flask.typing import ResponseReturnValue

from api.auth import require_admin, require_principal
from api.context import runtime
from api.directory.blueprint import WITH_CONFLICT, created, directory, viewer
from api.directory.representations import dump_user, dump_users, pat_fields
from api.directory.schemas import (
    CreatedPersonalAccessTokenSchema,
    PersonalAccessTokenCreateSchema,
    UserCreateSchema,
    UserListSchema,
    UserSchema,
    UserUpdateSchema,
)
from api.idempotency import idempotency_slot, idempotent, rebuilt
from api.openapi import operation
from api.params import load, paginate_list, paginated
from deploy_tokens.claims import TAKEN
from domain.errors import Conflict, ValidationError
from projections.directory import PersonalAccessTokenRecord


def _recreated_user(result: Mapping[str, Any]) -> Response:
    principal = require_principal()
    return created(dump_user(rebuilt(runtime().read.user(int(result["user_id"]))), principal.actor))


@directory.post("/users")
@operation(
    "Create a user (administrators)",
    tag="users",
    body=UserCreateSchema,
    response=UserSchema,
    status=201,
    errors=WITH_CONFLICT,
)
@idempotent(_recreated_user)
def create_user() -> ResponseReturnValue:
    principal = require_admin(writes=True)
    params = load(UserCreateSchema())
    try:
        user = runtime().directory.register_user(
            principal.actor,
            username=params["username"],
            email=params["email"],
            name=params["name"],
            is_admin=params["admin"],
            is_auditor=params["auditor"],
            idempotency=idempotency_slot(),
        )
    except ValidationError as error:
        _taken_is_a_conflict(error)
        raise
    return created(dump_user(user, principal.actor))


def _taken_is_a_conflict(error: ValidationError) -> None:
    """GitLab's users API answers a taken email or username with 409 and one sentence."""
    for field in ("email", "username"):
        if error.errors.get(field) == [TAKEN]:
            raise Conflict(f"{field.capitalize()} has already been taken") from None


def _update_user(user_id: int) -> ResponseReturnValue:
    """GitLab's ``PUT /users/:id``."""
    principal = require_admin(writes=True)
    params = load(UserUpdateSchema())
    try:
        user = runtime().directory.update_user(
            principal.actor, user_id, email=params["email"], name=params["name"], is_auditor=params["auditor"]
        )
    except ValidationError as error:
        _taken_is_a_conflict(error)
        raise
    return jsonify(dump_user(user, principal.actor))


@directory.get("/users")
@operation("List users", tag="users", query=UserListSchema, response=UserSchema, many=True)
def list_users() -> ResponseReturnValue:
    principal = require_principal(anonymous="403")
    params = load(UserListSchema())
    users = runtime().directory.users(username=params["username"], search=params["search"])
    page = paginate_list(users, params["page"], params["per_page"])
    return paginated(page, dump_users(list(page.items), principal.actor))


# One rule for both methods: with two, werkzeug answers a GET of an id beyond BIGINT with 405, not 404.
@directory.route("/users/<int:user_id>", methods=["GET", "PUT"])
@operation(
    "Get a user; PUT changes their email, name or auditor flag (administrators; an email another user has is "
    "a conflict)",
    tag="users",
    body=UserUpdateSchema,
    response=UserSchema,
    errors=WITH_CONFLICT,
)
def user(user_id: int) -> ResponseReturnValue:
    if request.method == "PUT":
        return _update_user(user_id)
    caller = viewer()
    return jsonify(dump_user(runtime().directory.user(caller, user_id), caller))


@directory.get("/user")
@operation("The current user", tag="users", response=UserSchema, errors=(401,))
def current_user() -> ResponseReturnValue:
    principal = require_principal()
    user = runtime().directory.user(principal.actor, principal.user.user_id)
    return jsonify(dump_user(user, principal.actor))


def _set_blocked(user_id: int, blocked: bool) -> ResponseReturnValue:
    principal = require_admin(writes=True)
    runtime().directory.set_user_blocked(principal.actor, user_id, blocked)
    return created(True)


@directory.post("/users/<int:user_id>/block")
@operation("Block a user (administrators); answers true", tag="users", status=201)
def block_user(user_id: int) -> ResponseReturnValue:
    return _set_blocked(user_id, True)


@directory.post("/users/<int:user_id>/unblock")
@operation("Unblock a user (administrators); answers true", tag="users", status=201)
def unblock_user(user_id: int) -> ResponseReturnValue:
    return _set_blocked(user_id, False)


def _created_pat(token: PersonalAccessTokenRecord, value: str) -> Response:
    response = created(CreatedPersonalAccessTokenSchema().dump({**pat_fields(token), "token": value}))
    response.headers["Cache-Control"] = "no-store"  # the one response that carries the secret
    return response


def _recreated_pat(result: Mapping[str, Any], *_: Any, **__: Any) -> Response:
    value = str(result["token"])
    found = rebuilt(runtime().read.personal_access_token(runtime().keys.digest(value)))
    return _created_pat(found[0], value)


@directory.post("/users/<int:user_id>/personal_access_tokens")
@operation(
    "Create a personal access token for a user (administrators; the value is in this response only)",
    tag="users",
    body=PersonalAccessTokenCreateSchema,
    response=CreatedPersonalAccessTokenSchema,
    status=201,
)
@idempotent(_recreated_pat)
def create_personal_access_token(user_id: int) -> ResponseReturnValue:
    principal = require_admin(writes=True)
    params = load(PersonalAccessTokenCreateSchema())
    issued = runtime().directory.create_personal_access_token(
        principal.actor,
        user_id,
        name=params["name"],
        scopes=params["scopes"],
        expires_at=params["expires_at"],
        idempotency=idempotency_slot(),
    )
    return _created_pat(issued.token, issued.value)
