"""python-gitlab's source distribution, pinned by version and SHA-256: the peer suite's tests, byte for byte.

``python tests/peer/sdist.py`` (run by ``.ci/tools``) downloads it with pip into ``build/peer/`` (gitignored) unless
a verified copy is there; the tests call ``fetch()`` and ``extract()`` themselves. Nothing of it is copied into
the repository.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

NAME = "python-gitlab"
VERSION = "8.6.0"
SHA256 = "d1602164fb58ab280ceef460faf015cec6e7d83bb2d9cbae44ba448adb5568ef"
ARCHIVE_NAME = f"python_gitlab-{VERSION}.tar.gz"
CACHE = Path(__file__).resolve().parents[2] / "build" / "peer"


class FetchError(RuntimeError):
    """The pinned archive could not be downloaded, or what came is not it."""


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cached(cache: Path = CACHE) -> Path | None:
    """The archive in the cache when it is the pinned one."""
    archive = cache / ARCHIVE_NAME
    return archive if archive.is_file() and digest(archive) == SHA256 else None


def fetch(cache: Path = CACHE, *, timeout: float = 300) -> Path:
    """The verified archive, downloaded with pip (the sdist itself: ``--no-binary``) when not cached yet."""
    found = cached(cache)
    if found is not None:
        return found
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--dest",
            scratch,
            f"{NAME}=={VERSION}",
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as error:
            raise FetchError(f"pip download of {NAME}=={VERSION} took over {timeout:.0f} s") from error
        downloaded = Path(scratch) / ARCHIVE_NAME
        if done.returncode != 0 or not downloaded.is_file():
            raise FetchError(f"pip download of {NAME}=={VERSION} failed:\n{done.stdout}{done.stderr}")
        if digest(downloaded) != SHA256:
            raise FetchError(f"{ARCHIVE_NAME} has SHA-256 {digest(downloaded)}, not the pinned {SHA256}")
        downloaded.replace(cache / ARCHIVE_NAME)  # atomic: a concurrent reader sees all of it or nothing
    return cache / ARCHIVE_NAME


def extract(archive: Path, into: Path) -> Path:
    """Unpack a fresh, unmodified copy (``filter="data"``: no links or paths outside ``into``); its root."""
    if digest(archive) != SHA256:
        raise FetchError(f"{archive} is not the pinned {ARCHIVE_NAME}")
    with tarfile.open(archive) as bundle:
        bundle.extractall(into, filter="data")
    return into / f"python_gitlab-{VERSION}"


if __name__ == "__main__":
    try:
        print(fetch())
    except FetchError as error:
        sys.exit(str(error))
