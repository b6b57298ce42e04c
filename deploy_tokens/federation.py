"""The token exchange (behaviour [federation]): an issuer-signed ID token in, a short-lived deploy token out.

A CI job presents the OIDC ID token its CI system gave it. The token must verify (signature, times, an issuer
on the instance's list: ``infrastructure.oidc``), must never have been exchanged before, and one trust
policy must accept it: same issuer, its audience among the token's, every claim condition met, the scopes
asked for among the policy's, and the named project or group its holder when the job names one. The job
then gets a new deploy token of that holder, created by a federated actor (the token's subject, with the
claims the policy matched) and expiring after the policy's TTL. Its lifecycle from then on is every other
token's: it is listed, audited, revocable, and expired by the daily scan; it is never mailed about.

Candidates are found in the trust-policy read model by issuer, then each is decided on its aggregate as the
event store holds it now, so a policy changed or deleted a moment ago is never trusted on an older row. The
ID token's use is saved in the same transaction as the new token, so the store's primary key refuses a
second exchange of it in any process, even two at once.

Every refusal carries a reason code and a detail for the activity record. What the client is told is less
specific where more would teach a stranger about a policy: any valid ID token of a public CI system can be
presented here, so a mismatch is only ever "no trust policy accepts this ID token".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError

from deploy_tokens.access import AccessService
from deploy_tokens.tokens import IssuedToken, TokenService
from deploy_tokens.trust_policies import NOT_FOUND
from deploy_tokens.unit_of_work import UnitOfWork
from domain.actors import Actor, FederatedIdentity
from domain.clock import Clock
from domain.deploy_token import HolderKind
from domain.errors import DomainError, NotFound, ValidationError
from domain.federation import IdTokenUse, TrustPolicy, claim_text, id_token_use_uuid, trust_policy_uuid
from domain.scopes import canonical_scopes
from infrastructure.db import Database
from infrastructure.oidc import IdTokenRefused, IdTokenVerifier, IssuerUnavailable, VerifiedIdToken, shown
from projections import trust_policies
from projections.views import ReadModel

TOKEN_NAME_PREFIX: Final = "federated: "
NAME_MAX_LENGTH: Final = 255
RESOURCE_MAX_LENGTH: Final = 255
NO_POLICY: Final = "no trust policy accepts this ID token"


class ExchangeRefused(Exception):
    """An exchange that gives no token. ``error`` is the OAuth error code, ``description`` what the client is
    told, ``reason`` and ``detail`` what the activity record keeps; ``status`` the HTTP status."""

    def __init__(
        self, error: str, reason: str, detail: str, description: str | None = None, *, status: int = 400
    ) -> None:
        super().__init__(f"{reason}: {detail}")
        self.error = error
        self.reason = reason
        self.detail = detail
        self.description = description if description is not None else detail
        self.status = status


@dataclass(frozen=True)
class ExchangeRequest:
    subject_token: str
    scope: str | None = None  # space-separated scopes; None: all the policy grants
    resource: str | None = None  # the full path of the project or group the job wants a token for
    address: str | None = None


@dataclass(frozen=True)
class Exchanged:
    issued: IssuedToken
    policy_id: int
    holder_kind: HolderKind
    holder_id: int
    expires_in: int  # seconds


@dataclass(frozen=True)
class _Match:
    policy: TrustPolicy
    scopes: tuple[str, ...]


class TokenExchange:
    def __init__(
        self,
        uow: UnitOfWork,
        read: ReadModel,
        access: AccessService,
        tokens: TokenService,
        verifier: IdTokenVerifier,
        db: Database,
        clock: Clock,
    ) -> None:
        self.uow = uow
        self.read = read
        self.access = access
        self.db = db
        self.tokens = tokens
        self.verifier = verifier
        self.clock = clock

    def exchange(self, request: ExchangeRequest) -> Exchanged:
        """Raises ``ExchangeRefused`` for every answer that is not a token."""
        requested = self._requested_scopes(request.scope)
        target = self._target(request.resource)
        verified = self._verify(request.subject_token)
        try:
            if id_token_use_uuid(verified.issuer, verified.token_id) in self.uow.store.repository:
                raise _replayed()
            match = self._match(verified, requested, target)
            return self._issue(verified, match, request.address)
        except ExchangeRefused as refused:
            # Past verification the record says whose ID token it was: the subject its issuer vouched for.
            refused.detail = f"{shown(verified.subject)} of {shown(verified.issuer)}: {refused.detail}"
            raise

    # Reading the request -------------------------------------------------------------------------------

    @staticmethod
    def _requested_scopes(scope: str | None) -> tuple[str, ...] | None:
        if scope is None or not scope.strip(" "):
            return None
        names = [name for name in scope.split(" ") if name]
        try:
            return canonical_scopes(names)
        except ValidationError:
            raise ExchangeRefused(
                "invalid_scope", "unknown_scope", "the scope names something other than deploy-token scopes"
            ) from None

    def _target(self, resource: str | None) -> set[tuple[HolderKind, int]] | None:
        """The holders the ``resource`` path names (None: any); a path that names nothing is refused."""
        if resource is None:
            return None
        path = resource.strip("/")
        if not path or len(path) > RESOURCE_MAX_LENGTH:
            raise ExchangeRefused("invalid_target", "unknown_resource", "resource names no project or group")
        holders: set[tuple[HolderKind, int]] = set()
        project = self.read.project_by_path(path)
        if project is not None:
            holders.add(("project", project.project_id))
        namespace = self.read.namespace_by_path(path)
        if namespace is not None and namespace.kind == "group":
            holders.add(("group", namespace.namespace_id))
        if not holders:
            raise ExchangeRefused("invalid_target", "unknown_resource", "resource names no project or group")
        return holders

    def _verify(self, subject_token: str) -> VerifiedIdToken:
        try:
            return self.verifier.verify(subject_token, allowed_issuers=self.uow.settings().oidc_issuers)
        except IdTokenRefused as refused:
            raise ExchangeRefused(
                "invalid_request",
                refused.reason,
                refused.detail,
                f"the ID token was refused: {refused.detail}",
            ) from None
        except IssuerUnavailable as unavailable:
            raise ExchangeRefused(
                "temporarily_unavailable",
                "issuer_unavailable",
                unavailable.detail,
                "the ID token's issuer could not be reached; try again",
                status=503,
            ) from None

    # Deciding ------------------------------------------------------------------------------------------

    def _match(
        self,
        verified: VerifiedIdToken,
        requested: tuple[str, ...] | None,
        target: set[tuple[HolderKind, int]] | None,
    ) -> _Match:
        """The one policy the exchange goes by: among those that accept the token, the oldest of the one
        holder they belong to. Policies of several holders accepting one token need ``resource`` to choose."""
        matches: list[_Match] = []
        refusals: list[str] = []
        for policy_id in trust_policies.policy_ids_for_issuer(self.db, verified.issuer):
            refusal = self._refusal(policy_id, verified, requested, target)
            if isinstance(refusal, _Match):
                matches.append(refusal)
            elif refusal is not None:
                refusals.append(refusal)
        if not matches:
            detail = "; ".join(refusals) if refusals else f"no trust policy for issuer {verified.issuer}"
            raise ExchangeRefused("invalid_request", "no_matching_policy", detail, NO_POLICY)
        holders = {(match.policy.holder_kind, match.policy.holder_id) for match in matches}
        if len(holders) > 1:
            named = ", ".join(f"{kind} {number}" for kind, number in sorted(holders))
            raise ExchangeRefused(
                "invalid_target",
                "ambiguous_resource",
                f"trust policies of {named} accept this ID token and no resource was named",
                "trust policies of several projects or groups accept this ID token: name one with resource",
            )
        return min(matches, key=lambda match: match.policy.policy_id)

    def _refusal(
        self,
        policy_id: int,
        verified: VerifiedIdToken,
        requested: tuple[str, ...] | None,
        target: set[tuple[HolderKind, int]] | None,
    ) -> _Match | str | None:
        """The match, or why policy ``policy_id`` refuses the token (None: it is gone and says nothing)."""
        try:
            policy = self.uow.views.get(TrustPolicy, trust_policy_uuid(policy_id), NOT_FOUND)
        except NotFound:
            return None
        if policy.deleted or policy.issuer != verified.issuer:
            return None
        holder = (policy.holder_kind, policy.holder_id)
        if target is not None and holder not in target:
            return None  # a policy of another holder than the one asked for is not a candidate at all
        label = f"policy {policy_id}"
        if not policy.accepts_audience(verified.audiences):
            return f"{label}: audience {policy.audience!r} is not among the token's"
        unmet = policy.unmet_conditions(verified.claims)
        if unmet:
            return f"{label}: claims not as required: {', '.join(unmet)}"
        if requested is not None and not set(requested) <= set(policy.scopes):
            return f"{label}: grants {' '.join(policy.scopes)}, not all of {' '.join(requested)}"
        if not self._holder_exists(policy.holder_kind, policy.holder_id):
            return f"{label}: its {policy.holder_kind} is gone"
        return _Match(policy, requested if requested is not None else policy.scopes)

    def _holder_exists(self, holder_kind: HolderKind, holder_id: int) -> bool:
        try:
            if holder_kind == "project":
                self.access.project(holder_id)
            else:
                self.access.group(holder_id)
        except NotFound:
            return False
        return True

    # Issuing -------------------------------------------------------------------------------------------

    def _issue(self, verified: VerifiedIdToken, match: _Match, address: str | None) -> Exchanged:
        policy = match.policy
        now = self.clock.now()
        identity = FederatedIdentity(
            verified.issuer,
            verified.subject,
            policy.policy_id,
            verified.token_id,
            tuple(sorted(_matched_claims(policy, verified))),
        )

        def use(token_id: int) -> Sequence[Aggregate]:
            return [
                IdTokenUse.record(
                    issuer=verified.issuer,
                    jti=verified.token_id,
                    token_id=token_id,
                    policy_id=policy.policy_id,
                    id_token_expires_at=verified.expires_at,
                    now=now,
                )
            ]

        try:
            issued = self.tokens.issue_token(
                Actor.federated(identity, address=address),
                policy.holder_kind,
                policy.holder_id,
                name=(TOKEN_NAME_PREFIX + policy.name)[:NAME_MAX_LENGTH],
                scopes=match.scopes,
                expires_at=now + policy.ttl,
                along=use,
            )
        except IntegrityError:
            if id_token_use_uuid(verified.issuer, verified.token_id) in self.uow.store.repository:
                raise _replayed() from None
            raise
        except DomainError as error:  # the holder went away between the decision and the save
            raise ExchangeRefused("invalid_request", "no_matching_policy", str(error), NO_POLICY) from None
        return Exchanged(
            issued,
            policy.policy_id,
            policy.holder_kind,
            policy.holder_id,
            int(policy.ttl / timedelta(seconds=1)),
        )


def _replayed() -> ExchangeRefused:
    return ExchangeRefused("invalid_request", "replayed", "this ID token was exchanged before")


def _matched_claims(policy: TrustPolicy, verified: VerifiedIdToken) -> Iterable[tuple[str, str]]:
    """The claims the policy's conditions looked at, as the token had them (its actor details)."""
    for condition in policy.conditions:
        text = claim_text(verified.claims.get(condition.claim))
        if text is not None:
            yield condition.claim, text
