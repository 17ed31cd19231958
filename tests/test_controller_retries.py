"""The controller's retries of a failed act (harvester/controller/retries.py), on plain data with
real time kept short: a failed Job is handed back after a growing backoff, in the newest version
the watch gave of it; one that succeeded is forgotten; closing stops handing back."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

from harvester.controller.retries import Retries
from harvester.model import MainJob

JOB = MainJob("ns", "keruta-job-1", "uid-1", {"task-id": "1"}, {}, True, False, None, ())


class Handed:
    def __init__(self) -> None:
        self.jobs: list[tuple[float, MainJob]] = []
        self.arrived = threading.Semaphore(0)

    def __call__(self, job: MainJob) -> None:
        self.jobs.append((time.monotonic(), job))
        self.arrived.release()


def test_a_failed_job_comes_back_after_a_growing_backoff_in_its_newest_version() -> None:
    handed = Handed()
    retries = Retries(handed, base=0.05, most=1.0, rand=lambda: 1.0)
    try:
        assert retries.failed(JOB) == 0.05
        newer = replace(JOB, annotations={"seen": "again"})
        retries.seen(newer)
        retries.seen(replace(JOB, uid="another"))  # not waiting: not kept
        assert handed.arrived.acquire(timeout=10)
        assert [job for _at, job in handed.jobs] == [newer]
        assert retries.failed(newer) == 0.1  # doubled
        assert retries.failed(newer) == 0.2  # (a second entry; the newest is handed once)
        assert handed.arrived.acquire(timeout=10)
        retries.done(newer)
        time.sleep(0.4)  # past every due time: a done Job is not handed again
        assert len(handed.jobs) == 2
    finally:
        retries.close()


def test_the_backoff_stops_growing_at_its_most() -> None:
    retries = Retries(lambda job: None, base=1.0, most=4.0, rand=lambda: 1.0)
    try:
        assert [retries.failed(JOB) for _ in range(5)] == [1.0, 2.0, 4.0, 4.0, 4.0]
    finally:
        retries.close()


def test_closed_it_hands_nothing_back() -> None:
    handed = Handed()
    retries = Retries(handed, base=0.2, most=0.2, rand=lambda: 1.0)
    retries.failed(JOB)
    retries.close()
    assert not handed.arrived.acquire(timeout=0.5)
