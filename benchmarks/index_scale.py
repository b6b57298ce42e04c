"""(issue 16) The credential index at a million tokens: its resident memory, its time to ready, its decisions.

Per backend, N tokens (default 1,000,000; ``INDEX_SCALE_TOKENS`` or ``python -m benchmarks.index_scale N
[sqlite|postgres ...]``) are put in the credential-lookup read model: half revoked, some deleted, some expired,
some with an expiry to come, some rotated (one in twenty still within a grace period), some with a username of
their own, over a hundred projects and their group. Then a **fresh process** measures what an API process
pays for the index: its resident memory before the first refresh and after it (the index's own share), the
time that refresh takes (ready: every token in memory and confirmed current), and decisions per second on live
tokens, together with the keyed-digest floor measured in the same process, and the rate for dead and unknown
values (which must not touch the database).

How the read model is filled. Projecting a million tokens' events (Created, Scoped, Revoked, Rotated) runs at
about 1,400 tokens a second here, some twelve minutes a backend, far too long for ``make bench``. So the
projector builds the read model for tokens issued, revoked, rotated and deleted through the service (a few
hundred: the rows auth checks would meet), and the rest are inserted in bulk as rows of the same shape,
built by ``token_row`` the way the projection's handlers write them (``tests/integration/
test_credential_index_scale.py`` holds ``token_row`` to the projector's rows), with the tracking position left
at the head of the log. The index then loads from that read model exactly as an API process does at start-up.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.common import admin_world, bench_environment, report
from deploy_tokens.runtime import Runtime
from domain.deploy_token import default_username, deploy_token_uuid
from domain.token_values import DEPLOY_TOKEN_PREFIX, generate_token
from infrastructure.db import Database
from infrastructure.keys import Keyring
from infrastructure.settings import Settings
from infrastructure.store import EventStore
from projections.access import Action, Reason
from projections.credential_index import CredentialIndex, Resource
from projections.credential_tokens import TOKEN_TABLE_COLUMNS
from projections.credentials import CredentialLookup

TOKENS = int(os.environ.get("INDEX_SCALE_TOKENS", "1000000"))
TARGET_INDEX_RSS_MB = 150
TARGET_READY_S = 3
PROJECTS = 100
SAMPLE = 2000  # live values (and as many dead ones) the measuring process checks
INSERT_BATCH = 20_000
# Far above the ids the service hands out in the set-up, so the two never meet (ids are dense per source).
BULK_IDS_FROM = 1000

_SCOPE_SETS = (
    "read_repository",
    "read_repository,read_registry",
    "read_package_registry,write_package_registry",
)


@dataclass(frozen=True)
class TokenFacts:
    """One seeded token's state, as its events would leave it."""

    token_id: int
    holder_kind: str
    holder_id: int
    scopes: str
    digest: str
    username: str | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    deleted_at: datetime | None = None
    previous_digest: str | None = None
    previous_valid_until: datetime | None = None


def token_row(
    facts: TokenFacts, *, created_at: datetime, creator_id: int | None, position: int
) -> tuple[Any, ...]:
    """A ``cred_tokens`` row as ``CredentialLookup``'s handlers leave it for these facts (``TOKEN_TABLE_COLUMNS``):
    ``Created`` writes the default username when there is no custom one and empty scopes that ``Scoped``
    fills, ``Revoked`` clears a rotated-out value, ``Rotated`` keeps one only with a grace period."""
    return (
        facts.token_id,
        str(deploy_token_uuid(facts.token_id)),
        f"token-{facts.token_id}",
        facts.username or default_username(facts.token_id),
        facts.holder_kind,
        facts.holder_id,
        facts.scopes,
        facts.expires_at,
        facts.revoked_at,
        facts.deleted_at,
        facts.digest,
        None if facts.revoked_at is not None else facts.previous_digest,
        None if facts.revoked_at is not None else facts.previous_valid_until,
        created_at,
        creator_id,
        position,
    )


def seeded_facts(
    number: int, token_id: int, projects: Sequence[int], group: int, now: datetime, digest: str
) -> TokenFacts:
    """The ``number``-th seeded token: half revoked; of the rest about 1% deleted, 1% expired, 10% expiring
    later, 1% rotated and still within a grace period; one in ten with a custom username."""
    kind, holder = ("group", group) if number % 10 == 3 else ("project", projects[number % len(projects)])
    fields: dict[str, Any] = {}
    if number % 20 in (5, 10):  # revoked and live ones
        fields["username"] = f"deployer-{token_id}"
    if number % 2 == 1:
        fields["revoked_at"] = now - timedelta(days=1)
    elif number % 50 == 0:
        fields["deleted_at"] = now - timedelta(days=2)
    elif number % 50 == 2:
        fields["expires_at"] = (now - timedelta(days=3)).replace(hour=0, minute=0, second=0, microsecond=0)
    elif number % 10 == 4:
        fields["expires_at"] = (now + timedelta(days=30 + number % 365)).replace(
            hour=0, minute=0, second=0, microsecond=0
        )
    elif number % 100 == 6:
        fields["previous_digest"] = secrets.token_hex(32)
        fields["previous_valid_until"] = now + timedelta(days=7)
    return TokenFacts(
        token_id=token_id,
        holder_kind=kind,
        holder_id=holder,
        scopes=_SCOPE_SETS[number % len(_SCOPE_SETS)],
        digest=digest,
        **fields,
    )


def is_live(facts: TokenFacts, now: datetime) -> bool:
    return (
        facts.revoked_at is None
        and facts.deleted_at is None
        and (facts.expires_at is None or facts.expires_at > now)
    )


@contextmanager
def scale_settings(backend: str) -> Iterator[tuple[dict[str, str], Settings]]:
    """A throwaway store, with its environment for the measuring process."""
    with bench_environment(backend) as env:
        yield env, Settings.from_env(env)


def seed(backend: str, settings: Settings, tokens: int) -> dict[str, Any]:
    """Fill the read model; return what the measuring process needs (sample values and the resource)."""
    with Runtime.open(settings) as runtime:
        admin, group, first_project = admin_world(runtime)
        projects = [first_project] + [
            runtime.directory.create_project(admin, name=f"P{n}", namespace_id=group)
            for n in range(1, PROJECTS)
        ]
        # The projector's own rows: live, revoked, rotated with a grace period, deleted.
        service = [
            runtime.tokens.create_token(
                admin, "project", projects[n % PROJECTS], name=f"s{n}", scopes=["read_repository"]
            )
            for n in range(40)
        ]
        for issued in service[:10]:
            runtime.tokens.revoke_token(admin, "project", issued.token.holder_id, issued.token.token_id)
        for issued in service[10:15]:
            runtime.tokens.rotate_token(
                admin, "project", issued.token.holder_id, issued.token.token_id, grace=timedelta(days=1)
            )
        for issued in service[15:20]:
            runtime.tokens.delete_token(admin, "project", issued.token.holder_id, issued.token.token_id)
        now = runtime.clock.now()
        keys = runtime.keys
        with runtime.db.read() as cursor:
            tracked = cursor.execute(
                "SELECT position FROM projection_tracking WHERE name = ?", (CredentialLookup.name,)
            ).fetchone()
        position = int(tracked[0]) if tracked else 0
        assert position == runtime.store.head(), "the projection is not at the head of the log"
        live_sample: list[tuple[str, int]] = []
        dead_sample: list[str] = []
        first_id = BULK_IDS_FROM + len(service)
        started = time.perf_counter()
        # Indexes are built once after the rows rather than updated row by row (random digests make each
        # insert a random B-tree write): the projection's own schema statements build them again.
        indexes = _token_indexes()
        with runtime.db.transaction() as cursor:
            for name in indexes:
                cursor.execute(f"DROP INDEX {name}")
        rows: list[tuple[Any, ...]] = []
        for number in range(tokens - len(service)):
            token_id = first_id + number
            value = None
            # Real values for the samples (their keyed digests); random digests for the rest, which nobody
            # presents: generating and hashing a million values would only lengthen the set-up.
            wants_value = (number % 2 == 0 and len(live_sample) < SAMPLE) or (
                number % 2 == 1 and len(dead_sample) < SAMPLE
            )
            if wants_value:
                value = generate_token(DEPLOY_TOKEN_PREFIX)
                digest = keys.digest(value)
            else:
                digest = secrets.token_hex(32)
            facts = seeded_facts(number, token_id, projects, group, now, digest)
            if value is not None:
                if is_live(facts, now) and "read_repository" in facts.scopes:  # checked with git reads
                    target = facts.holder_id if facts.holder_kind == "project" else projects[0]
                    live_sample.append((value, target))
                elif facts.revoked_at is not None:
                    dead_sample.append(value)
            rows.append(token_row(facts, created_at=now, creator_id=None, position=position))
            if len(rows) >= INSERT_BATCH:
                _insert(runtime.db, rows)
                rows = []
        _insert(runtime.db, rows)
        with runtime.db.transaction() as cursor:
            for statement in CredentialLookup().schema():
                cursor.execute(statement)
        seconds = time.perf_counter() - started
        live = [[value, _username_of(runtime, keys.digest(value)), target] for value, target in live_sample]
    return {
        "backend": backend,
        "live": live,
        "dead": dead_sample,
        "seed_s": round(seconds, 1),
    }


def _token_indexes() -> list[str]:
    """The names of the indexes the projection keeps on ``cred_tokens``."""
    names = []
    for statement in CredentialLookup().schema():
        words = statement.split()
        if words[:2] == ["CREATE", "UNIQUE"] or words[:2] == ["CREATE", "INDEX"]:
            name = words[words.index("EXISTS") + 1]
            if words[words.index("ON") + 1] == "cred_tokens":
                names.append(name)
    return names


def _username_of(runtime: Runtime, digest: str) -> str:
    with runtime.db.read() as cursor:
        row = cursor.execute("SELECT username FROM cred_tokens WHERE digest = ?", (digest,)).fetchone()
    assert row is not None
    return str(row[0])


def _insert(db: Database, rows: list[tuple[Any, ...]]) -> None:
    """One batch of rows: PostgreSQL's COPY (an INSERT per row would dominate the run), SQLite's executemany."""
    if not rows:
        return
    names = ", ".join(TOKEN_TABLE_COLUMNS)
    if db.dialect == "postgresql":
        with psycopg.connect(db.conninfo(), autocommit=True) as connection:
            connection.execute(f'SET search_path TO "{db.location.schema}"')
            with connection.cursor().copy(f"COPY cred_tokens ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        return
    with db.transaction() as cursor:
        cursor.executemany(
            f"INSERT INTO cred_tokens ({names}) VALUES ({', '.join('?' * len(TOKEN_TABLE_COLUMNS))})", rows
        )


# The measuring process -----------------------------------------------------------------------------------


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def measure(plan_path: str) -> None:
    """Run in a fresh process (``--measure PLAN``): load the index and time it; print one JSON object."""
    plan = json.loads(Path(plan_path).read_text())
    settings = Settings.from_env()
    db = Database(settings.database)
    store = EventStore(settings.database)
    keys = Keyring(settings.secret_key)
    store.head()  # connections open and warm: they are not the index's
    with db.read() as cursor:
        cursor.execute("SELECT COUNT(*) FROM projection_tracking").fetchone()
    gc.collect()
    before = _rss_mb()
    index = CredentialIndex(db, store, keys)
    started, cpu_started = time.perf_counter(), time.process_time()
    confirmed = index.refresh()
    ready, ready_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    after = _rss_mb()
    assert confirmed, "the index could not confirm the read model current"
    now = datetime.now(UTC)
    anywhere = Resource("project", plan["live"][0][2])

    def check(value: str, username: str | None, resource_: Resource = anywhere) -> Any:
        return index.check(
            value=value,
            username=username,
            action=Action.GIT_READ,
            resource=resource_,
            now=now,
            check_username=True,
        )

    live = [(value, username, Resource("project", project)) for value, username, project in plan["live"]]
    dead = list(plan["dead"])
    unknown = [generate_token(DEPLOY_TOKEN_PREFIX) for _ in range(len(dead))]
    refused = [check(value, username, target) for value, username, target in live]
    assert all(decision.allowed for decision in refused), {decision.reason for decision in refused}
    assert all(check(value, None).reason is Reason.REVOKED for value in dead)
    assert all(check(value, None).reason is Reason.UNKNOWN_TOKEN for value in unknown)
    decisions, floors, deads, unknowns = [], [], [], []
    for _ in range(5):
        start = time.perf_counter()
        for value, _username, _target in live:
            keys.digest(value)
        floors.append(time.perf_counter() - start)
        start = time.perf_counter()
        for value, username, target in live:
            check(value, username, target)
        decisions.append(time.perf_counter() - start)
        start = time.perf_counter()
        for value in dead:
            check(value, None)
        deads.append(time.perf_counter() - start)
        start = time.perf_counter()
        for value in unknown:
            check(value, None)
        unknowns.append(time.perf_counter() - start)
    print(
        json.dumps(
            {
                "index_rss_mb": round(after - before, 1),
                "rss_before_mb": round(before, 1),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "ready_s": round(ready, 2),
                # this process's own CPU time in it (the rest is waiting: the database, a busy machine)
                "ready_cpu_s": round(ready_cpu, 2),
                "live_tokens": len(index),
                "dead_tokens": index.dead_tokens,
                "grace_values": index.grace_values,
                "decisions_per_s": round(len(live) / statistics.median(decisions)),
                "digest_floor_per_s": round(len(live) / statistics.median(floors)),
                "dead_decisions_per_s": round(len(dead) / statistics.median(deads)),
                "unknown_decisions_per_s": round(len(unknown) / statistics.median(unknowns)),
            }
        ),
        flush=True,
    )


def run(backend: str, tokens: int = TOKENS) -> dict[str, Any]:
    with scale_settings(backend) as (env, settings), tempfile.TemporaryDirectory() as folder:
        plan = seed(backend, settings, tokens)
        plan_path = Path(folder) / "plan.json"
        plan_path.write_text(json.dumps(plan))
        child_env = {**os.environ, **env}
        completed = subprocess.run(
            [sys.executable, "-m", "benchmarks.index_scale", "--measure", str(plan_path)],
            env=child_env,
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        if completed.returncode != 0:
            raise RuntimeError(f"the measuring process failed: {completed.stderr[-2000:]}")
        measured = json.loads(completed.stdout.strip().splitlines()[-1])
    result: dict[str, Any] = {
        "benchmark": "index_scale",
        "backend": backend,
        "tokens": tokens,
        **measured,
        "ratio_to_floor": round(measured["digest_floor_per_s"] / measured["decisions_per_s"], 2),
        "seed_s": plan["seed_s"],
        "target_index_rss_mb_at_most": TARGET_INDEX_RSS_MB,
        "target_ready_s_at_most": TARGET_READY_S,
    }
    result["meets_target"] = (
        result["index_rss_mb"] <= TARGET_INDEX_RSS_MB and result["ready_s"] <= TARGET_READY_S
    )
    return result


def main(argv: Sequence[str] = ()) -> None:
    arguments = list(argv)
    tokens = TOKENS
    if arguments and arguments[0].isdigit():
        tokens = int(arguments.pop(0))
    for backend in arguments or ["sqlite", "postgres"]:
        report(run(backend, tokens))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--measure"]:
        measure(sys.argv[2])
    else:
        main(sys.argv[1:])
