"""Settings from the environment (every variable is in the README's table, and a test keeps them equal): nothing
configured means the embedded default. Every variable the service reads is read here, so that a malformed one
fails the start with one ``ConfigurationError`` naming it, whichever process reads it first."""

from __future__ import annotations

import ipaddress
import math
import os
import pwd
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from infrastructure.audit_delivery import DeliveryPolicy
from infrastructure.bans import LOOPBACK, BanPolicy, IPNetwork

DEFAULT_REGISTRY_ISSUER = "deploy-token-service"
DEFAULT_REGISTRY_TOKEN_TTL = 300  # GitLab's container_registry_token_expire_delay: 5 minutes
# The names logging.config accepts; anything else would fail where the logging is configured, not here.
LOG_LEVELS = frozenset({"CRITICAL", "FATAL", "ERROR", "WARN", "WARNING", "INFO", "DEBUG", "NOTSET"})
DEFAULT_HOST = "127.0.0.1"  # /internal/ answers whether a token is valid: reachable from this machine only
DEFAULT_PORT = 8080
# Set by the web process (api/gunicorn_conf.py) for its workers: prometheus_client's multiprocess folder.
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


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
                user=unquote(parts.username or _os_user()),
                password=unquote(parts.password or ""),
                dbname=dbname,
                schema=query.get("schema", ["public"])[0],
            )
        raise ConfigurationError(
            "DEPLOY_TOKENS_DATABASE_URL must start with sqlite:/// or postgresql:// "
            f"(got scheme {parts.scheme!r})"
        )

    @property
    def store_missing(self) -> bool:
        """An embedded store whose file does not exist yet (nothing has been recorded here)."""
        return self.sqlite_path is not None and not self.sqlite_path.exists()

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
    # Peers whose forwarded-address headers are believed (nginx in front of /internal/auth_request).
    trusted_proxies: tuple[IPNetwork, ...] = LOOPBACK
    auth_bans: BanPolicy = field(default_factory=BanPolicy)
    # The registry token server's JWT ``iss`` (the registry's ``auth.token.issuer`` must match) and how many
    # seconds a registry token is valid.
    registry_issuer: str = DEFAULT_REGISTRY_ISSUER
    registry_token_ttl: int = DEFAULT_REGISTRY_TOKEN_TTL
    log_level: str = "INFO"
    log_level_set: bool = False  # DEPLOY_TOKENS_LOG_LEVEL was given (one-shot CLI commands log warnings only)
    # The web process (gunicorn, api/gunicorn_conf.py): where it listens, its worker processes and threads.
    bind: str = f"{DEFAULT_HOST}:{DEFAULT_PORT}"
    web_concurrency: int = 4
    web_threads: int = 8
    # Where the web workers keep their metrics for /metrics to sum (set by the web process itself).
    metrics_dir: Path | None = None
    # Activity retention (behaviour [retention]): days of token_activity kept (None: forever), and where the
    # archives of older rows go (None: <data dir>/archive).
    activity_retention_days: int | None = None
    archive_dir: Path | None = None
    # Audit event streaming (behaviour [audit-streaming]): one delivery's timeout, the waits between retries.
    audit_stream: DeliveryPolicy = field(default_factory=DeliveryPolicy)
    # Federation (behaviour [federation]): whether trusted OIDC issuers may be ``http`` URLs (a local issuer).
    oidc_allow_insecure: bool = False

    @property
    def activity_archive_dir(self) -> Path:
        return self.archive_dir if self.archive_dir is not None else self.data_dir / "archive"

    @property
    def jobs_in_process(self) -> bool:
        return self.redis_url is None

    def __repr__(self) -> str:  # the secret key never reaches a log line
        return (
            f"Settings(data_dir={self.data_dir}, database={self.database!r}, "
            f"redis={'set' if self.redis_url else 'unset'}, smtp={'set' if self.smtp_url else 'maildir'}, "
            f"external_url={self.external_url}, bind={self.bind})"
        )

    @staticmethod
    def locate(environ: Mapping[str, str] | None = None) -> tuple[Path, DatabaseLocation]:
        """The data folder and the database the environment selects, without creating anything (``from_env``
        creates the embedded data folder and its secret)."""
        env = os.environ if environ is None else environ
        data_dir = Path(env.get("DEPLOY_TOKENS_DATA_DIR") or "./var").resolve()
        url = env.get("DEPLOY_TOKENS_DATABASE_URL") or f"sqlite:///{data_dir / _SQLITE_FILE}"
        return data_dir, DatabaseLocation.parse(url)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        data_dir, database = cls.locate(env)
        if database.dialect == "sqlite":
            assert database.sqlite_path is not None
            private_folder(database.sqlite_path.parent, own=(database.sqlite_path.name,))
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
        registry_issuer = (env.get("DEPLOY_TOKENS_REGISTRY_ISSUER") or "").strip()
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
            trusted_proxies=_networks(env, "DEPLOY_TOKENS_TRUSTED_PROXIES", LOOPBACK),
            auth_bans=BanPolicy(
                max_retry=_whole_number(env, "DEPLOY_TOKENS_BAN_MAXRETRY", 10),
                find_time=_whole_number(env, "DEPLOY_TOKENS_BAN_FINDTIME", 60, minimum=1),
                ban_time=_whole_number(env, "DEPLOY_TOKENS_BAN_BANTIME", 3600, minimum=1),
                allowlist=_networks(env, "DEPLOY_TOKENS_BAN_ALLOWLIST", LOOPBACK),
            ),
            registry_issuer=registry_issuer or DEFAULT_REGISTRY_ISSUER,
            registry_token_ttl=_whole_number(
                env, "DEPLOY_TOKENS_REGISTRY_TOKEN_TTL", DEFAULT_REGISTRY_TOKEN_TTL, minimum=60, maximum=86400
            ),
            log_level=_log_level(env),
            log_level_set=bool((env.get("DEPLOY_TOKENS_LOG_LEVEL") or "").strip()),
            bind=_bind(env),
            web_concurrency=_whole_number(env, "WEB_CONCURRENCY", 4, minimum=1, maximum=256),
            web_threads=_whole_number(env, "WEB_THREADS", 8, minimum=1, maximum=1024),
            metrics_dir=Path(env[METRICS_DIR_ENV]) if env.get(METRICS_DIR_ENV) else None,
            activity_retention_days=_retention_days(env),
            archive_dir=_archive_dir(env),
            audit_stream=_audit_stream(env),
            oidc_allow_insecure=_true_or_false(env, "DEPLOY_TOKENS_OIDC_ALLOW_INSECURE"),
        )


def _whole_number(
    env: Mapping[str, str], name: str, default: int, *, minimum: int = 0, maximum: int | None = None
) -> int:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    # isdigit() alone takes other scripts' digits ("\u0663"): ASCII only. More than 18 digits is out of any
    # range here, and int() refuses thousands of digits with a ValueError of its own.
    digits = raw.isascii() and raw.isdigit() and len(raw) <= 18
    if digits and minimum <= int(raw) and (maximum is None or int(raw) <= maximum):
        return int(raw)
    bound = f"at least {minimum}" if maximum is None else f"{minimum} to {maximum}"
    raise ConfigurationError(f"{name} must be a whole number, {bound}")


# Activity retention ---------------------------------------------------------------------------------------

# A century: any longer is "forever", which is what leaving the variable unset says.
MAX_RETENTION_DAYS = 36500


def _retention_days(env: Mapping[str, str]) -> int | None:
    """``DEPLOY_TOKENS_ACTIVITY_RETENTION_DAYS``: unset or empty keeps activity forever."""
    if not (env.get("DEPLOY_TOKENS_ACTIVITY_RETENTION_DAYS") or "").strip():
        return None
    return _whole_number(
        env, "DEPLOY_TOKENS_ACTIVITY_RETENTION_DAYS", 0, minimum=1, maximum=MAX_RETENTION_DAYS
    )


def _archive_dir(env: Mapping[str, str]) -> Path | None:
    """``DEPLOY_TOKENS_ARCHIVE_DIR``: unset or empty means ``<data dir>/archive``."""
    raw = (env.get("DEPLOY_TOKENS_ARCHIVE_DIR") or "").strip()
    if not raw:
        return None
    if not raw.isprintable() or len(raw) > 4096:  # NUL, control characters, lone surrogates
        raise ConfigurationError("DEPLOY_TOKENS_ARCHIVE_DIR must be a folder path of printable characters")
    return Path(raw).resolve()


# Audit event streaming --------------------------------------------------------------------------------------


def _seconds(env: Mapping[str, str], name: str, default: float, *, minimum: float, maximum: float) -> float:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not minimum <= value <= maximum:  # NaN and infinities too
        raise ConfigurationError(f"{name} must be a number of seconds, {minimum:g} to {maximum:g}")
    return value


def _audit_stream(env: Mapping[str, str]) -> DeliveryPolicy:
    """``DEPLOY_TOKENS_AUDIT_STREAM_TIMEOUT``, ``..._RETRY_MIN`` and ``..._RETRY_MAX`` (seconds), and
    ``..._ALLOW_INSECURE`` (``true``: destinations may be ``http`` URLs and local or private addresses)."""
    timeout = _seconds(env, "DEPLOY_TOKENS_AUDIT_STREAM_TIMEOUT", 10.0, minimum=0.01, maximum=300.0)
    first = _seconds(env, "DEPLOY_TOKENS_AUDIT_STREAM_RETRY_MIN", 1.0, minimum=0.01, maximum=3600.0)
    cap = _seconds(env, "DEPLOY_TOKENS_AUDIT_STREAM_RETRY_MAX", 300.0, minimum=0.01, maximum=86400.0)
    if cap < first:
        raise ConfigurationError(
            "DEPLOY_TOKENS_AUDIT_STREAM_RETRY_MAX must not be less than DEPLOY_TOKENS_AUDIT_STREAM_RETRY_MIN"
        )
    return DeliveryPolicy(
        timeout=timeout,
        first_retry=first,
        max_retry=cap,
        allow_insecure=_true_or_false(env, "DEPLOY_TOKENS_AUDIT_STREAM_ALLOW_INSECURE"),
    )


def _true_or_false(env: Mapping[str, str], name: str) -> bool:
    """``true`` or ``false``; unset or empty is ``false``."""
    value = (env.get(name) or "").strip() or "false"
    if value not in ("true", "false"):
        raise ConfigurationError(f"{name} must be true or false")
    return value == "true"


def _os_user() -> str:
    """libpq's default user: the operating-system user this process runs as."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return "postgres"


def _bind(env: Mapping[str, str]) -> str:
    """gunicorn's bind address: ``DEPLOY_TOKENS_BIND`` (``HOST``, ``HOST:PORT``, ``[IPv6]:PORT`` or
    ``unix:PATH``), its port from ``PORT`` when it names none; loopback when unset. ``PORT`` alone (a process
    manager's, e.g. honcho's) only changes the port: listening beyond this machine is always said explicitly."""
    port = _whole_number(env, "PORT", DEFAULT_PORT, minimum=1, maximum=65535)
    raw = (env.get("DEPLOY_TOKENS_BIND") or "").strip()
    if not raw:
        return f"{DEFAULT_HOST}:{port}"
    if raw.startswith("unix:"):
        if len(raw) == len("unix:"):
            raise ConfigurationError("DEPLOY_TOKENS_BIND: unix: needs a socket path")
        return raw
    host, explicit = raw, None
    if raw.startswith("["):
        if "]" not in raw:
            raise ConfigurationError(f"DEPLOY_TOKENS_BIND: {raw[:64]!r} is not [IPv6]:PORT")
        host, _, rest = raw[1:].partition("]")
        explicit = rest[1:] if rest.startswith(":") else None
        if rest and explicit is None:
            raise ConfigurationError(f"DEPLOY_TOKENS_BIND: {raw[:64]!r} is not [IPv6]:PORT")
    elif raw.count(":") == 1:
        host, explicit = raw.split(":")
    if explicit is not None:
        if not (explicit.isascii() and explicit.isdigit() and 1 <= int(explicit) <= 65535):
            raise ConfigurationError(f"DEPLOY_TOKENS_BIND: the port of {raw[:64]!r} must be 1 to 65535")
        port = int(explicit)
    if not host or any(char.isspace() or char in "/[]" for char in host):
        raise ConfigurationError(f"DEPLOY_TOKENS_BIND: {raw[:64]!r} is not HOST, HOST:PORT or unix:PATH")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _log_level(env: Mapping[str, str]) -> str:
    level = (env.get("DEPLOY_TOKENS_LOG_LEVEL") or "").strip() or "INFO"
    if level not in LOG_LEVELS:
        raise ConfigurationError(f"DEPLOY_TOKENS_LOG_LEVEL must be one of {', '.join(sorted(LOG_LEVELS))}")
    return level


def _networks(env: Mapping[str, str], name: str, default: tuple[IPNetwork, ...]) -> tuple[IPNetwork, ...]:
    """Comma-separated addresses or CIDRs. Unset means ``default``; set but empty means none at all."""
    raw = env.get(name)
    if raw is None:
        return default
    networks = []
    for item in raw.split(","):
        text = item.strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ConfigurationError(f"{name}: {text[:64]!r} is not an IP address or CIDR") from None
    return tuple(networks)


def _embedded_secret(data_dir: Path) -> bytes:
    """Generated once into the data folder with mode 0600, so restarts keep every digest valid.

    Written to a private temporary file and hard-linked into place, so two processes starting at once
    agree on one secret and neither ever reads a half-written file.
    A secret left group/other-readable (by hand, or by a restore) is tightened back to 0600.
    """
    private_folder(data_dir)
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
    status = path.stat()
    if stat.S_IMODE(status.st_mode) & 0o077 and status.st_uid == os.geteuid():
        path.chmod(0o600)
    return path.read_bytes().strip()


# What the service itself writes into its data folder (``.secret_key.*`` only for an instant).
_SERVICE_ENTRIES = frozenset({"secret_key", "maildir", "archive"})
_SQLITE_FILE = "deploy-tokens.sqlite3"
_SQLITE_COMPANIONS = ("", "-wal", "-shm", "-journal")


def private_folder(folder: Path, *, own: tuple[str, ...] = ()) -> None:
    """Create ``folder`` with mode 0700, or tighten an existing one to 0700 if it is the service's own.

    Missing parents are created as the umask says: only the folder itself holds secrets. An existing folder
    is tightened only when this process owns it and everything in it is something the service writes there
    (``own`` adds names, e.g. a SQLite file kept outside the data folder; a name also covers its
    ``-wal``/``-shm`` companions), an empty one included: that is the data folder an older version created
    with 0755, or one made ready for the service (a volume's mount point). A folder holding anything else is
    left as it is: the data folder may have been pointed at a shared place (the default ``./var`` run from
    ``/`` is ``/var``), and taking it away from its other users would break them.
    """
    try:
        folder.mkdir(mode=0o700, parents=True)
        return
    except FileExistsError:
        pass
    status = folder.stat()
    mode = stat.S_IMODE(status.st_mode)
    if not mode & 0o077 or status.st_uid != os.geteuid():
        return
    service = _SERVICE_ENTRIES | {
        name + suffix for name in (_SQLITE_FILE, *own) for suffix in _SQLITE_COMPANIONS
    }
    with os.scandir(folder) as entries:
        if all(entry.name in service or entry.name.startswith(".secret_key.") for entry in entries):
            folder.chmod(mode & 0o700)
