"""The reported bypass, replayed through the real nginx: a token for one project wrote another's packages.

An attacker owned a namespace ``api`` (made before top-level route names were reserved, so such a directory
can exist on an upgraded installation) with subgroups ``v4/projects/<victim id>/packages/generic`` and a
project ``tool``, and a ``read_repository`` token for it. ``PUT /%61pi/v4/projects/<victim id>/packages/
generic/tool/info/refs`` was read by the auth check as a Git read of that project, and served by nginx as a
generic-package upload into the victim project.
"""

from __future__ import annotations

from pathlib import Path

import gitlab
import pytest
from gitlab.v4.objects import Group, Project

import domain.groups
from domain.names import RESERVED_TOP_LEVEL_PATHS

from .conftest import Directory
from .harness import Stack, run

pytestmark = pytest.mark.e2e


def curl(*args: str, work: Path) -> str:
    done = run(["curl", "-sS", "-o", str(work / "body"), "-w", "%{http_code}", *args], cwd=work)
    assert done.returncode == 0, done.stderr
    return done.stdout


def legacy_namespace(gl: gitlab.Gitlab, victim: Project, monkeypatch: pytest.MonkeyPatch) -> Project:
    """``api/v4/projects/<victim>/packages/generic/tool``, as a directory from before the reservation."""
    assert "api" in RESERVED_TOP_LEVEL_PATHS
    monkeypatch.setattr(domain.groups, "RESERVED_TOP_LEVEL_PATHS", frozenset())
    parent: Group | None = None
    for path in ("api", "v4", "projects", str(victim.id), "packages", "generic"):
        attributes = {"name": f"Legacy {path}", "path": path}
        if parent is not None:
            attributes["parent_id"] = parent.id
        created = gl.groups.create(attributes)
        assert isinstance(created, Group)
        parent = created
    monkeypatch.undo()
    assert parent is not None
    tool = gl.projects.create({"name": "tool", "path": "tool", "namespace_id": parent.id})
    assert isinstance(tool, Project)
    return tool


def test_a_git_token_cannot_upload_into_another_project_through_nginx(
    gl: gitlab.Gitlab, directory: Directory, stack: Stack, monkeypatch: pytest.MonkeyPatch, work: Path
) -> None:
    victim = directory.project("victim", directory.group("victims"))
    owner = directory.token(victim, "read_package_registry", "write_package_registry")
    victim_file = stack.generic_url(victim.id, "tool", "info", "refs")
    (work / "original").write_text("the victim's package\n")
    assert (
        curl(
            "-H",
            f"Deploy-Token: {owner.value}",
            "--upload-file",
            str(work / "original"),
            victim_file,
            work=work,
        )
        == "201"
    )

    tool = legacy_namespace(gl, victim, monkeypatch)
    attacker = directory.token(tool, "read_repository")
    attack = f"http://{stack.nginx}/%61pi/v4/projects/{victim.id}/packages/generic/tool/info/refs"
    for method in ("PUT", "POST", "DELETE"):
        status = curl(
            "-X",
            method,
            "--path-as-is",
            "--data-binary",
            "x",
            "-u",
            f"{attacker.username}:{attacker.value}",
            attack,
            work=work,
        )
        print("STATUS", method, status, tool.path_with_namespace)
        assert status == "403", method

    assert curl("-H", f"Deploy-Token: {owner.value}", victim_file, work=work) == "200"
    assert (work / "body").read_text() == "the victim's package\n"


def test_reserved_top_level_names_are_refused_through_the_api(gl: gitlab.Gitlab) -> None:
    for path in ("api", "API", "v2", "jwt", "internal"):
        with pytest.raises(gitlab.GitlabCreateError) as refused:
            gl.groups.create({"name": path, "path": path})
        assert refused.value.response_code == 400
        assert "reserved" in str(refused.value.error_message)
