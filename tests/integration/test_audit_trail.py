"""The audit trail (behaviour [history], [audit-types]) on both backends:
GitLab's types and messages, one row per event, filters, rebuild."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from deploy_tokens.retention import ActivityRetentionService
from deploy_tokens.runtime import Runtime
from domain.actors import Actor, FederatedIdentity
from domain.clock import FixedClock
from domain.deploy_token import DeployToken, deploy_token_uuid
from domain.federation import ClaimCondition, IdTokenUse
from domain.streams import stream_id
from projections.audit import AUDITED_EVENTS, AuditTrail
from projections.audit_queries import AuditQuery, AuditRecord, audit_events
from projections.base import Projector

from ..conftest import T0, World, save_unprojected
from .test_retention import _event as activity_event

BOTH_SCOPES = ["read_repository", "read_registry"]


@pytest.fixture
def projector(runtime: Runtime) -> Projector:
    built = Projector(runtime.store, runtime.db, [AuditTrail()])
    built.setup()
    built.catch_up()
    return built


def trail(world: World, projector: Projector, **filters: Any) -> list[AuditRecord]:
    projector.catch_up()
    return audit_events(world.runtime.db, AuditQuery(limit=None, **filters))


def holder_of(world: World, kind: str) -> int:
    return world.project if kind == "project" else world.top


def create(world: World, kind: str, name: str = "deploy", actor: Actor | None = None, **options: Any) -> int:
    issued = world.runtime.tokens.create_token(
        actor or world.admin, kind, holder_of(world, kind), name=name, scopes=BOTH_SCOPES, **options
    )
    return issued.token.token_id


def token_rows(world: World, projector: Projector, token_id: int) -> list[AuditRecord]:
    return trail(world, projector, token_id=token_id)


def change_aggregate(runtime: Runtime, stream: Any, command: Any) -> None:
    """For commands the service does not offer yet (narrow scopes, admin flag, revoke a PAT)."""
    aggregate = runtime.store.repository.get(stream)
    command(aggregate)
    runtime.store.save(aggregate)


def log_events(runtime: Runtime) -> list[tuple[int, Any]]:
    notifications = runtime.store.recorder.select_notifications(start=0, limit=1_000_000)
    return [(n.id, runtime.store.mapper.to_domain_event(n)) for n in notifications]


def table_rows(runtime: Runtime) -> dict[str, list[tuple[Any, ...]]]:
    with runtime.db.read() as cursor:
        return {
            table: sorted(cursor.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
            for table in AuditTrail.tables
        }


def do_everything(world: World, clock: FixedClock) -> dict[str, Any]:
    """At least one event of every audited class, with the secrets issued along the way."""
    runtime, admin = world.runtime, world.admin
    values = [world.admin_token]
    project_token = world.runtime.tokens.create_token(
        admin, "project", world.project, name="p", scopes=BOTH_SCOPES, expires_at=T0 + timedelta(days=5)
    )
    group_token = world.runtime.tokens.create_token(admin, "group", world.top, name="g", scopes=BOTH_SCOPES)
    values += [project_token.value, group_token.value]
    project_id, group_id = project_token.token.token_id, group_token.token.token_id
    change_aggregate(
        runtime,
        deploy_token_uuid(group_id),
        lambda t: t.narrow_scopes(["read_registry"], actor=admin, now=clock.now()),
    )
    values.append(
        world.runtime.tokens.rotate_token(admin, "group", world.top, group_id, grace=timedelta(hours=1)).value
    )
    values.append(world.runtime.tokens.rotate_token(admin, "group", world.top, group_id).value)
    world.runtime.tokens.mark_notification_due(project_id, 7)
    world.runtime.tokens.claim_notification(
        project_id, 7, message_id="<m1@example.com>", lease=timedelta(minutes=10)
    )
    world.runtime.tokens.release_notification(
        project_id, 7, message_id="<m1@example.com>", error="451 try later"
    )
    world.runtime.tokens.claim_notification(
        project_id, 7, message_id="<m1@example.com>", lease=timedelta(minutes=10)
    )
    world.runtime.tokens.record_notification(
        project_id, 7, message_id="<m1@example.com>", recipients=["maintainer@example.com"]
    )
    world.runtime.tokens.revoke_by_value(admin, values[-1])  # the group token's current value
    clock.set(T0 + timedelta(days=6))
    world.runtime.tokens.record_expiry(project_id)
    world.runtime.tokens.delete_token(admin, "project", world.project, project_id)
    outsider = world.users["outsider"].user_id
    world.runtime.directory.set_user_blocked(admin, outsider, True)
    world.runtime.directory.set_user_blocked(admin, outsider, False)
    change_aggregate(
        runtime, stream_id("user", outsider), lambda u: u.set_admin(True, actor=admin, now=clock.now())
    )
    change_aggregate(
        runtime, stream_id("user", outsider), lambda u: u.set_auditor(True, actor=admin, now=clock.now())
    )
    pat = world.runtime.directory.create_personal_access_token(
        admin, outsider, name="ci", scopes=["read_api"]
    )
    values.append(pat.value)
    change_aggregate(
        runtime, stream_id("pat", pat.token.pat_id), lambda p: p.revoke(actor=admin, now=clock.now())
    )
    world.runtime.members.set_member(admin, "project", world.project, world.users["guest"].user_id, 20)
    world.runtime.members.remove_member(admin, "group", world.top, world.users["group_maintainer"].user_id)
    world.runtime.members.remove_member(admin, "project", world.project, world.users["developer"].user_id)
    world.runtime.directory.set_dependency_proxy(admin, world.top, False)
    world.runtime.directory.change_project_features(admin, world.project, container_registry_enabled=False)
    world.runtime.directory.set_external_authorization(admin, True)
    world.runtime.directory.set_feature(admin, "project_deploy_token_expiring_notifications", False)
    # The directory's lifecycle: renamed, moved (with what is below), deleted; a user's new email.
    lifecycle = world.runtime.lifecycle
    lifecycle.update_project(admin, world.project, name="Api v2", path="api-v2")
    lifecycle.update_group(admin, world.sub, name="Back end", path="back-end")
    lifecycle.transfer_project(admin, world.sibling_project, world.top)
    lifecycle.transfer_group(admin, world.sub, None)
    lifecycle.delete_group(admin, world.sibling)
    lifecycle.delete_project(admin, world.sibling_project)
    world.runtime.directory.create_group(admin, name="Other", path="other")  # a freed path, taken again
    world.runtime.directory.update_user(admin, outsider, email="outsider@example.org")
    streaming = runtime.audit_streaming()
    destination = streaming.create_destination(
        admin, name="SIEM", destination_url="https://siem.example.com/in"
    )
    streaming.delete_destination(admin, destination.id)
    # Federation: the trusted issuers, a trust policy changed and deleted, a token exchanged under another.
    trust = runtime.trust_policies
    trust.set_trusted_issuers(admin, ["https://gitlab.example.com"])
    policy_terms: dict[str, Any] = {
        "issuer": "https://gitlab.example.com",
        "audience": "https://deploy-tokens.example.com",
        "conditions": [ClaimCondition("project_path", "acme/api-v2")],
        "scopes": ["read_repository"],
    }
    changed = trust.create_policy(admin, "project", world.project, name="changed", **policy_terms).policy_id
    trust.change_policy(admin, "project", world.project, changed, ttl_seconds=300)
    trust.delete_policy(admin, "project", world.project, changed)
    kept = trust.create_policy(admin, "project", world.project, name="kept", **policy_terms).policy_id
    identity = FederatedIdentity("https://gitlab.example.com", "project_path:acme/api-v2", kept, "jti-1", ())
    world.runtime.tokens.issue_token(
        Actor.federated(identity),
        "project",
        world.project,
        name="federated: kept",
        scopes=["read_repository"],
        expires_at=clock.now() + timedelta(minutes=15),
        along=lambda token_id: [
            IdTokenUse.record(
                issuer=identity.issuer,
                jti=identity.id_token_jti,
                token_id=token_id,
                policy_id=kept,
                id_token_expires_at=clock.now() + timedelta(minutes=5),
                now=clock.now(),
            )
        ],
    )
    # Activity retention: one old row archived, recorded, deleted.
    runtime.activity.record(activity_event(clock.now() - timedelta(days=3), 1))
    runtime.activity.record(activity_event(clock.now(), 2))  # a newer row: SQLite keeps the newest
    runtime.activity.flush()
    retained = replace(runtime.settings, activity_retention_days=1)
    ActivityRetentionService(runtime.uow, runtime.db, retained, runtime.keys.chain_key, clock).apply(admin)
    runtime.projector.catch_up()
    return {"values": values, "token_ids": [project_id, group_id]}


# GitLab's types and messages ----------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "prefix"), [("project", ""), ("group", "group_")])
def test_creation_has_gitlabs_type_and_message(world: World, projector: Projector, kind: str, prefix: str):
    token_id = create(world, kind)
    created = token_rows(world, projector, token_id)[0]
    assert created.event_type == f"{prefix}deploy_token_created"
    assert created.message == (
        f"Created {kind} deploy token with name: deploy with token_id: {token_id} "
        "with scopes: [:read_repository, :read_registry]."
    )


@pytest.mark.parametrize(("kind", "prefix"), [("project", ""), ("group", "group_")])
def test_revocation_has_gitlabs_type_and_message(world: World, projector: Projector, kind: str, prefix: str):
    token_id = create(world, kind)
    world.runtime.tokens.revoke_token(world.admin, kind, holder_of(world, kind), token_id)
    revoked = token_rows(world, projector, token_id)[-1]
    assert revoked.event_type == f"{prefix}deploy_token_revoked"
    assert revoked.message == (
        f"Revoked {kind} deploy token with name: deploy with token_id: {token_id} "
        "with scopes: [:read_repository, :read_registry]."
    )


@pytest.mark.parametrize(("kind", "prefix"), [("project", ""), ("group", "group_")])
def test_deletion_is_gitlabs_destroyed_event(world: World, projector: Projector, kind: str, prefix: str):
    token_id = create(world, kind)
    world.runtime.tokens.delete_token(world.admin, kind, holder_of(world, kind), token_id)
    destroyed = token_rows(world, projector, token_id)[-1]
    assert destroyed.event_type == f"{prefix}deploy_token_destroyed"
    assert destroyed.message == (
        f"Destroyed {kind} deploy token with name: deploy with token_id: {token_id} "
        "with scopes: [:read_repository, :read_registry]."
    )


def test_creation_message_names_the_scopes_even_when_scoped_comes_in_a_later_batch(world: World):
    runtime = world.runtime
    token_id = create(world, "project")
    one_by_one = Projector(runtime.store, runtime.db, [AuditTrail()], batch_size=1)
    one_by_one.setup()
    one_by_one.catch_up()
    created = audit_events(runtime.db, AuditQuery(token_id=token_id))[0]
    assert created.message.endswith("with scopes: [:read_repository, :read_registry].")
    assert created.details["scopes"] == BOTH_SCOPES


def test_the_scopes_recorded_at_creation_have_their_own_row(world: World, projector: Projector):
    token_id = create(world, "project")
    rows = token_rows(world, projector, token_id)
    assert [row.event_type for row in rows] == ["deploy_token_created", "deploy_token_scoped"]
    assert rows[1].details["scopes"] == BOTH_SCOPES


def test_a_later_revocation_names_the_narrowed_scopes(world: World, projector: Projector, clock: FixedClock):
    token_id = create(world, "project")
    change_aggregate(
        world.runtime,
        deploy_token_uuid(token_id),
        lambda t: t.narrow_scopes(["read_registry"], actor=world.admin, now=clock.now()),
    )
    world.runtime.tokens.revoke_token(world.admin, "project", world.project, token_id)
    narrowed, revoked = token_rows(world, projector, token_id)[-2:]
    assert narrowed.message == (
        f"Narrowed scopes of project deploy token with name: deploy with token_id: {token_id} "
        "from [:read_repository, :read_registry] to [:read_registry]."
    )
    assert revoked.message.endswith("with scopes: [:read_registry].")


def test_subjects_carried_between_batches_are_dropped_when_another_projector_applied_events_between(
    world: World, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
):
    """``AuditTrail`` carries a batch's subjects to the next batch only when that one starts right after it:
    here the runtime's own projector narrows the token in between, and the revocation must name the narrowed
    scopes, not those the first projector carried."""
    monkeypatch.setattr("projections.audit.CARRY_FROM_EVENTS", 1)  # every batch carries its subjects
    runtime = world.runtime
    token_id = create(world, "project")
    first = Projector(runtime.store, runtime.db, [AuditTrail()], batch_size=3, rebuild_batch_size=3)
    first.setup()
    first.rebuild("audit_trail")  # carries the token's subject, with both scopes, out of its last batch
    change_aggregate(
        runtime,
        deploy_token_uuid(token_id),
        lambda t: t.narrow_scopes(["read_registry"], actor=world.admin, now=clock.now()),
    )
    runtime.projector.catch_up()  # the narrowing applied by another projector
    token = runtime.store.repository.get(deploy_token_uuid(token_id))
    assert isinstance(token, DeployToken)
    token.revoke(actor=world.admin, now=clock.now())
    save_unprojected(runtime, token)
    first.catch_up()
    revoked = audit_events(runtime.db, AuditQuery(token_id=token_id))[-1]
    assert revoked.event_type == "deploy_token_revoked"
    assert revoked.message.endswith("with scopes: [:read_registry].")
    assert revoked.details["scopes"] == ["read_registry"]


def test_small_batches_carrying_subjects_give_the_rows_of_one_batch(
    world: World, projector: Projector, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
):
    """Batches of three events, each reading its subjects from the one before (``AuditTrail.apply_batch``),
    give the rows of a rebuild in one batch."""
    do_everything(world, clock)
    runtime = world.runtime
    whole = Projector(runtime.store, runtime.db, [AuditTrail()], rebuild_batch_size=100_000)
    whole.setup()
    assert whole.rebuild("audit_trail") == runtime.store.head()
    in_one = table_rows(runtime)
    monkeypatch.setattr("projections.audit.CARRY_FROM_EVENTS", 1)
    small = Projector(runtime.store, runtime.db, [AuditTrail()], batch_size=3, rebuild_batch_size=3)
    small.setup()
    assert small.rebuild("audit_trail") == runtime.store.head()
    assert table_rows(runtime) == in_one


@pytest.mark.parametrize("grace", [timedelta(hours=2), None])
def test_rotation_says_whether_the_old_value_has_a_grace_period(
    world: World, projector: Projector, grace: timedelta | None
):
    token_id = create(world, "project")
    world.runtime.tokens.rotate_token(world.admin, "project", world.project, token_id, grace=grace)
    rotated = token_rows(world, projector, token_id)[-1]
    assert rotated.event_type == "deploy_token_rotated"
    if grace is None:
        assert rotated.message.endswith("without a grace period: the previous value stopped working at once.")
        assert rotated.details["grace_period"] is False
    else:
        assert rotated.message.endswith("the previous value stays valid until 2026-01-10T14:00:00Z.")
        assert rotated.details["previous_valid_until"] == "2026-01-10T14:00:00Z"


def test_a_changed_access_level_records_the_old_and_new_level(world: World, projector: Projector):
    guest = world.users["guest"].user_id
    world.runtime.members.set_member(world.admin, "project", world.project, guest, 30)
    changed = trail(world, projector, namespace_kind="project", namespace_id=world.project)[-1]
    assert changed.event_type == "member_updated"
    assert changed.message == (
        f"Changed access level from Guest to Developer for user: guest with user_id: {guest} in project: acme/api."
    )
    assert (changed.details["previous_access_level"], changed.details["access_level"]) == (10, 30)
    assert (changed.target_type, changed.target_id, changed.target_name) == ("User", guest, "guest")


def test_granting_and_removing_auditor_access_are_audited(world: World, projector: Projector):
    outsider = world.users["outsider"].user_id
    world.runtime.directory.update_user(world.admin, outsider, is_auditor=True)
    world.runtime.directory.update_user(world.admin, outsider, is_auditor=False)
    granted, removed = [row for row in trail(world, projector) if row.event_type == "user_auditor_changed"]
    assert (
        granted.message == f"Granted auditor access to user with username: outsider with user_id: {outsider}."
    )
    assert (
        removed.message
        == f"Removed auditor access from user with username: outsider with user_id: {outsider}."
    )
    assert (granted.details, removed.details) == ({"is_auditor": True}, {"is_auditor": False})
    assert granted.actor_username == world.admin.username


def test_streaming_destinations_have_gitlabs_types_and_messages_and_never_their_token(
    world: World, projector: Projector
):
    streaming = world.runtime.audit_streaming()
    token = "s3cret-verification-tok"
    destination = streaming.create_destination(
        world.admin, name="SIEM", destination_url="https://siem.example.com/in", verification_token=token
    )
    streaming.delete_destination(world.admin, destination.id)
    created, deleted = [
        row for row in trail(world, projector) if row.target_type == "AuditStreamingDestination"
    ]
    assert (created.event_type, created.message) == (
        "instance_event_streaming_destination_created",
        "Create instance event streaming destination https://siem.example.com/in",
    )
    assert (deleted.event_type, deleted.message) == (
        "instance_event_streaming_destination_deleted",
        "Destroy instance event streaming destination https://siem.example.com/in",
    )
    assert (created.target_id, created.target_name, created.namespace_kind) == (
        destination.id,
        "SIEM",
        "instance",
    )
    assert token not in repr(created) + repr(deleted)


# One row per event, rebuild, secrets --------------------------------------------------------------------


def test_one_row_per_audited_event(world: World, projector: Projector, clock: FixedClock):
    do_everything(world, clock)
    rows = trail(world, projector)
    events = log_events(world.runtime)
    assert {type(event) for _, event in events} >= AUDITED_EVENTS  # the scenario covers every class
    skipped = {type(event).__qualname__ for _, event in events if type(event) not in AUDITED_EVENTS}
    assert skipped == {
        "PathClaim.Created",
        "PathClaim.Released",
        "PathClaim.Reclaimed",
        "EmailClaim.Created",
        "EmailClaim.Released",
        "UserNamespace.Created",
        "InstanceSettings.Created",
        "Group.ChildAdded",
        "ActivityRetention.Created",
        "AuditStreaming.Created",
        "IdTokenUse.Created",
    }
    audited = [position for position, event in events if type(event) in AUDITED_EVENTS]
    assert len(rows) == len(audited)
    assert [row.position for row in rows] == audited


def test_rebuilding_from_scratch_gives_identical_rows(world: World, projector: Projector, clock: FixedClock):
    do_everything(world, clock)
    projector.catch_up()
    before = table_rows(world.runtime)
    assert projector.rebuild("audit_trail") == world.runtime.store.head()
    assert table_rows(world.runtime) == before


def test_no_token_value_or_digest_appears_in_the_audit_tables(
    world: World, projector: Projector, clock: FixedClock
):
    issued = do_everything(world, clock)
    projector.catch_up()
    text = "\n".join(
        str(value) for rows in table_rows(world.runtime).values() for row in rows for value in row
    )
    digests = [world.runtime.keys.digest(value) for value in issued["values"]]
    for token_id in issued["token_ids"]:
        record = world.runtime.read.token(token_id)
        assert record is not None
        digests += [record.digest] + ([record.previous_digest] if record.previous_digest else [])
    for secret in issued["values"]:
        assert secret not in text
        assert secret.split("-", 1)[1] not in text
    for digest in digests:
        assert digest not in text


def test_deleting_a_token_keeps_its_earlier_rows(world: World, projector: Projector):
    token_id = create(world, "project")
    world.runtime.tokens.revoke_token(world.admin, "project", world.project, token_id)
    before = token_rows(world, projector, token_id)
    world.runtime.tokens.delete_token(world.admin, "project", world.project, token_id)
    assert token_rows(world, projector, token_id)[:-1] == before


# Who and from where --------------------------------------------------------------------------------------


def test_actor_username_and_address_are_recorded(world: World, projector: Projector):
    token_id = create(world, "project", actor=world.admin.with_address("198.51.100.7"))
    created = token_rows(world, projector, token_id)[0]
    assert (created.actor_kind, created.actor_id, created.actor_username, created.actor_address) == (
        "user",
        world.admin.user_id,
        "root",
        "198.51.100.7",
    )


# Queries -------------------------------------------------------------------------------------------------


def test_filter_by_token_returns_only_that_tokens_history(world: World, projector: Projector):
    mine, other = create(world, "project", "mine"), create(world, "project", "other")
    world.runtime.tokens.revoke_token(world.admin, "project", world.project, mine)
    rows = token_rows(world, projector, mine)
    assert {(row.target_type, row.target_id) for row in rows} == {("DeployToken", mine)}
    assert [row.event_type for row in rows] == [
        "deploy_token_created",
        "deploy_token_scoped",
        "deploy_token_revoked",
    ]
    assert other not in {row.target_id for row in rows}


def test_filter_by_namespace_returns_only_that_namespaces_events(world: World, projector: Projector):
    group_token, project_token = create(world, "group"), create(world, "project")
    rows = trail(world, projector, namespace_kind="group", namespace_id=world.top)
    assert {(row.namespace_kind, row.namespace_id) for row in rows} == {("group", world.top)}
    tokens = {row.target_id for row in rows if row.target_type == "DeployToken"}
    assert tokens == {group_token}
    assert project_token not in tokens
    assert rows[0].event_type == "group_created"


def test_filter_by_actor_id_returns_only_that_actors_events(world: World, projector: Projector):
    maintainer = world.users["maintainer"]
    token_id = create(world, "project", actor=maintainer)
    rows = trail(world, projector, actor_id=maintainer.user_id)
    assert [(row.event_type, row.target_id) for row in rows] == [
        ("deploy_token_created", token_id),
        ("deploy_token_scoped", token_id),
    ]


def test_filter_by_actor_username_returns_only_that_actors_events(world: World, projector: Projector):
    token_id = create(world, "project", actor=world.users["maintainer"])
    rows = trail(world, projector, actor_username="maintainer")
    assert {row.target_id for row in rows} == {token_id}
    assert len(rows) == 2


def test_filter_by_time_range_is_half_open(world: World, projector: Projector, clock: FixedClock):
    create(world, "project", "at-t0")
    clock.set(T0 + timedelta(hours=1))
    inside = create(world, "project", "at-t1")
    clock.set(T0 + timedelta(hours=2))
    create(world, "project", "at-t2")
    rows = trail(world, projector, since=T0 + timedelta(hours=1), until=T0 + timedelta(hours=2))
    assert {row.target_id for row in rows} == {inside}
    assert {row.occurred_at for row in rows} == {T0 + timedelta(hours=1)}


def test_keyset_paging_returns_every_row_once_in_order(world: World, projector: Projector):
    for number in range(4):
        create(world, "project", f"t{number}")
    everything = trail(world, projector)
    pages: list[list[AuditRecord]] = []
    after = 0
    while page := audit_events(world.runtime.db, AuditQuery(limit=7, after_position=after)):
        pages.append(page)
        after = page[-1].position
    assert [row for page in pages for row in page] == everything
    assert all(len(page) == 7 for page in pages[:-1])


def test_instance_settings_changes_belong_to_the_instance(world: World, projector: Projector):
    world.runtime.directory.set_external_authorization(world.admin, True)
    rows = trail(world, projector, namespace_kind="instance")
    assert [(row.event_type, row.target_type, row.namespace_id, row.message) for row in rows] == [
        ("external_authorization_changed", "InstanceSettings", None, "Enabled external authorization.")
    ]
