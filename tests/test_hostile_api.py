"""The real CLI against a hostile keruta-api (issue 9): slow, endless, echoing, redirecting.

Each test runs `harvester cleanup` as a child process against a `ScriptedServer` on loopback and
looks at what a person (or `kubectl logs`) would: the exit code, the output, the summary file.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.tools import run_timed
from harvester.run import Output, run_cleanup
from harvester.settings import Settings
from tests.fstree import write_tree
from tests.process import BIN, isolated_env
from tests.servers import Answer, ScriptedServer, Seen, endless, json_answer, routes

TOKEN = "tok-9b1e77-never-print-me"
MIB = 1024 * 1024


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "harvester"), "cleanup", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=isolated_env(env),
    )


def finish(process: subprocess.Popen[str], within: float) -> tuple[str, str, float]:
    """Wait for the child at most `within` seconds (then kill it and fail); (stdout, stderr,
    seconds waited)."""
    started = time.monotonic()
    try:
        stdout, stderr = process.communicate(timeout=within)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        pytest.fail(f"still running after {within:.0f}s:\n{stderr[-2000:]}")
    return stdout, stderr, time.monotonic() - started


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "doc", {"a.md": "# a\n", "b/c.txt": "c\n"})


def trickling(_seen: Seen) -> Answer:
    """Headers at once, then one byte a second (each read makes progress: no read timeout)."""
    return Answer(200, (("Content-Length", "100000"),), endless(b"["), interval=1.0)


def test_a_trickling_listing_ends_within_timeout_and_deadline(docs: Path) -> None:
    with ScriptedServer(routes(listing=trickling)) as server:
        process = start(
            "--task-id=t",
            f"--api-url={server.url}",
            f"--root={docs}",
            "--timeout=3s",
            "--deadline=5s",
        )
        stdout, stderr, _waited = finish(process, within=60)  # it once ran for hours
    assert process.returncode == 3, stderr
    output = stdout + stderr
    assert "timed out" in output
    assert "--timeout" in output or "--deadline" in output
    assert server.requests_to("POST") == []  # stopped before uploading, as when unreachable
    assert server.requests_to("PUT") == []


def test_sigterm_ends_a_trickling_listing_promptly(docs: Path, tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    with ScriptedServer(routes(listing=trickling)) as server:
        process = start(
            "--task-id=t", f"--api-url={server.url}", f"--root={docs}", f"--summary-json={summary}"
        )
        assert server.requested.wait(30), "the listing request never arrived"
        process.send_signal(signal.SIGTERM)
        stdout, stderr, waited = finish(process, within=20)  # once still running 25 s after
    assert process.returncode == 3, stderr
    assert "interrupted" in stdout + stderr
    assert "Traceback" not in stderr
    data = json.loads(summary.read_text())
    assert data["interrupted"] is True
    assert data["status"]["state"] == "skipped"
    assert server.requests_to("PUT") == []
    print(f"ended {waited:.1f}s after SIGTERM")


def test_sigterm_during_status_retries_stops_retrying(docs: Path) -> None:
    def unavailable(_seen: Seen) -> Answer:
        return json_answer(503, {"message": "busy"}, ("Retry-After", "10"))

    with ScriptedServer(routes(status=unavailable)) as server:
        process = start(
            "--task-id=t", f"--api-url={server.url}", f"--root={docs}", "--log-format=json"
        )
        assert process.stdout is not None
        lines = []
        for line in process.stdout:  # wait for the first "retrying in 10.0s"
            lines.append(line)
            if "retrying in" in line:
                break
        process.send_signal(signal.SIGTERM)
        stdout, stderr, _waited = finish(process, within=20)
    lines += stdout.splitlines(keepends=True)
    events = [json.loads(line) for line in lines]
    retrying = [e for e in events if "retrying in" in e.get("message", "")]
    assert len(retrying) == 1, retrying  # not three announcements in a fraction of a second
    assert len(server.requests_to("PUT")) == 1  # no attempt after the signal
    assert process.returncode == 3, stderr
    assert events[-1]["event"] == "summary"
    assert events[-1]["interrupted"] is True
    assert "interrupted" in stdout


def test_an_endless_listing_body_keeps_memory_bounded(docs: Path, tmp_path: Path) -> None:
    def endless_listing(_seen: Seen) -> Answer:
        return Answer(200, (("Content-Type", "application/json"),), endless(total=256 * MIB))

    def harvest(server: ScriptedServer, name: str) -> tuple[int, str]:
        stdout, stderr = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        timed = run_timed(
            [
                str(BIN / "harvester"),
                "cleanup",
                f"--task-id={name}",
                f"--api-url={server.url}",
                f"--root={docs}",
                "--log-format=json",
            ],
            stdout=stdout,
            stderr=stderr,
            env=isolated_env(),
        )
        assert timed.returncode == 0, stderr.read_text()
        return timed.peak_rss, stdout.read_text()

    with ScriptedServer(routes()) as server:
        baseline, _output = harvest(server, "small")
    with ScriptedServer(routes(listing=endless_listing)) as server:
        peak, output = harvest(server, "huge")
        listing_sent = server.sent[0]
        uploads = len(server.requests_to("POST"))
    growth = peak - baseline
    print(f"peak RSS {baseline / MIB:.0f} MiB, with a 256 MiB listing {peak / MIB:.0f} MiB")
    # The listing is read up to its cap (16 MiB) and no further: not 256 MiB, let alone twice.
    assert growth < 64 * MIB, f"peak RSS grew by {growth / MIB:.0f} MiB"
    assert listing_sent < 128 * MIB
    warnings = [json.loads(line) for line in output.splitlines() if "larger than" in line]
    assert warnings and warnings[0]["level"] == "warning"
    assert "Idempotency-Key" in warnings[0]["message"]
    assert uploads == 2  # the harvest went on without the listing


def echoing(code: int) -> Callable[[Seen], Answer]:
    """An error whose body (and Location) echo the request's Authorization header."""

    def answer(seen: Seen) -> Answer:
        echoed = seen.headers.get("authorization", "")
        return json_answer(
            code, {"message": f"got {echoed}", "error": echoed}, ("Location", f"/?a={echoed}")
        )

    return answer


@pytest.mark.parametrize(
    ("where", "code", "exit_code"),
    [("listing", 401, 6), ("upload", 401, 6), ("upload", 500, 3), ("status", 500, 4)],
)
def test_a_server_echoing_the_token_cannot_make_us_print_it(
    docs: Path, tmp_path: Path, where: str, code: int, exit_code: int
) -> None:
    summary = tmp_path / "summary.json"
    with ScriptedServer(routes(**{where: echoing(code)})) as server:
        process = start(
            "--task-id=t",
            f"--api-url={server.url}",
            f"--root={docs}",
            f"--summary-json={summary}",
            "--retries=0",
            env={"KERUTA_API_TOKEN": TOKEN},
        )
        stdout, stderr, _waited = finish(process, within=60)
    assert process.returncode == exit_code, stderr
    assert server.seen[0].headers["authorization"] == f"Bearer {TOKEN}"  # it was echoed
    everything = stdout + stderr + summary.read_text()
    assert str(code) in everything
    assert "[redacted]" in everything
    assert TOKEN not in everything


def test_the_termination_log_never_holds_an_echoed_token(docs: Path, tmp_path: Path) -> None:
    termination_log = tmp_path / "termination-log"
    termination_log.touch()  # it exists in a pod; only then is it written
    stdout, stderr = io.StringIO(), io.StringIO()
    with ScriptedServer(routes(upload=echoing(500))) as server:
        settings = Settings(task_id="t", api_url=server.url, token=TOKEN, root=str(docs), retries=0)
        output = Output(stdout=stdout, stderr=stderr, termination_log=termination_log)
        code, _harvest = run_cleanup(settings, output, kubernetes=False)
    assert code == 3
    written = termination_log.read_text()
    assert "500" in written
    assert TOKEN not in written + stdout.getvalue() + stderr.getvalue()


@pytest.mark.parametrize("code", [301, 307])
def test_a_redirected_listing_stops_before_uploading_and_says_where(
    docs: Path, tmp_path: Path, code: int
) -> None:
    summary = tmp_path / "summary.json"

    def redirect(_seen: Seen) -> Answer:
        return json_answer(code, {}, ("Location", "https://keruta.example/api/tasks/t/documents"))

    with ScriptedServer(routes(listing=redirect)) as server:
        process = start(
            "--task-id=t", f"--api-url={server.url}", f"--root={docs}", f"--summary-json={summary}"
        )
        stdout, stderr, _waited = finish(process, within=60)
    assert process.returncode == 3, stderr
    output = stdout + stderr
    assert str(code) in output
    assert "https://keruta.example/api/tasks/t/documents" in output
    assert "--api-url" in output
    assert server.requests_to("POST") == []  # not silently "no listing"
    assert server.requests_to("PUT") == []
    data = json.loads(summary.read_text())
    assert data["status"]["state"] == "skipped"
    assert data["counts"]["uploaded"] == 0
