"""Progress bars on a terminal: `TerminalReporter`, the one reporter drawn with rich's live display.

Takes a console (`live.console_for`) and a `Tally` to watch; gives one row per stage drawn from
the tally's snapshots, with failures and notices printed above. Apart from `live` so that a run
whose progress goes to a log or to JSON lines never imports rich's live display: `run.py` and
the package import this module only when a terminal is watched.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType
from typing import Self

from rich.console import Console, RenderableType
from rich.progress import Progress, ProgressColumn, Task, TaskID
from rich.progress_bar import ProgressBar
from rich.table import Column
from rich.text import Text

from harvester.report.live import _bytes_text, _eta_text, _files_text, _notice_text
from harvester.report.text import failure_line, human_duration, rate_text
from harvester.stats import Level, Snapshot, Stage, Tally, at_least

__all__ = ["TerminalReporter"]


class _SnapshotColumn(ProgressColumn):
    """A progress column drawn from the tally rather than from rich's own task counters."""

    def __init__(
        self,
        tally: Tally,
        draw: Callable[[Snapshot, Task], RenderableType],
        column: Column | None = None,
    ) -> None:
        super().__init__(table_column=column)
        self._tally = tally
        self._draw = draw

    def render(self, task: Task) -> RenderableType:
        stage: Stage = task.fields["stage"]
        snap = self._tally.snapshot(stage)
        return Text("") if snap is None else self._draw(snap, task)


def _draw_bar(snap: Snapshot, task: Task) -> RenderableType:
    if snap.bytes_total > 0:
        return ProgressBar(total=snap.bytes_total, completed=snap.bytes_done, width=28)
    if snap.files_total > 0:
        return ProgressBar(total=snap.files_total, completed=snap.files_done, width=28)
    if snap.finished:
        return ProgressBar(total=1, completed=1, width=28)
    return ProgressBar(total=None, pulse=True, width=28, animation_time=task.get_time())


def _draw_time(snap: Snapshot, task: Task) -> RenderableType:
    if snap.finished:
        return Text(f"in {human_duration(snap.elapsed)}", style="green")
    return Text(_eta_text(snap), style="cyan")


def _draw_failed(snap: Snapshot, task: Task) -> RenderableType:
    return Text(f"{snap.failed} failed", style="bold red") if snap.failed else Text("")


class TerminalReporter:
    """Progress bars on a terminal: one row per stage, failures and notices printed above.

    Watches `tally` from construction on. Use it as a context manager: `with reporter:` starts
    and stops the live display. Every method may be called from any thread.
    """

    def __init__(
        self,
        console: Console,
        tally: Tally,
        *,
        level: Level = Level.INFO,
        refresh_per_second: float = 8,
    ) -> None:
        self._level = level
        self._tasks: dict[Stage, TaskID] = {}
        self._tasks_lock = threading.Lock()
        self._progress = Progress(
            _SnapshotColumn(tally, lambda s, t: Text(s.stage.value, style="bold"), Column(width=6)),
            _SnapshotColumn(tally, _draw_bar),
            _SnapshotColumn(tally, lambda s, t: Text(_files_text(s)), Column(justify="right")),
            _SnapshotColumn(tally, lambda s, t: Text(_bytes_text(s)), Column(justify="right")),
            _SnapshotColumn(tally, lambda s, t: Text(rate_text(s.rate_bps), style="magenta")),
            _SnapshotColumn(tally, _draw_time),
            _SnapshotColumn(tally, _draw_failed),
            console=console,
            get_time=tally.clock,
            refresh_per_second=refresh_per_second,
            transient=False,
            # Stray prints from other threads must not be swallowed by the live display.
            redirect_stdout=False,
            redirect_stderr=False,
        )
        tally.watch(self)

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def stage_started(self, snapshot: Snapshot) -> None:
        stage = snapshot.stage
        with self._tasks_lock:
            if stage not in self._tasks:
                self._tasks[stage] = self._progress.add_task(stage.value, total=None, stage=stage)
        self._progress.refresh()

    def file_failed(self, rel_path: str, message: str) -> None:
        self._progress.console.print(Text(failure_line(rel_path, message), style="red"))

    def notice(self, level: Level, message: str) -> None:
        if not at_least(level, self._level):
            return
        style = {Level.DEBUG: "dim", Level.WARNING: "yellow", Level.ERROR: "bold red"}.get(level)
        self._progress.console.print(Text(_notice_text(level, message), style=style or ""))

    def stage_finished(self, snapshot: Snapshot) -> None:
        self._progress.refresh()
