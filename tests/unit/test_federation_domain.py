"""Federation's domain rules (behaviour [federation]): claim conditions, a policy's terms, the trust policy and
ID-token-use aggregates, the federated actor, and no expiry mails for the tokens it creates. No I/O."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from domain.actors import Actor, FederatedIdentity
from domain.deploy_token import DeployToken, is_federated
from domain.errors import NotFound, ValidationError
from domain.federation import (
    IDENTIFYING_CLAIMS,
    MAX_CONDITIONS,
    RESERVED_CLAIMS,
    ClaimCondition,
    IdTokenUse,
    PolicyTerms,
    TrustPolicy,
    check_conditions,
    check_issuer,
    check_ttl,
    claim_text,
    id_token_use_uuid,
    trust_policy_uuid,
)

NOW = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
ISSUER = "https://gitlab.example.com"
AUDIENCE = "https://deploy-tokens.example.com"
OWNER = Actor.user(5, "owner")
PROJECT = ClaimCondition("project_path", "acme/api")
IDENTITY = FederatedIdentity(
    issuer=ISSUER,
    subject="project_path:acme/api:ref_type:branch:ref:main",
    policy_id=3,
    id_token_jti="5f0c-jti",
    claims=(("project_path", "acme/api"), ("ref", "main")),
)


def errors(check: Any, *args: Any, **kwargs: Any) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as caught:
        check(*args, **kwargs)
    return caught.value.errors


def terms(**overrides: Any) -> PolicyTerms:
    fields: dict[str, Any] = {
        "name": "deploy from main",
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "conditions": [ClaimCondition("ref", "main"), PROJECT],
        "scopes": ["read_registry", "read_repository"],
        "ttl_seconds": None,
        "allowed_issuers": [ISSUER],
    }
    fields.update(overrides)
    return PolicyTerms.checked(**fields)


def policy(**overrides: Any) -> TrustPolicy:
    return TrustPolicy.create(
        policy_id=3, holder_kind="project", holder_id=7, terms=terms(**overrides), actor=OWNER, now=NOW
    )


# Claim conditions --------------------------------------------------------------------------------------


def test_an_exact_condition_matches_only_the_same_text() -> None:
    condition = ClaimCondition("ref", "main")
    assert condition.accepts({"ref": "main"})
    assert not condition.accepts({"ref": "main2"})
    assert not condition.accepts({"ref": "Main"})
    assert not condition.accepts({"other": "main"})  # a claim the token lacks meets nothing


def test_an_exact_condition_never_globs_a_star_is_literal() -> None:
    condition = ClaimCondition("ref", "refs/heads/*")
    assert not condition.accepts({"ref": "refs/heads/main"})
    assert condition.accepts({"ref": "refs/heads/*"})


def test_a_glob_star_matches_within_one_path_segment_only() -> None:
    condition = ClaimCondition("ref", "refs/heads/release-*", "glob")
    assert condition.accepts({"ref": "refs/heads/release-1.2"})
    assert condition.accepts({"ref": "refs/heads/release-"})
    assert not condition.accepts({"ref": "refs/heads/release-1/hotfix"})
    assert not condition.accepts({"ref": "refs/tags/release-1"})


def test_a_glob_double_star_crosses_path_segments() -> None:
    condition = ClaimCondition("ref", "refs/heads/**", "glob")
    assert condition.accepts({"ref": "refs/heads/feature/x/y"})
    assert not condition.accepts({"ref": "refs/tags/v1"})


def test_a_glob_matches_the_whole_claim_and_its_other_characters_literally() -> None:
    condition = ClaimCondition("ref", "v1.0*", "glob")
    assert condition.accepts({"ref": "v1.0-rc1"})
    assert not condition.accepts({"ref": "v1x0"})  # "." is no regular-expression wildcard
    assert not condition.accepts({"ref": "xv1.0"})  # anchored at the start


@pytest.mark.parametrize(
    ("value", "text"), [("main", "main"), (True, "true"), (False, "false"), (42, "42"), (0, "0")]
)
def test_claim_text_compares_strings_booleans_and_integers(value: Any, text: str) -> None:
    assert claim_text(value) == text


@pytest.mark.parametrize("value", [None, ["acme/api"], {"path": "acme/api"}, 4.2])
def test_claim_text_of_anything_else_is_none_and_matches_no_condition(value: Any) -> None:
    assert claim_text(value) is None
    assert not ClaimCondition("project_path", str(value)).accepts({"project_path": value})
    assert not ClaimCondition("project_path", "**", "glob").accepts({"project_path": value})


def test_boolean_and_integer_claims_meet_conditions_written_as_text() -> None:
    assert ClaimCondition("ref_protected", "true").accepts({"ref_protected": True})
    assert not ClaimCondition("ref_protected", "true").accepts({"ref_protected": False})
    assert ClaimCondition("project_id", "42").accepts({"project_id": 42})


# check_conditions ----------------------------------------------------------------------------------------


def test_conditions_come_back_sorted_by_claim() -> None:
    checked = check_conditions([ClaimCondition("ref", "main"), PROJECT])
    assert [condition.claim for condition in checked] == ["project_path", "ref"]


def test_at_most_sixteen_conditions() -> None:
    extra = [ClaimCondition(f"claim_{number}", "x") for number in range(MAX_CONDITIONS - 1)]
    check_conditions([PROJECT, *extra])
    refused = errors(check_conditions, [PROJECT, *extra, ClaimCondition("one_more", "x")])
    assert refused == {"claims": [f"is too long (maximum is {MAX_CONDITIONS} conditions)"]}


def test_a_claim_named_twice_is_refused() -> None:
    assert errors(check_conditions, [PROJECT, ClaimCondition("project_path", "acme/db")]) == {
        "claims": ["names project_path more than once"]
    }


@pytest.mark.parametrize("name", ["", "1st", "with space", "ünicode", "a" * 65, "semi;colon"])
def test_a_malformed_claim_name_is_refused(name: str) -> None:
    assert errors(check_conditions, [PROJECT, ClaimCondition(name, "x")]) == {
        "claims": [f"has an invalid claim name: {name[:64]!r}"]
    }


@pytest.mark.parametrize("claim", sorted(RESERVED_CLAIMS))
def test_the_claims_the_verifier_checks_itself_cannot_be_constrained(claim: str) -> None:
    assert errors(check_conditions, [PROJECT, ClaimCondition(claim, "x")]) == {
        "claims": [f"cannot constrain {claim}: the verifier checks it"]
    }


def test_every_value_must_be_present_printable_and_matched_in_a_known_way() -> None:
    refused = errors(
        check_conditions,
        [
            PROJECT,
            ClaimCondition("ref", ""),
            ClaimCondition("environment", "prod\nuction"),
            ClaimCondition("ref_type", "branch", "regex"),  # type: ignore[arg-type]
        ],
    )
    assert refused == {
        "claims": [
            "needs a value for ref",
            "has control characters in the value for environment",
            "has an unknown match for ref_type: use exact or glob",
        ]
    }


@pytest.mark.parametrize(
    "conditions",
    [
        [ClaimCondition("ref", "main")],  # nothing says which project
        [ClaimCondition("project_path", "acme/*", "glob")],  # only a pattern says which project
        [],
    ],
)
def test_one_identifying_claim_must_be_matched_exactly(conditions: list[ClaimCondition]) -> None:
    refused = errors(check_conditions, conditions)
    assert refused == {
        "claims": [
            "must match one of " + ", ".join(IDENTIFYING_CLAIMS) + " exactly (which project or repository)"
        ]
    }


@pytest.mark.parametrize("claim", IDENTIFYING_CLAIMS)
def test_any_identifying_claim_matched_exactly_will_do(claim: str) -> None:
    assert check_conditions([ClaimCondition(claim, "42")]) == (ClaimCondition(claim, "42"),)


# check_issuer and check_ttl ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "issuer", [ISSUER, "https://token.actions.githubusercontent.com", "https://h:8443/x"]
)
def test_an_https_issuer_is_accepted_as_it_is(issuer: str) -> None:
    assert check_issuer(issuer) == issuer


def test_http_is_accepted_only_when_the_instance_allows_insecure_issuers() -> None:
    assert errors(check_issuer, "http://gitlab.local") == {"issuer": ["is invalid: the scheme must be https"]}
    assert check_issuer("http://gitlab.local", allow_insecure=True) == "http://gitlab.local"
    assert errors(check_issuer, "ftp://gitlab.local", allow_insecure=True) == {
        "issuer": ["is invalid: the scheme must be https or http"]
    }


@pytest.mark.parametrize(
    ("issuer", "message"),
    [
        ("https://user:secret@gitlab.example.com", "is invalid: a host and no credentials are required"),
        ("https://user@gitlab.example.com", "is invalid: a host and no credentials are required"),
        ("https:///path-only", "is invalid: a host and no credentials are required"),
        ("https://gitlab.example.com/?tenant=a", "is invalid: no query string or fragment"),
        ("https://gitlab.example.com/#top", "is invalid: no query string or fragment"),
        ("https://gitlab.example.com/?", "is invalid: no query string or fragment"),
        ("https://gitlab.example.com:99999", "is invalid: not a URL"),
        ("https://gitlab.example.com/a b", "is invalid: only visible ASCII characters are allowed"),
        ("https://gitlab.example.com/\x00", "is invalid: only visible ASCII characters are allowed"),
        ("https://gitläb.example.com", "is invalid: only visible ASCII characters are allowed"),
        ("", "can't be blank"),
        (None, "can't be blank"),
    ],
)
def test_an_issuer_is_refused_with_credentials_query_fragment_or_odd_characters(
    issuer: str | None, message: str
) -> None:
    assert errors(check_issuer, issuer, allow_insecure=True) == {"issuer": [message]}


def test_an_issuer_is_at_most_255_characters() -> None:
    longest = "https://h.example.com/" + "p" * (255 - len("https://h.example.com/"))
    assert check_issuer(longest) == longest
    assert errors(check_issuer, longest + "p") == {"issuer": ["is too long (maximum is 255 characters)"]}


def test_a_missing_ttl_is_fifteen_minutes() -> None:
    assert check_ttl(None) == 900


@pytest.mark.parametrize("ttl", [60, 61, 900, 3600])
def test_a_ttl_from_one_minute_to_one_hour_is_kept(ttl: int) -> None:
    assert check_ttl(ttl) == ttl


@pytest.mark.parametrize("ttl", [59, 3601, 0, -900, True, False, 900.0, "900"])
def test_a_ttl_outside_the_bounds_or_not_a_whole_number_is_refused(ttl: Any) -> None:
    assert errors(check_ttl, ttl) == {"ttl_seconds": ["must be a whole number from 60 to 3600"]}


# PolicyTerms ---------------------------------------------------------------------------------------------


def test_checked_terms_are_canonical() -> None:
    checked = terms(scopes=["read_repository", "read_registry", "read_repository"])
    assert checked == PolicyTerms(
        "deploy from main",
        ISSUER,
        AUDIENCE,
        (PROJECT, ClaimCondition("ref", "main")),
        ("read_repository", "read_registry"),
        900,
    )


def test_every_error_of_the_terms_is_reported_at_once() -> None:
    refused = errors(
        terms,
        name=" ",
        issuer="http://gitlab.example.com",
        audience="",
        conditions=[ClaimCondition("ref", "main")],
        scopes=["write_repository"],
        ttl_seconds=30,
    )
    assert set(refused) == {"name", "issuer", "audience", "claims", "scopes", "ttl_seconds"}


def test_an_issuer_the_instance_does_not_trust_is_refused() -> None:
    assert errors(terms, allowed_issuers=["https://other.example.com"]) == {
        "issuer": ["is not an issuer this instance trusts (an administrator adds it in the settings)"]
    }
    assert errors(terms, allowed_issuers=[]) == errors(terms, allowed_issuers=["https://other.example.com"])


def test_an_insecure_issuer_needs_both_the_setting_and_the_instance_list() -> None:
    local = "http://gitlab.local"
    assert terms(issuer=local, allowed_issuers=[local], allow_insecure=True).issuer == local
    assert "issuer" in errors(terms, issuer=local, allowed_issuers=[local])


# TrustPolicy ---------------------------------------------------------------------------------------------


def test_creating_a_policy_records_its_terms_and_who_created_it() -> None:
    created = policy()
    [event] = created.collect_events()
    assert isinstance(event, TrustPolicy.Created)
    assert created.id == trust_policy_uuid(3)
    assert (event.policy_id, event.holder_kind, event.holder_id) == (3, "project", 7)
    assert event.conditions == [
        {"claim": "project_path", "value": "acme/api", "match": "exact"},
        {"claim": "ref", "value": "main", "match": "exact"},
    ]
    assert (event.scopes, event.ttl_seconds) == (["read_repository", "read_registry"], 900)
    assert event.actor == OWNER.as_event_data()
    assert created.terms == terms()


def test_changing_a_policy_records_the_whole_new_terms() -> None:
    changed = policy()
    changed.collect_events()
    new_terms = terms(audience="https://other.example.com", ttl_seconds=300)
    assert changed.change(new_terms, actor=OWNER, now=NOW + timedelta(minutes=1))
    [event] = changed.collect_events()
    assert isinstance(event, TrustPolicy.Changed)
    assert (event.name, event.audience, event.ttl_seconds) == (
        "deploy from main",
        "https://other.example.com",
        300,
    )
    assert changed.terms == new_terms
    assert changed.ttl == timedelta(minutes=5)


def test_changing_a_policy_to_its_own_terms_records_nothing() -> None:
    unchanged = policy()
    unchanged.collect_events()
    assert unchanged.change(terms(), actor=OWNER, now=NOW) is False
    assert unchanged.collect_events() == []


def test_a_deleted_policy_can_be_neither_changed_nor_deleted_again() -> None:
    deleted = policy()
    deleted.delete(actor=OWNER, now=NOW + timedelta(minutes=2))
    assert isinstance(deleted.collect_events()[-1], TrustPolicy.Deleted)
    assert deleted.deleted and deleted.deleted_at == NOW + timedelta(minutes=2)
    with pytest.raises(NotFound):
        deleted.change(terms(name="again"), actor=OWNER, now=NOW)
    with pytest.raises(NotFound):
        deleted.delete(actor=OWNER, now=NOW)


def test_replaying_a_policys_events_gives_the_same_policy() -> None:
    original = policy()
    original.change(terms(scopes=["read_registry"]), actor=OWNER, now=NOW + timedelta(minutes=1))
    original.delete(actor=OWNER, now=NOW + timedelta(minutes=2))
    replayed: Any = None
    for event in original.collect_events():
        replayed = event.mutate(replayed)
    assert isinstance(replayed, TrustPolicy)
    assert (replayed.terms, replayed.deleted_at, replayed.version) == (
        original.terms,
        original.deleted_at,
        original.version,
    )


def test_unmet_conditions_names_each_claim_the_id_token_fails() -> None:
    trusting = policy(conditions=[PROJECT, ClaimCondition("ref", "release-*", "glob")])
    assert trusting.unmet_conditions({"project_path": "acme/api", "ref": "release-2"}) == []
    assert trusting.unmet_conditions({"project_path": "acme/api", "ref": "main"}) == ["ref"]
    assert trusting.unmet_conditions({"project_path": "acme/db"}) == ["project_path", "ref"]


def test_the_audience_must_be_one_of_the_id_tokens() -> None:
    trusting = policy()
    assert trusting.accepts_audience(["https://elsewhere.example.com", AUDIENCE])
    assert not trusting.accepts_audience(["https://elsewhere.example.com"])
    assert not trusting.accepts_audience([])


# IdTokenUse ----------------------------------------------------------------------------------------------


def test_an_id_token_use_is_named_by_its_issuer_and_jti() -> None:
    expires = NOW + timedelta(minutes=5)
    use = IdTokenUse.record(
        issuer=ISSUER, jti="abc", token_id=11, policy_id=3, id_token_expires_at=expires, now=NOW
    )
    [event] = use.collect_events()
    assert isinstance(event, IdTokenUse.Created)
    assert (event.issuer, event.jti, event.token_id, event.policy_id) == (ISSUER, "abc", 11, 3)
    assert event.id_token_expires_at == expires
    # One stream per (issuer, jti): a second exchange of the same ID token saves the same stream, which the
    # event store refuses; the same jti of another issuer is another ID token.
    assert use.id == id_token_use_uuid(ISSUER, "abc")
    assert id_token_use_uuid("https://other.example.com", "abc") != use.id
    assert id_token_use_uuid(ISSUER, "abd") != use.id


# The federated actor and its tokens ------------------------------------------------------------------------


def test_a_federated_actor_is_the_id_tokens_subject_without_a_user_id_or_admin_rights() -> None:
    actor = Actor.federated(IDENTITY, address="192.0.2.4")
    assert (actor.kind, actor.username, actor.user_id, actor.is_admin) == (
        "federated",
        IDENTITY.subject,
        None,
        False,
    )
    assert actor.with_address("198.51.100.1").federation == IDENTITY


def test_a_federated_actor_survives_the_event_data_round_trip() -> None:
    actor = Actor.federated(IDENTITY, address="192.0.2.4")
    data = json.loads(json.dumps(actor.as_event_data()))  # what an event stores
    assert data == {
        "kind": "federated",
        "id": None,
        "username": IDENTITY.subject,
        "address": "192.0.2.4",
        "federation": {
            "issuer": ISSUER,
            "subject": IDENTITY.subject,
            "policy_id": 3,
            "jti": "5f0c-jti",
            "claims": {"project_path": "acme/api", "ref": "main"},
        },
    }
    assert Actor.from_event_data(data) == actor


def test_a_user_actors_event_data_has_no_federation() -> None:
    assert "federation" not in OWNER.as_event_data()
    assert Actor.from_event_data(OWNER.as_event_data()).federation is None


def test_a_federated_token_is_never_due_for_an_expiry_mail() -> None:
    def issued_by(actor: Actor) -> DeployToken:
        return DeployToken.issue(
            token_id=9,
            name="ci",
            username=None,
            holder_kind="project",
            holder_id=7,
            scopes=["read_repository"],
            expires_at=NOW + timedelta(days=6),
            digest="d" * 64,
            actor=actor,
            now=NOW,
        )

    federated, ordinary = issued_by(Actor.federated(IDENTITY)), issued_by(OWNER)
    assert federated.federated and is_federated(federated.creator)
    assert not ordinary.federated and not is_federated(ordinary.creator)
    assert federated.interval_due(NOW) is None
    assert ordinary.interval_due(NOW) == 7  # the same token from a user: the 7-day mail is due
    # Nor can a scan that saw the token before it knew better record a mail's intent or claim one.
    lease = NOW + timedelta(minutes=5)
    assert not federated.mark_notification_due(7, now=NOW)
    assert not federated.claim_notification(7, message_id="m", lease_until=lease, actor=OWNER, now=NOW)
    assert ordinary.mark_notification_due(7, now=NOW)
    assert ordinary.claim_notification(7, message_id="m", lease_until=lease, actor=OWNER, now=NOW)
