"""The follower (polling shape): steps until stopped, logs an outage once and its end once."""

from __future__ import annotations

import logging
import sqlite3
import threading

import pytest

from projections.follower import Follower


class Steps:
    """A step that fails with the given errors in turn, then succeeds; stops the follower after ``runs``."""

    def __init__(self, failures: list[Exception], runs: int, stop: threading.Event) -> None:
        self.failures = failures
        self.runs = runs
        self.stop = stop
        self.count = 0

    def __call__(self) -> None:
        self.count += 1
        if self.count >= self.runs:
            self.stop.set()
        if self.failures:
            raise self.failures.pop(0)


def follow(steps: Steps) -> None:
    follower = Follower(
        None,  # type: ignore[arg-type]  # the polling shape never connects
        steps,
        channel=None,
        interval=0.001,
        activity="test step",
        when_failing="retrying",
    )
    follower.run(steps.stop)


def test_steps_until_stopped():
    stop = threading.Event()
    steps = Steps([], runs=5, stop=stop)
    follow(steps)
    assert steps.count == 5


def test_an_outage_is_logged_once_and_its_end_once(caplog: pytest.LogCaptureFixture):
    stop = threading.Event()
    down = [sqlite3.OperationalError("database is locked") for _ in range(20)]
    steps = Steps(down, runs=25, stop=stop)
    with caplog.at_level(logging.WARNING, logger="projections.follower"):
        follow(steps)
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["test step failed; retrying", "test step works again"]
    assert caplog.records[0].levelno == logging.WARNING
    assert caplog.records[0].exc_info is not None


def test_a_different_fault_during_an_outage_is_logged_too(caplog: pytest.LogCaptureFixture):
    stop = threading.Event()
    faults: list[Exception] = [
        sqlite3.OperationalError("disk I/O error"),
        ValueError("bad row"),
        ValueError("bad"),
    ]
    steps = Steps(faults, runs=5, stop=stop)
    with caplog.at_level(logging.WARNING, logger="projections.follower"):
        follow(steps)
    levels = [(record.levelno, record.getMessage()) for record in caplog.records]
    assert levels == [
        (logging.WARNING, "test step failed; retrying"),
        (logging.ERROR, "test step failed; retrying"),
        (logging.WARNING, "test step works again"),
    ]
