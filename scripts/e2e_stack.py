"""Start the end-to-end stack for a person: the service plus nginx (git, PyPI, generic packages), fcgiwrap,
git http-backend, pypiserver and docker-registry, all on loopback ports chosen now. It prints copy-paste
commands, then waits; Ctrl-C stops every process it started (by process group).

    make e2e-stack                      # or: python scripts/e2e_stack.py [--dir DIR] [--database-url URL]

The service uses an embedded SQLite database in the run directory unless ``--database-url`` (or
``DEPLOY_TOKENS_DATABASE_URL``) names another, e.g. ``postgresql://root@127.0.0.1:5432/test?schema=e2e``.
A run directory it created itself is removed when it stops; one given with ``--dir`` is kept. The printed
``twine`` and ``pip`` commands are the virtual environment's own, so they work from any shell.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import secrets
import shlex
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.app import create_app
from deploy_tokens.runtime import Runtime
from deploy_tokens.tokens import IssuedToken
from infrastructure.settings import Settings
from tests.e2e.harness import MissingTool, Stack, oci_image, serve_app, tiny_wheel

ALL_SCOPES = [
    "read_repository",
    "read_registry",
    "write_registry",
    "read_package_registry",
    "write_package_registry",
]


def instructions(
    stack: Stack, app_url: str, admin_token: str, project_id: int, path: str, token: IssuedToken
) -> str:
    run_dir = stack.run_dir.parent
    index = stack.pypi_url(project_id).replace("http://", "http://$DT_USER:$DT_TOKEN@")
    generic = stack.generic_url(project_id, "tool", "1.0.0", "tool.txt")
    image = f"{stack.registry}/{path}/app:v1"
    tokens = f"{app_url}/api/v4/projects/{project_id}/deploy_tokens"
    # The clients of this interpreter's environment (the project's .venv), not whatever is first on PATH.
    twine = shlex.quote(str(Path(sys.executable).parent / "twine"))
    pip = f"{shlex.quote(sys.executable)} -m pip"
    return f"""
Deploy-token service  {app_url}   (run directory {run_dir})
nginx (git, packages) {stack.nginx}   docker-registry {stack.registry}

# The bootstrap admin token (an instance administrator's personal access token):
export ADMIN_TOKEN='{admin_token}'
curl -s -H "PRIVATE-TOKEN: $ADMIN_TOKEN" {tokens}

# A deploy token for project {path} (id {project_id}) with every scope:
export DT_USER='{token.token.username}' DT_TOKEN='{token.value}'

# Another one through the API (read_repository only):
curl -s -H "PRIVATE-TOKEN: $ADMIN_TOKEN" -H 'Content-Type: application/json' \\
  -d '{{"name": "mine", "scopes": ["read_repository"]}}' {tokens}

# git clone works; git push is refused (deploy tokens never write repositories):
git clone "http://$DT_USER:$DT_TOKEN@{stack.nginx}/{path}.git"

# skopeo: push the demo image, then pull it:
skopeo copy --dest-tls-verify=false --dest-creds "$DT_USER:$DT_TOKEN" oci:{run_dir}/image:v1 docker://{image}
skopeo copy --src-tls-verify=false --src-creds "$DT_USER:$DT_TOKEN" docker://{image} oci:{run_dir}/pulled:v1

# PyPI: upload the demo wheel with twine, install it with pip:
{twine} upload --repository-url {stack.pypi_url(project_id)} -u "$DT_USER" -p "$DT_TOKEN" {run_dir}/dist/*
{pip} install --target {run_dir}/site --index-url "{index}/simple/" e2e-hello

# Generic packages with the Deploy-Token header:
curl -H "Deploy-Token: $DT_TOKEN" --upload-file {run_dir}/dist/e2e_hello-0.1.0-py3-none-any.whl {generic}
curl -H "Deploy-Token: $DT_TOKEN" {generic} -o /dev/null -w '%{{http_code}}\\n'

# Revoke the token; the very next command above is refused:
curl -s -X POST -H "PRIVATE-TOKEN: $ADMIN_TOKEN" {tokens}/{token.token.token_id}/revoke

Ctrl-C stops everything.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", type=Path, help="run directory (default: a new temporary directory)")
    parser.add_argument("--database-url", default=os.environ.get("DEPLOY_TOKENS_DATABASE_URL"))
    args = parser.parse_args(argv)
    temporary = args.dir is None
    run_dir = (args.dir or Path(tempfile.mkdtemp(prefix="deploy-tokens-e2e-"))).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        return serve_stack(run_dir, args.database_url)
    finally:
        if temporary:
            shutil.rmtree(run_dir, ignore_errors=True)


def serve_stack(run_dir: Path, database_url: str | None) -> int:
    """Start everything with ``run_dir`` as the run directory, print the commands, wait for Ctrl-C."""
    env = {
        "DEPLOY_TOKENS_DATA_DIR": str(run_dir / "data"),
        "DEPLOY_TOKENS_SECRET_KEY": os.environ.get("DEPLOY_TOKENS_SECRET_KEY") or secrets.token_urlsafe(48),
    }
    if database_url:
        env["DEPLOY_TOKENS_DATABASE_URL"] = database_url
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):  # explicit: a background job may inherit SIGINT ignored
        signal.signal(signum, lambda *_: stopping.set())
    with Runtime.open(Settings.from_env(env)) as runtime:
        server, thread = serve_app(create_app(runtime))
        app_url = f"http://127.0.0.1:{server.server_port}"
        runtime.settings = dataclasses.replace(runtime.settings, external_url=app_url)
        stack = Stack(app_url, run_dir / "stack")
        try:
            stack.start()
            _, issued = runtime.directory.bootstrap_admin(username="root", email="root@example.com")
            admin = runtime.access.authenticate(issued.value).actor
            group = runtime.directory.create_group(admin, name="Demo", path="demo")
            project_id = runtime.directory.create_project(admin, name="App", namespace_id=group)
            project = runtime.read.project(project_id)
            assert project is not None
            stack.create_repository(project.full_path)
            token = runtime.tokens.create_token(
                admin, "project", project_id, name="try-it", scopes=ALL_SCOPES
            )
            oci_image(run_dir / "image", "v1")  # something to push, and a wheel to upload
            tiny_wheel(run_dir / "dist", "e2e-hello")
            print(
                instructions(stack, app_url, issued.value, project_id, project.full_path, token),
                flush=True,
            )
            while not stopping.wait(0.5):
                pass
        except MissingTool as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        finally:
            print("stopping…", file=sys.stderr)
            stack.stop()
            server.shutdown()
            thread.join(timeout=10)
            server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
