"""skopeo through docker-registry 2.8 with token auth against the service's /jwt/auth
(behaviour [registry], [external-authorization])."""

from __future__ import annotations

from pathlib import Path

import pytest
from gitlab.v4.objects import Group, Project

from .conftest import Directory, Token
from .harness import Stack, oci_image, run
from .test_git import clone
from .test_packages import pip_install, tiny_package, twine_upload

pytestmark = pytest.mark.e2e


def skopeo(*args: str, cwd: Path) -> tuple[int, str]:
    done = run(
        ["skopeo", "--insecure-policy", *args],
        cwd=cwd,
        env={"REGISTRY_AUTH_FILE": str(cwd / "auth.json"), "HOME": str(cwd)},
    )
    return done.returncode, done.stderr


def creds(token: Token, value: str | None = None) -> str:
    return f"{token.username}:{value or token.value}"


def push(stack: Stack, project: Project, token: Token, work: Path, tag: str = "v1") -> tuple[int, str]:
    if not (work / "image").exists():
        oci_image(work / "image", "v1")
    target = f"docker://{stack.registry}/{project.path_with_namespace}/app:{tag}"
    return skopeo(
        "copy", "--dest-tls-verify=false", "--dest-creds", creds(token), "oci:image:v1", target, cwd=work
    )


def pull(stack: Stack, project: Project, token: Token, work: Path, tag: str = "v1") -> tuple[int, str]:
    source = f"docker://{stack.registry}/{project.path_with_namespace}/app:{tag}"
    out = f"oci:out-{len(list(work.glob('out-*')))}:{tag}"
    return skopeo("copy", "--src-tls-verify=false", "--src-creds", creds(token), source, out, cwd=work)


@pytest.fixture(scope="module")
def images(
    directory: Directory, stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Group, Project, Project, Token]:
    """Two projects, the first with app:v1 pushed by a read_registry+write_registry token."""
    top = directory.group("images")
    project, other = directory.project("svc", top), directory.project("else", top)
    writer = directory.token(project, "read_registry", "write_registry")
    code, stderr = push(stack, project, writer, tmp_path_factory.mktemp("push"))
    assert code == 0, stderr
    return top, project, other, writer


def test_push_with_read_and_write_registry_and_pull_with_read(
    stack: Stack, directory: Directory, images: tuple[Group, Project, Project, Token], work: Path
):
    _, project, _, writer = images
    code, stderr = push(stack, project, writer, work, "v2")
    assert code == 0, stderr
    reader = directory.token(project, "read_registry")
    code, stderr = pull(stack, project, reader, work)
    assert code == 0, stderr
    code, stderr = pull(stack, project, reader, work, "v2")
    assert code == 0, stderr


def test_registry_refusals(
    stack: Stack, directory: Directory, images: tuple[Group, Project, Project, Token], work: Path
):
    _, project, other, writer = images
    reader = directory.token(project, "read_registry")
    code, stderr = push(stack, project, reader, work, "by-reader")
    assert code != 0 and "denied" in stderr  # read only cannot push
    target = f"docker://{stack.registry}/{project.path_with_namespace}/app:v1"
    code, stderr = skopeo("delete", "--tls-verify=false", "--creds", creds(writer), target, cwd=work)
    assert code != 0 and "401 Unauthorized" in stderr  # delete is never granted (behaviour [registry])
    code, stderr = pull(stack, project, reader, work)
    assert code == 0, stderr  # the image survived the refused delete
    another = directory.token(other, "read_registry")
    code, stderr = pull(stack, project, another, work)
    assert code != 0 and "denied" in stderr
    wrong = skopeo(
        "inspect", "--tls-verify=false", "--creds", creds(reader, "gldt-" + "x" * 20), target, cwd=work
    )
    assert wrong[0] != 0 and "unauthorized" in wrong[1].lower()
    repository_only = directory.token(project, "read_repository")
    code, stderr = pull(stack, project, repository_only, work)
    assert code != 0 and "403" in stderr  # no registry scope: /jwt/auth itself answers 403


def test_revoked_token_is_refused_by_the_very_next_pull(
    stack: Stack, directory: Directory, images: tuple[Group, Project, Project, Token], work: Path
):
    _, project, _, _ = images
    reader = directory.token(project, "read_registry")
    assert pull(stack, project, reader, work)[0] == 0
    reader.revoke()
    code, stderr = pull(stack, project, reader, work)
    assert code != 0 and "unauthorized" in stderr.lower()


def test_external_authorization_refuses_git_and_packages_but_not_the_registry(
    stack: Stack, directory: Directory, images: tuple[Group, Project, Project, Token], work: Path
):
    """behaviour [external-authorization]: with external authorization on, deploy tokens keep
    the registry and lose git and packages."""
    _, project, _, _ = images
    everything = directory.token(
        project, "read_repository", "read_registry", "read_package_registry", "write_package_registry"
    )
    wheel = tiny_package(work / "dist", directory.unique("extauth"))
    upload = twine_upload(stack, project, everything, wheel, work)
    assert upload.returncode == 0, upload.stdout + upload.stderr
    directory.set_external_authorization(True)
    try:
        assert pull(stack, project, everything, work)[0] == 0
        code, stderr = clone(stack, project, work, everything.username, everything.value)
        assert code != 0 and "403" in stderr
        refused = pip_install(stack, project, everything, wheel, work)
        assert refused.returncode != 0 and "No matching distribution" in refused.stderr
    finally:
        directory.set_external_authorization(False)
    code, stderr = clone(stack, project, work, everything.username, everything.value)
    assert code == 0, stderr
    installed = pip_install(stack, project, everything, wheel, work)
    assert installed.returncode == 0, installed.stdout + installed.stderr
