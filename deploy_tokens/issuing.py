"""Issuing a secret credential (a deploy token or a personal access token): one sequence for both.

A fresh value, its keyed digest, the next free id and one save: the value is handed to the caller once and
never stored, only the digest is recorded. With an ``Idempotency-Key`` the new id and the value are
recorded (encrypted) with the events, so a retried request can be answered with the same credential.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from eventsourcing.domain import Aggregate

from deploy_tokens.unit_of_work import UnitOfWork
from domain.token_values import generate_token
from infrastructure.idempotency import IdempotencySlot
from infrastructure.keys import Keyring
from infrastructure.store import IdAllocator


@dataclass(frozen=True)
class SecretValue:
    """A new credential's value, which only its holder gets, and the keyed digest that is recorded."""

    value: str
    digest: str

    def __repr__(self) -> str:
        return "SecretValue(value=<hidden>, digest=<hidden>)"


class CredentialIssuer:
    def __init__(self, uow: UnitOfWork, keys: Keyring) -> None:
        self.uow = uow
        self.keys = keys

    def new_value(self, prefix: str) -> SecretValue:
        value = generate_token(prefix)
        return SecretValue(value, self.keys.digest(value))

    def issue(
        self,
        prefix: str,
        ids: IdAllocator,
        build: Callable[[int, str], Aggregate],
        *,
        id_field: str,
        idempotency: IdempotencySlot | None = None,
        before_reading: Callable[[int, str], None] | None = None,
        along: Callable[[int], Sequence[Aggregate]] | None = None,
    ) -> tuple[int, SecretValue]:
        """Save ``build(id, digest)`` under the next free id; return the id and the value.

        ``before_reading(id, value)`` runs after the save and before the read models show the credential:
        whatever must exist as soon as anyone can see it. The key's record is ``{id_field: id, "token": value}``.
        ``along(id)`` gives aggregates saved in the same transaction (a claim that must never be taken twice:
        the store refuses the whole save with an ``IntegrityError`` when another process took it first).
        """
        secret = self.new_value(prefix)
        number, recordings = self.uow.save_new(
            ids,
            lambda number: [build(number, secret.digest), *(along(number) if along is not None else ())],
            idempotency=idempotency,
            result=lambda number: {id_field: number, "token": secret.value},
        )
        if before_reading is not None:
            before_reading(number, secret.value)
        self.uow.caught_up(recordings)
        return number, secret
