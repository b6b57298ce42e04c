"""python-gitlab 8.6.0's own functional deploy-token tests, unchanged, against this service (issue 15).

The pinned sdist (``sdist.py``) is unpacked fresh for each run, and pytest runs, in a subprocess inside it, the
nine tests below with the suite's own fixtures (``project``, ``group``, ``deploy_token``, ``group_deploy_token``,
``gitlab_cli``) and ``instance_conftest.py`` in place of its docker-compose GitLab. The service is a live WSGI
server on a free port, on the real clock (the suite creates tokens expiring "today"), on each backend. The
suite's teardown deletes its project and group (``helpers.safe_delete``), so every test here also proves that
a project and a group can be deleted. Missing the sdist or the suite's test plugins skips locally and fails
under ``CI=true``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import re
import subprocess
import sys
import threading
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from api.app import create_app
from deploy_tokens.runtime import Runtime
from infrastructure.settings import Settings

from . import sdist

pytestmark = pytest.mark.slow

API = "tests/functional/api/test_deploy_tokens.py"
CLI = "tests/functional/cli/test_cli_v4.py"
PEER_TESTS = (
    f"{API}::test_project_deploy_tokens",
    f"{API}::test_group_deploy_tokens",
    f"{CLI}::test_create_project_deploy_token",
    f"{CLI}::test_list_all_deploy_tokens",
    f"{CLI}::test_list_project_deploy_tokens",
    f"{CLI}::test_delete_project_deploy_token",
    f"{CLI}::test_create_group_deploy_token",
    f"{CLI}::test_list_group_deploy_tokens",
    f"{CLI}::test_delete_group_deploy_token",
)
# The suite's test plugins (its requirements-test.txt): `script_runner` runs the `gitlab` CLI, and its CLI
# conftest imports `responses`.
SUITE_PLUGINS = ("pytest_console_scripts", "responses")
PLUGIN = (
    "instance_conftest"  # instance_conftest.py beside this file: it imports the suite, so only by name here
)
URL_VARIABLE, TOKEN_VARIABLE = "DEPLOY_TOKENS_PEER_URL", "DEPLOY_TOKENS_PEER_TOKEN"  # what the plugin reads
RUN_TIMEOUT = 900  # seconds; each holder the service could not delete costs the suite 60 s of retries


def unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def archive() -> Path:
    try:
        return sdist.fetch()
    except (sdist.FetchError, OSError) as error:
        unavailable(f"python-gitlab {sdist.VERSION} sdist: {error}")
        raise


@pytest.fixture(scope="session")
def suite_plugins() -> None:
    missing = [name for name in SUITE_PLUGINS if importlib.util.find_spec(name) is None]
    if missing:
        unavailable(f"python-gitlab's test plugins are not installed ({', '.join(missing)}): run .ci/tools")


@pytest.fixture
def live_service(settings: Settings) -> Iterator[tuple[str, str]]:
    """(URL, administrator token) of the service on a free port, on the real clock."""
    werkzeug_log = logging.getLogger("werkzeug")
    level = werkzeug_log.level
    werkzeug_log.setLevel(logging.ERROR)
    with Runtime.open(settings) as runtime:
        _, issued = runtime.directory.bootstrap_admin(username="root", email="root@example.com")
        server = make_server("127.0.0.1", 0, create_app(runtime), threaded=True)
        url = f"http://127.0.0.1:{server.server_port}"
        runtime.settings = dataclasses.replace(runtime.settings, external_url=url)
        thread = threading.Thread(target=server.serve_forever, name="peer-suite-target", daemon=True)
        thread.start()
        try:
            yield url, issued.value
        finally:
            server.shutdown()
            thread.join(timeout=10)
            server.server_close()
            werkzeug_log.setLevel(level)


@dataclasses.dataclass(frozen=True)
class Outcome:
    test: str
    result: str  # "passed", "failed", "error" or "skipped"
    detail: str


def outcomes(report: Path) -> list[Outcome]:
    """Each test case of the JUnit report; a teardown error after a pass makes that test an error."""
    found = []
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        module = case.get("classname", "").replace(".", "/")
        name = re.sub(r"\[.*\]$", "", case.get("name", ""))  # the CLI tests' [inprocess] launch mode
        problems = [child for child in case if child.tag in ("failure", "error", "skipped")]
        result = problems[0].tag.replace("failure", "failed") if problems else "passed"
        detail = "\n".join(f"{p.get('message', '')}\n{p.text or ''}" for p in problems)
        found.append(Outcome(f"{module}.py::{name}", result, detail))
    return found


def run_suite(
    source: Path, url: str, token: str, scratch: Path
) -> tuple[subprocess.CompletedProcess[str], Path]:
    report = scratch / "junit.xml"
    private_tmp = scratch / "tmp"  # the suite writes its CLI configuration to $TMPDIR/python-gitlab.cfg
    private_tmp.mkdir()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTEST_", "PYTHON", "GITLAB_", "CI_JOB", "CI_SERVER"))
    }
    env.update(
        {
            URL_VARIABLE: url,
            TOKEN_VARIABLE: token,
            "PYTHONPATH": str(Path(__file__).parent),
            "PYTHONDONTWRITEBYTECODE": "1",
            "TMPDIR": str(private_tmp),
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        }
    )
    command = [
        sys.executable,
        "-m",
        "pytest",
        *PEER_TESTS,
        "--rootdir",
        str(source),
        "-c",
        str(source / "pyproject.toml"),
        "--confcutdir",
        str(source / "tests" / "functional" / "cli"),
        "-p",
        PLUGIN,
        "-p",
        "no:cacheprovider",
        "-p",
        "no:xdist",
        "--junitxml",
        str(report),
        "-o",
        "junit_family=xunit2",
        "-rfEs",
        "-q",
    ]
    done = subprocess.run(
        command, cwd=source, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
    )
    return done, report


def test_python_gitlabs_functional_deploy_token_tests_pass_unchanged(
    archive: Path, suite_plugins: None, live_service: tuple[str, str], tmp_path: Path
):
    source = sdist.extract(archive, tmp_path / "sdist")
    url, token = live_service
    done, report = run_suite(source, url, token, tmp_path)
    output = f"{done.stdout}\n{done.stderr}"[-20000:]
    assert report.is_file(), f"the suite did not run (exit {done.returncode}):\n{output}"
    found = outcomes(report)
    assert sorted(outcome.test for outcome in found) == sorted(PEER_TESTS), output
    failed = [outcome for outcome in found if outcome.result != "passed"]
    passed = len(found) - len(failed)
    assert not failed, f"{passed} of {len(PEER_TESTS)} passed; not passed:\n" + "\n".join(
        f"{outcome.test}: {outcome.result}\n{outcome.detail[-3000:]}" for outcome in failed
    )
    assert done.returncode == 0, output
