"""Progress while a harvest runs: the plain reporters, the line texts all three reporters
share, and the one writer of JSON-lines events.

Takes a `Tally` (stats.py) to watch and a stream to write to; gives `LogReporter` (one plain
line every few seconds, for `kubectl logs`) and `JsonReporter` (JSON lines), each a `Watcher`
that draws from the tally's snapshots and counts nothing itself; `terminal.TerminalReporter`
(rich progress bars) draws the same texts from here. Also `json_event`, the only maker of a
`--log-format json` line (so each carries `ts`), and `console_for`/`print_line` for the lines
a run says outside the reporters. Nothing here imports rich until a console is asked for.

Nothing here decides an exit code or where output goes: the caller hands in the console or
stream and the tally's clock, so tests need neither a terminal nor sleeps.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TextIO

from harvester.report.text import (
    ERROR_CHARS,
    failure_line,
    human_duration,
    human_size,
    one_line,
    printable,
    rate_text,
    size_pair,
)
from harvester.stats import Clock, Level, Snapshot, Stage, Tally, at_least
from harvester.text import plural

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "Encoded",
    "JsonReporter",
    "LogReporter",
    "console_for",
    "json_event",
    "print_line",
    "write_json_event",
]

_STAGE_VERB = {Stage.SCAN: "scan", Stage.HASH: "read", Stage.UPLOAD: "send"}
# A notice may carry more than a file's error (a Kubernetes refusal naming pods): a longer cut.
_NOTICE_CHARS = 4 * ERROR_CHARS


# ASCII only: valid JSON whatever the stream's encoding, and escapes cannot reach a terminal
# that shows the log.
_JSON = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))
# Elements of a streamed array encoded per call: few calls, little text held at once.
_JSON_BATCH = 1024


def _json_head(event: str, wall_clock: Clock) -> dict[str, Any]:
    ts = datetime.fromtimestamp(wall_clock(), tz=UTC)
    return {"ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"), "event": event}


def json_event(event: str, *, wall_clock: Clock = time.time, **fields: Any) -> str:
    """One line of `--log-format json`: `ts` (RFC 3339 UTC), `event`, then `fields`. Every JSON
    line the harvester writes is made here or by `write_json_event`, so a consumer sees one
    shape."""
    return _JSON.encode(_json_head(event, wall_clock) | fields)


@dataclass(frozen=True, slots=True)
class Encoded:
    """A field of `write_json_event` whose elements are JSON texts already (an array of them):
    for a shape a maker formats faster than the encoder encodes its dict, each such maker
    held equal to the encoder's text by the tests."""

    texts: Iterator[str]


def _batches(elements: Iterator[Any]) -> Iterator[list[Any]]:
    while batch := list(islice(elements, _JSON_BATCH)):
        yield batch


def write_json_event(
    stream: TextIO, event: str, *, wall_clock: Clock = time.time, **fields: Any
) -> None:
    """`json_event`'s line, newline included, written to `stream` as it is encoded.

    A field given as an iterator (not a list) becomes a JSON array encoded a batch of elements
    at a time: a plan of a million paths is never one list of dicts nor one string. An
    `Encoded` field's elements are JSON texts already, written as they are.
    """
    parts: list[str] = []
    for key, value in (_json_head(event, wall_clock) | fields).items():
        parts.append(("{" if not parts else ",") + _JSON.encode(key) + ":")
        if not isinstance(value, Iterator | Encoded):
            parts.append(_JSON.encode(value))
            continue
        stream.write("".join(parts) + "[")
        if isinstance(value, Encoded):
            insides: Iterator[str] = map(",".join, _batches(value.texts))
        else:
            # A batch encodes as "[a,b]": its inside is the elements with their commas.
            insides = (_JSON.encode(batch)[1:-1] for batch in _batches(value))
        separator = ""
        for inside in insides:
            stream.write(separator + inside)
            separator = ","
        parts = ["]"]
    stream.write("".join(parts) + "}\n")
    stream.flush()


def console_for(stream: TextIO, *, interactive: bool) -> Console:
    """A console on `stream`: colours and the terminal's width when a person watches, plain
    80 columns otherwise (kubectl logs), so a line stays one line."""
    # Imported here: a run that only writes JSON lines never loads rich (some 30 ms).
    from rich.console import Console

    if interactive:
        return Console(file=stream)
    return Console(file=stream, force_terminal=False, no_color=True, width=80)


def print_line(text: str, stream: TextIO, *, interactive: bool, style: str) -> None:
    """One line outside the reporters (an error before the run, a warning after it), made
    printable and never wrapped, so `kubectl logs | grep error:` finds all of it."""
    console_for(stream, interactive=interactive).print(
        printable(text), style=style, markup=False, highlight=False, soft_wrap=True
    )


def _notice_text(level: Level, message: str) -> str:
    return f"{level.value}: {one_line(message, _NOTICE_CHARS)}"


def _files_text(snap: Snapshot) -> str:
    if snap.files_total > 0:
        return f"{snap.files_done}/{snap.files_total} files"
    return f"{snap.files_done} files"


def _bytes_text(snap: Snapshot) -> str:
    if snap.bytes_total > 0:
        return size_pair(snap.bytes_done, snap.bytes_total)
    return human_size(snap.bytes_done)


def _eta_text(snap: Snapshot) -> str:
    return "ETA -" if snap.eta_s is None else f"ETA {human_duration(snap.eta_s)}"


# --------------------------------------------------------------------------- plain lines


class _LineReporter:
    """A watcher that writes whole lines to a stream, with a ticker for periodic progress."""

    def __init__(
        self, stream: TextIO, tally: Tally, *, interval: float = 5.0, level: Level = Level.INFO
    ) -> None:
        if interval <= 0:
            raise ValueError(f"report interval must be positive, not {interval}")
        self._stream = stream
        self._tally = tally
        self.interval = interval
        self._level = level
        # When each stage's last line was written: a stage gets progress lines only after its
        # started line, and one per interval.
        self._last_line: dict[Stage, float] = {}
        # Held while a line is formatted and written, so a periodic line never lands after the
        # stage's final line and lines from several threads never interleave.
        self._out = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        tally.watch(self)

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
            now = self._tally.clock()
            for snap in self._tally.running():
                last = self._last_line.get(snap.stage)
                if last is not None and (force or now - last >= self.interval):
                    self._last_line[snap.stage] = now
                    self._write(self._progress_line(snap))

    def stage_started(self, snapshot: Snapshot) -> None:
        with self._out:
            self._last_line[snapshot.stage] = self._tally.clock()
            self._write(self._started_line(snapshot))

    def file_failed(self, rel_path: str, message: str) -> None:
        with self._out:
            self._write(self._failed_line(rel_path, message))

    def notice(self, level: Level, message: str) -> None:
        if at_least(level, self._level):
            with self._out:
                self._write(self._notice_line(level, message))

    def stage_finished(self, snapshot: Snapshot) -> None:
        with self._out:
            self._last_line.pop(snapshot.stage, None)
            self._write(self._finished_line(snapshot))

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

    def _started_line(self, snap: Snapshot) -> str:
        raise NotImplementedError

    def _progress_line(self, snap: Snapshot) -> str:
        raise NotImplementedError

    def _finished_line(self, snap: Snapshot) -> str:
        raise NotImplementedError

    def _failed_line(self, rel_path: str, message: str) -> str:
        raise NotImplementedError

    def _notice_line(self, level: Level, message: str) -> str:
        raise NotImplementedError


class LogReporter(_LineReporter):
    """Plain lines for `kubectl logs`: never an escape code, one progress line per interval.

    `upload: 57/120 files, 21.3/45.2 MiB, 4.1 MiB/s, ETA 6s, 1 failed` (rclone's
    `--stats-one-line` is the model). Use it as a context manager to run the ticker thread;
    `tick()` may also be called directly.
    """

    def _started_line(self, snap: Snapshot) -> str:
        files, nbytes = snap.files_total, snap.bytes_total
        if files == 0 and nbytes == 0:
            return f"{snap.stage.value}: started"
        verb = _STAGE_VERB[snap.stage]
        return f"{snap.stage.value}: {plural(files, 'file')}, {human_size(nbytes)} to {verb}"

    def _progress_line(self, snap: Snapshot) -> str:
        return (
            f"{snap.stage.value}: {_files_text(snap)}, {_bytes_text(snap)}, "
            f"{rate_text(snap.rate_bps)}, {_eta_text(snap)}, {snap.failed} failed"
        )

    def _finished_line(self, snap: Snapshot) -> str:
        return (
            f"{snap.stage.value} finished: {_files_text(snap)}, {_bytes_text(snap)} "
            f"in {human_duration(snap.elapsed)}, {rate_text(snap.rate_bps)}, "
            f"{snap.failed} failed"
        )

    def _failed_line(self, rel_path: str, message: str) -> str:
        return failure_line(rel_path, message)

    def _notice_line(self, level: Level, message: str) -> str:
        return _notice_text(level, message)


class JsonReporter(_LineReporter):
    """The same events as `LogReporter`, as one JSON object per line (restic's `--json`).

    Events: `stage_started`, `progress` (every interval), `stage_finished` (with the final
    counts), `file_failed`, `notice`. Each carries `ts`, RFC 3339 UTC from `wall_clock`.
    """

    def __init__(
        self,
        stream: TextIO,
        tally: Tally,
        *,
        interval: float = 5.0,
        wall_clock: Clock = time.time,
        level: Level = Level.INFO,
    ) -> None:
        super().__init__(stream, tally, interval=interval, level=level)
        self._wall_clock = wall_clock

    def _event(self, event: str, **fields: Any) -> str:
        return json_event(event, wall_clock=self._wall_clock, **fields)

    @staticmethod
    def _counts(snap: Snapshot) -> dict[str, Any]:
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

    def _started_line(self, snap: Snapshot) -> str:
        return self._event(
            "stage_started",
            stage=snap.stage.value,
            files_total=snap.files_total,
            bytes_total=snap.bytes_total,
        )

    def _progress_line(self, snap: Snapshot) -> str:
        return self._event("progress", **self._counts(snap))

    def _finished_line(self, snap: Snapshot) -> str:
        return self._event("stage_finished", **self._counts(snap))

    def _failed_line(self, rel_path: str, message: str) -> str:
        return self._event("file_failed", path=rel_path, message=message)

    def _notice_line(self, level: Level, message: str) -> str:
        return self._event("notice", level=level.value, message=message)
