"""What stages tell the reporters, and the one count of a run that every reporter reads.

Stages count; reporters print. A stage talks only to the `Listener` protocol, from any thread.
`Tally` is the Listener a run hands its stages: it counts files, bytes and failures per stage
under one lock, then passes each event on to the `Watcher`s (the reporters) that watch it. A
reporter draws from the tally's `Snapshot`s (rate and ETA worked out once, here), so a progress
bar, a log line and a JSON event of the same instant agree (rclone's `StatsInfo`: one counter,
several views). Nothing here prints.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

Clock = Callable[[], float]


class Stage(StrEnum):
    SCAN = "scan"
    HASH = "hash"
    UPLOAD = "upload"


class Level(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


_LEVEL_RANK = {Level.DEBUG: 10, Level.INFO: 20, Level.WARNING: 30, Level.ERROR: 40}


def at_least(level: Level, threshold: Level) -> bool:
    """Whether a notice at `level` is shown to someone who asked for `threshold` and above."""
    return _LEVEL_RANK[level] >= _LEVEL_RANK[threshold]


class Listener(Protocol):
    """What a stage calls. Implementations must be thread-safe and cheap (`advanced` is called
    for every chunk sent)."""

    def stage_started(self, stage: Stage, files: int, nbytes: int) -> None:
        """A stage begins with this much work ahead (0 when unknown, as for the scan)."""

    def stage_grew(self, stage: Stage, files: int, nbytes: int) -> None:
        """More work of a started stage became known (the uploads, decided while files are
        still hashed)."""

    def advanced(self, stage: Stage, files: int = 0, nbytes: int = 0) -> None:
        """Some work of the stage is done: whole files and/or bytes."""

    def file_failed(self, rel_path: str, message: str, stage: Stage | None = None) -> None:
        """A document could not be harvested; `message` is a full sentence. `stage` is the
        stage that failed it (None: the one started last that still runs)."""

    def notice(self, level: Level, message: str) -> None:
        """Anything else a person should read."""

    def stage_finished(self, stage: Stage) -> None:
        """The stage is over."""


class NullListener:
    """A listener that ignores everything (library use, tests of single stages)."""

    def stage_started(self, stage: Stage, files: int, nbytes: int) -> None:
        pass

    def stage_grew(self, stage: Stage, files: int, nbytes: int) -> None:
        pass

    def advanced(self, stage: Stage, files: int = 0, nbytes: int = 0) -> None:
        pass

    def file_failed(self, rel_path: str, message: str, stage: Stage | None = None) -> None:
        pass

    def notice(self, level: Level, message: str) -> None:
        pass

    def stage_finished(self, stage: Stage) -> None:
        pass


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Where one stage stands at one instant, with rate and ETA worked out."""

    stage: Stage
    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int
    failed: int
    elapsed: float
    rate_bps: float | None
    eta_s: float | None
    finished: bool


class Watcher(Protocol):
    """What a reporter implements to be told of a `Tally`'s events once they are counted.

    Called outside the tally's lock, from the stage's thread. There is no `advanced`: progress
    is read from `Tally.snapshot`/`Tally.running` when the reporter draws.
    """

    def stage_started(self, snapshot: Snapshot) -> None: ...

    def file_failed(self, rel_path: str, message: str) -> None: ...

    def notice(self, level: Level, message: str) -> None: ...

    def stage_finished(self, snapshot: Snapshot) -> None: ...


@dataclass(slots=True)
class _StageCount:
    files_total: int
    bytes_total: int
    started_at: float
    files_done: int = 0
    bytes_done: int = 0
    failed: int = 0
    finished_at: float | None = None

    def snapshot(self, stage: Stage, now: float) -> Snapshot:
        end = self.finished_at if self.finished_at is not None else now
        elapsed = max(end - self.started_at, 0.0)
        rate = self.bytes_done / elapsed if elapsed > 0 else None
        return Snapshot(
            stage=stage,
            files_done=self.files_done,
            files_total=self.files_total,
            bytes_done=self.bytes_done,
            bytes_total=self.bytes_total,
            failed=self.failed,
            elapsed=elapsed,
            rate_bps=rate,
            eta_s=self._eta(elapsed),
            finished=self.finished_at is not None,
        )

    def _eta(self, elapsed: float) -> float | None:
        if self.finished_at is not None:
            return 0.0
        # Bytes say more than files about the time left; files stand in when sizes are unknown.
        if self.bytes_total > 0:
            done, total = self.bytes_done, self.bytes_total
        elif self.files_total > 0:
            done, total = self.files_done, self.files_total
        else:
            return None
        if done >= total:
            return 0.0
        if done <= 0 or elapsed <= 0:
            return None
        return (total - done) * elapsed / done


class Tally:
    """The one thread-safe count of a run: a `Listener` for the stages, snapshots for reporters.

    `watch(reporter)` adds a `Watcher`; each event is counted first, then passed on, so a
    watcher that reads a snapshot sees the event it is told of. The lock is never held while
    calling out, so a snapshot can be taken inside a reporter's own lock (rich's included).
    """

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._stages: dict[Stage, _StageCount] = {}
        self._watchers: list[Watcher] = []

    def watch(self, watcher: Watcher) -> None:
        """Tell `watcher` of every event from now on (call before the stages start)."""
        self._watchers.append(watcher)

    # ------------------------------------------------------------------ Listener, for the stages

    def stage_started(self, stage: Stage, files: int, nbytes: int) -> None:
        now = self.clock()
        with self._lock:
            # Re-inserting keeps the dict in start order, which `file_failed` relies on.
            self._stages.pop(stage, None)
            count = self._stages[stage] = _StageCount(files, nbytes, started_at=now)
            snap = count.snapshot(stage, now)
        for watcher in self._watchers:
            watcher.stage_started(snap)

    def stage_grew(self, stage: Stage, files: int, nbytes: int) -> None:
        # Like `advanced`, no watcher is told: the totals are read when a reporter draws.
        with self._lock:
            count = self._stages.get(stage)
            if count is not None:
                count.files_total += files
                count.bytes_total += nbytes

    def advanced(self, stage: Stage, files: int = 0, nbytes: int = 0) -> None:
        # Only counters move here (this runs for every chunk); reporters read them when they draw.
        with self._lock:
            count = self._stages.get(stage)
            if count is None:  # a stage that never announced itself still gets counted
                count = self._stages[stage] = _StageCount(0, 0, started_at=self.clock())
            count.files_done += files
            count.bytes_done += nbytes

    def file_failed(self, rel_path: str, message: str, stage: Stage | None = None) -> None:
        """Counted against `stage`, or else the stage started last that still runs."""
        with self._lock:
            if stage is not None and stage in self._stages:
                self._stages[stage].failed += 1
            else:
                running = [c for c in self._stages.values() if c.finished_at is None]
                if running:
                    running[-1].failed += 1
        for watcher in self._watchers:
            watcher.file_failed(rel_path, message)

    def notice(self, level: Level, message: str) -> None:
        for watcher in self._watchers:
            watcher.notice(level, message)

    def stage_finished(self, stage: Stage) -> None:
        now = self.clock()
        with self._lock:
            count = self._stages.get(stage)
            if count is None:
                return
            if count.finished_at is None:
                count.finished_at = now
            snap = count.snapshot(stage, now)
        for watcher in self._watchers:
            watcher.stage_finished(snap)

    # ------------------------------------------------------------------ views, for the reporters

    def snapshot(self, stage: Stage) -> Snapshot | None:
        """Where `stage` stands now; None before it started."""
        now = self.clock()
        with self._lock:
            count = self._stages.get(stage)
            return None if count is None else count.snapshot(stage, now)

    def running(self) -> list[Snapshot]:
        """Snapshots of the stages that have not finished, in the order they started."""
        now = self.clock()
        with self._lock:
            return [
                count.snapshot(stage, now)
                for stage, count in self._stages.items()
                if count.finished_at is None
            ]
