"""The end-to-end stack: the service plus the real third-party servers, on loopback ports chosen at run time.

Shared by ``tests/e2e`` (pytest fixtures) and ``scripts/e2e_stack.py`` (a person trying it by hand), so it
never imports pytest: a missing binary raises :class:`MissingTool`, which the fixtures turn into a failure
under ``CI=true`` and a skip otherwise. Configurations are the smallest each real client accepts; the helpers started as
the ones in ``tests/api/test_auth_checks.py`` (git through nginx, skopeo through docker-registry).

Every server is started in its own session (``start_new_session``) and stopped by process group, which
also takes fcgiwrap's children down (they survive a SIGTERM to the parent alone).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.util
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from ..ports import free_port

GIT_BACKEND = "/usr/lib/git-core/git-http-backend"
BINARIES = ("git", "nginx", "fcgiwrap", "docker-registry", "skopeo", "curl")
PYTHON_MODULES = ("pypiserver", "twine")


class MissingTool(RuntimeError):
    """A binary or Python module the stack needs is not installed (``.ci/tools`` installs them)."""


class OffsetClock:
    """Real time plus an offset the tests move: token lifetimes stay real for docker-registry (it checks
    ``exp`` against its own clock), yet an expiry can be reached without sleeping (``advance``)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    @contextmanager
    def advanced(self, by: timedelta) -> Iterator[None]:
        self.offset += by
        try:
            yield
        finally:
            self.offset -= by


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise MissingTool(f"{name} is not installed (.ci/tools installs it)")
    return found


def python_module(name: str) -> None:
    if importlib.util.find_spec(name) is None:
        raise MissingTool(f"the Python module {name} is not installed in {sys.executable} (.ci/tools)")


def check_tools() -> None:
    for name in BINARIES:
        tool(name)
    if not Path(GIT_BACKEND).exists():
        raise MissingTool(f"{GIT_BACKEND} is missing (package git)")
    for module in PYTHON_MODULES:
        python_module(module)


def http(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, headers=headers or {}), timeout=10) as response:
            return int(response.status), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers)


def basic(username: str, password: str) -> dict[str, str]:
    encoded = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


def wait_for(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited early:\n{log.read_text(errors='replace')}")
        try:
            http(url)
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer:\n{log.read_text(errors='replace')}")


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a server the stack started, with its whole process group."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            process.wait()
    else:  # the leader is gone; children (fcgiwrap -c N) may still hold the group
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)


def run(
    command: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """A client command; never raises on a non-zero exit (the tests assert on it)."""
    return subprocess.run(
        list(command),
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# Test artefacts written by hand: an OCI image layout and a wheel --------------------------------------------


def oci_image(folder: Path, tag: str) -> None:
    """A one-layer OCI image layout written by hand, readable as ``oci:folder:tag``."""
    blobs = folder / "blobs/sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    layer_tar = io.BytesIO()
    with tarfile.open(fileobj=layer_tar, mode="w") as archive:
        content = b"hello from a deploy token\n"
        info = tarfile.TarInfo("hello.txt")
        info.size, info.mtime = len(content), 1_700_000_000
        archive.addfile(info, io.BytesIO(content))
    raw = layer_tar.getvalue()
    layer = {**blob(gzip.compress(raw, mtime=0)), "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip"}
    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(raw).hexdigest()}"]},
    }
    config_ref = {
        **blob(json.dumps(config).encode()),
        "mediaType": "application/vnd.oci.image.config.v1+json",
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_ref,
        "layers": [layer],
    }
    manifest_ref = {
        **blob(json.dumps(manifest).encode()),
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }
    (folder / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (folder / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest_ref]}))


def tiny_wheel(folder: Path, name: str, version: str = "0.1.0") -> Path:
    """A pure-Python wheel zipped by hand (no network, no build backend): one module, valid RECORD."""
    folder.mkdir(parents=True, exist_ok=True)
    module = name.replace("-", "_")
    dist_info = f"{module}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": f'GREETING = "hello from {name}"\n'.encode(),
        f"{dist_info}/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: e2e test package\n"
        ).encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: e2e\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = folder / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in files.items():
            archive.writestr(zipfile.ZipInfo(path, date_time=(2024, 1, 1, 0, 0, 0)), data)
    return wheel


# Server configurations ------------------------------------------------------------------------------------

# The locations that put auth_request in front of a backend, shared by the stack and by the routing probe
# (ROUTING_PROBE_CONF), so that the differential test checks the very locations the end-to-end tests use.
GIT_LOCATION = r"^/.+\.git/"
PYPI_LOCATION = r"^/api/v4/projects/(?<projid>\d+)/packages/pypi(/.*)?$"
GENERIC_LOCATION = r"^/api/v4/projects/(?<generic_project>\d+)/packages/generic/[^/]+/[^/]+/[^/]+$"

NGINX_CONF = """
worker_processes 1;
pid {run}/nginx.pid;
error_log {run}/nginx-error.log warn;
events {{ worker_connections 128; }}
http {{
  access_log {run}/nginx-access.log;
  client_body_temp_path {run}/tmp/body; proxy_temp_path {run}/tmp/proxy; fastcgi_temp_path {run}/tmp/fastcgi;
  uwsgi_temp_path {run}/tmp/uwsgi; scgi_temp_path {run}/tmp/scgi;
  client_max_body_size 0;
  server {{
    listen 127.0.0.1:{port};
    location = /_auth {{
      internal;
      proxy_pass {app}/internal/auth_request;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Original-Method $request_method;
      proxy_set_header X-Original-Remote-Addr $remote_addr;
    }}
    location @auth_denied {{
      if ($auth_error = "unavailable") {{ add_header Retry-After 1 always; return 503; }}
      return 403;
    }}
    # Git over HTTP: git http-backend through fcgiwrap; REMOTE_USER comes from the service's X-Auth-User.
    location ~ {git_location} {{
      auth_request /_auth;
      auth_request_set $auth_user $upstream_http_x_auth_user;
      auth_request_set $auth_error $upstream_http_x_auth_error;
      error_page 403 = @auth_denied;
      fastcgi_pass unix:{run}/fcgiwrap.sock;
      include /etc/nginx/fastcgi_params;
      fastcgi_param SCRIPT_FILENAME {git_backend};
      fastcgi_param GIT_PROJECT_ROOT {run}/repos;
      fastcgi_param GIT_HTTP_EXPORT_ALL "";
      fastcgi_param PATH_INFO $uri;
      fastcgi_param REMOTE_USER $auth_user;
      fastcgi_buffering off;
    }}
    # PyPI: pypiserver (its own auth off); links carry the GitLab prefix through X-Forwarded-Host.
    location ~ {pypi_location} {{
      auth_request /_auth;
      auth_request_set $auth_error $upstream_http_x_auth_error;
      error_page 403 = @auth_denied;
      rewrite ^/api/v4/projects/\\d+/packages/pypi/?(.*)$ /$1 break;
      proxy_pass http://127.0.0.1:{pypi_port};
      proxy_set_header X-Forwarded-Host $host:$server_port/api/v4/projects/$projid/packages/pypi;
      proxy_set_header Authorization "";
    }}
    # GitLab-style generic packages: nginx WebDAV file storage.
    location ~ {generic_location} {{
      auth_request /_auth;
      auth_request_set $auth_error $upstream_http_x_auth_error;
      error_page 403 = @auth_denied;
      root {run}/generic;
      dav_methods PUT;
      create_full_put_path on;
      dav_access user:rw group:r all:r;
    }}
  }}
}}
"""

# nginx with the stack's locations, each answering what nginx made of the request instead of serving it:
# the location's name, the project id it captured, $args and $uri ($uri last: it may hold a decoded newline).
ROUTING_PROBE_CONF = """
worker_processes 1;
pid {run}/probe.pid;
error_log {run}/probe-error.log warn;
events {{ worker_connections 128; }}
http {{
  access_log off;
  default_type text/plain;
  client_body_temp_path {run}/tmp/body; proxy_temp_path {run}/tmp/proxy; fastcgi_temp_path {run}/tmp/fastcgi;
  uwsgi_temp_path {run}/tmp/uwsgi; scgi_temp_path {run}/tmp/scgi;
  server {{
    listen 127.0.0.1:{port};
    location ~ {git_location} {{ return 200 "git\\n\\n$args\\n$uri"; }}
    location ~ {pypi_location} {{ return 200 "pypi\\n$projid\\n$args\\n$uri"; }}
    location ~ {generic_location} {{ return 200 "generic\\n$generic_project\\n$args\\n$uri"; }}
    location / {{ return 200 "other\\n\\n$args\\n$uri"; }}
  }}
}}
"""

REGISTRY_CONF = """version: 0.1
log: {{ level: warn }}
storage:
  filesystem: {{ rootdirectory: {data} }}
  delete: {{ enabled: true }}
http:
  addr: 127.0.0.1:{port}
auth:
  token:
    realm: {app}/jwt/auth
    service: container_registry
    issuer: deploy-token-service
    rootcertbundle: {bundle}
"""


def git_env(home: Path) -> dict[str, str]:
    return {
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_NOSYSTEM": "1",
        "HOME": str(home),
        "GIT_AUTHOR_NAME": "e2e",
        "GIT_AUTHOR_EMAIL": "e2e@example.com",
        "GIT_COMMITTER_NAME": "e2e",
        "GIT_COMMITTER_EMAIL": "e2e@example.com",
    }


def serve_app(app: Flask) -> tuple[BaseWSGIServer, threading.Thread]:
    """The service on a loopback port, werkzeug with a thread per request (in-process: writes catch up)."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="e2e-service", daemon=True)
    thread.start()
    return server, thread


@dataclass
class Stack:
    """nginx (git + pypi + generic packages) + fcgiwrap + pypiserver + docker-registry, around a service URL."""

    app_url: str
    run_dir: Path
    nginx_port: int = 0
    registry_port: int = 0
    pypi_port: int = 0
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def nginx(self) -> str:
        return f"127.0.0.1:{self.nginx_port}"

    @property
    def registry(self) -> str:
        return f"127.0.0.1:{self.registry_port}"

    def git_url(self, path: str, username: str | None = None, password: str | None = None) -> str:
        credentials = f"{username}:{password}@" if username is not None else ""
        return f"http://{credentials}{self.nginx}/{path}.git"

    def pypi_url(self, project_id: int) -> str:
        return f"http://{self.nginx}/api/v4/projects/{project_id}/packages/pypi"

    def generic_url(self, project_id: int, name: str, version: str, file: str) -> str:
        return f"http://{self.nginx}/api/v4/projects/{project_id}/packages/generic/{name}/{version}/{file}"

    # Lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> Stack:
        check_tools()
        run = self.run_dir
        for folder in ("repos", "generic", "pypi", "registry", "tmp", "seed"):
            (run / folder).mkdir(parents=True, exist_ok=True)
        self._seed_repository()
        self.nginx_port, self.registry_port, self.pypi_port = free_port(), free_port(), free_port()
        try:
            self._start_pypiserver()
            self._start_nginx()
            self._start_registry()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for process in reversed(self.processes):
            stop(process)
        self.processes.clear()

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _spawn(self, command: list[str], log_name: str) -> subprocess.Popen[bytes]:
        log = self.run_dir / log_name
        with log.open("ab") as out:
            process = subprocess.Popen(
                command, stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self.processes.append(process)
        return process

    def _start_pypiserver(self) -> None:
        process = self._spawn(
            [
                sys.executable,
                "-m",
                "pypiserver",
                "run",
                "-i",
                "127.0.0.1",
                "-p",
                str(self.pypi_port),
                "-a",
                ".",
                "-P",
                ".",
                "--disable-fallback",
                str(self.run_dir / "pypi"),
            ],
            "pypiserver.log",
        )
        wait_for(f"http://127.0.0.1:{self.pypi_port}/", process, self.run_dir / "pypiserver.log")

    def _start_nginx(self) -> None:
        run = self.run_dir
        for folder in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (run / "tmp" / folder).mkdir(parents=True, exist_ok=True)
        conf = NGINX_CONF.format(
            run=run,
            port=self.nginx_port,
            app=self.app_url,
            pypi_port=self.pypi_port,
            git_backend=GIT_BACKEND,
            git_location=GIT_LOCATION,
            pypi_location=PYPI_LOCATION,
            generic_location=GENERIC_LOCATION,
        )
        if os.geteuid() == 0:  # nginx drops to "nobody" otherwise, which cannot read the run directory
            conf = "user root;\n" + conf
        (run / "nginx.conf").write_text(conf)
        self._spawn([tool("fcgiwrap"), "-c", "4", "-s", f"unix:{run}/fcgiwrap.sock"], "fcgiwrap.log")
        web = self._spawn(
            [tool("nginx"), "-p", str(run), "-c", str(run / "nginx.conf"), "-g", "daemon off;"], "nginx.log"
        )
        wait_for(f"http://{self.nginx}/", web, run / "nginx-error.log")
        deadline = time.monotonic() + 10
        while not (run / "fcgiwrap.sock").exists() and time.monotonic() < deadline:
            time.sleep(0.02)

    def _start_registry(self) -> None:
        run = self.run_dir / "registry"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"{self.app_url}/jwt/certificate", timeout=10) as response:
            (run / "token.crt").write_bytes(response.read())
        (run / "config.yml").write_text(
            REGISTRY_CONF.format(
                data=json.dumps(str(run / "data")),
                port=self.registry_port,
                app=self.app_url,
                bundle=json.dumps(str(run / "token.crt")),
            )
        )
        process = self._spawn([tool("docker-registry"), "serve", str(run / "config.yml")], "registry.log")
        wait_for(f"http://{self.registry}/v2/", process, self.run_dir / "registry.log")

    # Repositories ------------------------------------------------------------------------------------------

    def _seed_repository(self) -> None:
        git, env = tool("git"), {**os.environ, **git_env(self.run_dir)}
        seed, work = self.run_dir / "seed/seed.git", self.run_dir / "seed/work"
        subprocess.run([git, "init", "-q", "--bare", str(seed)], check=True, env=env)
        subprocess.run([git, "init", "-q", "-b", "main", str(work)], check=True, env=env)
        (work / "README").write_text("hello\n")
        subprocess.run([git, "-C", str(work), "add", "README"], check=True, env=env)
        subprocess.run([git, "-C", str(work), "commit", "-q", "-m", "first"], check=True, env=env)
        subprocess.run([git, "-C", str(work), "push", "-q", str(seed), "main"], check=True, env=env)
        subprocess.run([git, "-C", str(seed), "symbolic-ref", "HEAD", "refs/heads/main"], check=True, env=env)
        # Pushes are refused by the service, never by git http-backend.
        subprocess.run([git, "-C", str(seed), "config", "http.receivepack", "true"], check=True, env=env)

    def create_repository(self, path_with_namespace: str) -> Path:
        """A bare repository for a project (``group/sub/project``), seeded with one commit on ``main``."""
        target = self.run_dir / "repos" / f"{path_with_namespace}.git"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(self.run_dir / "seed/seed.git", target)
        return target


@dataclass
class Routed:
    """What nginx made of one request: 400 (refused), or the location, captured project id, $args and $uri."""

    status: int
    location: str = ""
    project_id: str = ""
    args: bytes = b""
    uri: bytes = b""


class RoutingProbe:
    """nginx with the stack's locations, answering how it routed each raw request line (never a backend)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RoutingProbe:
        run = self.run_dir
        for folder in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (run / "tmp" / folder).mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = ROUTING_PROBE_CONF.format(
            run=run,
            port=self.port,
            git_location=GIT_LOCATION,
            pypi_location=PYPI_LOCATION,
            generic_location=GENERIC_LOCATION,
        )
        (run / "probe.conf").write_text(conf)
        log = run / "probe.log"
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [tool("nginx"), "-p", str(run), "-c", str(run / "probe.conf"), "-g", "daemon off;"],
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        wait_for(f"http://127.0.0.1:{self.port}/", self.process, run / "probe-error.log")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process is not None:
            stop(self.process)

    def route(self, method: str, request_uri: bytes) -> Routed:
        """Send the request line exactly as given (no client normalises it) and read nginx's answer.

        nginx chooses a location by path alone, so a HEAD is routed as the GET it is sent as here (a HEAD
        answer would carry no body to report in).
        """
        verb = "GET" if method == "HEAD" else method
        request = verb.encode("ascii") + b" " + request_uri + b" HTTP/1.1\r\nHost: probe\r\n"
        request += b"Connection: close\r\n\r\n"
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as connection:
            connection.sendall(request)
            chunks = []
            while chunk := connection.recv(65536):
                chunks.append(chunk)
        head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 200:
            return Routed(status)
        location, project_id, args, uri = body.split(b"\n", 3)
        return Routed(status, location.decode(), project_id.decode(), args, uri)
