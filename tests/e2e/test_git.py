"""git clone/push through nginx auth_request + fcgiwrap + git http-backend (behaviour [git]),
tokens from python-gitlab."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from gitlab.v4.objects import Group, Project

from deploy_tokens.runtime import Runtime
from projections.credential_index import StaleIndex

from .conftest import Directory, Token
from .harness import OffsetClock, Stack, basic, git_env, http, run

pytestmark = pytest.mark.e2e

Tree = tuple[Group, Project, Project]  # a group, a project in it, another project in it


def git(*args: str, cwd: Path) -> tuple[int, str]:
    done = run(["git", *args], cwd=cwd, env=git_env(cwd), timeout=60)
    return done.returncode, done.stderr


def clone(stack: Stack, project: Project, work: Path, username: str, password: str) -> tuple[int, str]:
    target = work / f"clone-{len(list(work.iterdir()))}"
    code, stderr = git(
        "clone", "-q", stack.git_url(project.path_with_namespace, username, password), str(target), cwd=work
    )
    if code == 0:
        assert (target / "README").read_text() == "hello\n"
    return code, stderr


@pytest.fixture(scope="module")
def tree(directory: Directory) -> Tree:
    top = directory.group("gitgroup")
    project = directory.project("api", top)
    other = directory.project("other", top)
    return top, project, other


def test_clone_with_read_repository_works(stack: Stack, directory: Directory, tree: Tree, work: Path):
    _, project, _ = tree
    reader = directory.token(project, "read_repository")
    code, stderr = clone(stack, project, work, reader.username, reader.value)
    assert code == 0, stderr
    # A username in URL-encoded form works too.
    code, stderr = clone(stack, project, work, reader.username.replace("+", "%2B"), reader.value)
    assert code == 0, stderr


def test_clone_refusals(stack: Stack, directory: Directory, tree: Tree, work: Path):
    _, project, other = tree
    reader = directory.token(project, "read_repository")
    others = directory.token(other, "read_repository")
    registry_only = directory.token(project, "read_registry", "write_registry")

    wrong_user = clone(stack, project, work, "gitlab+deploy-token-999999", reader.value)
    assert wrong_user[0] != 0 and "Authentication failed" in wrong_user[1]
    wrong_token = clone(stack, project, work, reader.username, "gldt-" + "x" * 20)
    assert wrong_token[0] != 0 and "Authentication failed" in wrong_token[1]
    another_project = clone(stack, project, work, others.username, others.value)
    assert another_project[0] != 0 and "403" in another_project[1]
    registry_token = clone(stack, project, work, registry_only.username, registry_only.value)
    assert registry_token[0] != 0 and "403" in registry_token[1]


def test_revoked_and_deleted_tokens_are_refused_by_the_very_next_clone(
    stack: Stack, directory: Directory, tree: Tree, work: Path
):
    _, project, _ = tree
    for remove in (Token.revoke, Token.delete):
        token = directory.token(project, "read_repository")
        assert clone(stack, project, work, token.username, token.value)[0] == 0
        remove(token)  # python-gitlab; the next command follows at once, no sleep
        code, stderr = clone(stack, project, work, token.username, token.value)
        assert code != 0 and "Authentication failed" in stderr, remove.__name__


def test_expired_token_is_refused(
    stack: Stack, directory: Directory, tree: Tree, work: Path, e2e_clock: OffsetClock
):
    _, project, _ = tree
    expires = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    token = directory.token(project, "read_repository", expires_at=expires.isoformat())
    assert clone(stack, project, work, token.username, token.value)[0] == 0
    with e2e_clock.advanced(timedelta(days=2)):  # the service's clock only; no sleep
        code, stderr = clone(stack, project, work, token.username, token.value)
    assert code != 0 and "Authentication failed" in stderr
    assert clone(stack, project, work, token.username, token.value)[0] == 0  # clock back: valid again


def test_push_is_refused(stack: Stack, directory: Directory, tree: Tree, work: Path):
    _, project, _ = tree
    token = directory.token(project, "read_repository")
    assert clone(stack, project, work, token.username, token.value)[0] == 0
    checkout = next(work.glob("clone-*"))
    (checkout / "NEW").write_text("x\n")
    git("add", "NEW", cwd=checkout)
    git("commit", "-q", "-m", "x", cwd=checkout)
    code, stderr = git("push", "-q", "origin", "main", cwd=checkout)
    assert code != 0 and "403" in stderr


def test_group_token_clones_deep_and_later_projects(stack: Stack, directory: Directory, work: Path):
    top = directory.group("deep")
    sub = directory.group("sub", top)
    subsub = directory.group("subsub", sub)
    deep = directory.project("db", subsub)
    token = directory.token(top, "read_repository")
    later = directory.project("later", sub)  # created after the token
    for project in (deep, later):
        code, stderr = clone(stack, project, work, token.username, token.value)
        assert code == 0, (project.path_with_namespace, stderr)
    # A subgroup's token does not reach its parent's projects.
    at_top = directory.project("top", top)
    sub_token = directory.token(sub, "read_repository")
    code, stderr = clone(stack, at_top, work, sub_token.username, sub_token.value)
    assert code != 0 and "403" in stderr


def test_a_stale_index_answers_a_retryable_503_and_git_keeps_its_credentials(
    stack: Stack,
    directory: Directory,
    tree: Tree,
    work: Path,
    e2e_service: tuple[str, Runtime],
    monkeypatch: pytest.MonkeyPatch,
):
    """behaviour [fail-closed]: through nginx's recipe, "unavailable" becomes 503 with Retry-After, which git
    reports without discarding the credentials it was given (a 401 or 403 would)."""
    _, project, _ = tree
    reader = directory.token(project, "read_repository")
    assert clone(stack, project, work, reader.username, reader.value)[0] == 0

    def behind() -> None:
        raise StaleIndex("behind")

    monkeypatch.setattr(e2e_service[1].index, "ensure_fresh", behind)
    status, headers = http(
        stack.git_url(project.path_with_namespace) + "/info/refs?service=git-upload-pack",
        basic(reader.username, reader.value),
    )
    assert status == 503
    assert headers.get("Retry-After") == "1"
    code, stderr = git(
        "ls-remote", stack.git_url(project.path_with_namespace, reader.username, reader.value), cwd=work
    )
    assert code != 0 and "503" in stderr
    assert "Authentication failed" not in stderr
