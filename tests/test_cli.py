"""The real CLI run as a subprocess: exit codes, output for kubectl logs, summaries, the alias."""

from __future__ import annotations

import io
import json
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from harvester.devapi.server import DevApiServer
from harvester.exitcodes import ExitCode
from harvester.run import Output, run_cleanup
from harvester.settings import Settings
from tests.devapi_fixture import DevApiFactory
from tests.fstree import make_fifo, write_tree
from tests.process import BIN, isolated_env

TOKEN = "tok-3f9a1c-very-secret"
SECRET_PARTS = ("Zq7s3cr", "X-Evil")  # the distinctive parts of the bad tokens below
LOG_FORMATS = ["text", "json"]


def run(
    *args: str, env: dict[str, str] | None = None, program: str = "harvester", timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    base = isolated_env()
    base.update(env or {})
    return subprocess.run(
        [str(BIN / program), *args],
        env=base,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    root = write_tree(
        tmp_path / "doc",
        {
            "reports/summary.md": "# summary\n",
            "reports/copy.md": "# summary\n",
            "results/out.json": "{}",
            "notes/メモ.md": "メモ\n",
            ".env": "TOKEN=x\n",
        },
    )
    make_fifo(root / "fifo")
    return root


def test_seed_manifest_command_line_works_unchanged(
    docs: Path, dev_api_factory: DevApiFactory
) -> None:
    server = dev_api_factory(token=TOKEN)
    # The seed's Job: keruta-agent cleanup --task-id $(KERUTA_TASK_ID) --api-url $(KERUTA_API_URL)
    # --source-pod $(KERUTA_SOURCE_POD), with the token and the artifacts dir from the environment.
    env = {
        "KERUTA_TASK_ID": "123",
        "KERUTA_API_URL": server.url,
        "KERUTA_API_TOKEN": TOKEN,
        "KERUTA_SOURCE_POD": "keruta-job-123-abcde",
        "KERUTA_ARTIFACTS_DIR": str(docs),
    }
    result = run(
        "cleanup",
        "--task-id",
        env["KERUTA_TASK_ID"],
        "--api-url",
        env["KERUTA_API_URL"],
        "--source-pod",
        env["KERUTA_SOURCE_POD"],
        env=env,
        program="keruta-agent",
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert sorted(d.path for d in server.store.documents("123")) == [
        "notes/メモ.md",
        "reports/copy.md",
        "results/out.json",
    ]
    task = server.store.task("123")
    assert task is not None and task.status == "COMPLETED"
    assert TOKEN not in result.stdout + result.stderr


def test_plain_progress_lines_for_kubectl_logs(
    tmp_path: Path, dev_api_factory: DevApiFactory
) -> None:
    root = write_tree(tmp_path / "doc", {f"d{i:03}.md": f"doc {i}" for i in range(60)})
    server = dev_api_factory(latency=0.02)
    summary = tmp_path / "out" / "summary.json"
    summary.parent.mkdir()
    result = run(
        "cleanup",
        "--task-id=t1",
        f"--api-url={server.url}",
        f"--root={root}",
        "--concurrency=2",
        "--progress-interval=0.1",
        f"--summary-json={summary}",
    )
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "\x1b" not in output
    progress = [line for line in result.stderr.splitlines() if line.startswith("upload: ")]
    assert any("/60 files" in line and "ETA" in line for line in progress), result.stderr
    assert all(len(line) <= 80 for line in result.stdout.splitlines())
    data = json.loads(summary.read_text())
    assert data["task_id"] == "t1"
    assert data["counts"]["uploaded"] == 60
    assert data["status"]["state"] == "done"
    first = data["files"][0]
    assert {"path", "size", "sha256", "action", "outcome", "document_id", "error"} <= set(first)
    assert first["document_id"]


def test_json_log_format_gives_json_lines(docs: Path, dev_api: DevApiServer) -> None:
    result = run(
        "cleanup", "--task-id=t", f"--api-url={dev_api.url}", f"--root={docs}", "--log-format=json"
    )
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events[-1]["event"] == "summary"
    assert events[-1]["counts"]["uploaded"] == 3
    assert any(e["event"] == "stage_started" for e in events)


def test_dry_run_prints_the_plan_and_sends_nothing(docs: Path) -> None:
    result = run(
        "cleanup", "--task-id=t", "--api-url=http://127.0.0.1:9", f"--root={docs}", "--dry-run"
    )
    assert result.returncode == 0, result.stderr
    assert "reports/copy.md" in result.stdout
    assert "duplicate of reports/copy.md" in result.stdout  # summary.md duplicates copy.md
    assert "named pipe" in result.stdout
    assert "hidden" in result.stdout

    as_json = run("cleanup", "--task-id=t", f"--root={docs}", "--dry-run", "--log-format=json")
    assert as_json.returncode == 0, as_json.stderr
    plan = json.loads(as_json.stdout.splitlines()[-1])
    actions = {item["path"]: item["action"] for item in plan["items"]}
    assert actions["reports/copy.md"] == "upload"
    assert actions["reports/summary.md"] == "duplicate"
    assert actions["fifo"] == "skip"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--api-url=http://x"], "--task-id"),
        (["--task-id=t"], "--api-url"),
        (["--task-id=t", "--api-url=ftp://x"], "not an http(s) URL"),
        (["--task-id=t", "--api-url=http://x", "--timeout=soon"], "--timeout"),
        (["--task-id=t", "--api-url=http://x", "--token-file=/nonexistent/token"], "token-file"),
        (["--task-id=t", "--api-url=https://x", "--ca-cert=/nonexistent/ca.pem"], "--ca-cert"),
    ],
)
def test_bad_configuration_exits_2_with_a_sentence(args: list[str], message: str) -> None:
    result = run("cleanup", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_root_that_is_a_file_exits_2(tmp_path: Path, dev_api: DevApiServer) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    result = run("cleanup", "--task-id=t", f"--api-url={dev_api.url}", f"--root={not_a_folder}")
    assert result.returncode == 2
    assert "not a folder" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_error_names_an_odd_path_with_its_hidden_characters_escaped(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "invoice-\u202egpj.exe\x1b[2J"
    not_a_folder.write_text("x")
    result = run("cleanup", "--task-id=t", "--dry-run", f"--root={not_a_folder}")
    assert result.returncode == 2
    assert "\u202e" not in result.stderr and "\x1b" not in result.stderr
    assert r"invoice-\u202egpj.exe\x1b[2J" in result.stderr.replace("\n", "")  # wrapped at 80


def test_missing_root_exits_0_with_completed(tmp_path: Path, dev_api: DevApiServer) -> None:
    result = run(
        "cleanup", "--task-id=t", f"--api-url={dev_api.url}", f"--root={tmp_path / 'nothing'}"
    )
    assert result.returncode == 0, result.stderr
    task = dev_api.store.task("t")
    assert task is not None and task.status == "COMPLETED"


def test_wrong_token_exits_6_and_never_shows_it(
    docs: Path, dev_api_factory: DevApiFactory, tmp_path: Path
) -> None:
    server = dev_api_factory(token="the-right-one")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    summary = tmp_path / "summary.json"
    result = run(
        "cleanup",
        "--task-id=t",
        f"--api-url={server.url}",
        f"--root={docs}",
        f"--token-file={token_file}",
        f"--summary-json={summary}",
    )
    assert result.returncode == 6
    assert "401" in result.stdout + result.stderr
    assert TOKEN not in result.stdout + result.stderr + summary.read_text()
    assert server.store.documents("t") == ()


def test_failed_upload_exits_3_and_status_failure_exits_4(
    docs: Path, httpserver: HTTPServer, dev_api: DevApiServer
) -> None:
    httpserver.expect_request("/api/tasks/t/documents", method="POST").respond_with_data(
        "no", status=400
    )
    httpserver.expect_request("/api/v1/tasks/t/status").respond_with_json({})
    failed = run("cleanup", "--task-id=t", f"--api-url={httpserver.url_for('/')}", f"--root={docs}")
    assert failed.returncode == 3
    assert "FAILED" in failed.stderr
    assert "400 Bad Request" in failed.stderr + failed.stdout

    no_status = run(
        "cleanup",
        "--task-id=t",
        f"--api-url={dev_api.url}",
        f"--root={docs}",
        "--status-path=/nope/{taskId}",
        "--retries=0",
    )
    assert no_status.returncode == 4
    assert "404" in no_status.stdout + no_status.stderr


def test_help_names_every_keruta_variable() -> None:
    result = run("cleanup", "--help")
    assert result.returncode == 0
    for name in (
        "KERUTA_TASK_ID",
        "KERUTA_API_URL",
        "KERUTA_SOURCE_POD",
        "KERUTA_ARTIFACTS_DIR",
        "KERUTA_MAX_FILE_SIZE",
        "KERUTA_TIMEOUT",
        "KERUTA_RETRY_COUNT",
    ):
        assert name in result.stdout


def test_sigterm_finishes_in_flight_uploads_and_writes_the_summary(
    tmp_path: Path, dev_api_factory: DevApiFactory
) -> None:
    import signal

    root = write_tree(tmp_path / "doc", {f"d{i:03}.md": f"doc {i}" for i in range(200)})
    server = dev_api_factory(latency=0.05)
    summary = tmp_path / "summary.json"
    env = isolated_env()
    process = subprocess.Popen(
        [
            str(BIN / "harvester"),
            "cleanup",
            "--task-id=t",
            f"--api-url={server.url}",
            f"--root={root}",
            "--concurrency=2",
            "--log-format=json",
            "--progress-interval=0.1",
            f"--summary-json={summary}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    for line in process.stdout:  # wait until uploads are under way
        event = json.loads(line)
        if event.get("stage") == "upload" and event.get("files_done", 0) > 0:
            break
    process.send_signal(signal.SIGTERM)
    _stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 3, stderr
    data = json.loads(summary.read_text())
    assert data["interrupted"] is True
    assert data["counts"]["not-attempted"] > 0
    stored = len(server.store.documents("t"))
    assert stored == data["counts"]["uploaded"]  # nothing half-sent, nothing unaccounted for
    assert data["status"]["state"] == "skipped"


def test_log_level_chooses_which_notices_are_shown(docs: Path, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/api/tasks/t/documents", method="GET").respond_with_data(
        "", status=404
    )
    httpserver.expect_request("/api/tasks/t/documents", method="POST").respond_with_json({})
    httpserver.expect_request("/api/v1/tasks/t/status").respond_with_json({})
    args = ["cleanup", "--task-id=t", f"--api-url={httpserver.url_for('/')}", f"--root={docs}"]
    quiet = run(*args)
    chatty = run(*args, "--log-level=debug")
    assert quiet.returncode == chatty.returncode == 0, quiet.stderr + chatty.stderr
    assert "relying on Idempotency-Key" not in quiet.stderr
    assert "relying on Idempotency-Key" in chatty.stderr


@pytest.mark.parametrize("log_format", LOG_FORMATS)
def test_a_summary_that_fails_after_the_harvest_keeps_its_exit_code(
    log_format: str, docs: Path, httpserver: HTTPServer, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()

    def status_then_break_the_folder(_request: Request) -> Response:
        # The status is the last request: the summary's folder passed the check before the
        # harvest and is gone (a file stands there) by the time the summary is written.
        out.rename(tmp_path / "gone")
        out.write_text("not a folder any more")
        return Response("{}", content_type="application/json")

    httpserver.expect_request("/api/tasks/t/documents", method="GET").respond_with_data(
        "", status=404
    )
    httpserver.expect_request("/api/tasks/t/documents", method="POST").respond_with_json({})
    httpserver.expect_request("/api/v1/tasks/t/status").respond_with_handler(
        status_then_break_the_folder
    )
    result = run(
        "cleanup",
        "--task-id=t",
        f"--api-url={httpserver.url_for('/')}",
        f"--root={docs}",
        f"--summary-json={out / 'summary.json'}",
        f"--log-format={log_format}",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    expected = f"--summary-json {out / 'summary.json'}: cannot be written (Not a directory)"
    if log_format == "json":
        events = [json.loads(line) for line in result.stdout.splitlines()]
        warnings = [e for e in events if e["event"] == "notice" and e["level"] == "warning"]
        assert [w["message"] for w in warnings] == [warnings[0]["message"]]
        assert warnings[0]["message"].startswith(expected)
        assert not any(e["event"] == "error" for e in events)
    else:
        warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
        assert len(warnings) == 1, result.stderr
        assert warnings[0].startswith(f"warning: {expected}")
        assert "error: " not in result.stderr


def test_a_termination_log_that_fails_keeps_the_exit_code(
    dev_api: DevApiServer, docs: Path
) -> None:
    if not stat.S_ISCHR(os.stat("/dev/full").st_mode):
        pytest.skip("/dev/full is not the character device that fails every write")
    stdout, stderr = io.StringIO(), io.StringIO()
    # /dev/full opens for writing like /dev/termination-log does in a pod, then every write
    # fails with "No space left on device".
    output = Output(stdout=stdout, stderr=stderr, termination_log=Path("/dev/full"))
    settings = Settings(task_id="t", api_url=dev_api.url, root=str(docs))
    code, _harvest = run_cleanup(settings, output, kubernetes=False)
    assert code is ExitCode.OK, stderr.getvalue()
    assert (
        "warning: /dev/full: the termination message cannot be written (No space left on device)"
        in stderr.getvalue()
    )


def assert_refused(result: subprocess.CompletedProcess[str], log_format: str) -> str:
    """Exit 2 with one sentence (one JSON error event in json mode), no traceback; the sentence."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    if log_format == "json":
        assert result.stderr == ""
        events = [json.loads(line) for line in result.stdout.splitlines()]
        assert all(isinstance(event, dict) for event in events)
        errors = [event for event in events if event["event"] == "error"]
        assert len(errors) == 1, result.stdout
        message: str = errors[0]["message"]
        return message
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], result.stderr
    return lines[-1].removeprefix("error: ")


@pytest.fixture
def permissive(httpserver: HTTPServer) -> HTTPServer:
    """A server that says yes to anything: only the harvester's own checks can stop a run."""
    httpserver.expect_request(re.compile(".*")).respond_with_json({"id": "doc-1"})
    return httpserver


BAD_TOKENS: dict[str, tuple[str, str | bytes, str]] = {
    # id: (where, the token's text or file bytes, what the sentence says)
    "env-line-feed": ("env", "Zq7s3cr\nX-Evil: 1", "a line break at character 8"),
    "env-carriage-return": ("env", "Zq7s3cr\rX-Evil: 1", "a line break at character 8"),
    "env-not-latin1": ("env", "Zq7s3cr\u20acX-Evil", "a non-ASCII character at character 8"),
    "env-not-utf8": ("env", "Zq7s3cr\udcffX-Evil", "not UTF-8 at character 8"),
    "file-two-lines": ("file", b"Zq7s3cr\nX-Evil: 1\n", "a line break at character 8"),
    "file-nul": ("file", b"Zq7s3cr\x00X-Evil\n", "a NUL character at character 8"),
    "file-del": ("file", b"Zq7s3cr\x7fX-Evil\n", "a control character at character 8"),
    "file-not-utf8": ("file", b"Zq7s3cr\xe9X-Evil\n", "not UTF-8 (byte 8)"),
}


@pytest.mark.parametrize("log_format", LOG_FORMATS)
@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
def test_a_token_that_cannot_be_a_header_exits_2_and_is_never_shown(
    case: str, log_format: str, docs: Path, permissive: HTTPServer, tmp_path: Path
) -> None:
    where, token, problem = BAD_TOKENS[case]
    args = ["cleanup", "--task-id=t", f"--api-url={permissive.url_for('/')}", f"--root={docs}"]
    env = {"KERUTA_LOG_FORMAT": log_format}
    if where == "env":
        assert isinstance(token, str)
        env["KERUTA_API_TOKEN"] = token
        source = "KERUTA_API_TOKEN: "
    else:
        assert isinstance(token, bytes)
        token_file = tmp_path / "token"
        token_file.write_bytes(token)
        args.append(f"--token-file={token_file}")
        source = f"--token-file {token_file}: "
    result = run(*args, env=env)
    sentence = assert_refused(result, log_format)
    assert sentence.startswith(source)
    assert problem in sentence
    for part in SECRET_PARTS:
        assert part not in result.stdout + result.stderr
    assert permissive.log == []


KUBECONFIGS: dict[str, str | bytes | None] = {
    "garbage": "garbage: [unclosed\n",
    "not-a-mapping": "just a string\n",
    "not-utf8": b"\xff\xfe\x00garbage",
    "a-folder": None,
    "missing-reference": (
        "apiVersion: v1\nkind: Config\ncurrent-context: x\n"
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:6443',"
        " certificate-authority: /nonexistent/ca.crt}}]\n"
        "users: [{name: u, user: {}}]\n"
        "contexts: [{name: x, context: {cluster: c, user: u}}]\n"
    ),
}

CONFIG_MISTAKES: dict[str, tuple[list[str], dict[str, str], str]] = {
    # id: (flags, environment, what the sentence names); {url} is the permissive server's URL
    "ipv6-unclosed": (["--api-url=http://[::1"], {}, "--api-url"),
    "port-too-big": (["--api-url=http://127.0.0.1:70000"], {}, "Port out of range"),
    "space-in-url": (["--api-url=http://keruta api:8080"], {}, "contains a space"),
    "query": (["--api-url={url}?x=1"], {}, "query"),
    "fragment": (["--api-url={url}#frag"], {}, "fragment"),
    "max-size-inf": (["--max-file-size=inf"], {}, "--max-file-size"),
    "max-size-nan": (["--max-file-size=nan"], {}, "--max-file-size"),
    "max-size-negative": (["--max-file-size=-1"], {}, "--max-file-size"),
    "max-size-env-inf": ([], {"KERUTA_MAX_FILE_SIZE": "inf"}, "--max-file-size"),
    "task-id-control": (["--task-id=t\tx"], {}, "--task-id"),
    **{
        f"kubeconfig-{name}": (["--keep-pvc"], {"KUBECONFIG": f"{{tmp}}/kubeconfig-{name}"}, "")
        for name in KUBECONFIGS
    },
    "summary-folder-missing": (["--summary-json={tmp}/missing/summary.json"], {}, "folder"),
    "summary-is-a-folder": (["--summary-json={tmp}"], {}, "is a folder"),
    # A FIFO of our own: before the check, the summary replaced whatever stood there (as root,
    # even /dev/full), so the test must not point at anything outside tmp_path.
    "summary-is-a-fifo": (["--summary-json={tmp}/fifo"], {}, "not a regular file"),
}


@pytest.mark.parametrize("log_format", LOG_FORMATS)
@pytest.mark.parametrize("case", sorted(CONFIG_MISTAKES))
def test_a_configuration_mistake_exits_2_before_anything_is_sent(
    case: str, log_format: str, docs: Path, permissive: HTTPServer, tmp_path: Path
) -> None:
    for name, content in KUBECONFIGS.items():
        path = tmp_path / f"kubeconfig-{name}"
        if content is None:
            path.mkdir()
        else:
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
    make_fifo(tmp_path / "fifo")
    flags, env, named = CONFIG_MISTAKES[case]
    url = permissive.url_for("/").rstrip("/")

    def fill(text: str) -> str:
        return text.replace("{url}", url).replace("{tmp}", str(tmp_path))

    args = ["cleanup", "--task-id=t", f"--api-url={url}", f"--root={docs}"]
    args += [fill(flag) for flag in flags]
    environment = {"KERUTA_LOG_FORMAT": log_format, **{k: fill(v) for k, v in env.items()}}
    sentence = assert_refused(run(*args, env=environment), log_format)
    assert named in sentence
    if case.startswith("kubeconfig-"):
        assert sentence.startswith(f"KUBECONFIG {tmp_path}/kubeconfig-")
    assert permissive.log == []


def test_a_task_id_with_a_trailing_newline_is_trimmed(docs: Path, dev_api: DevApiServer) -> None:
    result = run(
        "cleanup", f"--api-url={dev_api.url}", f"--root={docs}", env={"KERUTA_TASK_ID": " t\n"}
    )
    assert result.returncode == 0, result.stderr
    task = dev_api.store.task("t")
    assert task is not None and task.status == "COMPLETED"


@pytest.mark.parametrize(
    "args",
    [["--concurrency=abc"], ["--bogus"], ["--log-level=loud"], ["--max-file-size=big"]],
    ids=["not-a-number", "unknown-option", "not-a-choice", "not-a-float"],
)
@pytest.mark.parametrize("log_format", LOG_FORMATS)
def test_a_wrong_flag_value_is_one_sentence(args: list[str], log_format: str) -> None:
    result = run(
        "cleanup", "--task-id=t", "--api-url=http://x", *args, f"--log-format={log_format}"
    )
    sentence = assert_refused(result, log_format)
    assert "harvester cleanup --help" in sentence
    as_env = run("cleanup", "--concurrency=abc", env={"KERUTA_LOG_FORMAT": log_format})
    assert_refused(as_env, log_format)


# The CLI's own entry point, run as `python -c`, telling on its last stderr line which
# top-level packages the run loaded.
_LOADED_BY_A_RUN = """
import json, sys
from harvester.cli import main
try:
    main()
finally:
    print(json.dumps(sorted({name.partition(".")[0] for name in sys.modules})), file=sys.stderr)
"""


@pytest.mark.parametrize("log_format", LOG_FORMATS)
def test_a_json_lines_run_never_loads_rich(
    docs: Path, dev_api: DevApiServer, log_format: str
) -> None:
    # Start-up is paid by every cleanup Job: what only a person's output needs stays unloaded
    # when nobody reads it (a text run for kubectl logs ends with rich's summary table).
    env = isolated_env() | {"KERUTA_API_TOKEN": TOKEN}
    args = ["cleanup", "--task-id=t", f"--api-url={dev_api.url}", f"--root={docs}"]
    result = subprocess.run(
        [str(BIN / "python"), "-c", _LOADED_BY_A_RUN, *args, f"--log-format={log_format}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stderr.splitlines()[-1])
    assert ("rich" in loaded) is (log_format == "text")
    assert "kubernetes" not in loaded  # no cluster configured: its client is never imported
