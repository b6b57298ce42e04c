"""The OpenAPI document: valid OpenAPI 3, exactly the served routes, and true to the live API (schemathesis)."""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from werkzeug.serving import make_server

from api.openapi import build_spec
from deploy_tokens.runtime import Runtime

from ..conftest import World

SPEC_URL = "/api/v4/openapi.json"
_PLACEHOLDER = re.compile(r"<(?:([^:<>]+):)?(\w+)>")


def served_operations(app: Flask) -> set[tuple[str, str]]:
    """(OpenAPI path, method) of every rule whose view declares an operation.

    Rules without one (static files, health, the document itself, and HTML or infrastructure routes other
    engineers add) are not API; ``test_every_api_v4_route_is_documented`` keeps the API itself complete.
    """
    documented: set[tuple[str, str]] = set()
    for rule in app.url_map.iter_rules():
        if getattr(app.view_functions[rule.endpoint], "openapi_operation", None) is None:
            continue
        path = _PLACEHOLDER.sub(r"{\2}", rule.rule)
        documented |= {(path, method.lower()) for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}}
    return documented


def test_the_document_is_valid_openapi_3(client: FlaskClient):
    response = client.get(SPEC_URL)
    assert response.status_code == 200
    document = response.get_json()
    assert document["openapi"].startswith("3.")
    validate(document)
    operation_ids = [
        entry["operationId"] for methods in document["paths"].values() for entry in methods.values()
    ]
    assert len(operation_ids) == len(set(operation_ids))


def test_building_the_document_raises_no_warnings(app: Flask):
    """apispec warns when two schemas resolve to one component name; one would silently shadow the other."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_spec(app)


def test_the_document_lists_exactly_the_served_routes(app: Flask, client: FlaskClient):
    document = client.get(SPEC_URL).get_json()
    listed = {(path, method) for path, methods in document["paths"].items() for method in methods}
    assert listed == served_operations(app)


def test_every_api_v4_route_is_documented(app: Flask):
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/v4/") and rule.rule != SPEC_URL:
            view = app.view_functions[rule.endpoint]
            assert getattr(view, "openapi_operation", None) is not None, f"{rule.rule} has no @operation"


def test_the_directory_and_deploy_tokens_are_documented(client: FlaskClient):
    paths = client.get(SPEC_URL).get_json()["paths"]
    for path, method in [
        ("/api/v4/users", "post"),
        ("/api/v4/users/{user_id}/personal_access_tokens", "post"),
        ("/api/v4/user", "get"),
        ("/api/v4/groups/{reference}", "put"),
        ("/api/v4/groups/{reference}/subgroups", "get"),
        ("/api/v4/projects/{reference}", "put"),
        ("/api/v4/projects/{reference}/members/{user_id}", "delete"),
        ("/api/v4/application/settings", "put"),
        ("/api/v4/features/{name}", "post"),
        ("/api/v4/projects/{reference}/deploy_tokens", "post"),
    ]:
        assert method in paths[path], (path, method)
    created = paths["/api/v4/projects"]["post"]["responses"]["201"]["content"]["application/json"]["schema"]
    assert {"id", "name", "path", "path_with_namespace", "namespace", "web_url"} <= set(created["properties"])


# Property-based run over every documented operation --------------------------------------------------------

MAX_EXAMPLES = 25  # per operation; about 55 operations keep each backend's run well under a minute
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture
def live_server(app: Flask, runtime: Runtime) -> Iterator[str]:
    werkzeug_log = logging.getLogger("werkzeug")
    level = werkzeug_log.level
    werkzeug_log.setLevel(logging.ERROR)  # a thousand request lines would bury a failure
    server = make_server("127.0.0.1", 0, app, threaded=True)
    url = f"http://127.0.0.1:{server.server_port}"
    runtime.settings = dataclasses.replace(runtime.settings, external_url=url)
    thread = threading.Thread(target=server.serve_forever, name="schemathesis-target", daemon=True)
    thread.start()
    try:
        yield url
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
        werkzeug_log.setLevel(level)


def known_path_parameters(world: World) -> dict[str, list[Any]]:
    """Real ids and paths, so that generated requests also reach existing objects, not only 404s."""
    return {
        "reference": [
            str(world.project),
            "acme/api",
            str(world.top),
            "acme/backend",
            str(world.deep_project),
        ],
        "user_id": [actor.user_id for actor in world.users.values()],
        "token_id": [1, 2, 3],
        "name": ["project_deploy_token_expiring_notifications"],
    }


def case_strategy(operation: Any, known: dict[str, list[Any]]) -> st.SearchStrategy[Any]:
    generated = operation.as_strategy()
    names = [parameter.name for parameter in operation.path_parameters if parameter.name in known]
    if not names:
        return generated
    real = st.fixed_dictionaries({name: st.sampled_from(known[name]) for name in names})
    return st.one_of(generated, real.flatmap(lambda fixed: operation.as_strategy(path_parameters=fixed)))


def exercise(operation: Any, strategy: st.SearchStrategy[Any], call: Callable[[Any], None]) -> None:
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,  # the same cases on every run: CI failures reproduce locally
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        call(case)

    run()


@pytest.mark.slow
def test_schemathesis_finds_no_server_errors_or_schema_violations(live_server: str, world: World):
    schema = schemathesis.openapi.from_url(live_server + SPEC_URL)
    headers = {"PRIVATE-TOKEN": world.admin_token}
    known = known_path_parameters(world)
    problems: dict[str, list[str]] = {}

    def call(case: Any) -> None:
        try:
            case.call_and_validate(base_url=live_server, headers=headers, checks=CHECKS, timeout=30)
        except (FailureGroup, Failure) as error:
            failures = list(error.exceptions) if isinstance(error, FailureGroup) else [error]
            unexpected = list(failures)
            if unexpected:
                reproduce = case.as_curl_command(headers=headers, base_url=live_server)
                problems.setdefault(case.operation.label, []).extend(
                    f"{failure}\n{reproduce}" for failure in unexpected
                )

    operations = [result.ok() for result in schema.get_all_operations()]
    document = schema.raw_schema
    assert len(operations) == sum(len(methods) for methods in document["paths"].values())
    for operation in operations:
        exercise(operation, case_strategy(operation, known), call)
    report = "\n\n".join(f"{label}: {found[0]}" for label, found in sorted(problems.items()))
    assert not problems, f"{len(problems)} operation(s) failed:\n\n{report}"
