"""Settings from the environment (SPEC §9.1). Nothing configured means the embedded default."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit


class ConfigurationError(Exception):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class DatabaseLocation:
    dialect: str  # "sqlite" or "postgresql"
    sqlite_path: Path | None = None
    host: str = "127.0.0.1"
    port: int = 5432
    user: str = ""
    password: str = ""
    dbname: str = ""
    schema: str = "public"

    @classmethod
    def parse(cls, url: str) -> DatabaseLocation:
        parts = urlsplit(url)
        if parts.scheme == "sqlite":
            # sqlite:///relative/file and sqlite:////absolute/file, as SQLAlchemy spells them.
            path = parts.path[1:] if parts.path.startswith("/") else parts.path
            if not path:
                raise ConfigurationError("DEPLOY_TOKENS_DATABASE_URL: sqlite URL needs a file path")
            return cls("sqlite", sqlite_path=Path(unquote(path)))
        if parts.scheme in ("postgresql", "postgres"):
            query = parse_qs(parts.query)
            dbname = unquote(parts.path.lstrip("/"))
            if not dbname:
                raise ConfigurationError("DEPLOY_TOKENS_DATABASE_URL: postgresql URL needs a database name")
            return cls(
                "postgresql",
                host=parts.hostname or "127.0.0.1",
                port=parts.port or 5432,
                user=unquote(parts.username or os.environ.get("USER", "postgres")),
                password=unquote(parts.password or ""),
                dbname=dbname,
                schema=query.get("schema", ["public"])[0],
            )
        raise ConfigurationError(
            "DEPLOY_TOKENS_DATABASE_URL must start with sqlite:/// or postgresql:// "
            f"(got scheme {parts.scheme!r})"
        )

    def conninfo(self) -> str:
        """libpq connection string for PostgreSQL."""
        parts = [f"host={self.host}", f"port={self.port}", f"dbname={self.dbname}", f"user={self.user}"]
        if self.password:
            parts.append(f"password={self.password}")
        return " ".join(parts)

    def __repr__(self) -> str:  # never print the password
        if self.dialect == "sqlite":
            return f"DatabaseLocation(sqlite:{self.sqlite_path})"
        return (
            f"DatabaseLocation(postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}, {self.schema})"
        )


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database: DatabaseLocation
    redis_url: str | None
    smtp_url: str | None
    secret_key: bytes
    external_url: str
    auth_max_staleness: float
    projection_batch_size: int
    notification_lease: float
    mail_from: str

    @property
    def jobs_in_process(self) -> bool:
        return self.redis_url is None

    def __repr__(self) -> str:  # the secret key never reaches a log line
        return (
            f"Settings(data_dir={self.data_dir}, database={self.database!r}, "
            f"redis={'set' if self.redis_url else 'unset'}, smtp={'set' if self.smtp_url else 'maildir'}, "
            f"external_url={self.external_url})"
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        data_dir = Path(env.get("DEPLOY_TOKENS_DATA_DIR") or "./var").resolve()
        url = env.get("DEPLOY_TOKENS_DATABASE_URL") or f"sqlite:///{data_dir / 'deploy-tokens.sqlite3'}"
        database = DatabaseLocation.parse(url)
        if database.dialect == "sqlite":
            assert database.sqlite_path is not None
            database.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        secret = env.get("DEPLOY_TOKENS_SECRET_KEY")
        if secret:
            if len(secret) < 32:
                raise ConfigurationError("DEPLOY_TOKENS_SECRET_KEY must be at least 32 characters")
            secret_key = secret.encode()
        elif database.dialect == "sqlite":
            secret_key = _embedded_secret(data_dir)
        else:
            raise ConfigurationError(
                "DEPLOY_TOKENS_SECRET_KEY is required with PostgreSQL: every process must share it"
            )
        staleness = env.get("DEPLOY_TOKENS_AUTH_MAX_STALENESS", "2.0")
        try:
            max_staleness = float(staleness)
        except ValueError:
            raise ConfigurationError("DEPLOY_TOKENS_AUTH_MAX_STALENESS must be a number of seconds") from None
        try:
            batch_size = int(env.get("DEPLOY_TOKENS_PROJECTION_BATCH", "500"))
        except ValueError:
            raise ConfigurationError("DEPLOY_TOKENS_PROJECTION_BATCH must be a whole number") from None
        if batch_size < 1:
            raise ConfigurationError("DEPLOY_TOKENS_PROJECTION_BATCH must be at least 1")
        try:
            lease = float(env.get("DEPLOY_TOKENS_NOTIFY_LEASE_SECONDS", "300"))
        except ValueError:
            raise ConfigurationError(
                "DEPLOY_TOKENS_NOTIFY_LEASE_SECONDS must be a number of seconds"
            ) from None
        external_url = (env.get("DEPLOY_TOKENS_EXTERNAL_URL") or "http://127.0.0.1:8080").rstrip("/")
        return cls(
            data_dir=data_dir,
            database=database,
            redis_url=env.get("DEPLOY_TOKENS_REDIS_URL") or None,
            smtp_url=env.get("DEPLOY_TOKENS_SMTP_URL") or None,
            secret_key=secret_key,
            external_url=external_url,
            auth_max_staleness=max_staleness,
            projection_batch_size=batch_size,
            notification_lease=lease,
            mail_from=env.get("DEPLOY_TOKENS_MAIL_FROM")
            or f"deploy-tokens@{urlsplit(external_url).hostname}",
        )


def _embedded_secret(data_dir: Path) -> bytes:
    """Generated once into the data folder with mode 0600, so restarts keep every digest valid.

    Written to a private temporary file and hard-linked into place, so two processes starting at once
    agree on one secret and neither ever reads a half-written file.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "secret_key"
    if not path.exists():
        candidate = data_dir / f".secret_key.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
        try:
            os.link(candidate, path)
        except FileExistsError:
            pass
        finally:
            candidate.unlink()
    return path.read_bytes().strip()
