"""Deploy tokens: who may read and manage them, their lifecycle, CI variables and history, and the
commands the automatic expiry process records on them."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from eventsourcing.domain import Aggregate

from deploy_tokens.access import AccessService, Principal
from deploy_tokens.issuing import CredentialIssuer
from deploy_tokens.unit_of_work import IdempotentResult, UnitOfWork
from domain.actors import Actor
from domain.clock import Clock
from domain.deploy_token import CI_TOKEN_NAME, DeployToken, HolderKind, deploy_token_uuid
from domain.errors import Conflict, NotFound, PermissionDenied, ValidationError
from domain.membership import AccessLevel
from domain.token_values import DEPLOY_TOKEN_PREFIX
from infrastructure.idempotency import IdempotencySlot
from infrastructure.keys import Keyring
from infrastructure.vault import CiTokenVault
from projections.credentials import TokenRecord
from projections.views import ReadModel

log = logging.getLogger(__name__)

_NOTIFIER = Actor.system("expiry-notifier")


@dataclass(frozen=True)
class IssuedToken:
    """The only object that ever holds a new token's value; it is returned once and never stored."""

    token: TokenRecord
    value: str

    def __repr__(self) -> str:
        return f"IssuedToken(token_id={self.token.token_id}, value=<hidden>)"


@dataclass(frozen=True)
class ManagedHolder:
    """A project or group whose deploy tokens a user may manage."""

    kind: HolderKind
    holder_id: int
    name: str
    full_path: str


class TokenService:
    def __init__(
        self,
        uow: UnitOfWork,
        access: AccessService,
        issuer: CredentialIssuer,
        read: ReadModel,
        keys: Keyring,
        vault: CiTokenVault,
        clock: Clock,
    ) -> None:
        self.uow = uow
        self.access = access
        self.issuer = issuer
        self.read = read
        self.keys = keys
        self.vault = vault
        self.clock = clock

    # Who may read and manage a holder's tokens -------------------------------------------------------

    def check_token_reader(self, actor: Actor, holder_kind: HolderKind, holder_id: int) -> None:
        """Reading a holder's tokens needs Maintainer or higher there (project and group alike), or an auditor."""
        if holder_kind == "project":
            self.access.readable_project(actor, holder_id, AccessLevel.MAINTAINER)
        else:
            self.access.readable_group(actor, holder_id, AccessLevel.MAINTAINER)

    def check_token_page(self, actor: Actor, holder_kind: HolderKind, holder_id: int) -> None:
        """The web page of a holder's deploy tokens: shown to those who manage them (``check_token_manager``)
        and to auditors, who read it and change nothing (behaviour [auditors]); every form on it is checked again
        by the command it sends."""
        if holder_kind == "project":
            self.access.readable_project(actor, holder_id, AccessLevel.MAINTAINER)
        else:
            self.access.readable_group(actor, holder_id, AccessLevel.OWNER)

    def check_token_manager(self, actor: Actor, holder_kind: HolderKind, holder_id: int) -> None:
        """behaviour [manage]: managing a project's tokens needs Maintainer or higher; a group's needs Owner."""
        needed = AccessLevel.MAINTAINER if holder_kind == "project" else AccessLevel.OWNER
        self.access.require_level(actor, holder_kind, holder_id, needed)

    def holders_managed_by(self, principal: Principal, *, limit: int) -> list[ManagedHolder]:
        """The projects and groups whose tokens the user may manage, at most ``limit``: among those they are
        a member of and the projects of their own namespace (an administrator: among all), each checked."""
        candidates: list[tuple[HolderKind, int]] = []
        if principal.user.is_admin:
            candidates += [("group", namespace.namespace_id) for namespace in self.read.groups()]
            candidates += [("project", project.project_id) for project in self.read.projects()]
        else:
            for membership in self.read.memberships_of(principal.user.user_id):
                candidates.append(
                    ("group" if membership.source_kind == "group" else "project", membership.source_id)
                )
            candidates += [
                ("project", project.project_id)
                for project in self.read.projects(namespace_id=principal.user.namespace_id)
            ]
        holders: list[ManagedHolder] = []
        for kind, number in dict.fromkeys(candidates):
            if len(holders) >= limit:
                break
            try:
                self.check_token_manager(principal.actor, kind, number)
            except (NotFound, PermissionDenied):
                continue
            holder = self._managed_holder(kind, number)
            if holder is not None:
                holders.append(holder)
        return holders

    def _managed_holder(self, kind: HolderKind, number: int) -> ManagedHolder | None:
        if kind == "project":
            project = self.read.project(number)
            return None if project is None else ManagedHolder(kind, number, project.name, project.full_path)
        namespace = self.read.namespace(number)
        return None if namespace is None else ManagedHolder(kind, number, namespace.name, namespace.full_path)

    # Reads -------------------------------------------------------------------------------------------

    def token_of(self, actor: Actor, holder_kind: HolderKind, holder_id: int, token_id: int) -> TokenRecord:
        self.check_token_reader(actor, holder_kind, holder_id)
        return self._token_record_of(holder_kind, holder_id, token_id)

    def _token_record_of(self, holder_kind: str, holder_id: int, token_id: int) -> TokenRecord:
        """Tokens are looked up within the given holder: another holder's id is "not found"."""
        record = self.read.token(token_id)
        if (
            record is None
            or record.deleted_at is not None
            or record.holder_kind != holder_kind
            or record.holder_id != holder_id
        ):
            raise NotFound("404 Token")
        return record

    def ci_variables(self, project_id: int) -> tuple[str, str] | None:
        """behaviour [ci-token]: the project's own ``gitlab-deploy-token``, else its direct parent group's;
        only while active."""
        project = self.access.project(project_id)
        now = self.clock.now()
        candidates = [("project", project_id)]
        if project.group_id is not None:
            candidates.append(("group", project.group_id))
        for holder_kind, holder_id in candidates:
            page = self.read.tokens(
                holder_kind=holder_kind, holder_id=holder_id, active_only=True, now=now, per_page=1000
            )
            for record in reversed(page.items):
                if record.name == CI_TOKEN_NAME and record.is_active(now):
                    value = self.vault.get(record.token_id)
                    if value is not None:
                        return record.username, value
        return None

    def history(self, token_id: int) -> list[dict[str, Any]]:
        """Every event of one token, in order, with version, time, actor, address and what changed."""
        stream = deploy_token_uuid(token_id)
        entries = []
        for event in self.uow.store.events.get(stream):
            state = {
                key: value
                for key, value in event.__dict__.items()
                if key
                not in ("originator_id", "originator_version", "timestamp", "originator_topic", "actor")
            }
            state.pop("digest", None)  # a keyed digest is not secret, but it is no auditor's business either
            actor = getattr(event, "actor", None) or {"kind": "system", "username": "system"}
            entries.append(
                {
                    "version": event.originator_version,
                    "event": type(event).__name__,
                    "timestamp": getattr(event, "timestamp", None),
                    "actor": actor,
                    "changes": state,
                }
            )
        if not entries:
            raise NotFound("404 Token")
        return entries

    # Commands ----------------------------------------------------------------------------------------

    def create_token(
        self,
        actor: Actor,
        holder_kind: HolderKind,
        holder_id: int,
        *,
        name: str,
        scopes: Iterable[str],
        expires_at: date | datetime | None = None,
        username: str | None = None,
        idempotency: IdempotencySlot | None = None,
    ) -> IssuedToken:
        """With ``idempotency``, the key's record (the new id and value) commits with the token's events."""
        self.check_token_manager(actor, holder_kind, holder_id)
        return self.issue_token(
            actor,
            holder_kind,
            holder_id,
            name=name,
            scopes=scopes,
            expires_at=expires_at,
            username=username,
            idempotency=idempotency,
        )

    def issue_token(
        self,
        actor: Actor,
        holder_kind: HolderKind,
        holder_id: int,
        *,
        name: str,
        scopes: Iterable[str],
        expires_at: date | datetime | None = None,
        username: str | None = None,
        idempotency: IdempotencySlot | None = None,
        along: Callable[[int], Sequence[Aggregate]] | None = None,
    ) -> IssuedToken:
        """Issue a token for a caller whose right to it is already checked: ``create_token`` checks the actor's
        role, a token exchange its trust policy (behaviour [federation]). ``along(token_id)``: aggregates saved
        in the same transaction (``CredentialIssuer.issue``)."""
        scope_list = list(scopes)
        now = self.clock.now()

        built: list[DeployToken] = []

        def build(token_id: int, digest: str) -> Aggregate:
            built[:] = [
                DeployToken.issue(
                    token_id=token_id,
                    name=name,
                    username=username,
                    holder_kind=holder_kind,
                    holder_id=holder_id,
                    scopes=scope_list,
                    expires_at=expires_at,
                    digest=digest,
                    actor=actor,
                    now=now,
                )
            ]
            return built[0]

        def keep_ci_value(token_id: int, value: str) -> None:
            # behaviour [ci-token], [expiry]: never kept for a token that is expired from its creation, nor for
            # a federated one (its CI job has it already).
            if name == CI_TOKEN_NAME and built and not built[0].is_expired(now) and not built[0].federated:
                self.vault.put(token_id, value)

        token_id, secret = self.issuer.issue(
            DEPLOY_TOKEN_PREFIX,
            self.uow.token_ids,
            build,
            id_field="token_id",
            idempotency=idempotency,
            before_reading=keep_ci_value,  # CI jobs read the value as soon as the token is listed
            along=along,
        )
        # The record of the aggregate just saved: the read models hold the same row by now (the issuer caught
        # them up), so reading it back would only cost a round trip.
        record = TokenRecord.from_aggregate(built[0])
        log.info("deploy token created", extra={"token_id": token_id, "holder": f"{holder_kind}:{holder_id}"})
        return IssuedToken(record, secret.value)

    def _manage_token(
        self,
        actor: Actor,
        holder_kind: HolderKind,
        holder_id: int,
        token_id: int,
        command: Callable[[DeployToken], object],
        *,
        idempotency: IdempotencySlot | None = None,
        result: IdempotentResult | None = None,
    ) -> DeployToken:
        """behaviour [manage]: revoking and deleting need the same role as creating, within the token's own holder."""
        self.check_token_manager(actor, holder_kind, holder_id)
        managed: list[DeployToken] = []

        def attempt() -> list[Aggregate]:
            token = self.uow.get(DeployToken, deploy_token_uuid(token_id), "404 Token")
            if token.holder_kind != holder_kind or token.holder_id != holder_id or token.deleted:
                raise NotFound("404 Token")
            command(token)
            managed[:] = [token]
            return [token]

        self.uow.retry(attempt, idempotency=idempotency, result=result)
        return managed[0]

    def revoke_token(
        self, actor: Actor, holder_kind: HolderKind, holder_id: int, token_id: int
    ) -> TokenRecord:
        now = self.clock.now()
        self._manage_token(actor, holder_kind, holder_id, token_id, lambda t: t.revoke(actor=actor, now=now))
        self.vault.destroy(token_id)
        record = self.read.token(token_id)
        assert record is not None
        return record

    def delete_token(self, actor: Actor, holder_kind: HolderKind, holder_id: int, token_id: int) -> None:
        now = self.clock.now()
        self._manage_token(actor, holder_kind, holder_id, token_id, lambda t: t.delete(actor=actor, now=now))
        self.vault.destroy(token_id)

    def rotate_token(
        self,
        actor: Actor,
        holder_kind: HolderKind,
        holder_id: int,
        token_id: int,
        *,
        grace: timedelta | None = None,
        idempotency: IdempotencySlot | None = None,
    ) -> IssuedToken:
        """A new secret for the same token; the old one may stay valid for ``grace`` (recorded as events).

        With ``idempotency``, the key's record (the token id and new value) commits with the rotation.
        """
        secret = self.issuer.new_value(DEPLOY_TOKEN_PREFIX)
        now = self.clock.now()
        grace_until = now + grace if grace else None
        token = self._manage_token(
            actor,
            holder_kind,
            holder_id,
            token_id,
            lambda t: t.rotate(digest=secret.digest, grace_until=grace_until, actor=actor, now=now),
            idempotency=idempotency,
            result={"token_id": token_id, "token": secret.value},
        )
        if token.name == CI_TOKEN_NAME:
            self.vault.put(token_id, secret.value)
        record = self.read.token(token_id)
        assert record is not None
        return IssuedToken(record, secret.value)

    def revoke_by_value(self, actor: Actor, value: str) -> TokenRecord:
        """Leak response (behaviour [value]): an admin revokes whatever token has this value, wherever it belongs."""
        self.access.require_admin(actor)
        if not value or not value.startswith(DEPLOY_TOKEN_PREFIX):
            raise ValidationError.single("token", "is not a deploy token")
        digest = self.keys.digest(value)
        found = self._token_by_digest(digest)
        if found is None:
            raise NotFound("404 Token")
        now = self.clock.now()

        def attempt() -> list[Aggregate]:
            token = self.uow.get(DeployToken, deploy_token_uuid(found.token_id), "404 Token")
            if not token.deleted:
                token.revoke(actor=actor, now=now, reason="revoked by value (leak response)")
            return [token]

        self.uow.retry(attempt)
        self.vault.destroy(found.token_id)
        record = self.read.token(found.token_id)
        assert record is not None
        return record

    def _token_by_digest(self, digest: str) -> TokenRecord | None:
        with self.read.db.read() as cursor:
            row = cursor.execute(
                "SELECT token_id FROM cred_tokens WHERE digest = ? OR previous_digest = ?", (digest, digest)
            ).fetchone()
        return None if row is None else self.read.token(int(row[0]))

    # Commands of the automatic expiry process --------------------------------------------------------

    def _system_token_command(self, token_id: int, command: Callable[[DeployToken], bool]) -> bool:
        """Run an automatic process's command on one token; returns whether it recorded an event.

        A deleted token is left alone (nothing happens to it, and there is nothing to report).
        """
        changed: list[bool] = []

        def attempt() -> list[Aggregate]:
            token = self.uow.get(DeployToken, deploy_token_uuid(token_id), "404 Token")
            changed[:] = [False] if token.deleted else [command(token)]
            return [token]

        self.uow.retry(attempt)
        return bool(changed and changed[0])

    def record_expiry(self, token_id: int) -> bool:
        """behaviour [expiry-event]. Also destroys a CI token's recoverable value: an expired token has no
        use for it."""
        now = self.clock.now()
        recorded = self._system_token_command(token_id, lambda token: token.record_expiry(now=now))
        if recorded:
            self.vault.destroy(token_id)
        return recorded

    def mark_notification_due(self, token_id: int, interval: int) -> bool:
        """The scan's intent to send one interval's email, recorded once per interval."""
        now = self.clock.now()
        return self._system_token_command(
            token_id, lambda token: token.mark_notification_due(interval, now=now)
        )

    def claim_notification(self, token_id: int, interval: int, *, message_id: str, lease: timedelta) -> bool:
        """Only one sender wins an interval's lease; losers of the race see the winner's claim and back off."""
        now = self.clock.now()
        try:
            return self._system_token_command(
                token_id,
                lambda token: token.claim_notification(
                    interval, message_id=message_id, lease_until=now + lease, actor=_NOTIFIER, now=now
                ),
            )
        except Conflict:
            return False

    def record_notification(
        self, token_id: int, interval: int, *, message_id: str, recipients: Iterable[str]
    ) -> bool:
        """Records that an interval's email was accepted; at most once per interval (behaviour [notifications])."""
        now = self.clock.now()
        emails = list(recipients)
        return self._system_token_command(
            token_id,
            lambda token: token.record_notification(
                interval, message_id=message_id, recipients=emails, actor=_NOTIFIER, now=now
            ),
        )

    def release_notification(self, token_id: int, interval: int, *, message_id: str, error: str) -> bool:
        now = self.clock.now()
        return self._system_token_command(
            token_id,
            lambda token: token.release_notification(
                interval, message_id=message_id, error=error, actor=_NOTIFIER, now=now
            ),
        )
