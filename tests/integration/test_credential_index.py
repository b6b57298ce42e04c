"""The in-memory credential index: fresh after own writes, fails closed when stale, recovers by itself."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

from deploy_tokens.runtime import Runtime
from deploy_tokens.tokens import IssuedToken
from domain.actors import Actor
from domain.clock import FixedClock
from domain.deploy_token import DeployToken, deploy_token_uuid
from domain.token_values import DEPLOY_TOKEN_PREFIX, generate_token
from projections.access import Action, Decision, Reason
from projections.credential_index import SWEEP_EVERY_SECONDS, CredentialIndex, Resource, StaleIndex

from ..conftest import T0, World, save_unprojected


def git_check(index: CredentialIndex, world: World, value: str, username: str, project_id: int):
    return index.check(
        value=value,
        username=username,
        action=Action.GIT_READ,
        resource=Resource("project", project_id),
        now=world.runtime.clock.now(),
        check_username=True,
    )


def test_the_revoking_process_denies_at_once(world: World):
    runtime = world.runtime
    issued = runtime.tokens.create_token(
        world.admin, "project", world.project, name="t", scopes=["read_repository"]
    )
    assert git_check(runtime.index, world, issued.value, issued.token.username, world.project).allowed
    runtime.tokens.revoke_token(world.admin, "project", world.project, issued.token.token_id)
    decision = git_check(runtime.index, world, issued.value, issued.token.username, world.project)
    assert (decision.allowed, decision.reason) == (False, Reason.REVOKED)


def test_projects_created_after_a_group_token_are_covered_at_once(world: World):
    runtime = world.runtime
    issued = runtime.tokens.create_token(
        world.admin, "group", world.top, name="g", scopes=["read_repository"]
    )
    later = runtime.directory.create_project(world.admin, name="Later", namespace_id=world.subsub)
    assert git_check(runtime.index, world, issued.value, issued.token.username, later).allowed


def test_resources_resolve_by_path_case_insensitively(world: World):
    runtime = world.runtime
    issued = runtime.tokens.create_token(
        world.admin, "project", world.project, name="t", scopes=["read_repository"]
    )
    decision = runtime.index.check(
        value=issued.value,
        username=issued.token.username,
        action=Action.GIT_READ,
        resource=Resource("project", path="ACME/api"),
        now=runtime.clock.now(),
        check_username=True,
    )
    assert decision.allowed


def test_malformed_values_are_rejected_before_any_lookup(world: World):
    decision = git_check(world.runtime.index, world, "gldt-not-a-real-token", "x", world.project)
    assert decision.reason is Reason.MALFORMED_TOKEN


def test_credentials_that_could_not_be_read_are_malformed_and_none_at_all_are_missing(world: World):
    def check(unreadable: bool) -> Reason:
        return world.runtime.index.check(
            value=None,
            unreadable=unreadable,
            username=None,
            action=Action.GIT_READ,
            resource=Resource("project", world.project),
            now=world.runtime.clock.now(),
            check_username=True,
        ).reason

    assert check(unreadable=True) is Reason.MALFORMED_TOKEN
    assert check(unreadable=False) is Reason.NO_CREDENTIALS


def test_a_mistyped_value_is_malformed_and_an_unissued_one_unknown(world: World):
    issued = world.runtime.tokens.create_token(
        world.admin, "project", world.project, name="t", scopes=["read_repository"]
    )
    value = issued.value
    mistyped = value[:10] + ("A" if value[10] != "A" else "B") + value[11:]  # same shape, checksum fails
    decision = git_check(world.runtime.index, world, mistyped, issued.token.username, world.project)
    assert decision.reason is Reason.MALFORMED_TOKEN
    unissued = generate_token()  # a valid checksum, but no such token
    decision = git_check(world.runtime.index, world, unissued, issued.token.username, world.project)
    assert decision.reason is Reason.UNKNOWN_TOKEN


def test_rotated_secret_works_only_during_grace(world: World):
    runtime = world.runtime
    old = runtime.tokens.create_token(
        world.admin, "project", world.project, name="t", scopes=["read_repository"]
    )
    new = runtime.tokens.rotate_token(
        world.admin, "project", world.project, old.token.token_id, grace=timedelta(hours=1)
    )
    username = old.token.username
    assert git_check(runtime.index, world, old.value, username, world.project).allowed
    assert git_check(runtime.index, world, new.value, username, world.project).allowed
    runtime.clock.set(runtime.clock.now() + timedelta(hours=1))  # type: ignore[attr-defined]
    assert git_check(runtime.index, world, old.value, username, world.project).reason is Reason.UNKNOWN_TOKEN
    assert git_check(runtime.index, world, new.value, username, world.project).allowed


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_fails_closed_when_the_projection_stalls_and_recovers_without_restart(world: World):
    runtime = world.runtime
    issued = runtime.tokens.create_token(
        world.admin, "project", world.project, name="t", scopes=["read_repository"]
    )
    ticks = FakeMonotonic()
    index = CredentialIndex(runtime.db, runtime.store, runtime.keys, max_staleness=2.0, monotonic=ticks)
    index.refresh()
    assert git_check(index, world, issued.value, issued.token.username, world.project).allowed

    # A write the projections have not seen: as if the writer crashed before catching up and the
    # projector is down. The log's head moves past the projection's position.
    token = runtime.store.repository.get(deploy_token_uuid(issued.token.token_id))
    assert isinstance(token, DeployToken)
    token.revoke(actor=Actor.system("test"), now=runtime.clock.now())
    save_unprojected(runtime, token)

    ticks.now += 1.0
    assert git_check(index, world, issued.value, issued.token.username, world.project).allowed  # within bound
    ticks.now += 1.5
    with pytest.raises(StaleIndex):
        git_check(index, world, issued.value, issued.token.username, world.project)

    runtime.projector.catch_up()  # the projector comes back
    decision = git_check(index, world, issued.value, issued.token.username, world.project)
    assert (decision.allowed, decision.reason) == (False, Reason.REVOKED)


def test_another_process_denies_a_revoked_token_through_its_follower(pg_runtime: Runtime):
    world = World(pg_runtime)
    other = Runtime.open(pg_runtime.settings, clock=pg_runtime.clock)
    stop = threading.Event()
    follower = threading.Thread(target=other.index.follow, args=(stop,), daemon=True)
    follower.start()
    try:
        issued = pg_runtime.tokens.create_token(
            world.admin, "project", world.project, name="t", scopes=["read_repository"]
        )
        deadline = time.monotonic() + 10
        while not git_check(other.index, world, issued.value, issued.token.username, world.project).allowed:
            assert time.monotonic() < deadline, "the other process never saw the new token"
            time.sleep(0.01)
        pg_runtime.tokens.revoke_token(world.admin, "project", world.project, issued.token.token_id)
        while git_check(other.index, world, issued.value, issued.token.username, world.project).allowed:
            assert time.monotonic() < deadline, "the other process never saw the revocation"
            time.sleep(0.01)
    finally:
        stop.set()
        follower.join(timeout=5)
        other.close()


# Dead tokens out of memory (issue 16) -------------------------------------------------------------------


def check_as(index: CredentialIndex, world: World, value: str, action: Action = Action.GIT_READ) -> Decision:
    return index.check(
        value=value,
        username=None,
        action=action,
        resource=Resource("project", world.project),
        now=world.runtime.clock.now(),
        check_username=False,
    )


def fresh_index(runtime: Runtime) -> CredentialIndex:
    """Another process's index: loaded from the read model at once, as at start-up."""
    index = CredentialIndex(runtime.db, runtime.store, runtime.keys, clock=runtime.clock)
    assert index.refresh()
    return index


def test_dead_tokens_leave_memory_and_are_still_refused_for_their_reason(world: World):
    runtime = world.runtime
    clock = runtime.clock
    assert isinstance(clock, FixedClock)

    def issue(name: str, **extra: object) -> IssuedToken:
        return runtime.tokens.create_token(
            world.admin, "project", world.project, name=name, scopes=["read_repository"], **extra
        )

    revoked, deleted, expiring, live = (
        issue("r"),
        issue("d"),
        issue("e", expires_at=T0 + timedelta(days=1)),
        issue("l"),
    )
    runtime.tokens.revoke_token(world.admin, "project", world.project, revoked.token.token_id)
    runtime.tokens.delete_token(world.admin, "project", world.project, deleted.token.token_id)
    clock.set(T0 + timedelta(days=1))  # the expiry instant itself: expired (behaviour [expiry])
    index = runtime.index
    index.refresh()  # the sweep: the expired token leaves memory too
    for current in (index, fresh_index(runtime)):
        assert len(current) == 1 and current.dead_tokens == 3
        expected = {
            revoked: Reason.REVOKED,
            deleted: Reason.DELETED,
            expiring: Reason.EXPIRED,
            live: Reason.ALLOWED,
        }
        for issued, reason in expected.items():
            decision = check_as(current, world, issued.value)
            assert (decision.reason, decision.token_id) == (reason, issued.token.token_id)
            # A route that never takes a deploy token says so first, dead token or not, naming the token.
            api = check_as(current, world, issued.value, Action.API)
            assert (api.reason, api.token_id) == (Reason.API_NOT_ALLOWED, issued.token.token_id)


def test_the_expiry_boundary_holds_in_memory_and_after_the_sweep(world: World):
    runtime = world.runtime
    clock = runtime.clock
    assert isinstance(clock, FixedClock)
    expires = T0 + timedelta(days=2)
    issued = runtime.tokens.create_token(
        world.admin, "project", world.project, name="e", scopes=["read_repository"], expires_at=expires
    )
    clock.set(expires - timedelta(microseconds=1))
    runtime.index.refresh()
    assert check_as(runtime.index, world, issued.value).allowed
    assert check_as(fresh_index(runtime), world, issued.value).allowed
    clock.set(expires)
    # Still in memory (no refresh since): decide refuses it at the instant itself.
    assert check_as(runtime.index, world, issued.value).reason is Reason.EXPIRED
    runtime.index.refresh()
    assert check_as(runtime.index, world, issued.value).reason is Reason.EXPIRED
    # The sweep asks the database at most every few seconds of the clock: then the token leaves memory.
    clock.set(expires + timedelta(seconds=SWEEP_EVERY_SECONDS))
    runtime.index.refresh()
    assert runtime.index.dead_tokens == 1
    assert check_as(runtime.index, world, issued.value).reason is Reason.EXPIRED
    assert check_as(fresh_index(runtime), world, issued.value).reason is Reason.EXPIRED


def test_rotation_forgets_the_old_value_at_once_or_after_its_grace(world: World):
    runtime = world.runtime
    clock = runtime.clock
    assert isinstance(clock, FixedClock)
    first = runtime.tokens.create_token(
        world.admin, "project", world.project, name="t", scopes=["read_repository"]
    )
    token_id = first.token.token_id
    second = runtime.tokens.rotate_token(world.admin, "project", world.project, token_id)  # no grace
    third = runtime.tokens.rotate_token(
        world.admin, "project", world.project, token_id, grace=timedelta(hours=1)
    )
    for index in (runtime.index, fresh_index(runtime)):
        assert check_as(index, world, first.value).reason is Reason.UNKNOWN_TOKEN
        assert check_as(index, world, second.value).allowed  # within the grace period
        assert check_as(index, world, third.value).allowed
        assert index.grace_values == 1 and len(index) >= 1
    clock.set(clock.now() + timedelta(hours=1))
    assert check_as(runtime.index, world, second.value).reason is Reason.UNKNOWN_TOKEN
    runtime.index.refresh()
    assert runtime.index.grace_values == 0  # swept out of memory
    assert check_as(runtime.index, world, second.value).reason is Reason.UNKNOWN_TOKEN
    # Revoking during a grace period ends it: both values are refused as revoked or unknown, as before.
    fourth = runtime.tokens.rotate_token(
        world.admin, "project", world.project, token_id, grace=timedelta(hours=1)
    )
    runtime.tokens.revoke_token(world.admin, "project", world.project, token_id)
    for index in (runtime.index, fresh_index(runtime)):
        assert check_as(index, world, fourth.value).reason is Reason.REVOKED
        assert check_as(index, world, third.value).reason is Reason.UNKNOWN_TOKEN
        assert index.grace_values == 0


def test_a_dead_group_token_still_names_its_group_to_the_dependency_proxy_login(world: World):
    runtime = world.runtime
    issued = runtime.tokens.create_token(
        world.admin, "group", world.top, name="g", scopes=["read_registry", "write_registry"]
    )
    runtime.tokens.revoke_token(world.admin, "group", world.top, issued.token.token_id)
    for index in (runtime.index, fresh_index(runtime)):
        token = index.lookup(issued.value, runtime.clock.now())
        assert token is not None and token.revoked
        assert (token.holder_kind, token.holder_id, token.token_id) == (
            "group",
            world.top,
            issued.token.token_id,
        )


def test_guesses_and_dead_tokens_are_refused_without_asking_the_database(world: World, monkeypatch):
    runtime = world.runtime
    issued = runtime.tokens.create_token(
        world.admin, "project", world.project, name="t", scopes=["read_repository"]
    )
    runtime.tokens.revoke_token(world.admin, "project", world.project, issued.token.token_id)
    index = runtime.index
    index.ensure_fresh()
    reads: list[int] = []
    original = type(runtime.db).read

    def counting_read(self: object):  # type: ignore[no-untyped-def]
        reads.append(1)
        return original(self)  # type: ignore[arg-type]

    monkeypatch.setattr(type(runtime.db), "read", counting_read)
    index.confirmed_at = time.monotonic()  # confirmed now: no refresh is due during the checks
    guesses = [generate_token() for _ in range(200)]
    assert all(check_as(index, world, guess).reason is Reason.UNKNOWN_TOKEN for guess in guesses)
    assert check_as(index, world, issued.value).reason is Reason.REVOKED
    assert reads == []


def test_a_process_following_the_log_takes_revoked_tokens_out_of_memory(pg_runtime: Runtime):
    world = World(pg_runtime)
    other = Runtime.open(pg_runtime.settings, clock=pg_runtime.clock)
    try:
        issued = pg_runtime.tokens.create_token(
            world.admin, "project", world.project, name="t", scopes=["read_repository"]
        )
        other.index.refresh()
        live_before, dead_before = len(other.index), other.index.dead_tokens
        pg_runtime.tokens.revoke_token(world.admin, "project", world.project, issued.token.token_id)
        other.index.refresh()
        assert (len(other.index), other.index.dead_tokens) == (live_before - 1, dead_before + 1)
        assert check_as(other.index, world, issued.value).reason is Reason.REVOKED
    finally:
        other.close()


def test_a_deleted_tokens_rotated_out_value_is_refused_as_deleted_during_its_grace(world: World):
    runtime = world.runtime
    issued = runtime.tokens.create_token(
        world.admin, "project", world.project, name="t", scopes=["read_repository"]
    )
    token_id = issued.token.token_id
    rotated = runtime.tokens.rotate_token(
        world.admin, "project", world.project, token_id, grace=timedelta(hours=1)
    )
    runtime.tokens.delete_token(world.admin, "project", world.project, token_id)
    for index in (runtime.index, fresh_index(runtime)):
        for value in (issued.value, rotated.value):
            decision = check_as(index, world, value)
            assert (decision.reason, decision.token_id) == (Reason.DELETED, token_id)
        assert len(index) == 0 and index.grace_values == 1


def test_a_fresh_index_answers_every_token_whatever_its_load_pages(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    """The first load takes live tokens a page of rows at a time, aggregated by the database (each page's query
    sent before the previous page is taken apart), and the dead ones sorted, in chunks: pages and chunks smaller
    than the table, some pages without a live token, still give every token its own answer; the log's head is
    read in the refresh's own snapshot."""
    runtime = world.runtime
    issued = [
        runtime.tokens.create_token(
            world.admin, "project", world.project, name=f"t{n}", scopes=["read_repository"]
        )
        for n in range(12)
    ]
    for token in issued[1:10:2]:
        runtime.tokens.revoke_token(world.admin, "project", world.project, token.token.token_id)
    for token in issued[10:]:
        runtime.tokens.delete_token(world.admin, "project", world.project, token.token.token_id)
    monkeypatch.setattr("projections.credential_load.DEAD_CHUNK_ROWS", 2)
    monkeypatch.setattr("projections.credential_load.PAGE_ROWS", 3)
    index = CredentialIndex(runtime.db, runtime.store, runtime.keys, clock=runtime.clock)
    assert index.refresh()
    with runtime.db.read() as cursor:
        assert cursor.execute(runtime.store.head_sql).fetchone() == (runtime.store.head(),)
    assert (len(index), index.dead_tokens) == (5, 7)
    for number, token in enumerate(issued):
        decision = git_check(index, world, token.value, token.token.username, world.project)
        expected = Reason.DELETED if number >= 10 else Reason.REVOKED if number % 2 else Reason.ALLOWED
        assert decision.reason == expected, (number, decision)
    assert (
        git_check(index, world, generate_token(DEPLOY_TOKEN_PREFIX), "x", world.project).reason
        == Reason.UNKNOWN_TOKEN
    )


def _held(index: CredentialIndex) -> tuple[dict[bytes, tuple[object, ...]], dict[bytes, object]]:
    """What an index holds of its live tokens and rotated-out values, field by field (a test of the load's
    internals: the decisions built on them are tested above)."""
    live = {
        key: (
            type(token),
            token.token_id,
            token.holder_kind,
            token.holder_id,
            token.scope_set,
            token.expires_at,
            token.digest,
            token.username,
        )
        for key, token in index._live.items()
    }
    grace = {key: (target.token_id, until) for key, (target, until) in index._grace.items()}
    return live, grace


def test_a_fresh_index_holds_what_the_index_that_followed_the_writes_holds(world: World):
    """The first load reads packed pages (``projections.credential_load``); following the log applies rows one
    by one (``CredentialIndex._apply_tokens``). Both give the same records: holder kinds, scope sets, own and
    default usernames, expiry instants to the microsecond, rotated-out values in their grace."""
    runtime = world.runtime
    soon = runtime.clock.now() + timedelta(days=3, microseconds=123_457)

    def issue(kind: str, holder: int, name: str, scopes: list[str], **extra: object) -> IssuedToken:
        return runtime.tokens.create_token(world.admin, kind, holder, name=name, scopes=scopes, **extra)

    issued = [
        issue("project", world.project, "a", ["read_repository"]),
        issue("project", world.project, "b", ["read_repository", "read_registry"], username="deployer.b"),
        issue("project", world.deep_project, "c", ["read_package_registry"], expires_at=soon),
        issue("group", world.top, "d", ["read_registry"], username="group+deployer", expires_at=soon),
        issue("group", world.sub, "e", ["read_repository", "read_registry", "write_registry"]),
        issue("project", world.project, "f", ["read_repository"]),
        issue("project", world.project, "g", ["read_repository"], username="to-revoke"),
    ]
    runtime.tokens.rotate_token(
        world.admin, "project", world.project, issued[0].token.token_id, grace=timedelta(hours=2)
    )
    runtime.tokens.rotate_token(
        world.admin, "group", world.top, issued[3].token.token_id, grace=timedelta(hours=1)
    )
    runtime.tokens.revoke_token(world.admin, "project", world.project, issued[6].token.token_id)
    runtime.tokens.delete_token(world.admin, "project", world.project, issued[5].token.token_id)
    runtime.index.refresh()
    fresh = fresh_index(runtime)
    assert _held(fresh) == _held(runtime.index)
    assert (len(fresh), fresh.dead_tokens, fresh.grace_values) == (5, 2, 2)
    assert {token.username for token in fresh._live.values()} >= {"deployer.b", "group+deployer"}
