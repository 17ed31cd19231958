"""`--log-format json` stays one JSON object per line, in one shape, whatever goes wrong.

Each case runs the real CLI as a child process, in JSON mode, into a failure a cluster can meet:
a bad token or flag, an unreachable or hostile keruta-api, an unwritable summary. Every line on
stdout must parse as an object with `ts` and `event`, the last one the `summary` or the
`error`; nothing else reaches stderr; the token appears nowhere.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest

from tests.fstree import write_tree
from tests.process import BIN, isolated_env
from tests.servers import Answer, ScriptedServer, Seen, json_answer, routes

TOKEN = "tok-5d2c90-json-never-shows"


def echo_token(code: int) -> Callable[[Seen], Answer]:
    def answer(seen: Seen) -> Answer:
        return json_answer(code, {"message": f"you sent {seen.headers.get('authorization')}"})

    return answer


def fixed(code: int, *headers: tuple[str, str]) -> Callable[[Seen], Answer]:
    return lambda _seen: json_answer(code, {"message": f"scripted {code}"}, *headers)


@dataclass(frozen=True)
class Case:
    """One failure: extra CLI arguments ({url}, {tmp} and {closed} are filled in), extra
    environment, the server's behaviour, and the exit code the run must end with."""

    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    server: Callable[[Seen], Answer] = field(default_factory=routes)
    exit_code: int = 2
    token_file: bytes | None = None


CASES = {
    "token-with-a-line-break": Case(env={"KERUTA_API_TOKEN": "abc\nX-Evil: 1"}),
    "token-file-not-utf8": Case(token_file=b"\xff\xfeQz8Kp"),
    "api-url-unclosed-bracket": Case(args=("--api-url=http://[::1",)),
    "api-url-with-a-query": Case(args=("--api-url={url}/?x=1",)),
    "max-file-size-nan": Case(args=("--max-file-size=nan",)),
    "wrong-flag-value": Case(args=("--concurrency=many",)),
    "unknown-flag": Case(args=("--bogus",)),
    "summary-in-a-missing-folder": Case(args=("--summary-json={tmp}/no/such/summary.json",)),
    "unreachable-api": Case(args=("--api-url=http://127.0.0.1:{closed}",), exit_code=3),
    "token-rejected-and-echoed": Case(server=routes(listing=echo_token(401)), exit_code=6),
    "upload-too-large": Case(server=routes(upload=fixed(413)), exit_code=3),
    "upload-unavailable": Case(server=routes(upload=fixed(503, ("Retry-After", "0"))), exit_code=3),
    "status-error-echoing-the-token": Case(server=routes(status=echo_token(500)), exit_code=4),
    "listing-redirected": Case(
        server=routes(listing=fixed(301, ("Location", "https://elsewhere/api"))), exit_code=3
    ),
}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_every_failure_is_json_lines_of_one_shape(case: Case, tmp_path: Path) -> None:
    docs = write_tree(tmp_path / "doc", {"a.md": "# a\n", "b/c.txt": "c\n"})
    env = {"KERUTA_API_TOKEN": TOKEN} | case.env
    if case.token_file is not None:
        token_file = tmp_path / "token"
        token_file.write_bytes(case.token_file)
        env["KERUTA_API_TOKEN_FILE"] = str(token_file)
    with ScriptedServer(case.server) as server:
        filled = [
            arg.format(url=server.url, tmp=tmp_path, closed=closed_port()) for arg in case.args
        ]
        api_url = [] if any(arg.startswith("--api-url") for arg in filled) else [server.url]
        result = subprocess.run(
            [
                str(BIN / "harvester"),
                "cleanup",
                "--task-id=t",
                f"--root={docs}",
                "--log-format=json",
                "--retries=1",
                *(f"--api-url={url}" for url in api_url),
                *filled,
            ],
            env=isolated_env(env),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
            check=False,
        )

    assert result.returncode == case.exit_code, result.stdout + result.stderr
    assert result.stderr == ""
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events, "no output at all"
    for event in events:
        assert isinstance(event, dict)
        assert isinstance(event["event"], str)
        datetime.fromisoformat(event["ts"])
    assert events[-1]["event"] == ("error" if case.exit_code == 2 else "summary")
    for secret in (TOKEN, "X-Evil", "Qz8Kp"):
        assert secret not in result.stdout
