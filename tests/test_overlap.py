"""Uploads overlap the hashing, and the listing the scan: shown by order of events, never by
time.

A listener holds one file's hashing (on the thread that reads it) until another file's upload is
acknowledged by a real loopback server: the harvest can only finish if that upload did not wait
for the last hash. A guard timeout keeps a regression from hanging the suite; it then fails.
Also: a signal while files are hashed and an upload is in flight, and the dry run and the real
run planning alike through the real CLI.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from pathlib import Path

import pytest

from harvester.devapi.server import DevApiServer
from harvester.exitcodes import ExitCode, exit_code_for
from harvester.harvest import run_harvest
from harvester.model import Outcome, StepState
from harvester.pipeline.rootfs import THREADED_HASH_MIN_SIZE
from harvester.report.live import LogReporter
from harvester.stats import NullListener, Stage, Tally
from tests.fstree import make_fifo, write_bytes_name, write_tree
from tests.servers import Answer, ScriptedServer, Seen, json_answer, routes
from tests.test_cli import run
from tests.test_harvest import Sleeps, settings_for
from tests.test_report import FakeClock, out_lines

# Only a regression waits this long: the guarded event is then never set, and the test fails.
GUARD_SECONDS = 30
BIG = THREADED_HASH_MIN_SIZE + 1000  # hashed on a worker thread, one read
SMALL = b"small document\n"


class HoldHashing(NullListener):
    """Holds the hashing of the file of `size` bytes (at its first read, on the thread reading
    it) until an upload is acknowledged, then lets it go on; `waited` says whether one was."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.acknowledged = threading.Event()
        self.held = False
        self.waited: bool | None = None

    def advanced(self, stage: Stage, files: int = 0, nbytes: int = 0) -> None:
        if stage is Stage.UPLOAD and files:
            self.acknowledged.set()
        elif stage is Stage.HASH and nbytes == self.size and not self.held:
            self.held = True
            self.waited = self.acknowledged.wait(GUARD_SECONDS)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("held", ["the-big-file", "a-small-file"])
def test_an_upload_is_acknowledged_before_the_last_file_is_hashed(
    tmp_path: Path, dev_api: DevApiServer, held: str
) -> None:
    big = bytes(range(256)) * (BIG // 256) + b"x" * (BIG % 256)
    files: dict[str, bytes | str] = {"a/big.bin": big, "b/small.md": SMALL}
    root = write_tree(tmp_path / "doc", files)
    listener = HoldHashing(BIG if held == "the-big-file" else len(SMALL))

    report = run_harvest(settings_for(root, dev_api.url), listener, sleep=Sleeps()).report

    assert listener.held, "the held file was hashed"
    assert listener.waited is True, "no upload was acknowledged while a file was still hashed"
    assert exit_code_for(report) is ExitCode.OK
    stored = {doc.path: doc.sha256 for doc in dev_api.store.documents("task-42")}
    assert stored == {path: hashlib.sha256(_bytes(c)).hexdigest() for path, c in files.items()}


def _bytes(content: bytes | str) -> bytes:
    return content if isinstance(content, bytes) else content.encode()


class HoldScan(NullListener):
    """Holds the end of the scan until keruta-api has been asked for its listing, which it
    answers only once the scan is over; `asked` says whether it was asked in time."""

    def __init__(self) -> None:
        self.listing_asked = threading.Event()
        self.scan_over = threading.Event()
        self.asked: bool | None = None

    def stage_finished(self, stage: Stage) -> None:
        if stage is Stage.SCAN:
            self.asked = self.listing_asked.wait(GUARD_SECONDS)
            self.scan_over.set()

    def listing(self, seen: Seen) -> Answer:
        self.listing_asked.set()
        self.scan_over.wait(GUARD_SECONDS)
        return json_answer(200, [])


@pytest.mark.timeout(90)
def test_the_listing_is_asked_for_while_the_root_is_scanned(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "doc", {"a.md": "a", "b/c.md": "c"})
    listener = HoldScan()
    with ScriptedServer(routes(listing=listener.listing)) as server:
        report = run_harvest(settings_for(root, server.url), listener, sleep=Sleeps()).report
        uploaded = sorted(seen.path for seen in server.requests_to("POST"))

    assert listener.asked is True, "the listing was not asked for before the scan ended"
    assert exit_code_for(report) is ExitCode.OK
    assert len(uploaded) == 2


@pytest.mark.timeout(90)
def test_a_signal_while_files_are_hashed_and_an_upload_is_in_flight(tmp_path: Path) -> None:
    in_flight, answer = threading.Event(), threading.Event()

    def held_upload(_seen: Seen) -> Answer:
        in_flight.set()
        answer.wait(GUARD_SECONDS)
        return json_answer(201, {"id": "doc"})

    stop = threading.Event()

    class SignalWhileHashing(NullListener):
        """At the big file's first read: once an upload is in flight, SIGTERM (the stop event
        the runner's handler sets), then let the server answer."""

        seen_in_flight: bool | None = None

        def advanced(self, stage: Stage, files: int = 0, nbytes: int = 0) -> None:
            if stage is Stage.HASH and nbytes == BIG and self.seen_in_flight is None:
                self.seen_in_flight = in_flight.wait(GUARD_SECONDS)
                stop.set()
                answer.set()

    files: dict[str, bytes | str] = {"a.md": "first\n", "big.bin": b"\1" * BIG}
    files |= {f"z/{i:02}.md": f"later document {i:02}\n" for i in range(20)}
    root = write_tree(tmp_path / "doc", files)
    listener = SignalWhileHashing()
    with ScriptedServer(routes(upload=held_upload)) as server:
        settings = settings_for(root, server.url, concurrency=1)
        report = run_harvest(settings, listener, stop=stop, sleep=Sleeps()).report
        posted = len(server.requests_to("POST"))
        status_updates = server.requests_to("PUT")

    assert listener.seen_in_flight is True
    assert report.interrupted
    assert exit_code_for(report) is ExitCode.UPLOADS_FAILED
    assert status_updates == []  # no status: a new run will finish the job
    assert report.status.state is StepState.SKIPPED
    assert report.pvc.state is StepState.SKIPPED
    assert report.count(Outcome.UPLOADED) <= posted <= 1  # nothing started after the signal
    outcomes = {f.path: f.outcome for f in report.files}
    assert outcomes["big.bin"] is Outcome.NOT_ATTEMPTED  # hashed in full, never sent
    # The one upload in flight may have finished; every other file is not attempted, or
    # failed "not hashed" when the signal found it unread.
    assert set(outcomes.values()) <= {Outcome.UPLOADED, Outcome.NOT_ATTEMPTED, Outcome.FAILED}


def mixed_tree(root: Path) -> Path:
    """Duplicates (small and large), a same-size other content, skips and a failure."""
    write_tree(
        root,
        {
            "a/orig.md": "same\n",
            "b/copy.md": "same\n",
            "c/also.md": "same\n",
            "d/other.md": "diff\n",  # the same size, other content
            "e/big.bin": b"\2" * BIG,
            "f/big-copy.bin": b"\2" * BIG,
            "g/too-large.bin": b"\3" * (3 * 1024 * 1024),
            ".hidden": "skip me\n",
        },
    )
    make_fifo(root / "pipe")
    # Two names that would reach keruta-api as one: the scan fails one of them.
    write_bytes_name(root, b"clash%FF.md", b"one\n")
    write_bytes_name(root, b"clash\xff.md", b"two\n")
    return root


# `harvester cleanup --dry-run --max-file-size 2` of `mixed_tree` as the code before uploads
# overlapped the hashing printed it (commit 85f14b0): the plan must not move.
DRY_RUN_BEFORE = """\
 path                 size   sha256         action
────────────────────────────────────────────────────────────────────────────────
 .hidden                 -   -              skipped: hidden (use
                                            --include-hidden to harvest it)
 a/orig.md             5 B   a6328afc76e9   upload
 b/copy.md             5 B   a6328afc76e9   duplicate of a/orig.md
 c/also.md             5 B   a6328afc76e9   duplicate of a/orig.md
 clash%FF.md           4 B   2c8b08da5ce6   upload
 clash%FF.md           4 B   -              failed: clash%FF.md: its name is
                                            not valid UTF-8 (its bytes:
                                            clash\\xff.md) and, once its odd
                                            bytes are escaped, reads the same
                                            as another file's; rename one of
                                            them
 d/other.md            5 B   7c4604d03f39   upload
 e/big.bin         257 KiB   fe4915abf1d4   upload
 f/big-copy.bin    257 KiB   fe4915abf1d4   duplicate of e/big.bin
 g/too-large.bin   3.0 MiB   -              skipped: larger than
                                            --max-file-size
 pipe                    -   -              skipped: named pipe (never opened)
4 documents to upload, 3 duplicates, 3 skipped, 1 failed; 257 KiB to send
"""


@pytest.mark.timeout(60)
def test_the_dry_run_prints_the_plan_it_printed_before(tmp_path: Path) -> None:
    root = mixed_tree(tmp_path / "doc")
    dry = run("cleanup", "--task-id=t", f"--root={root}", "--dry-run", "--max-file-size=2")
    assert dry.returncode == 0, dry.stderr
    # Byte for byte but the padding rich puts at the end of a table's lines.
    assert [line.rstrip() for line in dry.stdout.splitlines()] == DRY_RUN_BEFORE.splitlines()


@pytest.mark.timeout(60)
def test_the_dry_run_plans_what_the_real_run_does(tmp_path: Path) -> None:
    root = mixed_tree(tmp_path / "doc")
    summary = tmp_path / "summary.json"

    dry = run("cleanup", "--task-id=t", f"--root={root}", "--dry-run", "--log-format=json")
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout.splitlines()[-1])["items"]

    server = DevApiServer(tmp_path / "api").start()
    try:
        real = run(
            "cleanup",
            "--task-id=t",
            f"--api-url={server.url}",
            f"--root={root}",
            f"--summary-json={summary}",
        )
    finally:
        server.stop()
    assert real.returncode == ExitCode.UPLOADS_FAILED, real.stderr  # the clash fails a file
    done = json.loads(summary.read_text())["files"]

    def plan_of(items: list[dict[str, object]]) -> list[tuple[object, ...]]:
        return [(i["path"], i["action"], i.get("duplicate_of"), i.get("reason")) for i in items]

    assert plan_of(planned) == plan_of(done)
    actions = {item["path"]: item["action"] for item in planned}
    assert actions["b/copy.md"] == "duplicate" and actions["f/big-copy.bin"] == "duplicate"
    assert actions["d/other.md"] == "upload" and actions[".hidden"] == "skip"
    assert "fail" in actions.values()


# -- progress while the stages overlap -----------------------------------------------------------


def test_the_upload_total_grows_as_decisions_come_in_and_failures_count_where_they_happen() -> None:
    clock, out = FakeClock(), io.StringIO()
    tally = Tally(clock)
    reporter = LogReporter(out, tally, interval=1.0)
    tally.stage_started(Stage.HASH, 3, 3072)
    tally.stage_started(Stage.UPLOAD, 0, 0)
    tally.stage_grew(Stage.UPLOAD, 1, 1024)
    tally.advanced(Stage.UPLOAD, files=1, nbytes=1024)
    tally.file_failed("b.md", "b.md: kept changing while it was read", Stage.HASH)
    clock.now += 5
    reporter.tick()
    tally.stage_grew(Stage.UPLOAD, 1, 1024)
    clock.now += 5
    tally.stage_finished(Stage.HASH)
    tally.advanced(Stage.UPLOAD, files=1, nbytes=1024)
    tally.stage_finished(Stage.UPLOAD)

    lines = out_lines(out)
    assert lines[:3] == [
        "hash: 3 files, 3.0 KiB to read",
        "upload: started",
        "FAILED b.md: kept changing while it was read",
    ]
    assert lines[4].startswith("upload: 1/1 files, 1.0/1.0 KiB, ")
    assert lines[5].startswith("hash finished:")
    assert lines[5].endswith(", 1 failed")  # not the upload's, though it started later
    assert lines[6].startswith("upload finished: 2/2 files, 2.0/2.0 KiB in 10s")
    assert lines[6].endswith(", 0 failed")
