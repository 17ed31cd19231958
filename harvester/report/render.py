"""Progress and results for people and machines: the only module, besides cli.py, that prints.

Takes the events the stages send through the `Listener` protocol (stats.py) and the plain
results of a harvest (`UploadPlan`, `HarvestReport` from model.py). Gives three listeners the CLI
chooses from -- `TerminalReporter` (rich progress bars), `LogReporter` (one plain line every few
seconds, for `kubectl logs`), `JsonReporter` (JSON lines) -- and renderers of the results: the
dry-run plan and the final summary as rich tables, JSON-ready dicts, an atomically written
`--summary-json` file, and the pod's termination message.

Nothing here decides an exit code or where output goes: the CLI hands in the console or stream
and the clock, so tests need neither a terminal nor sleeps. Sizes are decimal everywhere
(`12 B`, `812 kB`, `4.1 MB`), as rclone and `du --si` print them.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import threading
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TextIO

from rich import box
from rich.console import Console, Group, RenderableType
from rich.progress import Progress, ProgressColumn, Task, TaskID
from rich.progress_bar import ProgressBar
from rich.table import Column, Table
from rich.text import Text

from harvester.model import (
    Action,
    FileReport,
    HarvestReport,
    Outcome,
    PlanItem,
    StepResult,
    StepState,
    UploadPlan,
)
from harvester.stats import Level, Stage

__all__ = [
    "JsonReporter",
    "LogReporter",
    "TerminalReporter",
    "human_duration",
    "human_size",
    "plan_to_json",
    "printable",
    "render_plan",
    "render_summary",
    "report_to_json",
    "termination_message",
    "write_summary_json",
    "write_termination_log",
]

Clock = Callable[[], float]

# Longest error shown for one file in a table, a log line or the termination message: enough
# for the server's sentence and a useful part of its body, never a screenful.
ERROR_CHARS = 300

_SIZE_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB")
_LEVEL_RANK = {Level.DEBUG: 10, Level.INFO: 20, Level.WARNING: 30, Level.ERROR: 40}
_STAGE_VERB = {Stage.SCAN: "scan", Stage.HASH: "read", Stage.UPLOAD: "send"}
# Characters shown as escapes wherever a person reads text, by Unicode category: controls (C0,
# DEL, C1: a file name may hold an ESC, and printing it raw would let a document rewrite the
# operator's terminal or forge log lines), format characters (the bidi overrides, embeddings,
# isolates and marks: U+202E makes "invoice-\u202egpj.exe" read "invoice-exe.jpg"; zero-width
# and tag characters hide text), line and paragraph separators (they break a line), and lone
# surrogates (they cannot be written as UTF-8). ZWNJ and ZWJ are kept: Persian, Indic scripts and
# emoji need them, and they move nothing.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_KEPT_FORMAT = frozenset("\u200c\u200d")
_NOT_PLAIN_ASCII = re.compile(r"[^\n -~]")


# --------------------------------------------------------------------------- formatting helpers


def human_size(n: int) -> str:
    """A byte count in decimal units with at most three significant digits: `812 kB`."""
    if n < 0:
        return "-" + human_size(-n)
    if n < 1000:
        return f"{n} B"
    value = float(n)
    for unit in _SIZE_UNITS[1:]:
        value /= 1000
        if round(value, 1) < 100:
            return f"{value:.1f} {unit}"
        if round(value) < 1000 or unit == _SIZE_UNITS[-1]:
            return f"{round(value)} {unit}"
    raise AssertionError("unreachable: the last unit always returns")


def human_duration(seconds: float) -> str:
    """A duration the way people say it: `0.4s`, `6s`, `1m05s`, `2h03m`; `-` when unknown."""
    if not math.isfinite(seconds):
        return "-"
    s = max(seconds, 0.0)
    if 0.05 <= s < 0.95:
        return f"{s:.1f}s"
    total = round(s)
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    return f"{total // 3600}h{total % 3600 // 60:02d}m"


def _rate_text(rate_bps: float | None) -> str:
    return "-/s" if rate_bps is None else f"{human_size(round(rate_bps))}/s"


def _size_pair(done: int, total: int) -> str:
    """`21.3/45.2 MB` when both sides share a unit, `812 kB/45.2 MB` otherwise."""
    d, t = human_size(done), human_size(total)
    d_num, _, d_unit = d.partition(" ")
    t_num, _, t_unit = t.partition(" ")
    return f"{d_num}/{t_num} {t_unit}" if d_unit == t_unit else f"{d}/{t}"


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else (plural or word + 's')}"


def _hidden(ch: str) -> bool:
    """Whether `ch` acts on the terminal or on how the text around it reads."""
    return unicodedata.category(ch) in _HIDDEN_CATEGORIES and ch not in _KEPT_FORMAT


def printable(text: str) -> str:
    """The text with hidden characters shown as Python escapes (`\\x1b`, `\\u202e`,
    `\\U000e0041`) instead of acting on the terminal: the one way every path and every text
    from a server or the OS is made fit for a person to read."""
    if text.isprintable():  # the common case: isprintable() is False for every hidden character
        return text
    return "".join(_escaped(ch) if _hidden(ch) else ch for ch in text)


def _escaped(ch: str) -> str:
    n = ord(ch)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."


def _one_line(text: str, limit: int = ERROR_CHARS) -> str:
    """A message on one line (server bodies come with newlines), safe to print, cut to size."""
    return _cut(printable(" ".join(text.split())), limit)


# --------------------------------------------------------------------------- counting


@dataclass(frozen=True, slots=True)
class _Snapshot:
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


@dataclass(slots=True)
class _StageCount:
    files_total: int
    bytes_total: int
    started_at: float
    last_line_at: float
    files_done: int = 0
    bytes_done: int = 0
    failed: int = 0
    finished_at: float | None = None

    def snapshot(self, stage: Stage, now: float) -> _Snapshot:
        end = self.finished_at if self.finished_at is not None else now
        elapsed = max(end - self.started_at, 0.0)
        rate = self.bytes_done / elapsed if elapsed > 0 else None
        return _Snapshot(
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


class _Tally:
    """Thread-safe counters per stage, shared by every reporter so all agree on rate and ETA.

    Its lock is never held while calling out, so it can be taken inside rich's own lock.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._stages: dict[Stage, _StageCount] = {}

    def start(self, stage: Stage, files: int, nbytes: int) -> None:
        now = self._clock()
        with self._lock:
            # Re-inserting keeps the dict in start order, which `fail` relies on.
            self._stages.pop(stage, None)
            self._stages[stage] = _StageCount(files, nbytes, started_at=now, last_line_at=now)

    def advance(self, stage: Stage, files: int, nbytes: int) -> None:
        with self._lock:
            count = self._stages.get(stage)
            if count is None:  # a stage that never announced itself still gets counted
                now = self._clock()
                count = self._stages[stage] = _StageCount(0, 0, started_at=now, last_line_at=now)
            count.files_done += files
            count.bytes_done += nbytes

    def fail(self) -> None:
        """Count a failure against the stage started last that still runs (the one failing)."""
        with self._lock:
            running = [c for c in self._stages.values() if c.finished_at is None]
            if running:
                running[-1].failed += 1

    def finish(self, stage: Stage) -> _Snapshot | None:
        now = self._clock()
        with self._lock:
            count = self._stages.get(stage)
            if count is None:
                return None
            if count.finished_at is None:
                count.finished_at = now
            return count.snapshot(stage, now)

    def snapshot(self, stage: Stage) -> _Snapshot | None:
        now = self._clock()
        with self._lock:
            count = self._stages.get(stage)
            return None if count is None else count.snapshot(stage, now)

    def due(self, interval: float, *, force: bool = False) -> list[_Snapshot]:
        """Snapshots of the running stages whose last line is `interval` old (all if `force`)."""
        now = self._clock()
        with self._lock:
            out = []
            for stage, count in self._stages.items():
                if count.finished_at is None and (force or now - count.last_line_at >= interval):
                    count.last_line_at = now
                    out.append(count.snapshot(stage, now))
            return out


def _shown(level: Level, threshold: Level) -> bool:
    return _LEVEL_RANK[level] >= _LEVEL_RANK[threshold]


# --------------------------------------------------------------------------- terminal


class _SnapshotColumn(ProgressColumn):
    """A progress column drawn from the tally rather than from rich's own task counters."""

    def __init__(
        self,
        tally: _Tally,
        draw: Callable[[_Snapshot, Task], RenderableType],
        column: Column | None = None,
    ) -> None:
        super().__init__(table_column=column)
        self._tally = tally
        self._draw = draw

    def render(self, task: Task) -> RenderableType:
        stage: Stage = task.fields["stage"]
        snap = self._tally.snapshot(stage)
        return Text("") if snap is None else self._draw(snap, task)


def _draw_bar(snap: _Snapshot, task: Task) -> RenderableType:
    if snap.bytes_total > 0:
        return ProgressBar(total=snap.bytes_total, completed=snap.bytes_done, width=28)
    if snap.files_total > 0:
        return ProgressBar(total=snap.files_total, completed=snap.files_done, width=28)
    if snap.finished:
        return ProgressBar(total=1, completed=1, width=28)
    return ProgressBar(total=None, pulse=True, width=28, animation_time=task.get_time())


def _files_text(snap: _Snapshot) -> str:
    if snap.files_total > 0:
        return f"{snap.files_done}/{snap.files_total} files"
    return f"{snap.files_done} files"


def _bytes_text(snap: _Snapshot) -> str:
    if snap.bytes_total > 0:
        return _size_pair(snap.bytes_done, snap.bytes_total)
    return human_size(snap.bytes_done)


def _eta_text(snap: _Snapshot) -> str:
    return "ETA -" if snap.eta_s is None else f"ETA {human_duration(snap.eta_s)}"


def _draw_time(snap: _Snapshot, task: Task) -> RenderableType:
    if snap.finished:
        return Text(f"in {human_duration(snap.elapsed)}", style="green")
    return Text(_eta_text(snap), style="cyan")


def _draw_failed(snap: _Snapshot, task: Task) -> RenderableType:
    return Text(f"{snap.failed} failed", style="bold red") if snap.failed else Text("")


def console_for(stream: TextIO, *, interactive: bool) -> Console:
    """A console on `stream`: colours and the terminal's width when a person watches, plain
    80 columns otherwise (kubectl logs), so a line stays one line."""
    if interactive:
        return Console(file=stream)
    return Console(file=stream, force_terminal=False, no_color=True, width=80)


def print_result(
    stream: TextIO, *, interactive: bool, plan: UploadPlan, report: HarvestReport
) -> None:
    """The end of a run for people: the plan table after a dry run, else the summary."""
    console = console_for(stream, interactive=interactive)
    console.print(render_plan(plan) if report.dry_run else render_summary(report))


def print_line(text: str, stream: TextIO, *, interactive: bool, style: str) -> None:
    """One line outside the reporters (an error before the run, a warning after it), made
    printable and never wrapped, so `kubectl logs | grep error:` finds all of it."""
    console_for(stream, interactive=interactive).print(
        printable(text), style=style, markup=False, highlight=False, soft_wrap=True
    )


class TerminalReporter:
    """Progress bars on a terminal: one row per stage, failures and notices printed above.

    Use it as a context manager: `with reporter:` starts and stops the live display. Every
    `Listener` method may be called from any thread.
    """

    def __init__(
        self,
        console: Console,
        *,
        clock: Clock = time.monotonic,
        level: Level = Level.INFO,
        refresh_per_second: float = 8,
    ) -> None:
        self._console = console
        self._level = level
        self._tally = _Tally(clock)
        self._tasks: dict[Stage, TaskID] = {}
        self._tasks_lock = threading.Lock()
        tally = self._tally
        self._progress = Progress(
            _SnapshotColumn(tally, lambda s, t: Text(s.stage.value, style="bold"), Column(width=6)),
            _SnapshotColumn(tally, _draw_bar),
            _SnapshotColumn(tally, lambda s, t: Text(_files_text(s)), Column(justify="right")),
            _SnapshotColumn(tally, lambda s, t: Text(_bytes_text(s)), Column(justify="right")),
            _SnapshotColumn(tally, lambda s, t: Text(_rate_text(s.rate_bps), style="magenta")),
            _SnapshotColumn(tally, _draw_time),
            _SnapshotColumn(tally, _draw_failed),
            console=console,
            get_time=clock,
            refresh_per_second=refresh_per_second,
            transient=False,
            # Stray prints from other threads must not be swallowed by the live display.
            redirect_stdout=False,
            redirect_stderr=False,
        )

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

    def stage_started(self, stage: Stage, files: int, nbytes: int) -> None:
        self._tally.start(stage, files, nbytes)
        with self._tasks_lock:
            if stage not in self._tasks:
                self._tasks[stage] = self._progress.add_task(stage.value, total=None, stage=stage)
        self._progress.refresh()

    def advanced(self, stage: Stage, files: int = 0, nbytes: int = 0) -> None:
        # Only counters move here (this runs for every chunk); the live display reads them.
        self._tally.advance(stage, files, nbytes)

    def file_failed(self, rel_path: str, message: str) -> None:
        self._tally.fail()
        self._progress.console.print(Text(_failure_line(rel_path, message), style="red"))

    def notice(self, level: Level, message: str) -> None:
        if not _shown(level, self._level):
            return
        style = {Level.DEBUG: "dim", Level.WARNING: "yellow", Level.ERROR: "bold red"}.get(level)
        line = f"{level.value}: {_one_line(message, 4 * ERROR_CHARS)}"
        self._progress.console.print(Text(line, style=style or ""))

    def stage_finished(self, stage: Stage) -> None:
        self._tally.finish(stage)
        self._progress.refresh()


def _without_subject(rel_path: str, message: str) -> str:
    """`message` without the `rel_path: ` it opens with, so a line names its file only once.

    Compared before the message is made one line: that collapses runs of whitespace, and a name
    with two spaces or a newline would no longer match.
    """
    return message[len(rel_path) + 1 :].lstrip() if message.startswith(rel_path + ":") else message


def _failure_line(rel_path: str, message: str) -> str:
    """`FAILED reports/a.md: upload failed: ...`, without naming the path twice."""
    return f"FAILED {printable(rel_path)}: {_one_line(_without_subject(rel_path, message))}"


# --------------------------------------------------------------------------- plain lines


class _LineReporter:
    """A listener that writes whole lines to a stream, with a ticker for periodic progress."""

    def __init__(
        self,
        stream: TextIO,
        interval: float = 5.0,
        clock: Clock = time.monotonic,
        *,
        level: Level = Level.INFO,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"report interval must be positive, not {interval}")
        self._stream = stream
        self.interval = interval
        self._level = level
        self._tally = _Tally(clock)
        # Held while a line is formatted and written, so a periodic line never lands after the
        # stage's final line and lines from several threads never interleave.
        self._out = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    # The ticker wakes often and writes only when a line is due, so lines keep to the interval
    # whenever the stage started.
    def _poll_seconds(self) -> float:
        return min(self.interval, 0.5)

    def __enter__(self) -> Self:
        self._stop.clear()
        self._ticker = threading.Thread(
            target=self._run_ticker, name="harvester-report-ticker", daemon=True
        )
        self._ticker.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
            self._ticker = None
        # A stage cut short (an interrupt, an error) still leaves a line saying how far it got.
        self.tick(force=True)

    def _run_ticker(self) -> None:
        while not self._stop.wait(self._poll_seconds()):
            self.tick()

    def tick(self, *, force: bool = False) -> None:
        """Write a progress line for every running stage whose last line is `interval` old."""
        with self._out:
            for snap in self._tally.due(self.interval, force=force):
                self._write(self._progress_line(snap))

    def stage_started(self, stage: Stage, files: int, nbytes: int) -> None:
        with self._out:
            self._tally.start(stage, files, nbytes)
            self._write(self._started_line(stage, files, nbytes))

    def advanced(self, stage: Stage, files: int = 0, nbytes: int = 0) -> None:
        self._tally.advance(stage, files, nbytes)

    def file_failed(self, rel_path: str, message: str) -> None:
        with self._out:
            self._tally.fail()
            self._write(self._failed_line(rel_path, message))

    def notice(self, level: Level, message: str) -> None:
        if _shown(level, self._level):
            with self._out:
                self._write(self._notice_line(level, message))

    def stage_finished(self, stage: Stage) -> None:
        with self._out:
            snap = self._tally.finish(stage)
            if snap is not None:
                self._write(self._finished_line(snap))

    def _write(self, line: str) -> None:
        try:
            try:
                self._stream.write(line + "\n")
            except UnicodeEncodeError:  # a log stream that only takes ASCII
                self._stream.write(line.encode("ascii", "backslashreplace").decode() + "\n")
            self._stream.flush()
        except (OSError, ValueError):
            # A closed or broken log must not stop the uploads that it only describes.
            pass

    def _started_line(self, stage: Stage, files: int, nbytes: int) -> str:
        raise NotImplementedError

    def _progress_line(self, snap: _Snapshot) -> str:
        raise NotImplementedError

    def _finished_line(self, snap: _Snapshot) -> str:
        raise NotImplementedError

    def _failed_line(self, rel_path: str, message: str) -> str:
        raise NotImplementedError

    def _notice_line(self, level: Level, message: str) -> str:
        raise NotImplementedError


class LogReporter(_LineReporter):
    """Plain lines for `kubectl logs`: never an escape code, one progress line per interval.

    `upload: 57/120 files, 21.3/45.2 MB, 4.1 MB/s, ETA 6s, 1 failed` (rclone's
    `--stats-one-line` is the model). Use it as a context manager to run the ticker thread;
    `tick()` may also be called directly.
    """

    def _started_line(self, stage: Stage, files: int, nbytes: int) -> str:
        if files == 0 and nbytes == 0:
            return f"{stage.value}: started"
        return (
            f"{stage.value}: {_plural(files, 'file')}, {human_size(nbytes)} to {_STAGE_VERB[stage]}"
        )

    def _progress_line(self, snap: _Snapshot) -> str:
        return (
            f"{snap.stage.value}: {_files_text(snap)}, {_bytes_text(snap)}, "
            f"{_rate_text(snap.rate_bps)}, {_eta_text(snap)}, {snap.failed} failed"
        )

    def _finished_line(self, snap: _Snapshot) -> str:
        return (
            f"{snap.stage.value} finished: {_files_text(snap)}, {_bytes_text(snap)} "
            f"in {human_duration(snap.elapsed)}, {_rate_text(snap.rate_bps)}, "
            f"{snap.failed} failed"
        )

    def _failed_line(self, rel_path: str, message: str) -> str:
        return _failure_line(rel_path, message)

    def _notice_line(self, level: Level, message: str) -> str:
        return f"{level.value}: {_one_line(message, 4 * ERROR_CHARS)}"


def json_event(event: str, *, wall_clock: Clock = time.time, **fields: Any) -> str:
    """One line of `--log-format json`: `ts` (RFC 3339 UTC), `event`, then `fields`. Every JSON
    line the harvester writes is made here, so a consumer sees one shape."""
    ts = datetime.fromtimestamp(wall_clock(), tz=UTC)
    head = {"ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"), "event": event}
    # ASCII only: valid JSON whatever the stream's encoding, and escapes cannot reach a
    # terminal that shows the log.
    return json.dumps(head | fields, ensure_ascii=True, separators=(",", ":"))


class JsonReporter(_LineReporter):
    """The same events as `LogReporter`, as one JSON object per line (restic's `--json`).

    Events: `stage_started`, `progress` (every interval), `stage_finished` (with the final
    counts), `file_failed`, `notice`. Each carries `ts`, RFC 3339 UTC from `wall_clock`.
    """

    def __init__(
        self,
        stream: TextIO,
        interval: float = 5.0,
        clock: Clock = time.monotonic,
        *,
        wall_clock: Clock = time.time,
        level: Level = Level.INFO,
    ) -> None:
        super().__init__(stream, interval=interval, clock=clock, level=level)
        self._wall_clock = wall_clock

    def _event(self, event: str, **fields: Any) -> str:
        return json_event(event, wall_clock=self._wall_clock, **fields)

    @staticmethod
    def _counts(snap: _Snapshot) -> dict[str, Any]:
        return {
            "stage": snap.stage.value,
            "files_done": snap.files_done,
            "files_total": snap.files_total,
            "bytes_done": snap.bytes_done,
            "bytes_total": snap.bytes_total,
            "elapsed_s": round(snap.elapsed, 3),
            "rate_bps": None if snap.rate_bps is None else round(snap.rate_bps, 1),
            "eta_s": None if snap.eta_s is None else round(snap.eta_s, 1),
            "failed": snap.failed,
        }

    def _started_line(self, stage: Stage, files: int, nbytes: int) -> str:
        return self._event(
            "stage_started", stage=stage.value, files_total=files, bytes_total=nbytes
        )

    def _progress_line(self, snap: _Snapshot) -> str:
        return self._event("progress", **self._counts(snap))

    def _finished_line(self, snap: _Snapshot) -> str:
        return self._event("stage_finished", **self._counts(snap))

    def _failed_line(self, rel_path: str, message: str) -> str:
        return self._event("file_failed", path=rel_path, message=message)

    def _notice_line(self, level: Level, message: str) -> str:
        return self._event("notice", level=level.value, message=message)


# --------------------------------------------------------------------------- the plan


def _action_phrase(action: Action, duplicate_of: str | None, reason: str | None) -> str:
    match action:
        case Action.UPLOAD:
            return "upload"
        case Action.DUPLICATE:
            return f"duplicate of {printable(duplicate_of or '?')}"
        case Action.ALREADY_UPLOADED:
            return "already uploaded"
        case Action.SKIP:
            return f"skipped: {_one_line(reason or 'no reason given')}"
        case Action.FAIL:
            return f"failed: {_one_line(reason or 'no reason given')}"
    raise AssertionError(f"unknown action {action!r}")


_ACTION_STYLE = {
    Action.UPLOAD: "green",
    Action.DUPLICATE: "dim",
    Action.ALREADY_UPLOADED: "dim",
    Action.SKIP: "yellow",
    Action.FAIL: "bold red",
}


def _plan_totals(plan: UploadPlan) -> str:
    n = {action: len(plan.with_action(action)) for action in Action}
    return (
        f"{n[Action.UPLOAD]} to upload ({human_size(plan.upload_bytes)}), "
        f"{_plural(n[Action.DUPLICATE], 'duplicate')}, "
        f"{n[Action.ALREADY_UPLOADED]} already uploaded, "
        f"{n[Action.SKIP]} skipped, {n[Action.FAIL]} failed"
    )


def render_plan(plan: UploadPlan, *, width: int | None = None) -> Table:
    """The `--dry-run` table: path, size, sha256 (first 12 hex), action; totals as caption."""
    table = Table(
        box=box.SIMPLE_HEAD,
        show_edge=False,
        width=width,
        caption=_plan_totals(plan),
        caption_justify="left",
        header_style="bold",
    )
    table.add_column("path", overflow="fold")
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("sha256", no_wrap=True)
    table.add_column("action", overflow="fold")
    for item in plan.items:
        table.add_row(
            Text(printable(item.rel_path)),
            Text("-" if item.size is None else human_size(item.size)),
            Text(item.sha256[:12] if item.sha256 else "-", style="dim"),
            Text(
                _action_phrase(item.action, item.duplicate_of, item.reason),
                style=_ACTION_STYLE[item.action],
            ),
        )
    return table


def _plan_item_to_json(item: PlanItem) -> dict[str, Any]:
    return {
        "path": item.rel_path,
        "size": item.size,
        "sha256": item.sha256,
        "action": item.action.value,
        "duplicate_of": item.duplicate_of,
        "reason": item.reason,
    }


def plan_to_json(plan: UploadPlan, task_id: str, root: str) -> dict[str, Any]:
    """The plan for `--dry-run --log-format json`: totals and every item, in path order."""
    return {
        "task_id": task_id,
        "root": root,
        "dry_run": True,
        "counts": {action.value: len(plan.with_action(action)) for action in Action},
        "upload_bytes": plan.upload_bytes,
        "items": [_plan_item_to_json(item) for item in plan.items],
    }


# --------------------------------------------------------------------------- the summary


def _headline(report: HarvestReport) -> str:
    """One sentence on how the harvest ended, subject first, with what to do about it."""
    subject = f"task {report.task_id}"
    failed = len(report.failures)
    kept = report.pvc.state is not StepState.DONE
    if report.auth_rejected:
        return (
            f"{subject}: harvest stopped: keruta-api rejected the token (401/403); "
            "check KERUTA_API_TOKEN or --token-file and that the token may write this task"
        )
    if report.interrupted:
        if any(_another_run_helps(f) for f in report.failures):
            return (
                f"{subject}: harvest interrupted before it finished; run it again to send the rest"
            )
        if failed:
            return (
                f"{subject}: harvest interrupted; {_plural(failed, 'file')} not harvested; "
                "fix the causes below and run it again"
            )
        if report.status.state is not StepState.DONE:
            return (
                f"{subject}: harvest interrupted after every upload finished; "
                "run it again to set the task status"
            )
    if failed:
        # "Send the rest" only when a run as it stands would: a rejected file needs a fix first.
        todo = (
            "run it again to send the rest"
            if all(_another_run_helps(f) for f in report.failures)
            else "fix the causes below and run it again"
        )
        tail = f"; {todo}" + (" (the volume was kept)" if kept else "")
        return f"{subject}: harvest incomplete: {_plural(failed, 'file')} not harvested{tail}"
    if report.dry_run:
        planned = report.count(Outcome.PLANNED)
        return f"{subject}: dry run, nothing was sent; {_plural(planned, 'file')} would be uploaded"
    if report.status.state is StepState.FAILED:
        return f"{subject}: documents harvested, but the task status update failed"
    if report.pvc.state in (StepState.FAILED, StepState.REFUSED):
        return f"{subject}: documents harvested and status set, but the PVC was not deleted"
    return f"{subject}: harvest done"


def _another_run_helps(f: FileReport) -> bool:
    """Whether running again as it stands could harvest `f`: it was never tried, or it was tried
    more than once (only transient failures are retried: 5xx, timeouts, a file being written)."""
    return f.outcome is Outcome.NOT_ATTEMPTED or (f.outcome is Outcome.FAILED and f.attempts > 1)


def _headline_style(report: HarvestReport) -> str:
    if report.auth_rejected or report.failures or report.status.state is StepState.FAILED:
        return "bold red"
    if report.interrupted or report.pvc.state in (StepState.FAILED, StepState.REFUSED):
        return "bold yellow"
    return "bold green"


def _step_text(step: StepResult, limit: int = 2 * ERROR_CHARS) -> str:
    return f"{step.state.value}: {_one_line(step.message, limit)}"


def _average_rate(report: HarvestReport) -> float | None:
    if report.elapsed_seconds <= 0 or report.bytes_uploaded <= 0:
        return None
    return report.bytes_uploaded / report.elapsed_seconds


def _bytes_of(report: HarvestReport, outcome: Outcome) -> int:
    return sum(f.size or 0 for f in report.files if f.outcome is outcome)


def _failure_error(f: FileReport, limit: int = ERROR_CHARS) -> str:
    """The error of a failed file, without the path that the table already shows."""
    if f.error:
        return _one_line(_without_subject(f.path, f.error), limit)
    if f.outcome is Outcome.NOT_ATTEMPTED:
        return "not attempted: the run stopped first"
    return "failed (no error recorded)"


def render_summary(report: HarvestReport, *, max_failures: int = 20) -> Group:
    """The final summary for people: outcome, counts, steps, then the failed files.

    Fits any console of 80 columns or more (long paths and errors wrap or are cut); paths and
    messages are printed as text, never as rich markup.
    """
    parts: list[RenderableType] = [
        Text(printable(_headline(report)), style=_headline_style(report)),
        Text(""),
    ]
    grid = Table.grid(padding=(0, 2))
    grid.add_column(no_wrap=True, style="bold")
    grid.add_column(overflow="fold")
    rows: list[tuple[str, str]] = [
        (
            "uploaded",
            f"{report.count(Outcome.UPLOADED)} ({human_size(report.bytes_uploaded)})",
        ),
    ]
    if report.dry_run or report.count(Outcome.PLANNED):
        planned = report.count(Outcome.PLANNED)
        rows.append(("planned", f"{planned} ({human_size(_bytes_of(report, Outcome.PLANNED))})"))
    rows += [
        ("duplicates", str(report.count(Outcome.DUPLICATE))),
        ("already uploaded", str(report.count(Outcome.ALREADY_UPLOADED))),
        ("skipped", str(report.count(Outcome.SKIPPED))),
        ("failed", str(report.count(Outcome.FAILED))),
        ("not attempted", str(report.count(Outcome.NOT_ATTEMPTED))),
        ("elapsed", human_duration(report.elapsed_seconds)),
        ("average rate", _rate_text(_average_rate(report))),
        ("status update", _step_text(report.status)),
        ("PVC", _step_text(report.pvc)),
    ]
    for key, value in rows:
        grid.add_row(Text(key), Text(value))
    parts.append(grid)

    failures = report.failures
    if failures:
        parts += [Text(""), Text(f"Failed files ({len(failures)})", style="bold red")]
        table = Table(box=box.SIMPLE_HEAD, header_style="bold", show_edge=False)
        table.add_column("path", overflow="fold", ratio=2)
        table.add_column("error", overflow="fold", ratio=3)
        for f in failures[:max_failures]:
            table.add_row(Text(printable(f.path)), Text(_failure_error(f), style="red"))
        parts.append(table)
        if len(failures) > max_failures:
            parts.append(
                Text(f"... and {len(failures) - max_failures} more; all are in --summary-json")
            )
    if report.notes:
        parts += [Text(""), Text("Notes", style="bold")]
        parts += [Text(f"- {_one_line(note, 2 * ERROR_CHARS)}") for note in report.notes]
    return Group(*parts)


def _file_to_json(f: FileReport) -> dict[str, Any]:
    return {
        "path": f.path,
        "size": f.size,
        "sha256": f.sha256,
        "action": f.action.value,
        "outcome": f.outcome.value,
        "duplicate_of": f.duplicate_of,
        "reason": f.reason,
        "document_id": f.document_id,
        "error": f.error,
        "attempts": f.attempts,
    }


def report_to_json(report: HarvestReport) -> dict[str, Any]:
    """The machine-readable summary (`--summary-json`): every field of the report, plain JSON."""
    return {
        "task_id": report.task_id,
        "root": report.root,
        "dry_run": report.dry_run,
        "elapsed_seconds": round(report.elapsed_seconds, 3),
        "bytes_uploaded": report.bytes_uploaded,
        "counts": {outcome.value: report.count(outcome) for outcome in Outcome},
        "status": {"state": report.status.state.value, "message": report.status.message},
        "pvc": {"state": report.pvc.state.value, "message": report.pvc.message},
        "auth_rejected": report.auth_rejected,
        "interrupted": report.interrupted,
        "notes": list(report.notes),
        "files": [_file_to_json(f) for f in report.files],
    }


def _json_text(data: dict[str, Any]) -> str:
    """`data` as JSON in readable UTF-8, with every hidden character (see `_hidden`) written as
    a `\\u` escape: the values read back exactly, and a person who opens the file sees no
    reordered or invisible text. Lone surrogates from odd names are escaped the same way."""
    text = json.dumps(data, ensure_ascii=False, indent=2) + "\n"
    # Outside its strings this JSON holds only printable ASCII and newlines, so only string
    # contents are touched; the pattern skips plain ASCII, which keeps a huge summary fast.
    return _NOT_PLAIN_ASCII.sub(lambda m: _json_escaped(m[0]) if _hidden(m[0]) else m[0], text)


def _json_escaped(ch: str) -> str:
    n = ord(ch)
    if n < 0x10000:
        return f"\\u{n:04x}"
    n -= 0x10000  # JSON spells a character beyond the BMP as a UTF-16 surrogate pair
    return f"\\u{0xD800 + (n >> 10):04x}\\u{0xDC00 + (n & 0x3FF):04x}"


def write_summary_json(report: HarvestReport, path: str | os.PathLike[str]) -> None:
    """Write `report_to_json(report)` to `path` atomically (a reader sees old or new, whole).

    Raises OSError when the folder cannot take the file; no temporary file is left behind.
    """
    target = Path(path)
    text = _json_text(report_to_json(report))
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        tmp.chmod(0o644)  # mkstemp makes it 0600; the summary holds nothing secret
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fit_bytes(text: str, limit: int, marker: str = "\n... (truncated)") -> str:
    """`text` cut to at most `limit` bytes of UTF-8, never inside a character, marked if cut."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    tail = marker.encode("utf-8")
    if len(tail) >= limit:
        tail = b""
    return data[: limit - len(tail)].decode("utf-8", "ignore") + tail.decode("utf-8")


def _counts_line(report: HarvestReport) -> str:
    line = (
        f"{report.count(Outcome.UPLOADED)} uploaded ({human_size(report.bytes_uploaded)}), "
        f"{_plural(report.count(Outcome.DUPLICATE), 'duplicate')}, "
        f"{report.count(Outcome.ALREADY_UPLOADED)} already uploaded, "
        f"{report.count(Outcome.SKIPPED)} skipped, {report.count(Outcome.FAILED)} failed, "
        f"{report.count(Outcome.NOT_ATTEMPTED)} not attempted"
    )
    if report.dry_run:
        line += f", {report.count(Outcome.PLANNED)} planned"
    return f"{line}; {human_duration(report.elapsed_seconds)}"


def termination_message(report: HarvestReport, limit: int = 4096, *, max_failures: int = 5) -> str:
    """A short summary for /dev/termination-log: at most `limit` bytes of UTF-8.

    Kubernetes keeps only the first 4096 bytes, so the most useful lines come first: the
    outcome, the counts, the status and PVC steps, then the first failures.
    """
    lines = [
        printable(_headline(report)),
        _counts_line(report),
        f"status update: {_step_text(report.status, ERROR_CHARS)}",
        f"PVC: {_step_text(report.pvc, ERROR_CHARS)}",
    ]
    failures = report.failures
    lines += [_failure_line(f.path, _failure_error(f)) for f in failures[:max_failures]]
    if len(failures) > max_failures:
        lines.append(f"... and {len(failures) - max_failures} more failed")
    return _fit_bytes("\n".join(lines) + "\n", limit)


def write_termination_log(
    report: HarvestReport, path: str | os.PathLike[str] = "/dev/termination-log"
) -> OSError | None:
    """Write `termination_message(report)` to `path` if it exists (in a pod); never raises.

    Gives the error when the file is there but could not be written (disk full), else None.
    """
    data = termination_message(report).encode("utf-8")
    try:
        # No O_CREAT: outside Kubernetes the file is absent and must stay absent.
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        return exc
    try:
        while data:
            data = data[os.write(fd, data) :]
    except OSError as exc:
        return exc
    finally:
        os.close(fd)
    return None
