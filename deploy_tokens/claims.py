"""Taking and freeing the claims that keep paths and emails unique, within one command.

A command that creates, renames, moves or deletes a user, group or project loads the claims it touches
through one ``Claims`` (each stream once, fresh from the event store) and saves them with its other
aggregates. A claim held by someone else is GitLab's ``has already been taken``; a lost race between two
commands is the store's, and the unit of work retries it on fresh state.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from eventsourcing.domain import Aggregate

from deploy_tokens.unit_of_work import UnitOfWork
from domain.errors import NotFound, ValidationError
from domain.path_claims import EmailClaim, PathClaim
from domain.streams import email_claim_id, path_claim_id

TAKEN = "has already been taken"


class Claims:
    def __init__(self, uow: UnitOfWork, now: datetime) -> None:
        self.uow = uow
        self.now = now
        self._paths: dict[UUID, PathClaim | None] = {}
        self._emails: dict[UUID, EmailClaim | None] = {}

    def _path(self, full_path: str) -> PathClaim | None:
        key = path_claim_id(full_path)
        if key not in self._paths:
            try:
                self._paths[key] = self.uow.get(PathClaim, key, "claim")
            except NotFound:
                self._paths[key] = None
        return self._paths[key]

    def _email(self, email: str) -> EmailClaim | None:
        key = email_claim_id(email)
        if key not in self._emails:
            try:
                self._emails[key] = self.uow.get(EmailClaim, key, "claim")
            except NotFound:
                self._emails[key] = None
        return self._emails[key]

    def path_free_for(self, full_path: str, kind: str, number: int) -> bool:
        claim = self._path(full_path)
        return claim is None or claim.released or claim.held_by(kind, number)

    def take_path(self, full_path: str, kind: str, number: int, *, field: str = "path") -> None:
        """Claim ``full_path`` for ``kind`` ``number``; taken by another: ``field`` has already been taken."""
        claim = self._path(full_path)
        if claim is None:
            self._paths[path_claim_id(full_path)] = PathClaim.claim(full_path, kind, number, self.now)
        elif claim.released:
            claim.reclaim(full_path, kind, number, now=self.now)
        elif not claim.held_by(kind, number):
            raise ValidationError.single(field, TAKEN)

    def free_path(self, full_path: str, kind: str, number: int) -> None:
        claim = self._path(full_path)
        if claim is not None and claim.held_by(kind, number):
            claim.release(now=self.now)

    def move_path(self, old: str, new: str, kind: str, number: int, *, field: str = "path") -> None:
        """``kind`` ``number`` moves from ``old`` to ``new`` (the same claim when only the case changes)."""
        if path_claim_id(old) != path_claim_id(new):
            self.free_path(old, kind, number)
        self.take_path(new, kind, number, field=field)

    def take_email(self, email: str, user_id: int) -> None:
        claim = self._email(email)
        if claim is None:
            self._emails[email_claim_id(email)] = EmailClaim.claim(email, user_id, self.now)
        elif claim.released:
            claim.reclaim(email, user_id, now=self.now)
        elif not claim.held_by(user_id):
            raise ValidationError.single("email", TAKEN)

    def free_email(self, email: str, user_id: int) -> None:
        claim = self._email(email)
        if claim is not None and claim.held_by(user_id):
            claim.release(now=self.now)

    def pending(self) -> list[Aggregate]:
        """The claims this command changed, to be saved with its other aggregates."""
        loaded: list[Aggregate | None] = [*self._paths.values(), *self._emails.values()]
        return [claim for claim in loaded if claim is not None and claim.pending_events]
