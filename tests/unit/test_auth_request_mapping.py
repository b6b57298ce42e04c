"""The pure helpers behind the auth-check endpoints: nginx sub-request -> (action, resource), credentials,
registry scope -> project or group, status codes, and the metrics text format."""

from __future__ import annotations

import base64

import pytest

from api.auth_checks.common import (
    AuthorizationHeader,
    Credentials,
    parse_authorization,
    presented_credentials,
    status_for,
)
from api.auth_checks.registry import dependency_proxy_group, longest_existing_prefix, registry_action
from api.metrics import Counter, Histogram
from api.request_mapping import (
    NOT_A_DEPLOY_TOKEN_ROUTE,
    Protocol,
    Target,
    map_original_request,
    resource_from_reference,
)
from projections.access import Action, Decision, Reason
from projections.credential_index import Resource

P = Resource("project", path="acme/api")
DEEP = Resource("project", path="acme/backend/services/db")


def git(action: Action, resource: Resource = P) -> Target:
    return Target(action, resource, Protocol.GIT)


def package(action: Action, resource: Resource | None, *, exact: bool = False) -> Target:
    return Target(action, resource, Protocol.PACKAGES, exact_group_only=exact)


@pytest.mark.parametrize(
    ("uri", "method", "expected"),
    [
        # Git smart HTTP: clone and fetch
        ("/acme/api.git/info/refs?service=git-upload-pack", "GET", git(Action.GIT_READ)),
        ("/acme/api.git/git-upload-pack", "POST", git(Action.GIT_READ)),
        (
            "/acme/backend/services/db.git/info/refs?service=git-upload-pack",
            "GET",
            git(Action.GIT_READ, DEEP),
        ),
        ("/acme/api/info/refs?service=git-upload-pack", "GET", git(Action.GIT_READ)),
        ("/acme/api/git-upload-pack", "POST", git(Action.GIT_READ)),
        ("/acme%2Fapi.git/info/refs?service=git-upload-pack", "GET", git(Action.GIT_READ)),
        # dumb protocol and other reads under .git
        ("/acme/api.git/info/refs", "GET", git(Action.GIT_READ)),
        ("/acme/api.git/HEAD", "GET", git(Action.GIT_READ)),
        ("/acme/api.git/objects/info/packs", "HEAD", git(Action.GIT_READ)),
        # push, in every spelling, and write-shaped requests
        ("/acme/api.git/info/refs?service=git-receive-pack", "GET", git(Action.GIT_WRITE)),
        ("/acme/api.git/git-receive-pack", "POST", git(Action.GIT_WRITE)),
        ("/acme/api/git-receive-pack", "POST", git(Action.GIT_WRITE)),
        ("/acme/api.git/info/refs?service=git%2Dreceive%2Dpack", "GET", git(Action.GIT_WRITE)),
        (
            "/acme/api.git/info/refs?service=git-upload-pack&service=git-receive-pack",
            "GET",
            git(Action.GIT_WRITE),
        ),
        ("/acme/api.git/info/refs?service=git-upload-archive", "GET", git(Action.GIT_WRITE)),
        ("/acme/api.git/info/lfs/objects/batch", "POST", git(Action.GIT_WRITE)),
        ("/acme/api.git/info/lfs/objects/abc", "PUT", git(Action.GIT_WRITE)),
        ("/acme/api.git/HEAD", "", git(Action.GIT_WRITE)),
        # project-level packages: by id or URL-encoded path; GET/HEAD read, everything else writes
        (
            "/api/v4/projects/24/packages/generic/my_package/0.0.1/file.txt",
            "GET",
            package(Action.PACKAGE_READ, Resource("project", id=24)),
        ),
        (
            "/api/v4/projects/24/packages/generic/my_package/0.0.1/file.txt",
            "head",
            package(Action.PACKAGE_READ, Resource("project", id=24)),
        ),
        ("/api/v4/projects/acme%2Fapi/packages/pypi/simple/x/", "GET", package(Action.PACKAGE_READ, P)),
        ("/api/v4/projects/acme%2fapi/packages/pypi", "POST", package(Action.PACKAGE_WRITE, P)),
        (
            "/api/v4/projects/7/packages/maven/a/b/1/b.jar",
            "PUT",
            package(Action.PACKAGE_WRITE, Resource("project", id=7)),
        ),
        (
            "/api/v4/projects/7/packages/npm/@s%2fn",
            "PATCH",
            package(Action.PACKAGE_WRITE, Resource("project", id=7)),
        ),
        (
            "/api/v4/projects/7/packages/nuget/x",
            "DELETE",
            package(Action.PACKAGE_WRITE, Resource("project", id=7)),
        ),
        (
            "/api/v4/projects/7/packages/nuget/x",
            None,
            package(Action.PACKAGE_WRITE, Resource("project", id=7)),
        ),
        (
            "/api/v4/projects/7/packages/nuget/x",
            "OPTIONS",
            package(Action.PACKAGE_WRITE, Resource("project", id=7)),
        ),
        # group-level packages: the exact group only
        (
            "/api/v4/groups/5/-/packages/maven/a/b/1/b.pom",
            "GET",
            package(Action.PACKAGE_READ, Resource("group", id=5), exact=True),
        ),
        (
            "/api/v4/groups/acme%2Fbackend/-/packages/npm/x",
            "PUT",
            package(Action.PACKAGE_WRITE, Resource("group", path="acme/backend"), exact=True),
        ),
        # instance-level packages: no project named
        ("/api/v4/packages/conan/v1/ping", "GET", package(Action.PACKAGE_READ, None)),
        # behaviour [api-routes]: everything else under the API, and anything unrecognised
        ("/api/v4/projects/24", "GET", NOT_A_DEPLOY_TOKEN_ROUTE),
        ("/api/v4/projects/24/deploy_tokens", "GET", NOT_A_DEPLOY_TOKEN_ROUTE),
        ("/api/v4/projects/24/packages", "GET", NOT_A_DEPLOY_TOKEN_ROUTE),
        ("/api/v4/projects/24/packages/17", "DELETE", NOT_A_DEPLOY_TOKEN_ROUTE),
        ("/api/v4/projects/24/packages/protection/rules", "GET", NOT_A_DEPLOY_TOKEN_ROUTE),
        ("/api/v4/projects/24/packages/Generic/x", "GET", NOT_A_DEPLOY_TOKEN_ROUTE),
        ("/api/v4/groups/5/packages/maven/x", "GET", NOT_A_DEPLOY_TOKEN_ROUTE),
        ("/api/v3/projects/24/packages/generic/x", "GET", NOT_A_DEPLOY_TOKEN_ROUTE),
        ("/-/health", "GET", NOT_A_DEPLOY_TOKEN_ROUTE),
        ("/acme/api", "GET", NOT_A_DEPLOY_TOKEN_ROUTE),
        ("", "GET", NOT_A_DEPLOY_TOKEN_ROUTE),
        (None, "GET", NOT_A_DEPLOY_TOKEN_ROUTE),
        ("http://host/acme/api.git/info/refs", "GET", NOT_A_DEPLOY_TOKEN_ROUTE),
        # nginx's reading, not the raw one: what nginx routes and serves is what is checked
        (
            "/api/v4/projects/24//packages/generic/x",
            "GET",
            package(Action.PACKAGE_READ, Resource("project", id=24)),
        ),
        (
            "/api/v4/projects/24/p%61ckages/generic/x",
            "GET",
            package(Action.PACKAGE_READ, Resource("project", id=24)),
        ),
        ("/other/x.git/../../acme/api.git/info/refs?service=git-upload-pack", "GET", git(Action.GIT_READ)),
        (
            "/acme/api.git/%2E%2E/%2e%2e/other/x.git/info/refs",
            "GET",
            git(Action.GIT_READ, Resource("project", path="other/x")),
        ),
        ("/acme/./api.git/info/refs", "GET", git(Action.GIT_READ)),
        (
            "/api/v4/projects/1/packages/generic/../../../2/packages/generic/x",
            "GET",
            package(Action.PACKAGE_READ, Resource("project", id=2)),
        ),
        (
            "/api/v4/projects/1%2F..%2F2/packages/generic/x",
            "GET",
            package(Action.PACKAGE_READ, Resource("project", id=2)),
        ),
        # the reported bypass: "/%61pi/..." is the API to nginx, so it is the API here, and a PUT is a write
        (
            "/%61pi/v4/projects/7/packages/generic/tool/info/refs",
            "PUT",
            package(Action.PACKAGE_WRITE, Resource("project", id=7)),
        ),
        ("/%41PI/v4/projects/7/packages/generic/tool/info/refs", "PUT", NOT_A_DEPLOY_TOKEN_ROUTE),
        # only what git sends for a clone is a read on info/refs and git-upload-pack
        ("/acme/api.git/info/refs?service=git-upload-pack", "PUT", git(Action.GIT_WRITE)),
        ("/acme/api/info/refs", "POST", git(Action.GIT_WRITE)),
        ("/acme/api.git/info/refs?service=", "GET", git(Action.GIT_WRITE)),
        ("/acme/api.git/git-upload-pack", "PUT", git(Action.GIT_WRITE)),
        ("/acme/api/git-upload-pack", "GET", git(Action.GIT_WRITE)),
        # decoded once, as nginx does: "%252F" is a literal "%2F", never a slash
        (
            "/api/v4/projects/acme%252Fapi/packages/pypi",
            "GET",
            package(Action.PACKAGE_READ, Resource("project", path="acme%2Fapi")),
        ),
        # a URL that could name two resources names none
        ("/api/v4/projects/acme/api/packages/generic/packages/generic/x", "PUT", NOT_A_DEPLOY_TOKEN_ROUTE),
        ("/acme/x.git/acme/api.git/info/refs", "GET", NOT_A_DEPLOY_TOKEN_ROUTE),
        ("/.git/info/refs", "GET", NOT_A_DEPLOY_TOKEN_ROUTE),
        # what nginx itself refuses with a 400
        ("/acme/api.git/info/refs%00", "GET", NOT_A_DEPLOY_TOKEN_ROUTE),
        ("/acme/api.git/info/%zzrefs", "GET", NOT_A_DEPLOY_TOKEN_ROUTE),
        ("/acme/api.git/info/refs%2", "GET", NOT_A_DEPLOY_TOKEN_ROUTE),
        ("/../acme/api.git/info/refs", "GET", NOT_A_DEPLOY_TOKEN_ROUTE),
        ("/acme/api.git/info/refs\x01", "GET", NOT_A_DEPLOY_TOKEN_ROUTE),
        ("/acme/api.git/info refs", "GET", NOT_A_DEPLOY_TOKEN_ROUTE),
        ("/acme/\u0101pi.git/info/refs", "GET", NOT_A_DEPLOY_TOKEN_ROUTE),
        # "#" ends the path; decoded "%3F" and "%23" are plain characters
        ("/acme/api.git/info/refs#x?service=git-upload-pack", "GET", git(Action.GIT_READ)),
        ("/acme/api.git/info/refs%3Fservice=git-upload-pack", "GET", git(Action.GIT_READ)),
    ],
)
def test_map_original_request(uri: str | None, method: str | None, expected: Target):
    assert map_original_request(uri, method) == expected


def test_only_git_checks_the_username():
    assert git(Action.GIT_READ).check_username
    assert not package(Action.PACKAGE_READ, P).check_username
    assert not NOT_A_DEPLOY_TOKEN_ROUTE.check_username


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("24", Resource("project", id=24)),
        ("acme%2Fapi", Resource("project", path="acme/api")),
        ("acme/api", Resource("project", path="acme/api")),
        ("0024", Resource("project", id=24)),
        ("1" * 19, Resource("project", path="1" * 19)),  # not an id we could hold: a (missing) path
        ("\u0661", Resource("project", path="\u0661")),  # a non-ASCII digit is not an id
        ("", None),
    ],
)
def test_resource_from_reference(raw: str, expected: Resource | None):
    assert resource_from_reference("project", raw) == expected


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, AuthorizationHeader()),
        ("", AuthorizationHeader()),
        (
            f"Basic {b64('gitlab+deploy-token-1:gldt-x')}",
            AuthorizationHeader("basic", "gitlab+deploy-token-1", "gldt-x"),
        ),
        (f"basic   {b64('u:p:with:colons')}  ", AuthorizationHeader("basic", "u", "p:with:colons")),
        (f"Basic {b64('u:')}", AuthorizationHeader("basic", "u", "")),
        (f"Basic {b64('no-colon')}", AuthorizationHeader("basic", malformed=True)),
        ("Basic !!!", AuthorizationHeader("basic", malformed=True)),
        ("Basic " + base64.b64encode(b"\xff\xfe:x").decode(), AuthorizationHeader("basic", malformed=True)),
        ("Bearer gldt-abc", AuthorizationHeader("bearer", secret="gldt-abc")),
        ("BEARER  gldt-abc ", AuthorizationHeader("bearer", secret="gldt-abc")),
        ("Bearer", AuthorizationHeader("bearer", secret=None)),
        ("Digest username=x", AuthorizationHeader()),
    ],
)
def test_parse_authorization(header: str | None, expected: AuthorizationHeader):
    assert parse_authorization(header) == expected


BASIC = AuthorizationHeader("basic", "user", "basic-token")
BEARER = AuthorizationHeader("bearer", secret="bearer-token")
MALFORMED = AuthorizationHeader("basic", malformed=True)
NONE = AuthorizationHeader()


@pytest.mark.parametrize(
    ("authorization", "deploy_token", "basic_only", "expected"),
    [
        # Git and the registry: Basic only, username kept
        (BASIC, "header-token", True, Credentials("user", "basic-token")),
        (BEARER, "header-token", True, Credentials()),
        (NONE, "header-token", True, Credentials()),
        (MALFORMED, None, True, Credentials(malformed=True)),
        (AuthorizationHeader("basic", "user", ""), None, True, Credentials("user", None)),
        # Packages: Basic password wins, then Deploy-Token, then Bearer; username ignored
        (BASIC, "header-token", False, Credentials(None, "basic-token")),
        (BEARER, "header-token", False, Credentials(None, "header-token")),
        (BEARER, None, False, Credentials(None, "bearer-token")),
        (BEARER, "  ", False, Credentials(None, "bearer-token")),
        (AuthorizationHeader("basic", "user", ""), "header-token", False, Credentials(None, "header-token")),
        (MALFORMED, "header-token", False, Credentials(None, "header-token")),
        (MALFORMED, None, False, Credentials(malformed=True)),
        (NONE, None, False, Credentials()),
    ],
)
def test_presented_credentials(
    authorization: AuthorizationHeader, deploy_token: str | None, basic_only: bool, expected: Credentials
):
    assert presented_credentials(authorization, deploy_token, basic_only=basic_only) == expected


PROJECTS = {"acme/api", "acme/api/app", "acme/backend/services/db"}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("acme/api", "acme/api"),
        ("acme/api/web", "acme/api"),
        ("acme/api/app", "acme/api/app"),  # a project named like an image wins: the longest prefix
        ("acme/api/app/web", "acme/api/app"),
        ("acme/backend/services/db/x/y", "acme/backend/services/db"),
        ("acme", None),
        ("other/api", None),
    ],
)
def test_longest_existing_prefix(name: str, expected: str | None):
    assert longest_existing_prefix(name, PROJECTS.__contains__) == expected


GROUPS = {"acme", "acme/backend", "acme/backend/dependency_proxy"}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("acme/dependency_proxy/containers/alpine", "acme"),
        ("acme/backend/dependency_proxy/containers/library/redis", "acme/backend"),
        ("acme/backend/dependency_proxy/containers/x", "acme/backend"),  # the marker decides, not the length
        ("nope/dependency_proxy/containers/alpine", None),
        ("acme/backend/alpine", "acme/backend"),
    ],
)
def test_dependency_proxy_group(name: str, expected: str | None):
    assert dependency_proxy_group(name, GROUPS.__contains__) == expected


@pytest.mark.parametrize(
    ("service", "requested", "expected"),
    [
        ("container_registry", "pull", Action.REGISTRY_PULL),
        ("container_registry", "push", Action.REGISTRY_PUSH),
        ("container_registry", "delete", Action.REGISTRY_DELETE),
        ("container_registry", "*", Action.REGISTRY_DELETE),
        ("container_registry", "catalog", None),
        ("dependency_proxy", "pull", Action.DEPENDENCY_PROXY_READ),
        ("dependency_proxy", "push", Action.DEPENDENCY_PROXY_WRITE),
        ("dependency_proxy", "delete", Action.REGISTRY_DELETE),
        ("dependency_proxy", "*", Action.REGISTRY_DELETE),
        ("elsewhere", "pull", None),
    ],
)
def test_registry_action(service: str, requested: str, expected: Action | None):
    assert registry_action(service, requested) == expected


@pytest.mark.parametrize(
    ("reason", "status"),
    [
        (Reason.NO_CREDENTIALS, 401),
        (Reason.MALFORMED_TOKEN, 401),
        (Reason.UNKNOWN_TOKEN, 401),
        (Reason.USERNAME_MISMATCH, 401),
        (Reason.REVOKED, 401),
        (Reason.DELETED, 401),
        (Reason.EXPIRED, 401),
        (Reason.ROTATED_OUT, 401),
        (Reason.API_NOT_ALLOWED, 401),
        (Reason.RESOURCE_NOT_FOUND, 403),
        (Reason.OUTSIDE_SCOPE, 403),
        (Reason.INSUFFICIENT_SCOPE, 403),
        (Reason.NEVER_GRANTED, 403),
        (Reason.EXTERNAL_AUTHORIZATION, 403),
        (Reason.REPOSITORY_DISABLED, 403),
        (Reason.REGISTRY_DISABLED, 403),
        (Reason.DEPENDENCY_PROXY_DISABLED, 403),
        (Reason.GROUP_TOKEN_REQUIRED, 403),
    ],
)
def test_status_for_every_reason(reason: Reason, status: int):
    assert status_for(Decision(False, reason)) == status


def test_every_reason_has_a_status():
    assert {status_for(Decision(False, reason)) for reason in Reason if reason is not Reason.ALLOWED} == {
        401,
        403,
    }
    assert status_for(Decision(True, Reason.ALLOWED, 1, "u")) == 200


def test_counter_text_format_escapes_label_values():
    counter = Counter("things_total", "Things.", ("kind",))
    counter.inc('a"b\\c\nd')
    counter.inc("plain", amount=2)
    assert counter.render() == [
        "# HELP things_total Things.",
        "# TYPE things_total counter",
        'things_total{kind="a\\"b\\\\c\\nd"} 1.0',
        'things_total{kind="plain"} 2.0',
    ]


def test_histogram_buckets_are_cumulative_with_inclusive_bounds():
    histogram = Histogram("latency_seconds", "Latency.", ("endpoint",), buckets=(0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        histogram.observe(value, "x")
    assert histogram.render()[2:] == [
        'latency_seconds_bucket{endpoint="x",le="0.1"} 2.0',
        'latency_seconds_bucket{endpoint="x",le="1.0"} 3.0',
        'latency_seconds_bucket{endpoint="x",le="+Inf"} 4.0',
        'latency_seconds_count{endpoint="x"} 4.0',
        'latency_seconds_sum{endpoint="x"} 3.65',
    ]
    assert histogram.count("x") == 4


def test_long_uris_are_mapped_without_the_cache():
    long_project = "/".join(["g"] * 400)  # longer than the cached length
    uri = f"/{long_project}.git/info/refs?service=git-upload-pack"
    assert len(uri) > 512
    assert map_original_request(uri, "GET") == git(Action.GIT_READ, Resource("project", path=long_project))
    assert map_original_request(uri.replace("upload", "receive"), "GET").action is Action.GIT_WRITE
