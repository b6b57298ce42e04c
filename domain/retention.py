"""Activity retention with evidence (behaviour [retention]): the record of every archive of old activity rows.

One stream holds the instance's retention history. ``Archived`` carries the manifests of the archive files
written for one cut-off (per table: file name, row count, bytes, SHA-256, the archived id range, the export's
filters and the chain head it was tied to); it is recorded before any row is deleted, so the hash chain covers
the evidence of what is about to go. ``ArchivedRowsDeleted`` closes it once exactly those rows are gone. While
an archive is recorded and not closed, it is *pending*: a run that finds one finishes it before anything else.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Final

from eventsourcing.domain import Aggregate

from domain.actors import Actor
from domain.errors import Conflict
from domain.streams import stream_id

# The one stream of the instance's retention history.
RETENTION_ID: Final = stream_id("activity-retention", 1)


class ActivityRetention(Aggregate):
    """The archives of old ``token_activity`` (and set-aside) rows, each recorded before its rows are deleted."""

    TOPIC = "deploy_tokens:ActivityRetention"

    class Event(Aggregate.Event):
        TOPIC = "deploy_tokens:ActivityRetention.Event"

    class Created(Aggregate.Created):
        TOPIC = "deploy_tokens:ActivityRetention.Created"

    class Archived(Aggregate.Event):
        """Rows older than ``cutoff`` were written to the archive files that ``manifests`` describe."""

        TOPIC = "deploy_tokens:ActivityRetention.Archived"
        cutoff: datetime
        retention_days: int
        manifests: list[dict[str, Any]]
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, ActivityRetention)
            aggregate.pending = {
                "cutoff": self.cutoff,
                "retention_days": self.retention_days,
                "manifests": self.manifests,
            }
            aggregate.files.update(manifest["file"] for manifest in self.manifests)
            aggregate.files.update(manifest["manifest_file"] for manifest in self.manifests)
            aggregate.last_run_on = self.timestamp.date()

    class ArchivedRowsDeleted(Aggregate.Event):
        """The rows of the pending archive were deleted: ``deleted`` counts them per table."""

        TOPIC = "deploy_tokens:ActivityRetention.ArchivedRowsDeleted"
        cutoff: datetime
        deleted: dict[str, int]
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, ActivityRetention)
            aggregate.pending = None
            aggregate.archives += 1

    def __init__(self) -> None:
        self.pending: dict[str, Any] | None = None
        self.files: set[str] = set()  # every archive and manifest file ever recorded
        self.archives = 0  # archives whose rows are deleted
        self.last_run_on: date | None = None  # the UTC day of the last recorded archive

    @classmethod
    def start(cls, now: datetime) -> ActivityRetention:
        return cls._create(cls.Created, id=RETENTION_ID, timestamp=now)

    def record_archive(
        self,
        *,
        cutoff: datetime,
        retention_days: int,
        manifests: list[dict[str, Any]],
        actor: Actor,
        now: datetime,
    ) -> None:
        if self.pending is not None:
            raise Conflict("an earlier archive's rows are not deleted yet; finish it first")
        if not manifests:
            raise ValueError("an archive records at least one manifest")
        self.trigger_event(
            self.Archived,
            timestamp=now,
            cutoff=cutoff,
            retention_days=retention_days,
            manifests=manifests,
            actor=actor.as_event_data(),
        )

    def record_deleted(self, *, deleted: dict[str, int], actor: Actor, now: datetime) -> None:
        if self.pending is None:
            raise Conflict("no archive is waiting for its rows to be deleted")
        self.trigger_event(
            self.ArchivedRowsDeleted,
            timestamp=now,
            cutoff=self.pending["cutoff"],
            deleted=deleted,
            actor=actor.as_event_data(),
        )
