"""Whole harvests through the real pipeline against real loopback servers.

The dev-api stands in for keruta-api where the server behaves; pytest-httpserver and a resetting
proxy play a misbehaving one. Nothing of ours is mocked: only the retry sleep is injected, so a
test can see the delays asked for without waiting them out.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from harvester.devapi.server import DevApiServer
from harvester.exitcodes import ExitCode, exit_code_for
from harvester.harvest import Harvest, run_harvest
from harvester.model import Action, Outcome, StepState
from harvester.settings import MB, Settings
from harvester.stats import Level, NullListener, Stage
from tests.devapi_fixture import DevApiFactory
from tests.fstree import (
    make_fifo,
    make_world_readable,
    no_access,
    run_unprivileged,
    write_bytes_name,
    write_tree,
)
from tests.servers import ResettingProxy

TASK = "task-42"


def settings_for(root: Path, api_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {"task_id": TASK, "api_url": api_url, "root": str(root)}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


class Sleeps:
    """The injected retry sleep: records what was asked, waits for nothing."""

    def __init__(self) -> None:
        self.asked: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)


def harvest(settings: Settings, **kwargs: object) -> Harvest:
    kwargs.setdefault("sleep", Sleeps())
    return run_harvest(settings, NullListener(), **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def odd_tree(tmp_path: Path) -> Path:
    """Two levels of documents with everything a real volume can throw at us."""
    root = write_tree(
        tmp_path / "doc",
        {
            "README.md": "# task\n",
            "reports/summary.md": "same content\n",
            "reports/2026/copy-of-summary.md": "same content\n",
            "reports/2026/details.md": "details\n",
            "results/audit.json": json.dumps({"ok": True}),
            "notes/レビュー.md": "確認しました\n",
            ".env": "SECRET=1\n",
            ".git/config": "[core]\n",
            "big/huge.bin": b"\0" * (2 * MB),
        },
    )
    (tmp_path / "outside.txt").write_text("must never be uploaded")
    (root / "link-out.txt").symlink_to(tmp_path / "outside.txt")
    make_fifo(root / "reports" / "pipe")
    write_bytes_name(root / "notes", b"bad\xffname.txt", b"latin-1 name\n")
    return root


@pytest.mark.timeout(30)
def test_harvest_of_an_odd_tree_uploads_exactly_the_documents(
    odd_tree: Path, dev_api: DevApiServer
) -> None:
    result = harvest(settings_for(odd_tree, dev_api.url, max_file_size=1 * MB))
    report = result.report

    stored = {doc.path: doc for doc in dev_api.store.documents(TASK)}
    assert sorted(stored) == [
        "README.md",
        "notes/bad%FFname.txt",
        "notes/レビュー.md",
        "reports/2026/copy-of-summary.md",
        "reports/2026/details.md",
        "results/audit.json",
    ]
    for path, doc in stored.items():
        on_disk = odd_tree.joinpath(*path.split("/")) if "%FF" not in path else None
        if on_disk is not None:
            assert doc.sha256 == hashlib.sha256(on_disk.read_bytes()).hexdigest()

    outcomes = {f.path: (f.outcome, f.reason or f.duplicate_of) for f in report.files}
    assert outcomes["reports/summary.md"] == (Outcome.DUPLICATE, "reports/2026/copy-of-summary.md")
    assert outcomes[".env"][0] is Outcome.SKIPPED
    assert outcomes[".git"][0] is Outcome.SKIPPED
    assert outcomes["link-out.txt"] == (Outcome.SKIPPED, "symbolic link (never followed)")
    assert outcomes["reports/pipe"] == (Outcome.SKIPPED, "named pipe (never opened)")
    assert outcomes["big/huge.bin"] == (Outcome.SKIPPED, "larger than --max-file-size")
    assert report.failures == ()

    task = dev_api.store.task(TASK)
    assert task is not None
    assert task.status == "COMPLETED"
    assert task.progress == 100
    assert "6 documents uploaded" in (task.message or "")
    assert exit_code_for(report) is ExitCode.OK


@pytest.mark.timeout(30)
def test_a_second_harvest_stores_nothing_twice(odd_tree: Path, dev_api: DevApiServer) -> None:
    first = harvest(settings_for(odd_tree, dev_api.url)).report
    second = harvest(settings_for(odd_tree, dev_api.url)).report
    assert first.count(Outcome.UPLOADED) == 7
    assert second.count(Outcome.UPLOADED) == 0
    assert second.count(Outcome.ALREADY_UPLOADED) == 7
    assert len(dev_api.store.documents(TASK)) == 7
    assert exit_code_for(second) is ExitCode.OK


def test_missing_root_means_no_documents_and_completed(
    tmp_path: Path, dev_api: DevApiServer
) -> None:
    report = harvest(settings_for(tmp_path / "absent", dev_api.url)).report
    task = dev_api.store.task(TASK)
    assert task is not None and task.status == "COMPLETED"
    assert "does not exist" in (task.message or "")
    assert report.files == ()
    assert exit_code_for(report) is ExitCode.OK


def test_dry_run_sends_nothing(odd_tree: Path) -> None:
    # A closed port: any request at all would fail the harvest.
    result = harvest(settings_for(odd_tree, "http://127.0.0.1:9", dry_run=True))
    assert result.report.dry_run
    assert {f.outcome for f in result.report.files if f.action is Action.UPLOAD} == {
        Outcome.PLANNED
    }
    assert exit_code_for(result.report) is ExitCode.OK


def test_wrong_token_stops_the_run_with_nothing_stored(
    odd_tree: Path, dev_api_factory: DevApiFactory
) -> None:
    server = dev_api_factory(token="right")
    report = harvest(settings_for(odd_tree, server.url, token="wrong")).report
    assert report.auth_rejected
    assert server.store.documents(TASK) == ()
    assert server.store.task(TASK) is None
    assert report.status.state is StepState.SKIPPED
    assert exit_code_for(report) is ExitCode.AUTH_REJECTED
    assert all("wrong" not in (f.error or "") for f in report.files)


def test_401_in_the_middle_of_uploads_aborts_the_rest(
    tmp_path: Path, httpserver: HTTPServer
) -> None:
    root = write_tree(tmp_path / "doc", {f"f{i:02}.md": f"doc {i}" for i in range(20)})
    httpserver.expect_request("/api/tasks/task-42/documents", method="GET").respond_with_data(
        "", status=404
    )
    calls = []

    def handler(request: Request) -> Response:
        request.get_data()
        calls.append(1)
        if len(calls) >= 3:
            return Response('{"error":"unauthorized"}', status=401)
        return Response('{"id":"x"}', status=201)

    httpserver.expect_request("/api/tasks/task-42/documents", method="POST").respond_with_handler(
        handler
    )
    report = harvest(settings_for(root, httpserver.url_for("/"), concurrency=1)).report
    assert report.auth_rejected
    assert report.count(Outcome.UPLOADED) == 2
    assert report.count(Outcome.NOT_ATTEMPTED) == 17
    assert len(calls) == 3  # nothing more was sent after the 401
    assert exit_code_for(report) is ExitCode.AUTH_REJECTED


def _flaky_server(httpserver: HTTPServer, answers: list[Response]) -> list[bytes]:
    """Upload answers in order (then 201s); returns the bodies received."""
    bodies: list[bytes] = []

    def handler(request: Request) -> Response:
        bodies.append(request.get_data())
        if answers:
            return answers.pop(0)
        return Response('{"id":"doc"}', status=201, content_type="application/json")

    httpserver.expect_request("/api/tasks/task-42/documents", method="POST").respond_with_handler(
        handler
    )
    httpserver.expect_request("/api/v1/tasks/task-42/status", method="PUT").respond_with_json(
        {"id": TASK}
    )
    return bodies


def test_500_then_200_is_retried_and_completes(tmp_path: Path, httpserver: HTTPServer) -> None:
    root = write_tree(tmp_path / "doc", {"a.md": "a"})
    bodies = _flaky_server(httpserver, [Response("oops", status=500)])
    sleeps = Sleeps()
    report = harvest(settings_for(root, httpserver.url_for("/")), sleep=sleeps).report
    assert report.count(Outcome.UPLOADED) == 1
    (uploaded,) = [f for f in report.files if f.outcome is Outcome.UPLOADED]
    assert uploaded.attempts == 2
    assert len(bodies) == 2
    assert all(b'filename="a.md"\r\nContent-Type: text/markdown\r\n\r\na\r\n' in b for b in bodies)
    assert len(sleeps.asked) == 1
    assert exit_code_for(report) is ExitCode.OK


def test_429_retry_after_is_honoured(tmp_path: Path, httpserver: HTTPServer) -> None:
    root = write_tree(tmp_path / "doc", {"a.md": "a"})
    _flaky_server(httpserver, [Response("slow down", status=429, headers={"Retry-After": "7"})])
    sleeps = Sleeps()
    report = harvest(settings_for(root, httpserver.url_for("/")), sleep=sleeps).report
    assert report.count(Outcome.UPLOADED) == 1
    assert sleeps.asked == [7.0]  # the jitter (under 0.5 s) never undercuts Retry-After


def test_persistent_5xx_fails_the_file_and_the_task(tmp_path: Path, httpserver: HTTPServer) -> None:
    root = write_tree(tmp_path / "doc", {"a.md": "a", "b.md": "b"})
    statuses: list[dict[str, object]] = []
    httpserver.expect_request("/api/tasks/task-42/documents", method="POST").respond_with_data(
        "database down", status=503
    )

    def status(request: Request) -> Response:
        statuses.append(json.loads(request.get_data()))
        return Response("{}", status=200)

    httpserver.expect_request("/api/v1/tasks/task-42/status").respond_with_handler(status)
    report = harvest(settings_for(root, httpserver.url_for("/"), retries=2)).report
    assert report.count(Outcome.FAILED) == 2
    assert all(f.attempts == 3 for f in report.failures)
    assert "503 Service Unavailable" in (report.failures[0].error or "")
    assert "database down" in (report.failures[0].error or "")
    assert statuses[0]["status"] == "FAILED"
    assert statuses[0]["errorCode"] == "HARVEST_UPLOAD_FAILED"
    assert "2 of 2 documents" in str(statuses[0]["message"])
    assert report.pvc.state is StepState.SKIPPED
    assert exit_code_for(report) is ExitCode.UPLOADS_FAILED


def test_413_is_not_retried(tmp_path: Path, httpserver: HTTPServer) -> None:
    root = write_tree(tmp_path / "doc", {"big.bin": "x" * 100})
    bodies = _flaky_server(httpserver, [Response("too big", status=413)])
    report = harvest(settings_for(root, httpserver.url_for("/"))).report
    assert len(bodies) == 1
    assert "--max-file-size" in (report.failures[0].error or "")
    assert exit_code_for(report) is ExitCode.UPLOADS_FAILED


def test_slow_server_past_the_timeout_fails_clearly(tmp_path: Path, httpserver: HTTPServer) -> None:
    import time

    root = write_tree(tmp_path / "doc", {"a.md": "a"})

    def slow(request: Request) -> Response:
        request.get_data()
        time.sleep(0.6)
        return Response("{}", status=201)

    httpserver.expect_request("/api/tasks/task-42/documents", method="POST").respond_with_handler(
        slow
    )
    httpserver.expect_request("/api/v1/tasks/task-42/status").respond_with_json({})
    report = harvest(settings_for(root, httpserver.url_for("/"), timeout=0.1, retries=1)).report
    assert report.count(Outcome.FAILED) == 1
    assert "timed out" in (report.failures[0].error or "")
    assert exit_code_for(report) is ExitCode.UPLOADS_FAILED


@pytest.mark.timeout(30)
def test_connection_reset_is_survived(tmp_path: Path, dev_api: DevApiServer) -> None:
    root = write_tree(tmp_path / "doc", {"a.md": "a", "b.md": "b"})
    host, port = dev_api.url.removeprefix("http://").split(":")
    with ResettingProxy(host, int(port), resets=2) as proxy:
        report = harvest(settings_for(root, proxy.url, concurrency=1)).report
    assert proxy.resets_done == 2
    assert report.failures == ()
    assert len(dev_api.store.documents(TASK)) == 2
    assert exit_code_for(report) is ExitCode.OK


def test_status_update_failure_keeps_the_volume(odd_tree: Path, dev_api: DevApiServer) -> None:
    report = harvest(
        settings_for(odd_tree, dev_api.url, status_path="/api/v9/tasks/{taskId}/nowhere")
    ).report
    assert report.failures == ()
    assert report.status.state is StepState.FAILED
    assert "404" in report.status.message
    assert report.pvc.state is StepState.SKIPPED
    assert exit_code_for(report) is ExitCode.STATUS_FAILED


def test_pvc_step_runs_only_after_a_complete_harvest(odd_tree: Path, dev_api: DevApiServer) -> None:
    from harvester.model import StepResult

    calls: list[str] = []

    def pvc_step() -> StepResult:
        calls.append("delete")
        return StepResult(StepState.DONE, "deletion requested")

    report = harvest(settings_for(odd_tree, dev_api.url), pvc_step=pvc_step).report
    assert calls == ["delete"]
    assert report.pvc.state is StepState.DONE
    kept = harvest(settings_for(odd_tree, dev_api.url, keep_pvc=True), pvc_step=pvc_step).report
    assert calls == ["delete"]
    assert kept.pvc.message == "kept (--keep-pvc)"


class ChangeAfterHashing(NullListener):
    """A listener that rewrites a document the moment its upload is decided, after its hash
    and before a worker opens it (the upload stage starts with the first upload handed over):
    a real change on disk."""

    def __init__(self, path: Path, content: bytes) -> None:
        self.path = path
        self.content = content

    def stage_started(self, stage: Stage, files: int, nbytes: int) -> None:
        if stage is Stage.UPLOAD:
            self.path.write_bytes(self.content)
            os.utime(self.path, ns=(1, 10**18))  # a distinct mtime, whatever the clock's grain


@pytest.mark.timeout(30)
def test_a_file_changed_after_hashing_is_hashed_again_and_sent_whole(
    tmp_path: Path, dev_api: DevApiServer
) -> None:
    root = write_tree(tmp_path / "doc", {"log.txt": "first version\n"})
    final = b"second, longer version\n"
    listener = ChangeAfterHashing(root / "log.txt", final)
    report = run_harvest(settings_for(root, dev_api.url), listener, sleep=Sleeps()).report
    (doc,) = dev_api.store.documents(TASK)
    assert doc.sha256 == hashlib.sha256(final).hexdigest()
    assert doc.size == len(final)
    assert report.failures == ()


@pytest.mark.timeout(60)
def test_an_unreadable_file_fails_the_harvest_instead_of_being_lost(
    tmp_path: Path, dev_api: DevApiServer
) -> None:
    root = write_tree(tmp_path / "doc", {"ok.md": "fine", "secret.md": "locked"})
    make_world_readable(root)
    tmp_path.chmod(0o755)

    def run() -> tuple[list[tuple[str, str, str | None]], int]:
        result = run_harvest(settings_for(Path("doc"), dev_api.url), NullListener())
        files = [(f.path, f.outcome.value, f.error) for f in result.report.files]
        return files, int(exit_code_for(result.report))

    with no_access(root / "secret.md"):
        files, code = run_unprivileged(tmp_path, run, denied=["doc/secret.md"])
    outcome = {path: (state, error) for path, state, error in files}
    assert outcome["ok.md"][0] == "uploaded"
    assert outcome["secret.md"][0] == "failed"
    assert "permission denied" in (outcome["secret.md"][1] or "")
    assert code == ExitCode.UPLOADS_FAILED
    task = dev_api.store.task(TASK)
    assert task is not None and task.status == "FAILED"


@pytest.mark.timeout(30)
def test_stop_event_leaves_the_rest_not_attempted(tmp_path: Path, dev_api: DevApiServer) -> None:
    root = write_tree(tmp_path / "doc", {f"f{i:02}.md": f"doc {i}" for i in range(10)})
    stop = threading.Event()

    class StopAfterFirst(NullListener):
        def advanced(self, stage: Stage, files: int = 0, nbytes: int = 0) -> None:
            if stage is Stage.UPLOAD and files:
                stop.set()

        def notice(self, level: Level, message: str) -> None:
            pass

    report = run_harvest(
        settings_for(root, dev_api.url, concurrency=1), StopAfterFirst(), stop=stop
    ).report
    assert report.interrupted
    assert report.count(Outcome.UPLOADED) == 1
    # Uploads start while files are still hashed: a file the stop found unhashed is failed
    # "not hashed", every other one not attempted.
    rest = [f for f in report.files if f.outcome is not Outcome.UPLOADED]
    assert len(rest) == 9
    for f in rest:
        assert f.outcome is Outcome.NOT_ATTEMPTED or (f.error or "").endswith(
            "not hashed: the harvest was interrupted"
        ), f
    task = dev_api.store.task(TASK)
    assert task is None or task.history == ()  # no status: a new run will finish the job
    assert exit_code_for(report) is ExitCode.UPLOADS_FAILED


class StopAt(NullListener):
    """Sets `stop` when the named stage starts or finishes, as a SIGTERM arriving then would."""

    def __init__(
        self, stop: threading.Event, *, started: Stage | None = None, finished: Stage | None = None
    ) -> None:
        self._stop, self._started, self._finished = stop, started, finished

    def stage_started(self, stage: Stage, files: int, nbytes: int) -> None:
        if stage is self._started:
            self._stop.set()

    def stage_finished(self, stage: Stage) -> None:
        if stage is self._finished:
            self._stop.set()


@pytest.mark.parametrize(
    "when",
    [{"started": Stage.HASH}, {"finished": Stage.SCAN}, {"finished": Stage.HASH}],
    ids=["while-hashing", "after-the-scan", "after-hashing"],
)
def test_a_signal_before_the_uploads_leaves_the_status_alone(
    tmp_path: Path, dev_api: DevApiServer, when: dict[str, Stage]
) -> None:
    root = write_tree(tmp_path / "doc", {f"f{i}.md": f"doc {i}" for i in range(5)})
    first = harvest(settings_for(root, dev_api.url)).report
    assert exit_code_for(first) is ExitCode.OK
    # Nothing is left to upload: the server already holds every hash.
    stop = threading.Event()
    report = run_harvest(
        settings_for(root, dev_api.url), StopAt(stop, **when), stop=stop, sleep=Sleeps()
    ).report

    assert report.interrupted
    assert report.status.state is StepState.SKIPPED
    assert "interrupted" in report.status.message
    assert report.pvc.state is StepState.SKIPPED
    assert exit_code_for(report) is ExitCode.UPLOADS_FAILED
    task = dev_api.store.task(TASK)
    assert task is not None
    assert [update.status for update in task.history] == ["COMPLETED"]  # the first run's only
