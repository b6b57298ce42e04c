"""Activity retention with evidence (behaviour [retention]): archive, record, and only then delete.

A run keeps the last ``days`` of per-token activity. Rows older than the cut-off (``now - days``, to the
second) of ``token_activity`` and of ``token_activity_rejected`` (the rows set aside) go through three steps,
in this order:

1. **Archive**: each table's rows are written as the compliance export of its dataset (``usage``,
   ``usage_set_aside``; JSON Lines, ``deploy_tokens.exports``) into the archive folder, beside a manifest
   (row count, bytes, SHA-256, the archived id range, the export's filters and the chain head), each file
   written under a temporary name, fsync'd, renamed into place and read back against its hash.
2. **Record**: an ``ActivityRetention.Archived`` event carries the manifests, so the event log and its hash
   chain hold the evidence before a single row goes.
3. **Delete** exactly the archived rows (by their id range, ``infrastructure.activity.pruning``), in short
   batches, then record ``ArchivedRowsDeleted``.

A crash at any point leaves the rows, or a verified archive recorded in the log: a run first finishes a
recorded archive whose deletion is not recorded (after checking its files against the recorded hashes, and
rewriting a missing or damaged file from the rows when they are all still there; otherwise it refuses and
deletes nothing), and an archive written but never recorded is rewritten by the next run or, when the next run
has another cut-off, removed (its rows were never deleted). Runs take turns (``retention_lock``); a run that
finds nothing older than the window records nothing. ``step`` is told each step as it completes: the crash
tests raise from it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate

from deploy_tokens.exports import Dataset, Export, ExportRequest
from deploy_tokens.unit_of_work import UnitOfWork
from domain.actors import Actor
from domain.clock import Clock, as_utc
from domain.errors import DomainError, ValidationError
from domain.retention import RETENTION_ID, ActivityRetention
from infrastructure.activity import (
    ArchiveRange,
    archive_range,
    delete_range,
    frozen_bound,
    remaining_rows,
    retention_lock,
)
from infrastructure.db import Database, as_utc_text
from infrastructure.settings import Settings

log = logging.getLogger(__name__)

Step = Literal["archive-written", "recorded", "batch-deleted", "rows-deleted"]
Status = Literal["off", "busy", "nothing-to-archive", "archived"]

# Each table and the export dataset its archive is written as.
DATASETS: Final[dict[str, Dataset]] = {
    "token_activity": "usage",
    "token_activity_rejected": "usage_set_aside",
}
# Rows deleted per transaction: the activity writer waits for at most one such batch.
DELETE_BATCH: Final = 5000
_CUTOFF_NAME: Final = "%Y%m%dT%H%M%SZ"


class ArchiveMismatch(DomainError):
    """A recorded archive's file is missing or differs from its recorded hash, and cannot be rebuilt."""


def archive_file_name(table: str, cutoff: datetime) -> str:
    """The archive of ``table``'s rows before ``cutoff``: ``token_activity-before-20261101T060000Z.jsonl``."""
    return f"{table}-before-{as_utc(cutoff):{_CUTOFF_NAME}}.jsonl"


def cutoff_for(now: datetime, days: int) -> datetime:
    """Rows that occurred before this instant are older than the window: ``now - days``, to the second."""
    try:
        return (as_utc(now) - timedelta(days=days)).replace(microsecond=0)
    except OverflowError:  # a clock set near year 1: no instant is that much older
        raise ValidationError.single("now", f"is too early for a window of {days} days") from None


def file_sha256(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


@dataclass
class RetentionReport:
    status: Status
    now: datetime
    cutoff: datetime | None = None
    resumed: bool = False  # an earlier run's recorded archive was finished first
    manifests: list[dict[str, Any]] = field(default_factory=list)
    deleted: dict[str, int] = field(default_factory=dict)
    removed_unrecorded: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["now"] = as_utc_text(self.now)
        data["cutoff"] = as_utc_text(self.cutoff) if self.cutoff else None
        return data


class ActivityRetentionService:
    def __init__(
        self,
        uow: UnitOfWork,
        db: Database,
        settings: Settings,
        chain_key: bytes,
        clock: Clock,
        *,
        delete_batch: int = DELETE_BATCH,
        step: Callable[[Step], None] = lambda step: None,
    ) -> None:
        self.uow = uow
        self.db = db
        self.settings = settings
        self.days = settings.activity_retention_days
        self.folder = settings.activity_archive_dir
        self.chain_key = chain_key
        self.clock = clock
        self.delete_batch = delete_batch
        self.step = step

    # Reading the record ----------------------------------------------------------------------------------

    def history(self) -> ActivityRetention | None:
        try:
            aggregate: Aggregate = self.uow.store.repository.get(RETENTION_ID)
        except AggregateNotFoundError:
            return None
        assert isinstance(aggregate, ActivityRetention)
        return aggregate

    def recorded_events(self) -> list[dict[str, Any]]:
        """Every recorded archive and deletion, in order: version, event, time, actor and what it records."""
        entries = []
        for event in self.uow.store.events.get(RETENTION_ID):
            if isinstance(event, ActivityRetention.Created):
                continue
            fields = {
                key: value
                for key, value in event.__dict__.items()
                if key not in ("originator_id", "originator_version", "timestamp", "actor")
            }
            entries.append(
                {
                    "version": event.originator_version,
                    "event": type(event).__name__,
                    "timestamp": getattr(event, "timestamp", None),
                    "actor": getattr(event, "actor", None),
                    **fields,
                }
            )
        return entries

    def ran_on(self, now: datetime) -> bool:
        """Whether an archive was recorded on ``now``'s UTC day and its rows deleted (the daily job runs once a
        day; one that stopped half-way is finished by the next)."""
        recorded = self.history()
        return (
            recorded is not None and recorded.pending is None and recorded.last_run_on == as_utc(now).date()
        )

    # The run ---------------------------------------------------------------------------------------------

    def apply(self, actor: Actor, *, now: datetime | None = None) -> RetentionReport:
        now = as_utc(now) if now is not None else self.clock.now()
        if self.days is None:
            return RetentionReport("off", now)
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        with retention_lock(self.settings.database, self.folder) as held:
            if not held:
                log.info("activity retention: another run holds the lock; nothing done")
                return RetentionReport("busy", now)
            return self._apply(actor, now, self.days)

    def _apply(self, actor: Actor, now: datetime, days: int) -> RetentionReport:
        started = time.time()
        cutoff = cutoff_for(now, days)
        report = RetentionReport("nothing-to-archive", now, cutoff)
        recorded = self.history()
        if recorded is not None and recorded.pending is not None:
            report.resumed = True
            self._finish(recorded.pending, actor, report)
        ranges = [
            found
            for table in DATASETS
            if (found := archive_range(self.db, table, cutoff, frozen_bound(self.db, table))) is not None
        ]
        if ranges:
            manifests = [self._write_archive(found, days) for found in ranges]
            self.step("archive-written")
            self._record_archive(cutoff, days, manifests, actor)
            self.step("recorded")
            report.status = "archived"
            pending = {"cutoff": cutoff, "retention_days": days, "manifests": manifests}
            self._finish(pending, actor, report)
        report.removed_unrecorded = self._remove_unrecorded(started)
        return report

    def _finish(self, pending: dict[str, Any], actor: Actor, report: RetentionReport) -> None:
        """Delete a recorded archive's rows and record that they are gone.

        The files are checked against the recorded hashes right before, every time (also just after writing
        them): whatever happened to them in between, no row goes unless its archive is intact. The event
        counts every archived row gone, also those a run that stopped half-way had deleted."""
        cutoff = as_utc(pending["cutoff"])
        ranges = [self._range(manifest, cutoff) for manifest in pending["manifests"]]
        for manifest, archived in zip(pending["manifests"], ranges, strict=True):
            self._verify_or_rebuild(manifest, archived)
        deleted_now: dict[str, int] = {}
        for archived in ranges:
            deleted_now[archived.table] = delete_range(
                self.db,
                archived,
                batch_size=self.delete_batch,
                after_batch=lambda _: self.step("batch-deleted"),
            )
            if remaining_rows(self.db, archived):
                raise ArchiveMismatch(
                    f"archived rows of {archived.table} are still stored after the deletion"
                )
        self.step("rows-deleted")
        gone = {manifest["table"]: int(manifest["rows"]) for manifest in pending["manifests"]}

        def attempt() -> list[Aggregate]:
            recorded = self.history()
            if recorded is None or recorded.pending is None:
                return []  # another run recorded it meanwhile
            recorded.record_deleted(deleted=gone, actor=actor, now=self.clock.now())
            return [recorded]

        self.uow.retry(attempt)
        report.manifests += pending["manifests"]
        for table, count in deleted_now.items():
            report.deleted[table] = report.deleted.get(table, 0) + count

    @staticmethod
    def _range(manifest: dict[str, Any], cutoff: datetime) -> ArchiveRange:
        table = manifest["table"]
        if table not in DATASETS:
            raise ArchiveMismatch(f"a recorded archive names an unknown table: {table!r}")
        return ArchiveRange(
            table, cutoff, int(manifest["first_id"]), int(manifest["last_id"]), manifest["rows"]
        )

    # Archive files ---------------------------------------------------------------------------------------

    def _export(self, table: str, cutoff: datetime, upto: int) -> Export:
        request = ExportRequest(DATASETS[table], "jsonl", until=cutoff, upto=upto)
        return Export(self.db, request, self.chain_key)

    def _write_archive(self, archived: ArchiveRange, days: int) -> dict[str, Any]:
        """Write the archive of ``archived`` and its manifest; returns the manifest, checked against the file."""
        name = archive_file_name(archived.table, archived.cutoff)
        recorded = self.history()
        taken = recorded.files if recorded is not None else set()
        stem, number = name.removesuffix(".jsonl"), 1
        while name in taken:  # rows written late with a time before a cut-off already archived
            number += 1
            name = f"{stem}-{number}.jsonl"
        export = self._export(archived.table, archived.cutoff, archived.last_id)
        _write_atomically(self.folder, name, export.chunks())
        manifest = {
            **asdict(export.manifest),
            "table": archived.table,
            "file": name,
            "manifest_file": f"{name}.manifest.json",
            "cutoff": as_utc_text(archived.cutoff),
            "retention_days": days,
            "first_id": archived.first_id,
            "last_id": archived.last_id,
        }
        if export.manifest.rows != archived.rows:  # the rows changed under the export: record nothing
            raise ArchiveMismatch(
                f"{name}: exported {export.manifest.rows} rows where {archived.rows} were found; nothing recorded"
            )
        self._check(manifest)
        text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        _write_atomically(self.folder, manifest["manifest_file"], [text.encode()])
        return manifest

    def _check(self, manifest: dict[str, Any]) -> None:
        """The file as it reads back from the disk, against the hash of what was written."""
        path = self.folder / manifest["file"]
        if file_sha256(path) != (manifest["sha256"], manifest["bytes"]):
            raise ArchiveMismatch(f"{path} does not read back as written; nothing recorded")

    def _verify_or_rebuild(self, manifest: dict[str, Any], archived: ArchiveRange) -> None:
        """A recorded archive's file must match its recorded hash before its rows go. A missing or damaged
        file is written again from the rows when every archived row is still there (an export with the
        recorded bound gives the same bytes); otherwise nothing is deleted."""
        path = self.folder / manifest["file"]
        if path.is_file() and file_sha256(path) == (manifest["sha256"], manifest["bytes"]):
            return
        if remaining_rows(self.db, archived) != manifest["rows"]:
            raise ArchiveMismatch(
                f"{path} is missing or does not match its recorded SHA-256 {manifest['sha256']}, and some of "
                "its rows are already deleted: restore the file from a backup, then run retention again; "
                "no row was deleted"
            )
        export = self._export(archived.table, archived.cutoff, int(manifest["upto"]))
        _write_atomically(self.folder, manifest["file"], export.chunks())
        if file_sha256(path) != (manifest["sha256"], manifest["bytes"]):
            path.unlink()
            raise ArchiveMismatch(
                f"{path} rebuilt from the rows does not match its recorded SHA-256 {manifest['sha256']}; "
                "no row was deleted"
            )
        log.warning("activity retention: %s was missing or damaged; rewritten from its rows", path)

    def _record_archive(
        self, cutoff: datetime, days: int, manifests: list[dict[str, Any]], actor: Actor
    ) -> None:
        def attempt() -> list[Aggregate]:
            now = self.clock.now()
            recorded = self.history() or ActivityRetention.start(now)
            recorded.record_archive(
                cutoff=cutoff, retention_days=days, manifests=manifests, actor=actor, now=now
            )
            return [recorded]

        self.uow.retry(attempt)

    def _remove_unrecorded(self, started: float) -> list[str]:
        """Archive files no recorded archive names (a run that stopped before recording; their rows are still
        stored) and temporary files: removed, if they are older than this run (``started``, wall-clock seconds).
        Runs take turns under the lock; should two ever overlap (a lock lost with its connection), neither
        removes what the other is writing or has just recorded."""
        recorded = self.history()
        known = recorded.files if recorded is not None else set()
        removed = []
        for path in sorted(self.folder.iterdir()):
            name = path.name
            ours = name.startswith(tuple(DATASETS)) and "-before-" in name
            temporary = name.startswith(tuple(f".{table}" for table in DATASETS)) and ".tmp-" in name
            try:
                older = path.stat().st_mtime < started
            except FileNotFoundError:
                continue
            if older and ((ours and name not in known) or temporary):
                path.unlink(missing_ok=True)
                removed.append(name)
        if removed:
            log.warning("activity retention: removed files of runs that recorded nothing: %s", removed)
        return removed


def _write_atomically(folder: Path, name: str, chunks: Iterable[bytes]) -> None:
    """``folder/name`` (mode 0600) with ``chunks``, whole or not at all: written under a temporary name,
    fsync'd, renamed into place, and the folder fsync'd so the rename survives a power cut."""
    temporary = folder / f".{name}.tmp-{os.getpid()}"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(descriptor, 0o600)
        with os.fdopen(descriptor, "wb", closefd=False) as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(temporary, folder / name)
    directory = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
