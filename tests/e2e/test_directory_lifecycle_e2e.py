"""Real git through nginx after a project is renamed and transferred, all through python-gitlab
(behaviour [holder-id], [old-paths]): the project's token keeps cloning at the new path, the old path clones
nothing, and a group token loses the project moved out of its group at once."""

from __future__ import annotations

from pathlib import Path

import gitlab
import pytest
from gitlab.v4.objects import Project

from .conftest import Directory
from .harness import Stack, git_env, run

pytestmark = pytest.mark.e2e


def clone(
    stack: Stack, path_with_namespace: str, work: Path, username: str, password: str
) -> tuple[int, str]:
    target = work / f"clone-{len(list(work.iterdir()))}"
    done = run(
        ["git", "clone", "-q", stack.git_url(path_with_namespace, username, password), str(target)],
        cwd=work,
        env=git_env(work),
        timeout=60,
    )
    if done.returncode == 0:
        assert (target / "README").read_text() == "hello\n"
    return done.returncode, done.stderr


def moved(gl: gitlab.Gitlab, stack: Stack, project: Project) -> Project:
    """The project as the service has it now, with its repository where the new path says."""
    fresh = gl.projects.get(project.id)
    stack.create_repository(fresh.path_with_namespace)
    return fresh


def test_a_token_follows_its_project_and_a_group_token_loses_a_project_moved_out(
    gl: gitlab.Gitlab, stack: Stack, directory: Directory, work: Path
):
    home, elsewhere = directory.group("lifehome"), directory.group("lifeaway")
    project = directory.project("life", home)
    project_token = directory.token(project, "read_repository")
    group_token = directory.token(home, "read_repository")
    old_path = project.path_with_namespace
    assert clone(stack, old_path, work, group_token.username, group_token.value)[0] == 0

    project.path = f"{project.path}-renamed"
    project.save()  # PUT /projects/:id with the new path
    project = moved(gl, stack, project)
    assert project.path_with_namespace == f"{old_path}-renamed"
    code, stderr = clone(
        stack, project.path_with_namespace, work, project_token.username, project_token.value
    )
    assert code == 0, stderr
    stale = clone(stack, old_path, work, project_token.username, project_token.value)
    assert stale[0] != 0 and "403" in stale[1]  # no redirect from the old path

    project.transfer(elsewhere.id)  # PUT /projects/:id/transfer, the very next command
    project = moved(gl, stack, project)
    assert project.path_with_namespace.startswith(f"{elsewhere.full_path}/")
    lost = clone(stack, project.path_with_namespace, work, group_token.username, group_token.value)
    assert lost[0] != 0 and "403" in lost[1]
    code, stderr = clone(
        stack, project.path_with_namespace, work, project_token.username, project_token.value
    )
    assert code == 0, stderr
