"""Audit rows of the instance's own housekeeping: audit streaming destinations (behaviour [audit-streaming])
and activity retention (behaviour [retention]).

Destinations use GitLab's types and messages for instance streaming destinations; their verification token is
never in an event, so never in a row. Each archive of old activity rows is two events, and so two rows: the
archive written and recorded (with every file's row count and SHA-256, so that an auditor can check a file
against the trail alone), then the archived rows deleted.
"""

from __future__ import annotations

from typing import Any, Final

from domain.audit_streaming import AuditStreaming
from domain.retention import ActivityRetention
from projections.audit_rows import AuditBatch, iso, record
from projections.projection import on

TARGET_RETENTION: Final = "ActivityRetention"
TARGET_DESTINATION: Final = "AuditStreamingDestination"
DESTINATION_DELETED: Final = "instance_event_streaming_destination_deleted"


def _destination_created(trail: AuditBatch, event: AuditStreaming.DestinationCreated, position: int) -> None:
    record(
        trail,
        event,
        position,
        event_type="instance_event_streaming_destination_created",
        target=(TARGET_DESTINATION, event.destination_id, event.name),
        namespace=("instance", None),
        message=f"Create instance event streaming destination {event.destination_url}",
        details={"name": event.name, "destination_url": event.destination_url, "start": event.start},
    )


def _destination_deleted(trail: AuditBatch, event: AuditStreaming.DestinationDeleted, position: int) -> None:
    record(
        trail,
        event,
        position,
        event_type=DESTINATION_DELETED,
        target=(TARGET_DESTINATION, event.destination_id, event.name),
        namespace=("instance", None),
        message=f"Destroy instance event streaming destination {event.destination_url}",
        details={"name": event.name, "destination_url": event.destination_url},
    )


def _rows(count: int) -> str:
    return f"{count} activity row{'' if count == 1 else 's'}"


def _archived(trail: AuditBatch, event: ActivityRetention.Archived, position: int) -> None:
    manifests: list[dict[str, Any]] = list(event.manifests)
    files = "; ".join(
        f"{manifest['file']} ({_rows(int(manifest['rows']))}, SHA-256 {manifest['sha256']})"
        for manifest in manifests
    )
    total = sum(int(manifest["rows"]) for manifest in manifests)
    record(
        trail,
        event,
        position,
        event_type="activity_archived",
        target=(TARGET_RETENTION, None, "activity retention"),
        namespace=("instance", None),
        message=f"Archived {_rows(total)} older than {iso(event.cutoff)} to {files}.",
        details={
            "cutoff": iso(event.cutoff),
            "retention_days": event.retention_days,
            "manifests": [
                {
                    key: manifest.get(key)
                    for key in ("table", "file", "rows", "bytes", "sha256", "first_id", "last_id")
                }
                for manifest in manifests
            ],
        },
    )


def _archived_rows_deleted(
    trail: AuditBatch, event: ActivityRetention.ArchivedRowsDeleted, position: int
) -> None:
    total = sum(int(count) for count in event.deleted.values())
    record(
        trail,
        event,
        position,
        event_type="activity_archive_rows_deleted",
        target=(TARGET_RETENTION, None, "activity retention"),
        namespace=("instance", None),
        message=f"Deleted {_rows(total)} archived as older than {iso(event.cutoff)}.",
        details={"cutoff": iso(event.cutoff), "deleted": dict(event.deleted)},
    )


INSTANCE_HANDLERS: Final = (
    on(AuditStreaming.DestinationCreated, _destination_created),
    on(AuditStreaming.DestinationDeleted, _destination_deleted),
    on(ActivityRetention.Archived, _archived),
    on(ActivityRetention.ArchivedRowsDeleted, _archived_rows_deleted),
)
