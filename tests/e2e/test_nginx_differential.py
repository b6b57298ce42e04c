"""The auth check reads every request URI exactly as the real nginx routes it (differential, hypothesis).

Each generated request line goes, byte for byte, to an nginx with the stack's own locations (git, PyPI,
generic packages), which answers how it routed it instead of serving it. For every one:

* nginx refused it (400) => the mapper refuses it too (nothing to allow);
* otherwise the mapper's canonical path and query are nginx's ``$uri`` and ``$args``, byte for byte;
* a request nginx hands to git http-backend is checked as Git on the project nginx serves, and as a write
  whenever it could push; one nginx hands to a package backend is checked as that project's package read
  (GET/HEAD) or write (anything else). Where the mapper is stricter (it refuses a URL that could name two
  resources), it names nothing, never something else.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from api.request_mapping import NOT_A_DEPLOY_TOKEN_ROUTE, Protocol, canonical_uri, map_original_request
from projections.access import Action
from projections.credential_index import Resource

from .conftest import missing
from .harness import MissingTool, Routed, RoutingProbe

pytestmark = pytest.mark.e2e

# Real project and API paths, the material the tricks below are applied to.
BASES = [
    "/acme/web.git/info/refs",
    "/acme/web.git/git-upload-pack",
    "/acme/web.git/git-receive-pack",
    "/acme/backend/services/db.git/HEAD",
    "/acme/web/info/refs",
    "/acme/web/git-upload-pack",
    "/api/v4/projects/12/packages/generic/tool/1.0.0/tool.txt",
    "/api/v4/projects/12/packages/pypi/simple/tool/",
    "/api/v4/projects/12/packages/pypi",
    "/api/v4/projects/acme%2Fweb/packages/npm/tool",
    "/api/v4/groups/3/-/packages/maven/a/b/1/b.pom",
    "/api/v4/projects/12/packages/generic/tool/info/refs",
    "/api/v4/projects/12/deploy_tokens",
]
QUERIES = [
    "",
    "?service=git-upload-pack",
    "?service=git-receive-pack",
    "?service=git%2Dreceive%2Dpack",
    "?service=git-upload-pack&service=git-receive-pack",
    "?service=",
    "?a=1#frag?service=git-receive-pack",
    "#frag",
    "?x=%00",
]
SEGMENT_TRICKS = ["", "/", "/.", "/./", "/..", "/x/..", "/%2e", "/%2E%2e", "/.%2e", "//", "/%2f", ";x=y"]
CHARACTER_TRICKS = ["%00", "%zz", "%2", "%25", "%3F", "%23", "%0a", "%20", "\x01", " ", "\x7f", "\xe9", "#"]
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "PROPFIND"]


def _encode(character: str, upper: bool) -> str:
    code = f"{ord(character):02X}"
    return "%" + (code if upper else code.lower())


@st.composite
def request_uris(draw: st.DrawFn) -> str:
    """A real path with random percent-encoding, case changes, slash and dot tricks, and query tricks."""
    base = draw(st.sampled_from(BASES))
    characters = []
    for character in base:
        roll = draw(st.integers(0, 19))
        if roll == 0 and character != "%":
            characters.append(_encode(character, draw(st.booleans())))
        elif roll == 1 and character.isalpha():
            characters.append(character.swapcase())
        elif roll == 2 and character == "/":
            characters.append("/" + draw(st.sampled_from(SEGMENT_TRICKS)) + "/")
        else:
            characters.append(character)
    uri = "".join(characters)
    if draw(st.integers(0, 5)) == 0:
        at = draw(st.integers(1, len(uri)))
        uri = uri[:at] + draw(st.sampled_from(CHARACTER_TRICKS)) + uri[at:]
    return uri + draw(st.sampled_from(QUERIES))


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RoutingProbe]:
    try:
        with RoutingProbe(tmp_path_factory.mktemp("probe")) as started:
            yield started
    except MissingTool as error:
        missing(error)


def _latin1(data: bytes) -> str:
    return data.decode("latin-1")


def assert_same_reading(probe: RoutingProbe, method: str, uri: str) -> None:
    routed: Routed = probe.route(method, uri.encode("latin-1"))
    target = map_original_request(uri, method)
    canonical = canonical_uri(uri)
    if routed.status == 400:
        assert canonical is None, f"nginx refused {uri!r}, the mapper read {canonical!r}"
        assert target == NOT_A_DEPLOY_TOKEN_ROUTE
        return
    assert routed.status == 200, routed
    assert canonical is not None, f"nginx routed {uri!r} to {routed.location}, the mapper refused it"
    assert (canonical.path, canonical.args) == (_latin1(routed.uri), _latin1(routed.args))
    path, args = canonical
    if target == NOT_A_DEPLOY_TOKEN_ROUTE:
        return  # stricter than nginx: names nothing, so allows nothing
    if routed.location == "git":
        assert target.protocol is Protocol.GIT
        assert target.resource == Resource("project", path=path[1 : path.index(".git/")])
        if "git-receive-pack" in (path + unquote(args)).lower():
            assert target.action is Action.GIT_WRITE
    elif routed.location in ("pypi", "generic"):
        assert target.protocol is Protocol.PACKAGES
        assert target.resource == Resource("project", id=int(routed.project_id))
        reading = method in ("GET", "HEAD")
        assert target.action is (Action.PACKAGE_READ if reading else Action.PACKAGE_WRITE)


@settings(
    max_examples=600,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(method=st.sampled_from(METHODS), uri=request_uris())
# The reported bypass: nginx routes "/%61pi/..." as the API, so the check must read it as the API.
@example(method="PUT", uri="/%61pi/v4/projects/12/packages/generic/tool/info/refs")
@example(method="GET", uri="/acme/web.git/../../x")
@example(method="GET", uri="/acme/web.git/%2e%2e/%2E%2E/other/x.git/info/refs")
@example(method="PUT", uri="/api/v4/projects/1%2F..%2F12/packages/generic/a/b/c")
@example(method="GET", uri="/acme/web.git/info/refs%00")
def test_the_mapper_reads_every_uri_as_nginx_routes_it(probe: RoutingProbe, method: str, uri: str) -> None:
    assert_same_reading(probe, method, uri)


def test_the_probe_reports_nginx_routing(probe: RoutingProbe, tmp_path: Path) -> None:
    """The probe itself: without it the differential test could pass by comparing nothing."""
    routed = probe.route("PUT", b"/%61pi/v4/projects/12/packages/generic//tool/1.0/f.txt")
    assert (routed.location, routed.project_id) == ("generic", "12")
    assert routed.uri == b"/api/v4/projects/12/packages/generic/tool/1.0/f.txt"
    assert probe.route("GET", b"/a/%00").status == 400
    assert probe.route("GET", b"/..").status == 400
    assert probe.route("GET", b"/acme/web.git/info/refs?service=x#y").args == b"service=x"


# Short URIs drawn from the characters nginx's parser treats specially, to walk every corner of its states.
TRICKY_ALPHABET = [
    "/",
    ".",
    "%",
    "2",
    "e",
    "E",
    "f",
    "F",
    "0",
    "3",
    "5",
    "?",
    "#",
    "a",
    "+",
    ";",
    "%2f",
    "%2e",
]


@settings(
    max_examples=600,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(method=st.sampled_from(METHODS), tail=st.lists(st.sampled_from(TRICKY_ALPHABET), max_size=24))
def test_the_mapper_normalises_like_nginx_on_arbitrary_syntax(
    probe: RoutingProbe, method: str, tail: list[str]
) -> None:
    assert_same_reading(probe, method, "/" + "".join(tail))
