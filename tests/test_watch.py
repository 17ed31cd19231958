"""`harvester watch`, the live sidecar: the real CLI as a subprocess against the in-process
dev-api, on real files (the fallback to polling and the ledger run `run_watch` in-process, since
their seams are arguments). Every wait polls for a state (`wait_until`); the only sleeps are a
slow writer's pauses, which are the scenario itself."""

from __future__ import annotations

import io
import json
import os
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import pytest
import watchfiles

from harvester.devapi.server import DevApiServer
from harvester.exitcodes import ExitCode
from harvester.run import Output
from harvester.settings import Reporting, Settings, WatchSettings
from harvester.stats import Level
from harvester.watching import run_watch
from tests.devapi_fixture import DevApiFactory
from tests.fstree import write_bytes_name
from tests.kube_backends import wait_until
from tests.process import BIN, isolated_env
from tests.test_ledger_commit import MemoryStore

TASK = "t"


class Watch:
    """`harvester watch` as a child process; its log and summary are files."""

    count = 0
    running: ClassVar[list[Watch]] = []

    def __init__(
        self,
        tmp_path: Path,
        server: DevApiServer,
        root: Path,
        *args: str,
        env: dict[str, str] | None = None,
    ) -> None:
        """`env`: more environment (a KUBECONFIG, for the ledger)."""
        Watch.count += 1
        self.err = tmp_path / f"watch-{Watch.count}.log"
        self.summary = tmp_path / f"watch-{Watch.count}.json"
        self._err = self.err.open("w")
        self.process = subprocess.Popen(
            [
                str(BIN / "harvester"),
                "watch",
                f"--task-id={TASK}",
                f"--api-url={server.url}",
                f"--root={root}",
                "--log-level=debug",
                f"--summary-json={self.summary}",
                *args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=self._err,
            stdin=subprocess.DEVNULL,
            env=isolated_env(env),
        )
        Watch.running.append(self)
        wait_until(lambda: "following changes" in self.log(), "the watch to be in place")

    def log(self) -> str:
        return self.err.read_text()

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        finally:
            self._err.close()

    def result(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.summary.read_text())
        return data


@pytest.fixture(autouse=True)
def _no_watch_left() -> Iterator[None]:
    """A test that failed half-way leaves no watch running."""
    yield
    while Watch.running:
        watch = Watch.running.pop()
        if watch.process.poll() is None:
            watch.process.kill()
            watch.process.wait()
        watch._err.close()


def held(server: DevApiServer) -> dict[str, list[bytes]]:
    """Each path keruta-api holds, with the content of every document stored under it."""
    out: dict[str, list[bytes]] = {}
    for document in server.store.documents(TASK):
        out.setdefault(document.path, []).append(
            server.store.blob_path(document.sha256).read_bytes()
        )
    return out


def test_a_file_written_slowly_in_chunks_is_uploaded_once_complete(
    tmp_path: Path, dev_api: DevApiServer
) -> None:
    root = tmp_path / "doc"
    root.mkdir()
    watch = Watch(tmp_path, dev_api, root, "--settle=2s")
    # Written over twice --settle, a pause between chunks well inside it.
    chunks = [f"chunk {i}\n".encode() * 100 for i in range(10)]
    with (root / "slow.md").open("wb") as writer:
        for chunk in chunks:
            writer.write(chunk)
            writer.flush()
            time.sleep(0.4)
    wait_until(lambda: "slow.md" in held(dev_api), "slow.md to be uploaded")
    assert watch.stop() == ExitCode.OK, watch.log()
    assert held(dev_api) == {"slow.md": [b"".join(chunks)]}
    assert watch.log().count("slow.md: sent") == 1


def test_a_file_renamed_into_place_is_uploaded_at_once(
    tmp_path: Path, dev_api: DevApiServer
) -> None:
    root = tmp_path / "doc"
    root.mkdir()
    watch = Watch(tmp_path, dev_api, root, "--settle=60s")
    (root / "report.md.tmp").write_bytes(b"final words\n")
    # Once the watch has looked at the temp file, its rename is recognised as one.
    wait_until(lambda: "report.md.tmp: not a document" in watch.log(), "the temp file seen")
    (root / "report.md.tmp").rename(root / "report.md")
    renamed_at = time.monotonic()
    wait_until(lambda: "report.md" in held(dev_api), "report.md uploaded", timeout=20)
    assert time.monotonic() - renamed_at < 20  # --settle is 60s
    assert watch.stop() == ExitCode.OK, watch.log()
    assert held(dev_api) == {"report.md": [b"final words\n"]}


def test_a_temp_file_deleted_before_it_settled_is_never_uploaded(
    tmp_path: Path, dev_api: DevApiServer
) -> None:
    root = tmp_path / "doc"
    root.mkdir()
    watch = Watch(tmp_path, dev_api, root, "--settle=1s")
    (root / "draft.md").write_text("scratch")
    (root / "kept.md").write_text("kept")
    (root / "draft.md").unlink()
    # kept.md settles when draft.md would have: once it is sent, draft.md's time was up too.
    wait_until(lambda: "kept.md" in held(dev_api), "kept.md uploaded")
    assert watch.stop() == ExitCode.OK, watch.log()
    assert set(held(dev_api)) == {"kept.md"}
    assert "draft.md: sent" not in watch.log()


def test_the_final_pass_after_sigterm_sends_a_file_written_in_the_last_moment(
    tmp_path: Path, dev_api: DevApiServer
) -> None:
    root = tmp_path / "doc"
    root.mkdir()
    watch = Watch(tmp_path, dev_api, root, "--settle=10m")
    (root / "last.md").write_text("written as the main container ended")
    assert watch.stop() == ExitCode.OK, watch.log()
    assert held(dev_api) == {"last.md": [b"written as the main container ended"]}
    assert watch.result()["counts"]["uploaded"] == 1


def test_poll_follows_the_tree_without_inotify(tmp_path: Path, dev_api: DevApiServer) -> None:
    root = tmp_path / "doc"
    (root / "sub").mkdir(parents=True)
    watch = Watch(tmp_path, dev_api, root, "--poll", "--poll-interval=0.2s", "--settle=0.5s")
    assert "following changes (polling)" in watch.log()
    (root / "sub" / "polled.md").write_text("seen by polling")
    wait_until(lambda: "sub/polled.md" in held(dev_api), "sub/polled.md uploaded")
    assert watch.stop() == ExitCode.OK, watch.log()


def test_ten_thousand_files_in_one_burst_are_each_uploaded_once(
    tmp_path: Path, dev_api: DevApiServer
) -> None:
    root = tmp_path / "doc"
    root.mkdir()
    watch = Watch(tmp_path, dev_api, root, "--settle=0.5s", "--concurrency=32", "--log-level=info")
    # Half in folders made during the burst: their files come before the folders' watches do.
    for folder in range(10):
        (root / f"f{folder}").mkdir()
    names = [f"f{i % 10}/d{i:05}.md" if i % 2 else f"d{i:05}.md" for i in range(10_000)]
    for name in names:
        (root / name).write_text(name)
    wait_until(lambda: len(dev_api.store.documents(TASK)) >= 10_000, "10,000 uploads", 60)
    assert watch.stop() == ExitCode.OK, watch.log()[-2000:]
    paths = [document.path for document in dev_api.store.documents(TASK)]
    assert sorted(paths) == sorted(names)  # each once
    assert watch.result()["counts"]["uploaded"] == 10_000


def test_a_restarted_watch_uploads_nothing_already_uploaded(
    tmp_path: Path, dev_api: DevApiServer
) -> None:
    root = tmp_path / "doc"
    root.mkdir()
    for name in ("a.md", "b.md", "c/d.md"):
        (root / name).parent.mkdir(exist_ok=True)
        (root / name).write_text(name)
        os.utime(root / name, (1, 1))  # written long ago: nothing waits to settle
    first = Watch(tmp_path, dev_api, root)
    wait_until(lambda: len(held(dev_api)) == 3, "the first watch's start pass")
    assert first.stop() == ExitCode.OK
    second = Watch(tmp_path, dev_api, root)
    assert second.stop() == ExitCode.OK, second.log()
    counts = second.result()["counts"]
    assert (counts["uploaded"], counts["already-uploaded"]) == (0, 3)
    assert ": sent" not in second.log()
    assert len(dev_api.store.documents(TASK)) == 3


# ---------------------------------------------------------------------- in-process: the seams


def settings_for(server: DevApiServer, root: Path, **extra: Any) -> WatchSettings:
    harvest = Settings(task_id=TASK, api_url=server.url, root=str(root), deadline=None)
    return WatchSettings(harvest=harvest, **extra)


class InProcess:
    """`run_watch` on a thread, its log in memory."""

    def __init__(self, settings: WatchSettings, tmp_path: Path, **seams: Any) -> None:
        self.stderr, self.end = io.StringIO(), threading.Event()
        output = Output(
            reporting=Reporting(log_level=Level.DEBUG),
            stdout=io.StringIO(),
            stderr=self.stderr,
            interactive=False,
            termination_log=tmp_path / "no-termination-log",
        )
        self.code: ExitCode | None = None

        def run() -> None:
            self.code = run_watch(settings, output, end=self.end, **seams)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        try:
            wait_until(lambda: "following changes" in self.stderr.getvalue(), "the watch in place")
        except AssertionError:
            self.stop()
            raise

    def stop(self) -> ExitCode | None:
        self.end.set()
        self.thread.join(60)
        return self.code


@contextmanager
def no_file_descriptor_left() -> Iterator[None]:
    """RLIMIT_NOFILE at what is open now: the next open (inotify_init1 included) fails with
    EMFILE, as when a pod's per-user inotify instances are used up."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd")) - 1  # less the listing's own descriptor
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def inotify_refused(*paths: Any, **kwargs: Any) -> Iterator[set[tuple[watchfiles.Change, str]]]:
    """watchfiles' own `watch`, made to meet the real refusal when it asks for inotify."""
    changes = watchfiles.watch(*paths, **kwargs)
    if kwargs["force_polling"]:
        yield from changes
        return
    with no_file_descriptor_left():
        first = next(changes)  # raises watchfiles' own error
    yield first


def test_when_inotify_is_refused_it_polls_with_one_warning(
    tmp_path: Path, dev_api: DevApiServer
) -> None:
    root = tmp_path / "doc"
    root.mkdir()
    settings = settings_for(dev_api, root, settle=0.3, poll_interval=0.2)
    watch = InProcess(settings, tmp_path, watch_fn=inotify_refused)
    (root / "after.md").write_text("sent although inotify was refused")
    wait_until(lambda: "after.md" in held(dev_api), "after.md uploaded")
    assert watch.stop() == ExitCode.OK
    log = watch.stderr.getvalue()
    warnings = [line for line in log.splitlines() if "inotify refused" in line]
    assert len(warnings) == 1, log
    assert "Too many open files" in warnings[0]
    assert "following changes (polling)" in log


def test_with_a_ledger_a_restart_trusts_it_rather_than_the_listing(
    tmp_path: Path, dev_api_factory: DevApiFactory
) -> None:
    root = tmp_path / "doc"
    root.mkdir()
    (root / "a.md").write_text("one")
    (root / "b.md").write_text("two")
    for name in ("a.md", "b.md"):
        os.utime(root / name, (1, 1))
    store = MemoryStore()
    first_server = dev_api_factory()
    first = InProcess(settings_for(first_server, root), tmp_path, ledger_store=store)
    assert first.stop() == ExitCode.OK
    assert sorted(entry.path for entry in store.entries) == ["a.md", "b.md"]
    # A server that lists nothing: only the ledger knows a.md and b.md were accepted.
    second_server = dev_api_factory()
    (root / "b.md").write_text("two, changed")
    second = InProcess(settings_for(second_server, root, settle=0.0), tmp_path, ledger_store=store)
    assert second.stop() == ExitCode.OK
    assert held(second_server) == {"b.md": [b"two, changed"]}
    assert len(store.entries) == 3


def test_a_name_that_is_not_utf8_is_still_followed(tmp_path: Path, dev_api: DevApiServer) -> None:
    """watchfiles cannot report such a name (it ends its watch): the watch starts again and
    rescans, so the file is sent as it settles, and so is a file written after it."""
    root = tmp_path / "doc"
    root.mkdir()
    watch = Watch(tmp_path, dev_api, root, "--settle=0.3s")
    write_bytes_name(root, b"odd\xffname.md", b"odd content")
    wait_until(lambda: "odd%FFname.md" in held(dev_api), "the odd name to be sent")
    (root / "after.md").write_text("after")
    wait_until(lambda: "after.md" in held(dev_api), "a later file to be sent")
    assert watch.stop() == 0, watch.log()
    assert held(dev_api)["odd%FFname.md"] == [b"odd content"]
    assert watch.log().count("cannot report a file name that is not UTF-8") == 1, watch.log()
