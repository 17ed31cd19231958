"""Tests of harvester.report: the listeners (with a fake clock, no sleeps) and the renderers."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import pytest
from pytest_httpserver import HTTPServer
from rich.cells import cell_len
from rich.console import Console, RenderableType
from werkzeug import Request, Response

from harvester.harvest import run_harvest
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
from harvester.report import (
    JsonReporter,
    LogReporter,
    TerminalReporter,
    human_duration,
    human_size,
    plan_to_json,
    render_plan,
    render_summary,
    report_to_json,
    termination_message,
    write_summary_json,
    write_termination_log,
)
from harvester.settings import Settings
from harvester.stats import Clock, Level, Listener, Stage, Tally, Watcher
from tests.reports import file_report

KiB, MiB = 1024, 1024 * 1024
SHA_A = "0123456789abcdef" * 4
SHA_B = "fedcba9876543210" * 4
ERROR_413 = (
    "upload failed: 413 Payload Too Large from keruta-api; "
    "raise the server's limit or --max-file-size"
)


class FakeClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def log_to(stream: TextIO, *, clock: Clock | None = None, **options: Any) -> Tally:
    """A tally (on a fake clock unless given one) watched by a `LogReporter` on `stream`."""
    tally = Tally(clock or FakeClock())
    LogReporter(stream, tally, **options)
    return tally


def out_lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def plain(renderable: RenderableType, width: int = 80) -> str:
    """What a renderable prints to a log that is not a terminal."""
    buf = io.StringIO()
    Console(file=buf, width=width, force_terminal=False, color_system=None).print(renderable)
    return buf.getvalue()


def run_threads(count: int, work: Callable[[int], None]) -> list[BaseException]:
    """Run `work(i)` on `count` threads started together; return what they raised."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def body(i: int) -> None:
        try:
            barrier.wait()
            work(i)
        except BaseException as exc:  # noqa: BLE001 - collected, then asserted on by the test
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return errors


# --------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (12, "12 B"),
        (999, "999 B"),
        (1000, "1.0 KiB"),
        (1024, "1.0 KiB"),
        (812 * KiB, "812 KiB"),
        (102_359, "100 KiB"),
        (1023 * KiB, "1.0 MiB"),
        (round(4.1 * MiB), "4.1 MiB"),
        (round(45.2 * MiB), "45.2 MiB"),
        (100 * MiB, "100 MiB"),  # the default --max-file-size, in its own unit
        (5 * 2**60, "5.0 EiB"),
        (-1536, "-1.5 KiB"),
    ],
)
def test_human_size_uses_binary_units_and_three_digits(n: int, text: str) -> None:
    assert human_size(n) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.01, "0s"),
        (0.4, "0.4s"),
        (6.4, "6s"),
        (59.6, "1m00s"),
        (65, "1m05s"),
        (7380, "2h03m"),
        (-3, "0s"),
        (float("inf"), "-"),
        (float("nan"), "-"),
    ],
)
def test_human_duration(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


# --------------------------------------------------------------------------- LogReporter


def test_log_reporter_writes_a_progress_line_only_once_the_interval_has_passed() -> None:
    clock, out = FakeClock(), io.StringIO()
    tally = Tally(clock)
    reporter = LogReporter(out, tally, interval=5.0)

    tally.stage_started(Stage.UPLOAD, 120, round(45.2 * MiB))
    tally.advanced(Stage.UPLOAD, files=57, nbytes=round(21.3 * MiB))
    tally.file_failed("reports/a.md", ERROR_413)
    assert out_lines(out) == [
        "upload: 120 files, 45.2 MiB to send",
        f"FAILED reports/a.md: {ERROR_413}",
    ]

    clock.now = 1004.9
    reporter.tick()
    assert len(out_lines(out)) == 2, "no progress line before the interval"

    clock.now = 1005.0
    reporter.tick()
    assert out_lines(out)[-1] == "upload: 57/120 files, 21.3/45.2 MiB, 4.3 MiB/s, ETA 6s, 1 failed"

    reporter.tick()
    assert len(out_lines(out)) == 3, "the interval starts again after each line"

    clock.now = 1010.0
    tally.advanced(Stage.UPLOAD, files=62, nbytes=round(23.9 * MiB))
    tally.stage_finished(Stage.UPLOAD)
    assert out_lines(out)[-1] == (
        "upload finished: 119/120 files, 45.2/45.2 MiB in 10s, 4.5 MiB/s, 1 failed"
    )
    clock.now = 1100.0
    reporter.tick()
    assert len(out_lines(out)) == 4, "a finished stage has no more progress lines"


def test_log_reporter_shows_unknown_totals_and_eta_as_dashes() -> None:
    clock, out = FakeClock(), io.StringIO()
    tally = Tally(clock)
    reporter = LogReporter(out, tally, interval=2.0)
    tally.stage_started(Stage.SCAN, 0, 0)
    tally.advanced(Stage.SCAN, files=3)
    clock.now += 2.0
    reporter.tick()
    assert out_lines(out) == ["scan: started", "scan: 3 files, 0 B, 0 B/s, ETA -, 0 failed"]


def test_log_reporter_counts_failures_against_the_stage_that_runs() -> None:
    clock, out = FakeClock(), io.StringIO()
    tally = log_to(out, clock=clock)
    tally.stage_started(Stage.HASH, 1, 10)
    tally.file_failed("a.md", "a.md: changed while it was read, 3 times; stop the writer")
    tally.stage_finished(Stage.HASH)
    tally.stage_started(Stage.UPLOAD, 0, 0)
    tally.stage_finished(Stage.UPLOAD)
    lines = out_lines(out)
    assert "FAILED a.md: changed while it was read, 3 times; stop the writer" in lines
    assert lines[2].startswith("hash finished:") and lines[2].endswith(", 1 failed")
    assert lines[-1].startswith("upload finished:") and lines[-1].endswith(", 0 failed")


def test_log_reporter_counts_a_failure_against_the_stage_started_last_when_they_overlap() -> None:
    clock, out = FakeClock(), io.StringIO()
    tally = log_to(out, clock=clock)
    tally.stage_started(Stage.HASH, 2, 20)
    tally.stage_started(Stage.UPLOAD, 2, 20)
    tally.file_failed("b.md", "upload failed: 500 from keruta-api")
    tally.stage_finished(Stage.HASH)
    tally.stage_finished(Stage.UPLOAD)
    lines = out_lines(out)
    assert lines[-2].startswith("hash finished:") and lines[-2].endswith(", 0 failed")
    assert lines[-1].startswith("upload finished:") and lines[-1].endswith(", 1 failed")


def test_log_reporter_writes_notices_at_or_above_its_level() -> None:
    out = io.StringIO()
    tally = log_to(out, level=Level.INFO)
    tally.notice(Level.DEBUG, "connection pool of 8")
    tally.notice(Level.INFO, "root /.keruta/doc: 3 files")
    tally.notice(Level.WARNING, "PVC keruta/doc-1: kept; another pod uses it")
    assert out_lines(out) == [
        "info: root /.keruta/doc: 3 files",
        "warning: PVC keruta/doc-1: kept; another pod uses it",
    ]


def test_log_reporter_never_writes_escape_codes_and_keeps_one_line_per_failure() -> None:
    out = io.StringIO()
    tally = log_to(out)
    tally.stage_started(Stage.UPLOAD, 1, 1)
    tally.file_failed("evil\x1b[2J.md", "upload failed: 500 from keruta-api:\n<h1>\x1b[31mboom")
    tally.notice(Level.ERROR, "bell\x07 and\r\nreturn")
    tally.stage_finished(Stage.UPLOAD)
    text = out.getvalue()
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text
    assert r"FAILED evil\x1b[2J.md: upload failed: 500 from keruta-api: <h1>\x1b[31mboom" in text
    assert len(out_lines(out)) == 4


def test_log_reporter_cuts_long_messages() -> None:
    out = io.StringIO()
    log_to(out).file_failed("a.md", "upload failed: " + "x" * 5000)
    line = out.getvalue().rstrip("\n")
    assert line.endswith("…") and len(line) < 400


def test_log_reporter_survives_an_ascii_stream_and_a_closed_one() -> None:
    raw = io.BytesIO()
    ascii_stream = io.TextIOWrapper(raw, encoding="ascii", write_through=True)
    log_to(ascii_stream).file_failed("日本.md", "upload failed: 500")
    assert raw.getvalue() == b"FAILED \\u65e5\\u672c.md: upload failed: 500\n"

    closed = io.StringIO()
    closed.close()
    log_to(closed).file_failed("a.md", "upload failed: 500")


def test_log_reporter_refuses_a_non_positive_interval() -> None:
    with pytest.raises(ValueError, match="interval"):
        LogReporter(io.StringIO(), Tally(), interval=0)


class _SignallingStream(io.StringIO):
    """A stream that sets an event when a progress line arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.progress = threading.Event()

    def write(self, s: str) -> int:
        if " files, " in s and "ETA" in s:
            self.progress.set()
        return super().write(s)


def test_log_reporter_ticker_thread_writes_lines_and_stops_on_exit() -> None:
    out = _SignallingStream()
    tally = Tally()  # the real clock: the ticker must do the work
    reporter = LogReporter(out, tally, interval=0.02)
    with reporter:
        tally.stage_started(Stage.UPLOAD, 2, 2 * KiB)
        tally.advanced(Stage.UPLOAD, files=1, nbytes=KiB)
        assert out.progress.wait(timeout=10), "the ticker wrote no progress line"
        tally.stage_finished(Stage.UPLOAD)
    assert not any(t.name == "harvester-report-ticker" for t in threading.enumerate())
    assert out_lines(out)[-1].startswith("upload finished: 1/2 files, 1.0/2.0 KiB in ")


def test_log_reporter_leaves_a_line_for_a_stage_cut_short() -> None:
    clock, out = FakeClock(), io.StringIO()
    tally = Tally(clock)
    with LogReporter(out, tally, interval=60):
        tally.stage_started(Stage.UPLOAD, 4, 4 * KiB)
        tally.advanced(Stage.UPLOAD, files=1, nbytes=KiB)
        clock.now += 1
    assert out_lines(out) == [
        "upload: 4 files, 4.0 KiB to send",
        "upload: 1/4 files, 1.0/4.0 KiB, 1.0 KiB/s, ETA 3s, 0 failed",
    ]


# --------------------------------------------------------------------------- JsonReporter


def test_json_reporter_writes_one_object_per_line_with_the_documented_fields() -> None:
    clock, out = FakeClock(), io.StringIO()
    tally = Tally(clock)
    reporter = JsonReporter(out, tally, interval=5.0, wall_clock=lambda: 1_700_000_000.0)
    tally.stage_started(Stage.UPLOAD, 120, 45_200_000)
    tally.advanced(Stage.UPLOAD, files=57, nbytes=21_300_000)
    tally.file_failed("ドキュメント/a.md", ERROR_413)
    tally.notice(Level.WARNING, "PVC keruta/doc-1: kept")
    reporter.tick()
    clock.now = 1005.0
    reporter.tick()
    tally.stage_finished(Stage.UPLOAD)

    lines = out_lines(out)
    assert all(line.isascii() and "\x1b" not in line for line in lines)
    events = [json.loads(line) for line in lines]
    assert {e.pop("ts") for e in events} == {"2023-11-14T22:13:20.000Z"}
    progress = {
        "stage": "upload",
        "files_done": 57,
        "files_total": 120,
        "bytes_done": 21_300_000,
        "bytes_total": 45_200_000,
        "elapsed_s": 5.0,
        "rate_bps": 4_260_000.0,
        "eta_s": 5.6,
        "failed": 1,
    }
    assert events == [
        {
            "event": "stage_started",
            "stage": "upload",
            "files_total": 120,
            "bytes_total": 45_200_000,
        },
        {"event": "file_failed", "path": "ドキュメント/a.md", "message": ERROR_413},
        {"event": "notice", "level": "warning", "message": "PVC keruta/doc-1: kept"},
        {"event": "progress", **progress},
        {"event": "stage_finished", **progress, "eta_s": 0.0},
    ]


def test_json_reporter_unknown_rate_and_eta_are_null() -> None:
    out = io.StringIO()
    tally = Tally(FakeClock())
    reporter = JsonReporter(out, tally, interval=1.0)
    tally.stage_started(Stage.SCAN, 0, 0)
    reporter.tick(force=True)
    event = json.loads(out_lines(out)[-1])
    assert event["event"] == "progress"
    assert event["rate_bps"] is None and event["eta_s"] is None


# --------------------------------------------------------------------------- threads


@pytest.mark.parametrize("kind", ["log", "json"])
def test_line_reporters_count_every_event_from_many_threads(kind: str) -> None:
    clock, out = FakeClock(), io.StringIO()
    tally = Tally(clock)
    reporter: LogReporter | JsonReporter = (
        LogReporter(out, tally, interval=1.0)
        if kind == "log"
        else JsonReporter(out, tally, interval=1.0)
    )
    tally.stage_started(Stage.UPLOAD, 4000, 400_000)
    workers, per_worker = 8, 500

    def work(i: int) -> None:
        if i == workers:  # one more thread plays the ticker while the others upload
            for _ in range(200):
                clock.now += 1.0
                reporter.tick()
            return
        for n in range(per_worker):
            tally.advanced(Stage.UPLOAD, files=1, nbytes=100)
            if n % 100 == 0:
                tally.file_failed(f"w{i}/f{n}.md", "upload failed: 500 from keruta-api")

    assert run_threads(workers + 1, work) == []
    tally.stage_finished(Stage.UPLOAD)
    lines = out_lines(out)
    if kind == "log":
        pattern = re.compile(
            r"upload: (\d+ files, [\d.]+ (?:[KMG]i)?B to send"
            r"|\d+/4000 files, [\d.]+(?: (?:Ki)?B)?/391 KiB, "
            r"[\d.]+ (?:[KM]i)?B/s, ETA \S+, \d+ failed)"
            r"|FAILED w\d/f\d+\.md: upload failed: 500 from keruta-api"
            r"|upload finished: .*"
        )
        assert [line for line in lines if not pattern.fullmatch(line)] == []
        assert sum(line.startswith("FAILED ") for line in lines) == workers * 5
        assert lines[-1].startswith("upload finished: 4000/4000 files, 391/391 KiB in ")
        assert lines[-1].endswith(", 40 failed")
    else:
        events = [json.loads(line) for line in lines]
        assert sum(e["event"] == "file_failed" for e in events) == workers * 5
        assert sum(e["event"] == "progress" for e in events) >= 1
        final = events[-1]
        assert final["event"] == "stage_finished"
        assert (final["files_done"], final["bytes_done"], final["failed"]) == (4000, 400_000, 40)


def test_terminal_reporter_draws_stages_and_failures_from_threads() -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=100)
    clock = FakeClock()
    tally = Tally(clock)
    reporter = TerminalReporter(console, tally)
    stages_talk_to: Listener = tally
    watchers: list[Watcher] = [
        reporter,
        LogReporter(io.StringIO(), Tally()),
        JsonReporter(io.StringIO(), Tally()),
    ]
    assert stages_talk_to and len(watchers) == 3  # the protocols are met (checked by mypy)

    with reporter:
        tally.stage_started(Stage.HASH, 8, 8 * KiB)

        def hash_work(i: int) -> None:
            for _ in range(128):
                tally.advanced(Stage.HASH, nbytes=8)
            tally.advanced(Stage.HASH, files=1)

        assert run_threads(8, hash_work) == []
        clock.now += 2
        tally.stage_finished(Stage.HASH)
        tally.stage_started(Stage.UPLOAD, 10, 10_000)

        def upload_work(i: int) -> None:
            tally.advanced(Stage.UPLOAD, files=1, nbytes=1000)
            if i == 0:
                tally.file_failed("[red]x[/red].md", "upload failed: 500 from keruta-api")
            if i == 1:
                tally.notice(Level.WARNING, "keruta-api is slow")
            if i == 2:
                tally.notice(Level.DEBUG, "pool size 8")

        assert run_threads(3, upload_work) == []
        clock.now += 1

    text = buf.getvalue()
    assert "hash" in text and "upload" in text
    assert "8/8 files" in text and "8.0/8.0 KiB" in text
    assert "3/10 files" in text and "1 failed" in text
    assert "FAILED [red]x[/red].md: upload failed: 500 from keruta-api" in text  # not markup
    assert "warning: keruta-api is slow" in text
    assert "pool size 8" not in text


# --------------------------------------------------------------------------- the plan


def sample_plan() -> UploadPlan:
    return UploadPlan(
        (
            PlanItem("[bold]notes[/bold].md", Action.UPLOAD, 4000, SHA_A),
            PlanItem(
                "a/copy.md", Action.DUPLICATE, 4000, SHA_A, duplicate_of="[bold]notes[/bold].md"
            ),
            PlanItem("b.md", Action.ALREADY_UPLOADED, 10, SHA_B),
            PlanItem(".env", Action.SKIP, 12, reason="hidden (use --include-hidden to harvest it)"),
            PlanItem("c.md", Action.FAIL, reason="c.md: changed while it was read"),
            PlanItem("d.md", Action.UPLOAD, 1000, SHA_B),
        )
    )


def test_render_plan_shows_each_action_and_the_totals() -> None:
    text = plain(render_plan(sample_plan()), width=140)
    rows = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    assert "upload" in rows["[bold]notes[/bold].md"] and "3.9 KiB" in rows["[bold]notes[/bold].md"]
    assert "duplicate of [bold]notes[/bold].md" in rows["a/copy.md"]
    assert "already uploaded" in rows["b.md"]
    assert "skipped: hidden (use --include-hidden to harvest it)" in rows[".env"]
    assert "failed: c.md: changed while it was read" in rows["c.md"]
    assert "0123456789ab " in text and "0123456789abc" not in text
    assert (
        "2 documents to upload, 1 already uploaded, 1 duplicate, 1 skipped, 1 failed; "
        "4.9 KiB to send"
    ) in text


def test_render_plan_respects_the_width_it_is_given() -> None:
    text = plain(render_plan(sample_plan(), width=60), width=120)
    assert max(cell_len(line) for line in text.splitlines()) <= 60


def test_plan_to_json_lists_every_item() -> None:
    data = plan_to_json(sample_plan(), "task-1", "/.keruta/doc")
    assert json.loads(json.dumps(data)) == data
    assert (data["task_id"], data["root"], data["dry_run"]) == ("task-1", "/.keruta/doc", True)
    assert data["counts"] == {
        "upload": 2,
        "duplicate": 1,
        "already-uploaded": 1,
        "skip": 1,
        "fail": 1,
    }
    assert data["upload_bytes"] == 5000
    assert [item["path"] for item in data["items"]] == [i.rel_path for i in sample_plan().items]
    assert data["items"][1] == {
        "path": "a/copy.md",
        "size": 4000,
        "sha256": SHA_A,
        "action": "duplicate",
        "duplicate_of": "[bold]notes[/bold].md",
        "reason": None,
    }


# --------------------------------------------------------------------------- the summary


def make_report(**changes: object) -> HarvestReport:
    files = (
        file_report("a.md", Action.UPLOAD, Outcome.UPLOADED, 4_000_000, SHA_A, document_id="d1"),
        file_report("ドキュメント/b.md", Action.UPLOAD, Outcome.UPLOADED, 100_000, SHA_B),
        file_report(
            "copy.md", Action.DUPLICATE, Outcome.DUPLICATE, 4_000_000, SHA_A, duplicate_of="a.md"
        ),
        file_report("old.md", Action.ALREADY_UPLOADED, Outcome.ALREADY_UPLOADED, 5, SHA_B),
        file_report(".env", Action.SKIP, Outcome.SKIPPED, 9, reason="hidden"),
    )
    report = HarvestReport(
        task_id="task-42",
        root="/.keruta/doc",
        dry_run=False,
        files=files,
        elapsed_seconds=65.0,
        bytes_uploaded=4_100_000,
        status=StepResult(StepState.DONE, "task task-42 set to COMPLETED"),
        pvc=StepResult(StepState.DONE, "PersistentVolumeClaim keruta/task-42-doc deleted"),
    )
    return dataclasses.replace(report, **changes)  # type: ignore[arg-type]


def failing_files(count: int) -> tuple[FileReport, ...]:
    out = []
    for i in range(count):
        path = f"深い/フォルダ/{i:03d}/" + "very-long-directory-name-without-spaces-" * 4 + "f.md"
        error = (
            f"{path}: upload failed: 503 Service Unavailable from keruta-api after 5 attempts;"
            "\nserver said:\n<html>\x1b[31m" + "ü" * 600
        )
        out.append(file_report(path, Action.UPLOAD, Outcome.FAILED, 10, SHA_A, error=error))
    out.append(file_report("later.md", Action.UPLOAD, Outcome.NOT_ATTEMPTED, 10, SHA_B))
    return tuple(out)


def test_render_summary_fits_80_columns_without_escape_codes() -> None:
    report = make_report(
        files=make_report().files + failing_files(30),
        status=StepResult(StepState.FAILED, "task task-42: status update failed: " + "x" * 900),
        pvc=StepResult(StepState.REFUSED, "PersistentVolumeClaim keruta/" + "p" * 200),
        notes=("n" * 500, "two files changed while read and were read again"),
    )
    text = plain(render_summary(report))
    lines = text.splitlines()
    assert "\x1b" not in text
    assert max(cell_len(line) for line in lines) <= 80
    assert max(len(line) for line in lines) <= 80
    assert "Failed files (31)" in text
    assert "... and 11 more; all are in --summary-json" in text


def test_render_summary_gives_counts_steps_and_failures() -> None:
    failed = file_report(
        "z.md", Action.UPLOAD, Outcome.FAILED, 10, SHA_A, error=f"z.md: {ERROR_413}"
    )
    report = make_report(
        files=(*make_report().files, failed),
        pvc=StepResult(StepState.SKIPPED, "PersistentVolumeClaim keruta/task-42-doc kept"),
    )
    lines = [line.rstrip() for line in plain(render_summary(report)).splitlines()]
    assert lines[0].startswith("task task-42: harvest incomplete: 1 file not harvested")
    for row in [
        "uploaded          2 (3.9 MiB)",
        "duplicates        1",
        "already uploaded  1",
        "skipped           1",
        "failed            1",
        "not attempted     0",
        "elapsed           1m05s",
        "average rate      61.6 KiB/s",
        "status update     done: task task-42 set to COMPLETED",
        "PVC               skipped: PersistentVolumeClaim keruta/task-42-doc kept",
    ]:
        assert row in lines
    failure_rows = [line for line in lines if line.lstrip().startswith("z.md")]
    assert len(failure_rows) == 1
    assert "upload failed: 413 Payload Too Large" in failure_rows[0]
    assert "z.md: upload" not in failure_rows[0], "the path is not repeated in its error"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, "task task-42: harvest done"),
        ({"auth_rejected": True}, "rejected the token (401/403); check KERUTA_API_TOKEN"),
        (
            {"interrupted": True, "files": failing_files(0)},
            "harvest interrupted before it finished; run it again to send the rest",
        ),
        ({"files": failing_files(1)}, "harvest incomplete: 2 files not harvested"),
        ({"status": StepResult(StepState.FAILED, "500")}, "the task status update failed"),
        ({"pvc": StepResult(StepState.REFUSED, "in use")}, "but the PVC was not deleted"),
        (
            {
                "dry_run": True,
                "files": (file_report("a.md", Action.UPLOAD, Outcome.PLANNED, 10, SHA_A),),
            },
            "dry run, nothing was sent; 1 file would be uploaded",
        ),
    ],
)
def test_summary_and_termination_message_open_with_the_outcome(
    changes: dict[str, object], expected: str
) -> None:
    report = make_report(**changes)
    assert expected in plain(render_summary(report), width=200).splitlines()[0]
    assert expected in termination_message(report).splitlines()[0]


# --------------------------------------------------------------------------- summary JSON


def test_report_to_json_has_every_field() -> None:
    report = make_report(files=make_report().files + failing_files(1), notes=("a note",))
    data = report_to_json(report)
    assert data["task_id"] == "task-42" and data["root"] == "/.keruta/doc"
    assert data["dry_run"] is False and data["auth_rejected"] is False
    assert data["interrupted"] is False
    assert data["elapsed_seconds"] == 65.0 and data["bytes_uploaded"] == 4_100_000
    assert data["counts"] == {
        "uploaded": 2,
        "duplicate": 1,
        "already-uploaded": 1,
        "skipped": 1,
        "failed": 1,
        "not-attempted": 1,
        "planned": 0,
    }
    assert data["status"] == {"state": "done", "message": "task task-42 set to COMPLETED"}
    assert data["pvc"]["state"] == "done"
    assert data["notes"] == ["a note"]
    assert len(data["files"]) == len(report.files)
    assert data["files"][2] == {
        "path": "copy.md",
        "size": 4_000_000,
        "sha256": SHA_A,
        "action": "duplicate",
        "outcome": "duplicate",
        "duplicate_of": "a.md",
        "reason": None,
        "document_id": None,
        "error": None,
        "attempts": 0,
    }


def file_from_json(d: dict[str, object]) -> FileReport:
    return file_report(
        path=str(d["path"]),
        action=Action(str(d["action"])),
        outcome=Outcome(str(d["outcome"])),
        size=d["size"],  # type: ignore[arg-type]
        sha256=d["sha256"],  # type: ignore[arg-type]
        duplicate_of=d["duplicate_of"],  # type: ignore[arg-type]
        reason=d["reason"],  # type: ignore[arg-type]
        document_id=d["document_id"],  # type: ignore[arg-type]
        error=d["error"],  # type: ignore[arg-type]
        attempts=d["attempts"],  # type: ignore[arg-type]
    )


def test_summary_json_round_trips_through_the_file_with_non_ascii_paths(tmp_path: Path) -> None:
    report = make_report(files=make_report().files + failing_files(2))
    target = tmp_path / "summary.json"
    target.write_text("old content that is longer than nothing", encoding="utf-8")

    write_summary_json(report, target)

    raw = target.read_bytes()
    assert "ドキュメント/b.md".encode() in raw, "non-ASCII paths are written as UTF-8"
    data = json.loads(raw.decode("utf-8"))
    assert data == report_to_json(report)
    assert tuple(file_from_json(f) for f in data["files"]) == report.files
    assert os.listdir(tmp_path) == ["summary.json"], "no temporary file is left"


def test_summary_json_escapes_names_that_are_not_valid_unicode(tmp_path: Path) -> None:
    odd = file_report("bad\udcff.md", Action.UPLOAD, Outcome.UPLOADED, 1, SHA_A)
    target = tmp_path / "summary.json"
    write_summary_json(make_report(files=(odd,)), target)
    assert json.loads(target.read_text(encoding="utf-8"))["files"][0]["path"] == "bad\udcff.md"


def test_summary_json_failure_raises_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    (tmp_path / "summary.json").mkdir()
    with pytest.raises(OSError):
        write_summary_json(make_report(), tmp_path / "summary.json")
    assert os.listdir(tmp_path) == ["summary.json"]


# --------------------------------------------------------------------------- termination log


def test_termination_message_gives_outcome_counts_steps_and_first_failures() -> None:
    report = make_report(files=make_report().files + failing_files(7))
    lines = termination_message(report).splitlines()
    assert lines[1] == (
        "2 documents uploaded, 1 already uploaded, 1 duplicate, 1 skipped, 7 failed, "
        "1 not attempted; 3.9 MiB sent in 1m05s"
    )
    assert lines[2] == "status update: done: task task-42 set to COMPLETED"
    assert lines[3] == "PVC: done: PersistentVolumeClaim keruta/task-42-doc deleted"
    failures = [line for line in lines if line.startswith("FAILED ")]
    assert len(failures) == 5
    assert all("\x1b" not in line and len(line) < 700 for line in failures)
    assert lines[-1] == "... and 3 more failed"


def test_termination_message_is_cut_at_the_byte_limit_between_characters() -> None:
    report = make_report(files=failing_files(5), task_id="タスク-" * 40)
    full = termination_message(report, limit=10**6)
    assert len(full.encode()) > 1000
    for limit in range(1, 1000):
        data = termination_message(report, limit).encode("utf-8")
        assert len(data) <= limit
        text = data.decode("utf-8")  # strict: no character was split
        assert full.startswith(text.removesuffix("…"))
        if limit >= 100:
            assert text.endswith("…")


def test_termination_message_of_a_huge_report_fits_4096_bytes() -> None:
    report = make_report(files=failing_files(500))
    assert len(termination_message(report).encode()) <= 4096


def test_write_termination_log_writes_only_an_existing_file_and_never_raises(
    tmp_path: Path,
) -> None:
    report = make_report()
    missing = tmp_path / "termination-log"
    write_termination_log(report, missing)
    assert not missing.exists(), "outside a pod the file is not created"

    missing.write_text("x" * 10_000)
    write_termination_log(report, missing)
    assert missing.read_text(encoding="utf-8") == termination_message(report)

    write_termination_log(report, tmp_path)  # a folder: the OSError is swallowed


# --------------------------------------------------------------------------- hostile names


@pytest.mark.parametrize(
    "name",
    ["two  spaces Qz.md", " leading Qz.md", "trailing Qz.md ", "tab\tQz.md", "line\nQz.md"],
)
def test_a_failure_line_names_a_file_with_whitespace_exactly_once(name: str) -> None:
    message = f"{name}: {ERROR_413}"
    out = io.StringIO()
    log_to(out).file_failed(name, message)
    failed = file_report(name, Action.UPLOAD, Outcome.FAILED, 10, SHA_A, error=message)
    report = make_report(files=(failed,))
    shown = {
        "live log": out.getvalue(),
        "summary": plain(render_summary(report), width=200),
        "termination log": termination_message(report),
    }
    for where, text in shown.items():
        assert text.count("Qz") == 1, f"{where} names the file once: {text!r}"
        assert "upload failed: 413 Payload Too Large" in text, where


# Characters that change how the text around them is shown: C0 and C1 controls, DEL, the bidi
# overrides, embeddings, isolates and marks, line and paragraph separators, and other invisible
# format characters (byte order mark, zero-width space, Arabic letter mark, a tag character).
HIDDEN = (
    "\x1b\x00\x7f\x85\x9b"
    "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
    "\u2028\u2029\ufeff\u200b\U000e0041"
)


def test_control_and_bidi_characters_are_escaped_wherever_a_person_reads_them(
    tmp_path: Path,
) -> None:
    name = "invoice-\u202egpj.exe\u2066x\u2069" + HIDDEN + ".md"
    server = "upload failed: 400 from keruta-api: \u202eforged\u2029line" + HIDDEN
    failed = file_report(name, Action.UPLOAD, Outcome.FAILED, 10, SHA_A, error=f"{name}: {server}")
    report = make_report(
        files=(failed,),
        status=StepResult(StepState.FAILED, "FAILED not recorded: " + server),
        pvc=StepResult(StepState.REFUSED, "pod \u202eevil" + HIDDEN + " uses the claim"),
        notes=("note " + HIDDEN,),
    )
    plan = UploadPlan(
        (
            PlanItem(name, Action.UPLOAD, 10, SHA_A),
            PlanItem("copy" + HIDDEN, Action.DUPLICATE, 10, SHA_A, duplicate_of=name),
            PlanItem("odd" + HIDDEN, Action.FAIL, reason=name + ": " + server),
        )
    )
    log, terminal = io.StringIO(), io.StringIO()
    live, term = log_to(log), Tally(FakeClock())
    with TerminalReporter(Console(file=terminal, width=200, force_terminal=False), term):
        for listener in (live, term):
            listener.stage_started(Stage.UPLOAD, 1, 10)
            listener.file_failed(name, f"{name}: {server}")
            listener.notice(Level.WARNING, f"{name}: {server}; retrying in 1.0s")
            listener.stage_finished(Stage.UPLOAD)
    shown = {
        "live log": log.getvalue(),
        "terminal": terminal.getvalue(),
        "summary": plain(render_summary(report), width=200),
        "plan": plain(render_plan(plan), width=400),
        "termination log": termination_message(report),
    }
    for where, text in shown.items():
        left = sorted({f"U+{ord(ch):04X}" for ch in text if ch in HIDDEN or ch == "\u202e"})
        assert not left, f"{where} prints {left} as they are"
        assert r"\u202e" in text and r"\x1b" in text and r"\U000e0041" in text, where

    # JSON stays exact (a program reads back the very name), but shows nothing hidden either.
    target = tmp_path / "summary.json"
    write_summary_json(report, target)
    raw = target.read_text(encoding="utf-8")
    assert not any(ch in raw for ch in HIDDEN + "\u202e")
    assert json.loads(raw)["files"][0]["path"] == name
    tally = Tally(FakeClock())
    JsonReporter(json_out := io.StringIO(), tally)
    tally.file_failed(name, server)
    assert json_out.getvalue().isascii()
    assert json.loads(json_out.getvalue())["path"] == name


# --------------------------------------------------------------------------- what to do next

_REJECTED = file_report(
    "z.md", Action.UPLOAD, Outcome.FAILED, 10, SHA_A, error=ERROR_413, attempts=1
)
_UNSENT = file_report("later.md", Action.UPLOAD, Outcome.NOT_ATTEMPTED, 10, SHA_B)
_FLAKY = file_report(
    "z.md",
    Action.UPLOAD,
    Outcome.FAILED,
    10,
    SHA_A,
    error="upload failed: 503 from keruta-api",
    attempts=3,
)
_UNSET = StepResult(StepState.SKIPPED, "the harvest was interrupted; a new run will finish it")
_KEPT = StepResult(StepState.SKIPPED, "the harvest is not complete, so the documents stay")


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"interrupted": True, "status": _UNSET, "pvc": _KEPT},
            "interrupted after every upload finished; run it again to set the task status",
        ),
        (
            {"interrupted": True, "files": (_REJECTED,), "status": _UNSET, "pvc": _KEPT},
            "1 file not harvested; fix the causes below and run it again",
        ),
        ({"files": (_REJECTED,), "pvc": _KEPT}, "fix the causes below and run it again"),
        (
            {"status": StepResult(StepState.FAILED, "FAILED not recorded: 500"), "pvc": _KEPT},
            "documents harvested, but the task status update failed",
        ),
        (
            {"interrupted": True, "files": (_UNSENT,), "status": _UNSET, "pvc": _KEPT},
            "interrupted before it finished; run it again to send the rest",
        ),
        ({"files": (_FLAKY,), "pvc": _KEPT}, "run it again to send the rest"),
    ],
)
def test_run_it_again_to_send_the_rest_only_when_another_run_would_send_more(
    changes: dict[str, object], expected: str
) -> None:
    report = make_report(**changes)
    sends_more = any(f.outcome is Outcome.NOT_ATTEMPTED or f.attempts > 1 for f in report.failures)
    for headline in (
        plain(render_summary(report), width=300).splitlines()[0],
        termination_message(report).splitlines()[0],
    ):
        assert expected in headline
        assert ("send the rest" in headline) is sends_more


# --------------------------------------------------------------------------- a whole harvest


def test_the_byte_counter_ends_full_after_a_rejected_upload(
    tmp_path: Path, httpserver: HTTPServer
) -> None:
    root = tmp_path / "doc"
    root.mkdir()
    (root / "a.md").write_bytes(b"hello\n")
    (root / "big.bin").write_bytes(b"x" * 300 * KiB)  # streamed: above upload.SMALL_FILE

    def handler(request: Request) -> Response:
        body = request.get_data()
        if b'filename="big.bin"' in body:
            return Response("too big", status=413)
        return Response('{"id":"doc"}', status=201, content_type="application/json")

    httpserver.expect_request("/api/tasks/t/documents", method="POST").respond_with_handler(handler)
    httpserver.expect_request("/api/v1/tasks/t/status", method="PUT").respond_with_json({})
    out = io.StringIO()
    settings = Settings(task_id="t", api_url=httpserver.url_for("/"), root=str(root))
    report = run_harvest(settings, log_to(out, interval=3600)).report
    assert report.count(Outcome.FAILED) == 1 and report.count(Outcome.UPLOADED) == 1
    (finished,) = [line for line in out_lines(out) if line.startswith("upload finished:")]
    assert finished.startswith("upload finished: 2/2 files, 300/300 KiB in ")
