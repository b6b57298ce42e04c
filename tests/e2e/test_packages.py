"""Package registries behind nginx auth_request (behaviour [packages]):
twine + pip on pypiserver, curl on generic packages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from gitlab.v4.objects import Project

from .conftest import Directory, Token
from .harness import Stack, run, tiny_wheel

pytestmark = pytest.mark.e2e

# pip turns a 401/403 from the index into "no distribution".
NOT_FOUND = "No matching distribution found"


def tiny_package(folder: Path, name: str) -> Path:
    return tiny_wheel(folder, name)


def client_env(work: Path) -> dict[str, str]:
    """No user configuration, no keyring, never a prompt."""
    return {
        "HOME": str(work),
        "PIP_CONFIG_FILE": "/dev/null",
        "PIP_FIND_LINKS": "",  # only the index under test may answer
        "PIP_NO_INPUT": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_KEYRING_PROVIDER": "disabled",
        "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring",
        "NO_COLOR": "1",
    }


def twine_upload(
    stack: Stack, project: Project, token: Token, wheel: Path, work: Path
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "twine", "upload", "--non-interactive", "--disable-progress-bar"]
    command += ["--repository-url", stack.pypi_url(project.id), "-u", token.username, "-p", token.value]
    return run([*command, str(wheel)], cwd=work, env=client_env(work))


def pip_install(
    stack: Stack, project: Project, token: Token, wheel: Path, work: Path
) -> subprocess.CompletedProcess[str]:
    """Installs the wheel's distribution by name from the project's index, into a fresh target directory."""
    name, version = wheel.name.split("-")[:2]
    index = stack.pypi_url(project.id).replace("http://", f"http://{token.username}:{token.value}@")
    target = work / f"site-{len(list(work.glob('site-*')))}"
    command = [sys.executable, "-m", "pip", "install", "--no-cache-dir", "--no-deps", "--target", str(target)]
    command += ["--index-url", f"{index}/simple/", f"{name}=={version}"]
    done = run(command, cwd=work, env=client_env(work))
    if done.returncode == 0:
        assert (target / name / "__init__.py").exists()
    return done


def curl(*args: str, work: Path) -> str:
    """The HTTP status curl saw."""
    done = run(["curl", "-sS", "-o", str(work / "body"), "-w", "%{http_code}", *args], cwd=work)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def project(directory: Directory) -> Project:
    return directory.project("pkgs", directory.group("packages"))


def test_twine_upload_with_write_and_pip_install_with_read(
    stack: Stack, directory: Directory, project: Project, work: Path
):
    writer = directory.token(project, "write_package_registry")
    reader = directory.token(project, "read_package_registry")
    wheel = tiny_package(work / "dist", directory.unique("e2e-hello"))
    uploaded = twine_upload(stack, project, writer, wheel, work)
    assert uploaded.returncode == 0, uploaded.stdout + uploaded.stderr
    installed = pip_install(stack, project, reader, wheel, work)
    assert installed.returncode == 0, installed.stdout + installed.stderr


def test_the_reverse_is_refused(stack: Stack, directory: Directory, project: Project, work: Path):
    writer = directory.token(project, "write_package_registry")
    reader = directory.token(project, "read_package_registry")
    wheel = tiny_package(work / "dist", directory.unique("e2e-reverse"))
    refused = twine_upload(stack, project, reader, wheel, work)
    assert refused.returncode != 0 and "403" in refused.stdout + refused.stderr
    assert twine_upload(stack, project, writer, wheel, work).returncode == 0
    write_only = pip_install(stack, project, writer, wheel, work)  # write cannot read (behaviour [packages])
    assert write_only.returncode != 0 and NOT_FOUND in write_only.stderr
    other = directory.project("otherpkgs", directory.group("packages"))
    stranger = directory.token(other, "read_package_registry")
    elsewhere = pip_install(stack, project, stranger, wheel, work)
    assert elsewhere.returncode != 0 and NOT_FOUND in elsewhere.stderr


def test_revoked_token_is_refused_by_the_very_next_pip_install(
    stack: Stack, directory: Directory, project: Project, work: Path
):
    writer = directory.token(project, "write_package_registry")
    reader = directory.token(project, "read_package_registry")
    wheel = tiny_package(work / "dist", directory.unique("e2e-revoked"))
    assert twine_upload(stack, project, writer, wheel, work).returncode == 0
    assert pip_install(stack, project, reader, wheel, work).returncode == 0
    reader.revoke()
    revoked = pip_install(stack, project, reader, wheel, work)
    assert revoked.returncode != 0 and NOT_FOUND in revoked.stderr


def test_generic_packages_with_the_deploy_token_header(
    stack: Stack, directory: Directory, project: Project, work: Path
):
    writer = directory.token(project, "write_package_registry")
    reader = directory.token(project, "read_package_registry")
    url = stack.generic_url(project.id, "tool", "1.0.0", "tool.txt")
    (work / "tool.txt").write_text("a generic package\n")
    upload = ["--upload-file", str(work / "tool.txt"), url]
    assert curl("-H", f"Deploy-Token: {reader.value}", *upload, work=work) == "403"
    assert curl("-H", f"Deploy-Token: {writer.value}", *upload, work=work) == "201"
    assert curl("-H", f"Deploy-Token: {writer.value}", *upload, work=work) == "204"  # overwrite
    assert curl("-H", f"Deploy-Token: {reader.value}", url, work=work) == "200"
    assert (work / "body").read_text() == "a generic package\n"
    assert curl("-u", f"{reader.username}:{reader.value}", url, work=work) == "200"
    assert curl(url, work=work) == "401"
    assert curl("-H", "Deploy-Token: gldt-" + "x" * 20, url, work=work) == "401"
    reader.revoke()
    assert curl("-H", f"Deploy-Token: {reader.value}", url, work=work) == "401"
