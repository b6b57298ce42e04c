"""Federation in the read models (behaviour [federation], [history], [notifications], [expiry-event]) on both
backends: trust policies in their read model and the audit trail, the trusted issuers in the instance's trail,
the federated actor wherever a token's history is shown, and no expiry mail for a federated token while the
daily scan still records its expiry."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from deploy_tokens.audit_streaming import event_document
from deploy_tokens.expiry import ScanReport
from deploy_tokens.exports import Export, ExportRequest
from deploy_tokens.runtime import Runtime
from domain.actors import Actor, FederatedIdentity
from domain.clock import FixedClock
from domain.federation import ClaimCondition, IdTokenUse, id_token_use_uuid
from infrastructure.mail import SmtpMailer
from projections import trust_policies
from projections.access import Action
from projections.audit_queries import AuditQuery, AuditRecord, audit_events
from projections.base import Projector
from projections.notification_queries import due_tokens, notification_state
from projections.point_in_time import token_state_at, who_could
from workers.jobs import InlineDispatcher

from ..conftest import T0, World
from .conftest import SmtpSink

ISSUER = "https://gitlab.example.com"
OTHER_ISSUER = "https://token.actions.githubusercontent.com"
AUDIENCE = "https://deploy-tokens.example.com"
SUBJECT = "project_path:acme/api:ref_type:branch:ref:main"
PROJECT_PATH = ClaimCondition("project_path", "acme/api")
# The projections a federated token's life touches, and their tables.
PROJECTIONS = ("trust_policies", "audit_trail", "expiry_notifications")


def trail(runtime: Runtime, **filters: Any) -> list[AuditRecord]:
    runtime.projector.catch_up()
    return audit_events(runtime.db, AuditQuery(limit=None, **filters))


def create_policy(world: World, **terms: Any) -> int:
    chosen: dict[str, Any] = {
        "name": "deploy",
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "conditions": [PROJECT_PATH],
        "scopes": ["read_repository"],
        "ttl_seconds": 600,
    }
    chosen.update(terms)
    return world.runtime.trust_policies.create_policy(
        world.admin, "project", world.project, **chosen
    ).policy_id


def identity(policy_id: int, jti: str = "jti-1") -> FederatedIdentity:
    return FederatedIdentity(
        issuer=ISSUER,
        subject=SUBJECT,
        policy_id=policy_id,
        id_token_jti=jti,
        claims=(("project_path", "acme/api"), ("ref", "main")),
    )


def issue_federated(world: World, policy_id: int, *, lifetime: timedelta, jti: str = "jti-1") -> int:
    """A token as the exchange issues it: by the federated actor, saved with the ID token's use."""
    runtime = world.runtime
    now = runtime.clock.now()

    def id_token_use(token_id: int) -> list[IdTokenUse]:
        return [
            IdTokenUse.record(
                issuer=ISSUER,
                jti=jti,
                token_id=token_id,
                policy_id=policy_id,
                id_token_expires_at=now + timedelta(minutes=5),
                now=now,
            )
        ]

    return runtime.tokens.issue_token(
        Actor.federated(identity(policy_id, jti), address="203.0.113.9"),
        "project",
        world.project,
        name="federated: deploy",
        scopes=["read_repository"],
        expires_at=now + lifetime,
        along=id_token_use,
    ).token.token_id


def table_rows(runtime: Runtime) -> dict[str, list[tuple[Any, ...]]]:
    with runtime.db.read() as cursor:
        return {
            table: sorted(cursor.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
            for name in PROJECTIONS
            for table in runtime.projector.projections[name].tables
        }


# Trust policies: read model and audit trail --------------------------------------------------------------


@dataclass(frozen=True)
class PolicyLife:
    policy_id: int
    rows: list[AuditRecord]


def policy_life(world: World) -> PolicyLife:
    """Created, then renamed with a new audience, a glob condition and a shorter TTL, then deleted."""
    trust = world.runtime.trust_policies
    trust.set_trusted_issuers(world.admin, [ISSUER])
    policy_id = create_policy(world)
    trust.change_policy(
        world.admin,
        "project",
        world.project,
        policy_id,
        name="deploy main",
        audience="https://other.example.com",
        conditions=[PROJECT_PATH, ClaimCondition("ref", "release-*", "glob")],
        ttl_seconds=300,
    )
    trust.delete_policy(world.admin, "project", world.project, policy_id)
    rows = trail(world.runtime, namespace_kind="project", namespace_id=world.project)
    return PolicyLife(policy_id, [row for row in rows if row.target_type == "TrustPolicy"])


def test_a_policys_changes_reach_its_read_model(world: World) -> None:
    trust, admin = world.runtime.trust_policies, world.admin
    trust.set_trusted_issuers(admin, [ISSUER])
    policy_id = create_policy(world)
    [listed] = trust.policies(admin, "project", world.project)
    assert (listed.policy_id, listed.name, listed.ttl_seconds, listed.created_by) == (
        policy_id,
        "deploy",
        600,
        "root",
    )
    trust.change_policy(admin, "project", world.project, policy_id, scopes=["read_registry"], ttl_seconds=60)
    changed = trust.policy(admin, "project", world.project, policy_id)
    assert (changed.scopes, changed.ttl_seconds, changed.conditions) == (
        ("read_registry",),
        60,
        (PROJECT_PATH,),
    )
    trust.delete_policy(admin, "project", world.project, policy_id)
    assert trust.policies(admin, "project", world.project) == []
    gone = trust_policies.policy(world.runtime.db, policy_id)
    assert gone is not None and gone.deleted_at == T0


def test_a_policys_life_is_on_its_holders_audit_page(world: World) -> None:
    life = policy_life(world)
    created, updated, destroyed = life.rows
    words = f"trust policy with name: deploy with policy_id: {life.policy_id}"
    assert [(row.event_type, row.message) for row in life.rows] == [
        (
            "trust_policy_created",
            f"Created {words} for issuer: {ISSUER} with scopes: [:read_repository].",
        ),
        (
            "trust_policy_updated",
            f"Changed {words}: name from deploy to deploy main, audience from {AUDIENCE} to "
            "https://other.example.com, conditions from [project_path: acme/api] to "
            "[project_path: acme/api, ref: release-* (glob)], ttl_seconds from 600 to 300.",
        ),
        (
            "trust_policy_destroyed",
            f"Destroyed trust policy with name: deploy main with policy_id: {life.policy_id} "
            f"for issuer: {ISSUER}.",
        ),
    ]
    assert {(row.target_id, row.namespace_kind, row.namespace_id) for row in life.rows} == {
        (life.policy_id, "project", world.project)
    }
    assert [row.target_name for row in life.rows] == ["deploy", "deploy main", "deploy main"]
    # The instance-wide trail (no filter) holds the same rows.
    assert [row for row in trail(world.runtime) if row.target_type == "TrustPolicy"] == life.rows
    assert {(row.actor_kind, row.actor_username) for row in life.rows} == {("user", "root")}
    assert created.details == {
        "name": "deploy",
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "conditions": [{"claim": "project_path", "value": "acme/api", "match": "exact"}],
        "scopes": ["read_repository"],
        "ttl_seconds": 600,
        "holder_kind": "project",
        "holder_id": world.project,
    }
    assert updated.details["changed"] == ["name", "audience", "conditions", "ttl_seconds"]
    assert (updated.details["previous_audience"], updated.details["audience"]) == (
        AUDIENCE,
        "https://other.example.com",
    )
    assert (updated.details["previous_ttl_seconds"], updated.details["ttl_seconds"]) == (600, 300)
    assert "previous_scopes" not in updated.details  # unchanged terms are not listed as changed
    assert destroyed.details["audience"] == "https://other.example.com"  # the terms it was deleted with


def test_a_groups_policy_is_on_the_groups_page_not_a_projects(world: World) -> None:
    trust = world.runtime.trust_policies
    trust.set_trusted_issuers(world.admin, [ISSUER])
    record = trust.create_policy(
        world.admin,
        "group",
        world.top,
        name="group deploy",
        issuer=ISSUER,
        audience=AUDIENCE,
        conditions=[ClaimCondition("namespace_path", "acme")],
        scopes=["read_registry"],
    )
    on_group = trail(world.runtime, namespace_kind="group", namespace_id=world.top)
    on_project = trail(world.runtime, namespace_kind="project", namespace_id=world.project)
    assert [(row.event_type, row.target_id) for row in on_group if row.target_type == "TrustPolicy"] == [
        ("trust_policy_created", record.policy_id)
    ]
    assert not [row for row in on_project if row.target_type == "TrustPolicy"]


def test_the_trusted_issuers_are_an_instance_setting_with_their_previous_list(world: World) -> None:
    trust = world.runtime.trust_policies
    trust.set_trusted_issuers(world.admin, [ISSUER])
    trust.set_trusted_issuers(world.admin, [ISSUER, OTHER_ISSUER])
    trust.set_trusted_issuers(world.admin, [OTHER_ISSUER])
    rows = [
        row
        for row in trail(world.runtime, namespace_kind="instance")
        if row.event_type == "oidc_issuers_changed"
    ]
    assert [row.message for row in rows] == [
        f"Changed the trusted OIDC issuers from [] to [{ISSUER}].",
        f"Changed the trusted OIDC issuers from [{ISSUER}] to [{ISSUER}, {OTHER_ISSUER}].",
        f"Changed the trusted OIDC issuers from [{ISSUER}, {OTHER_ISSUER}] to [{OTHER_ISSUER}].",
    ]
    assert rows[-1].details == {"issuers": [OTHER_ISSUER], "previous_issuers": [ISSUER, OTHER_ISSUER]}
    assert {(row.target_type, row.namespace_id, row.actor_username) for row in rows} == {
        ("InstanceSettings", None, "root")
    }


# The federated actor in a token's history ---------------------------------------------------------------


def federated_token(world: World) -> tuple[int, int]:
    world.runtime.trust_policies.set_trusted_issuers(world.admin, [ISSUER])
    policy_id = create_policy(world)
    return policy_id, issue_federated(world, policy_id, lifetime=timedelta(minutes=10))


FEDERATION = {
    "issuer": ISSUER,
    "subject": SUBJECT,
    "jti": "jti-1",
    "claims": {"project_path": "acme/api", "ref": "main"},
}


def test_a_federated_tokens_creation_row_names_the_id_tokens_subject_and_who_vouched(world: World) -> None:
    policy_id, token_id = federated_token(world)
    rows = trail(world.runtime, token_id=token_id)
    created = rows[0]
    assert [row.event_type for row in rows] == ["deploy_token_created", "deploy_token_scoped"]
    assert created.message == (
        f"Created project deploy token with name: federated: deploy with token_id: {token_id} "
        "with scopes: [:read_repository]."
    )
    assert {(row.actor_kind, row.actor_id, row.actor_username, row.actor_address) for row in rows} == {
        ("federated", None, SUBJECT, "203.0.113.9")
    }
    assert created.details["federation"] == {**FEDERATION, "policy_id": policy_id}
    assert "federation" not in rows[1].details
    # The subject is an author like any other: the actor filter finds its rows.
    assert trail(world.runtime, actor_username=SUBJECT) == rows
    # The ID token's use is bookkeeping saved with the token: no row of its own.
    assert str(id_token_use_uuid(ISSUER, "jti-1")) not in {row.stream_id for row in trail(world.runtime)}


def test_an_ordinary_tokens_creation_row_has_no_federation(world: World) -> None:
    token_id = world.runtime.tokens.create_token(
        world.admin, "project", world.project, name="plain", scopes=["read_repository"]
    ).token.token_id
    created = trail(world.runtime, token_id=token_id)[0]
    assert (created.actor_kind, created.actor_id) == ("user", world.admin.user_id)
    assert "federation" not in created.details


def test_a_federated_tokens_history_point_in_time_export_and_stream_show_the_federated_actor(
    world: World,
) -> None:
    runtime = world.runtime
    policy_id, token_id = federated_token(world)
    [created, _] = runtime.tokens.history(token_id)
    assert created["actor"]["kind"] == "federated"
    assert created["actor"]["username"] == SUBJECT
    assert created["actor"]["federation"] == {**FEDERATION, "policy_id": policy_id}

    later = T0 + timedelta(minutes=5)
    cloners = who_could(runtime.store, action=Action.GIT_READ, project=world.project, at=later)
    assert [(answer.token_id, answer.created_by) for answer in cloners] == [(token_id, SUBJECT)]
    assert not token_state_at(runtime.store, token_id, later).expired
    assert token_state_at(runtime.store, token_id, T0 + timedelta(minutes=10)).expired

    runtime.projector.catch_up()
    jsonl = b"".join(
        Export(
            runtime.db, ExportRequest("lifecycle", "jsonl", token_id=token_id), runtime.keys.chain_key
        ).chunks()
    )
    exported = [json.loads(line) for line in jsonl.decode().splitlines()]
    assert [(row["actor_kind"], row["actor_id"], row["actor_username"]) for row in exported] == [
        ("federated", None, SUBJECT),
        ("federated", None, SUBJECT),
    ]
    # JSON Lines hold the details as the trail stores them: JSON text.
    assert json.loads(exported[0]["details"])["federation"] == {**FEDERATION, "policy_id": policy_id}
    text = b"".join(
        Export(
            runtime.db, ExportRequest("lifecycle", "csv", token_id=token_id), runtime.keys.chain_key
        ).chunks()
    )
    header, *lines = list(csv.reader(io.StringIO(text.decode())))
    cells = dict(zip(header, lines[0], strict=True))
    assert (cells["actor_kind"], cells["actor_id"], cells["actor_username"]) == ("federated", "", SUBJECT)

    document = event_document(trail(runtime, token_id=token_id)[0])
    assert (document["actor_kind"], document["actor_id"], document["actor_username"]) == (
        "federated",
        None,
        SUBJECT,
    )
    assert document["details"]["federation"]["issuer"] == ISSUER


# Expiry: no mails, but Expired recorded ------------------------------------------------------------------


def test_a_federated_token_gets_no_mail_and_its_expiry_is_recorded(
    world: World, clock: FixedClock, sink: SmtpSink
) -> None:
    runtime = world.runtime
    runtime.trust_policies.set_trusted_issuers(world.admin, [ISSUER])
    policy_id = create_policy(world)
    federated = issue_federated(world, policy_id, lifetime=timedelta(minutes=15))
    ordinary = runtime.tokens.create_token(
        world.admin,
        "project",
        world.project,
        name="in-7-days",
        scopes=["read_repository"],
        expires_at=T0.date() + timedelta(days=7),
    ).token.token_id
    runtime.projector.catch_up()
    state = notification_state(runtime.db, federated)
    assert state is not None and not state.mails
    assert state.next_due_at == T0 + timedelta(minutes=15)  # its expiry: it is inside the 7-day window, yet
    assert {row.token_id for row in due_tokens(runtime.db, clock.now())} == {ordinary}  # never due for a mail

    def scan() -> tuple[ScanReport, list[tuple[int, int, str]]]:
        dispatcher = InlineDispatcher(runtime.expiry_notifier(SmtpMailer(sink.url)))
        return runtime.expiry_scan.run(dispatcher), dispatcher.outcomes

    first, _ = scan()
    assert first.dispatched == [(ordinary, 7)]
    assert first.expired_recorded == 0
    assert [mail.subject for mail in sink.received] == [
        'Your deploy token "in-7-days" for project acme/api expires in 7 days'
    ]

    clock.set(T0 + timedelta(minutes=15))  # the federated token's expiry, the same day
    second, outcomes = scan()
    assert (second.examined, second.expired_recorded, second.dispatched, outcomes) == (1, 1, [], [])
    assert len(sink.received) == 1  # nothing more was sent
    assert [entry["event"] for entry in runtime.tokens.history(federated)] == ["Created", "Scoped", "Expired"]
    runtime.projector.catch_up()
    finished = notification_state(runtime.db, federated)
    assert finished is not None and finished.expiry_recorded and finished.next_due_at is None
    assert [row.event_type for row in trail(runtime, token_id=federated)][-1] == "deploy_token_expired"


# Rebuilding from event 0 ----------------------------------------------------------------------------------


def test_rebuilding_from_event_zero_gives_the_same_rows(world: World, clock: FixedClock) -> None:
    runtime = world.runtime
    life = policy_life(world)
    runtime.trust_policies.set_trusted_issuers(world.admin, [ISSUER, OTHER_ISSUER])
    kept = create_policy(world, name="kept")
    federated = issue_federated(world, kept, lifetime=timedelta(minutes=15))
    issue_federated(world, kept, lifetime=timedelta(hours=1), jti="jti-2")
    runtime.tokens.create_token(
        world.admin,
        "project",
        world.project,
        name="ordinary",
        scopes=["read_repository"],
        expires_at=T0.date() + timedelta(days=20),
    )
    clock.set(T0 + timedelta(minutes=20))
    assert runtime.tokens.record_expiry(federated)
    runtime.projector.catch_up()
    followed = table_rows(runtime)
    assert followed["trust_policies"] and followed["expiry_notifications"] and life.rows

    for name in PROJECTIONS:
        assert runtime.projector.rebuild(name) == runtime.store.head()
    assert table_rows(runtime) == followed

    # Batches of one event each: the trusted issuers' and the policies' subjects read back from the tables.
    projections = [runtime.projector.projections[name] for name in PROJECTIONS]
    one_by_one = Projector(runtime.store, runtime.db, projections, batch_size=1, rebuild_batch_size=1)
    for name in PROJECTIONS:
        assert one_by_one.rebuild(name) == runtime.store.head()
    assert table_rows(runtime) == followed
