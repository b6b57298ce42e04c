"""Trust policies (behaviour [federation]): who may read and manage them, and the instance's trusted issuers.

A holder's policies are managed by whoever manages its deploy tokens (Maintainer of a project, Owner of a
group) and read by them and by auditors, as tokens are. The trusted issuers are an instance setting only
administrators change; a policy can name only an issuer on that list.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from eventsourcing.domain import Aggregate

from deploy_tokens.access import AccessService
from deploy_tokens.tokens import TokenService
from deploy_tokens.unit_of_work import UnitOfWork
from domain.actors import Actor
from domain.clock import Clock
from domain.deploy_token import HolderKind
from domain.errors import NotFound
from domain.federation import ClaimCondition, PolicyTerms, TrustPolicy, trust_policy_uuid
from infrastructure.db import Database
from projections import trust_policies
from projections.trust_policies import TrustPolicyRecord

NOT_FOUND = "404 Trust policy"


class TrustPolicyService:
    def __init__(
        self,
        uow: UnitOfWork,
        access: AccessService,
        tokens: TokenService,
        db: Database,
        clock: Clock,
        *,
        allow_insecure: bool,
    ) -> None:
        self.uow = uow
        self.access = access
        self.tokens = tokens
        self.db = db
        self.clock = clock
        self.allow_insecure = allow_insecure

    # The instance's trusted issuers ----------------------------------------------------------------------

    def trusted_issuers(self) -> tuple[str, ...]:
        return self.uow.settings().oidc_issuers

    def set_trusted_issuers(self, actor: Actor, issuers: list[str]) -> tuple[str, ...]:
        """Administrators only. Policies on an issuer taken off the list stay, and match nothing until it is
        back: the exchange refuses every ID token of an issuer not on the list."""
        self.access.require_admin(actor)
        now = self.clock.now()

        def attempt() -> list[Aggregate]:
            settings = self.uow.settings()
            settings.set_oidc_issuers(issuers, allow_insecure=self.allow_insecure, actor=actor, now=now)
            return [settings]

        self.uow.retry(attempt)
        return self.trusted_issuers()

    # Reads -------------------------------------------------------------------------------------------------

    def policies(self, actor: Actor, holder_kind: HolderKind, holder_id: int) -> list[TrustPolicyRecord]:
        self.tokens.check_token_reader(actor, holder_kind, holder_id)
        return trust_policies.policies_of(self.db, holder_kind, holder_id)

    def policy(
        self, actor: Actor, holder_kind: HolderKind, holder_id: int, policy_id: int
    ) -> TrustPolicyRecord:
        self.tokens.check_token_reader(actor, holder_kind, holder_id)
        record = trust_policies.policy(self.db, policy_id)
        if (
            record is None
            or record.deleted_at is not None
            or (record.holder_kind, record.holder_id) != (holder_kind, holder_id)
        ):
            raise NotFound(NOT_FOUND)
        return record

    # Commands ----------------------------------------------------------------------------------------------

    def create_policy(
        self,
        actor: Actor,
        holder_kind: HolderKind,
        holder_id: int,
        *,
        name: str | None,
        issuer: str | None,
        audience: str | None,
        conditions: Iterable[ClaimCondition],
        scopes: Iterable[str],
        ttl_seconds: int | None = None,
    ) -> TrustPolicyRecord:
        """behaviour [federation]: the role that manages the holder's tokens; every field checked at once."""
        self.tokens.check_token_manager(actor, holder_kind, holder_id)
        terms = self._terms(
            name=name,
            issuer=issuer,
            audience=audience,
            conditions=conditions,
            scopes=scopes,
            ttl_seconds=ttl_seconds,
        )
        now = self.clock.now()
        built: list[TrustPolicy] = []

        def build(policy_id: int) -> list[Aggregate]:
            built[:] = [
                TrustPolicy.create(
                    policy_id=policy_id,
                    holder_kind=holder_kind,
                    holder_id=holder_id,
                    terms=terms,
                    actor=actor,
                    now=now,
                )
            ]
            return list(built)

        _, recordings = self.uow.save_new(self.uow.policy_ids, build)
        self.uow.caught_up(recordings)
        return TrustPolicyRecord.from_aggregate(built[0])

    def change_policy(
        self, actor: Actor, holder_kind: HolderKind, holder_id: int, policy_id: int, **changes: Any
    ) -> TrustPolicyRecord:
        """``changes``: any of ``name``, ``issuer``, ``audience``, ``conditions``, ``scopes``, ``ttl_seconds``;
        the others keep their values. Instead of ``conditions`` (all of them), ``exact_conditions`` or
        ``pattern_conditions`` replace only the conditions that match that way, decided on the policy as it
        is when the change is saved. The new terms are checked whole."""
        self.tokens.check_token_manager(actor, holder_kind, holder_id)
        now = self.clock.now()
        changed: list[TrustPolicy] = []

        def attempt() -> list[Aggregate]:
            policy = self._policy(holder_kind, holder_id, policy_id)
            current = policy.terms
            terms = self._terms(
                name=changes.get("name", current.name),
                issuer=changes.get("issuer", current.issuer),
                audience=changes.get("audience", current.audience),
                conditions=_changed_conditions(current.conditions, changes),
                scopes=changes.get("scopes", current.scopes),
                ttl_seconds=changes.get("ttl_seconds", current.ttl_seconds),
            )
            policy.change(terms, actor=actor, now=now)
            changed[:] = [policy]
            return [policy]

        self.uow.retry(attempt)
        return TrustPolicyRecord.from_aggregate(changed[0])

    def delete_policy(self, actor: Actor, holder_kind: HolderKind, holder_id: int, policy_id: int) -> None:
        """From this moment no exchange matches it; tokens it gave stay valid until they expire or are revoked."""
        self.tokens.check_token_manager(actor, holder_kind, holder_id)
        now = self.clock.now()

        def attempt() -> list[Aggregate]:
            policy = self._policy(holder_kind, holder_id, policy_id)
            policy.delete(actor=actor, now=now)
            return [policy]

        self.uow.retry(attempt)

    def _policy(self, holder_kind: HolderKind, holder_id: int, policy_id: int) -> TrustPolicy:
        policy = self.uow.get(TrustPolicy, trust_policy_uuid(policy_id), NOT_FOUND)
        if policy.deleted or (policy.holder_kind, policy.holder_id) != (holder_kind, holder_id):
            raise NotFound(NOT_FOUND)
        return policy

    def _terms(
        self,
        *,
        name: str | None,
        issuer: str | None,
        audience: str | None,
        conditions: Iterable[ClaimCondition],
        scopes: Iterable[str],
        ttl_seconds: int | None,
    ) -> PolicyTerms:
        return PolicyTerms.checked(
            name=name,
            issuer=issuer,
            audience=audience,
            conditions=conditions,
            scopes=scopes,
            ttl_seconds=ttl_seconds,
            allowed_issuers=self.trusted_issuers(),
            allow_insecure=self.allow_insecure,
        )


def _changed_conditions(current: tuple[ClaimCondition, ...], changes: dict[str, Any]) -> list[ClaimCondition]:
    if "conditions" in changes:
        return list(changes["conditions"])
    exact = [condition for condition in current if condition.match == "exact"]
    patterns = [condition for condition in current if condition.match != "exact"]
    return [*changes.get("exact_conditions", exact), *changes.get("pattern_conditions", patterns)]
