"""Retention's pure parts (behaviour [retention]): the cut-off, archive names, the record's rules, its settings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from deploy_tokens.retention import archive_file_name, cutoff_for
from domain.actors import Actor
from domain.errors import Conflict
from domain.retention import ActivityRetention
from infrastructure.settings import ConfigurationError, Settings

NOW = datetime(2026, 12, 1, 2, 0, 7, 654321, tzinfo=UTC)
ACTOR = Actor.system("retention-test")
MANIFEST: dict[str, Any] = {
    "table": "token_activity",
    "file": "token_activity-before-20261101T020007Z.jsonl",
    "manifest_file": "token_activity-before-20261101T020007Z.jsonl.manifest.json",
    "rows": 3,
    "sha256": "0" * 64,
}


def test_the_cut_off_is_now_minus_the_window_to_the_second() -> None:
    assert cutoff_for(NOW, 30) == datetime(2026, 11, 1, 2, 0, 7, tzinfo=UTC)
    assert cutoff_for(datetime(2026, 12, 1, 2, 0, 7), 1) == datetime(2026, 11, 30, 2, 0, 7, tzinfo=UTC)
    eastern = datetime(2026, 12, 1, 4, 0, 7, tzinfo=UTC).astimezone(tz=None)
    assert cutoff_for(eastern, 1) == datetime(2026, 11, 30, 4, 0, 7, tzinfo=UTC)


def test_archives_are_named_by_table_and_cut_off_in_utc() -> None:
    cutoff = datetime(2026, 11, 1, 2, 0, 7, tzinfo=UTC)
    assert archive_file_name("token_activity", cutoff) == "token_activity-before-20261101T020007Z.jsonl"
    assert (
        archive_file_name("token_activity_rejected", cutoff.astimezone(tz=None))
        == "token_activity_rejected-before-20261101T020007Z.jsonl"
    )


def _archived() -> ActivityRetention:
    retention = ActivityRetention.start(NOW)
    retention.record_archive(
        cutoff=cutoff_for(NOW, 30), retention_days=30, manifests=[MANIFEST], actor=ACTOR, now=NOW
    )
    return retention


def test_an_archive_is_pending_until_its_rows_are_recorded_deleted() -> None:
    retention = _archived()
    assert retention.pending is not None and retention.pending["manifests"] == [MANIFEST]
    assert retention.files == {MANIFEST["file"], MANIFEST["manifest_file"]}
    assert retention.last_run_on == NOW.date()
    with pytest.raises(Conflict):  # one archive at a time: the pending one is finished first
        retention.record_archive(
            cutoff=NOW - timedelta(days=29), retention_days=30, manifests=[MANIFEST], actor=ACTOR, now=NOW
        )
    retention.record_deleted(deleted={"token_activity": 3}, actor=ACTOR, now=NOW)
    assert retention.pending is None and retention.archives == 1
    kinds = [type(event).__name__ for event in retention.collect_events()]
    assert kinds == ["Created", "Archived", "ArchivedRowsDeleted"]


def test_nothing_is_recorded_deleted_without_a_pending_archive_nor_archived_without_a_manifest() -> None:
    retention = ActivityRetention.start(NOW)
    with pytest.raises(Conflict):
        retention.record_deleted(deleted={"token_activity": 1}, actor=ACTOR, now=NOW)
    with pytest.raises(ValueError, match="at least one manifest"):
        retention.record_archive(cutoff=NOW, retention_days=30, manifests=[], actor=ACTOR, now=NOW)
    assert [type(event).__name__ for event in retention.collect_events()] == ["Created"]


def _settings(**env: str) -> Settings:
    return Settings.from_env(
        {
            "DEPLOY_TOKENS_DATABASE_URL": "postgresql://user@db.invalid:5432/deploy",
            "DEPLOY_TOKENS_SECRET_KEY": "s" * 40,
            "DEPLOY_TOKENS_DATA_DIR": "/srv/deploy-tokens",
            **env,
        }
    )


def test_retention_is_off_unless_set_and_archives_go_to_the_data_folder_by_default() -> None:
    settings = _settings()
    assert settings.activity_retention_days is None
    assert settings.activity_archive_dir == Path("/srv/deploy-tokens/archive")
    assert _settings(DEPLOY_TOKENS_ACTIVITY_RETENTION_DAYS="").activity_retention_days is None
    assert _settings(DEPLOY_TOKENS_ACTIVITY_RETENTION_DAYS=" 90 ").activity_retention_days == 90
    assert _settings(DEPLOY_TOKENS_ACTIVITY_RETENTION_DAYS="36500").activity_retention_days == 36500
    chosen = _settings(DEPLOY_TOKENS_ARCHIVE_DIR="/mnt/evidence/deploy-tokens")
    assert chosen.activity_archive_dir == Path("/mnt/evidence/deploy-tokens")


@pytest.mark.parametrize(
    "value", ["0", "-1", "1.5", "1e3", "thirty", "\u0663", "3\x000", "\udcff", "9" * 5000, "36501", "0x1e"]
)
def test_a_malformed_retention_window_is_refused_at_start_up(value: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        _settings(DEPLOY_TOKENS_ACTIVITY_RETENTION_DAYS=value)
    assert str(refused.value) == "DEPLOY_TOKENS_ACTIVITY_RETENTION_DAYS must be a whole number, 1 to 36500"


@pytest.mark.parametrize("value", ["/srv/a\x00b", "/srv/\udcff", "/srv/a\nb", "/" + "a" * 5000])
def test_a_malformed_archive_folder_is_refused_at_start_up(value: str) -> None:
    with pytest.raises(ConfigurationError, match="DEPLOY_TOKENS_ARCHIVE_DIR"):
        _settings(DEPLOY_TOKENS_ARCHIVE_DIR=value)
