"""The keruta-api client against real loopback servers: the wire shape and the error classes."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from harvester import USER_AGENT
from harvester.devapi.server import DevApiServer
from harvester.errors import (
    ApiError,
    AuthRejected,
    FileChanged,
    Interrupted,
    RejectedError,
    RetryableError,
)
from harvester.gate import Gate, GateClosed
from harvester.model import TaskStatus
from harvester.settings import Settings
from harvester.wire.client import LISTING_CAP, MAX_RETRY_AFTER, KerutaApi, parse_retry_after
from harvester.wire.contract import STATUS_KEYS, idempotency_key, status_body
from tests.servers import Answer, ResettingProxy, ScriptedServer, Seen, endless, routes

TOKEN = "s3cr3t-token-value"
# What a harvest that may write passes; the gate's refusals have their own tests below.
OPEN = Gate()
DEFAULTS = Settings(task_id="t", api_url="http://keruta-api:8080")


def client(url: str, **kwargs: Any) -> KerutaApi:
    """A client with the cleanup's defaults (`Settings`), and an open gate unless told."""
    kwargs.setdefault("gate", OPEN)
    kwargs.setdefault("timeout", DEFAULTS.timeout)
    return KerutaApi(url, **kwargs)


def api_for(server: HTTPServer, **kwargs: Any) -> KerutaApi:
    return client(server.url_for("/").rstrip("/"), **kwargs)


def test_upload_sends_the_contract_shape(httpserver: HTTPServer) -> None:
    seen: list[Request] = []

    def handler(request: Request) -> Response:
        request.get_data()  # read the stream before the form parser would
        seen.append(request)
        return Response(json.dumps({"id": "doc-1"}), status=201, content_type="application/json")

    httpserver.expect_request("/api/tasks/task-7/documents", method="POST").respond_with_handler(
        handler
    )
    content = "# 結果\nall good\n".encode()
    sha = hashlib.sha256(content).hexdigest()
    with api_for(httpserver, token=TOKEN) as api:
        document_id = api.upload_document(
            "task-7", "レポート/結果.md", sha, len(content), [content]
        )

    assert document_id == "doc-1"
    (request,) = seen
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["User-Agent"] == USER_AGENT
    assert request.headers["Idempotency-Key"] == idempotency_key("task-7", "レポート/結果.md", sha)
    assert request.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert int(request.headers["Content-Length"]) == len(request.get_data())
    assert "Transfer-Encoding" not in request.headers
    # werkzeug's own multipart parser, independent of ours, must read the same parts back.
    body = request.get_data()
    with Request.from_values(
        input_stream=io.BytesIO(body),
        content_type=request.headers["Content-Type"],
        content_length=len(body),
        method="POST",
    ) as reparsed:
        assert reparsed.form["path"] == "レポート/結果.md"
        assert reparsed.form["sha256"] == sha
        assert reparsed.form["size"] == str(len(content))
        file = reparsed.files["file"]
        assert file.filename == "レポート/結果.md"
        assert file.mimetype == "text/markdown"
        assert file.read() == content


def test_no_token_means_no_authorization_header(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/api/tasks/t/documents").respond_with_data("", status=204)
    with api_for(httpserver) as api:
        document_id = api.upload_document("t", "a.txt", "0" * 64, 1, [b"x"])
    assert document_id is None
    request, _response = httpserver.log[0]
    assert "Authorization" not in request.headers


def test_status_update_sends_only_the_accepted_keys(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/api/v1/tasks/t 1/status", method="PUT").respond_with_json(
        {"id": "t 1", "status": "FAILED"}
    )
    with api_for(httpserver, token=TOKEN) as api:
        api.set_status("t 1", TaskStatus.FAILED, "2 failed", error_code="HARVEST_UPLOAD_FAILED")
    request, _response = httpserver.log[0]
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.get_data()) == {
        "status": "FAILED",
        "message": "2 failed",
        "errorCode": "HARVEST_UPLOAD_FAILED",
    }


def test_status_outside_the_contract_is_refused_locally(httpserver: HTTPServer) -> None:
    with api_for(httpserver) as api, pytest.raises(ValueError, match="PROCESSING"):
        api.set_status("t", TaskStatus("PROCESSING"), "old docs used this")
    assert httpserver.log == []


def test_a_status_body_carries_only_the_keys_the_contract_names() -> None:
    body = status_body(TaskStatus.FAILED, "m", progress=0, error_code="E")
    assert tuple(body) == STATUS_KEYS
    assert body["status"] == "FAILED"


@pytest.mark.parametrize("code", [401, 403])
def test_auth_rejection_is_fatal_and_never_echoes_the_token(
    httpserver: HTTPServer, code: int
) -> None:
    httpserver.expect_request("/api/tasks/t/documents").respond_with_json(
        {"error": "unauthorized", "message": f"bad token {TOKEN}"[:10]}, status=code
    )
    with api_for(httpserver, token=TOKEN) as api, pytest.raises(AuthRejected) as info:
        api.upload_document("t", "a.txt", "0" * 64, 1, [b"x"])
    assert info.value.status_code == code
    assert str(code) in str(info.value)
    assert TOKEN not in str(info.value)
    assert "KERUTA_API_TOKEN" in str(info.value)


@pytest.mark.parametrize("code", [408, 425, 429, 500, 502, 503, 504])
def test_transient_statuses_are_retryable(httpserver: HTTPServer, code: int) -> None:
    httpserver.expect_request("/api/tasks/t/documents").respond_with_data(
        "busy", status=code, headers={"Retry-After": "3"}
    )
    with api_for(httpserver) as api, pytest.raises(RetryableError) as info:
        api.upload_document("t", "a.txt", "0" * 64, 1, [b"x"])
    assert info.value.status_code == code
    assert info.value.retry_after == 3.0
    assert "busy" in str(info.value)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("12", 12.0),
        (" 0 ", 0.0),
        ("Wed, 26 Nov 2026 12:00:30 GMT", 30.0),
        ("Wed, 26 Nov 2026 11:59:00 GMT", 0.0),  # in the past: go now
        ("99999", MAX_RETRY_AFTER),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    now = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after(header, now=lambda: now) == expected


def test_payload_too_large_is_permanent_and_says_what_to_do(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/api/tasks/t/documents").respond_with_json(
        {"message": "Maximum upload size exceeded"}, status=413
    )
    with api_for(httpserver) as api, pytest.raises(RejectedError) as info:
        api.upload_document("t", "big.bin", "0" * 64, 1, [b"x"])
    assert not isinstance(info.value, RetryableError)
    message = str(info.value)
    assert "413 Request Entity Too Large" in message
    assert "Maximum upload size exceeded" in message
    assert "--max-file-size" in message


def test_long_server_bodies_are_cut(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/api/tasks/t/documents").respond_with_data("x" * 5000, status=400)
    with api_for(httpserver) as api, pytest.raises(RejectedError) as info:
        api.upload_document("t", "a.txt", "0" * 64, 1, [b"x"])
    assert len(str(info.value)) < 500


def test_slow_server_times_out_as_retryable(httpserver: HTTPServer) -> None:
    def slow(_request: Request) -> Response:
        time.sleep(1.0)
        return Response("late", status=200)

    httpserver.expect_request("/api/v1/tasks/t/status").respond_with_handler(slow)
    with api_for(httpserver, timeout=0.2) as api, pytest.raises(RetryableError) as info:
        api.set_status("t", TaskStatus.COMPLETED, "done")
    assert "timed out" in str(info.value)
    assert "--timeout" in str(info.value)


def test_connection_reset_is_retryable(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/api/v1/tasks/t/status").respond_with_json({"id": "t"})
    with ResettingProxy(httpserver.host, httpserver.port, resets=1) as proxy:
        with client(proxy.url) as api:
            with pytest.raises(RetryableError, match="connection"):
                api.set_status("t", TaskStatus.COMPLETED, "done")
            api.set_status("t", TaskStatus.COMPLETED, "done")  # the next connection goes through
        assert proxy.resets_done == 1


def test_refused_connection_is_retryable_and_names_the_url() -> None:
    with client("http://127.0.0.1:9") as api, pytest.raises(RetryableError) as info:
        api.set_status("t", TaskStatus.COMPLETED, "done")
    assert "http://127.0.0.1:9" in str(info.value)


def test_a_failing_body_aborts_the_request_before_it_completes(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/api/tasks/t/documents").respond_with_json({"id": "x"})

    def changing() -> Iterator[bytes]:
        yield b"first half "
        raise FileChanged("a.txt: changed while it was uploaded")

    with api_for(httpserver) as api:
        with pytest.raises(FileChanged):
            api.upload_document("t", "a.txt", "0" * 64, 100, changing())
        # The pool is still usable afterwards.
        api.upload_document("t", "b.txt", "0" * 64, 1, [b"x"])
    completed = [request.get_data() for request, _response in httpserver.log]
    assert all(b"first half" not in body for body in completed)


def test_listing_is_optional(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/api/tasks/a/documents", method="GET").respond_with_json(
        [{"path": "x.md", "sha256": "AB" * 32, "id": "1"}, {"path": "y.md"}]
    )
    httpserver.expect_request("/api/tasks/b/documents", method="GET").respond_with_data(
        "", status=405
    )
    httpserver.expect_request("/api/tasks/c/documents", method="GET").respond_with_data(
        "<html>", status=200
    )
    with api_for(httpserver) as api:
        listed = api.list_documents("a")
        assert listed is not None
        assert [(d.path, d.sha256) for d in listed] == [("x.md", "ab" * 32)]
        assert api.list_documents("b") is None
        assert api.list_documents("c") is None


def test_dry_run_gate_blocks_every_write(httpserver: HTTPServer) -> None:
    with api_for(httpserver, gate=Gate(dry_run=True)) as api:
        with pytest.raises(GateClosed):
            api.upload_document("t", "a.txt", "0" * 64, 1, [b"x"])
        with pytest.raises(GateClosed):
            api.upload_document("t", "a.txt", "0" * 64, 1, b"x")
        with pytest.raises(GateClosed):
            api.set_status("t", TaskStatus.COMPLETED, "done")
    assert httpserver.log == []


def test_a_kept_pvc_still_lets_the_documents_and_the_status_through() -> None:
    with (
        ScriptedServer(routes()) as server,
        client(server.url, gate=Gate(keep_pvc=True)) as api,
    ):
        assert api.upload_document("t", "a.txt", hashlib.sha256(b"x").hexdigest(), 1, b"x")
        api.set_status("t", TaskStatus.COMPLETED, "done")
    assert [(seen.method, seen.path) for seen in server.seen] == [
        ("POST", "/api/tasks/t/documents"),
        ("PUT", "/api/v1/tasks/t/status"),
    ]


def test_custom_endpoint_paths(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/v2/t/docs", method="POST").respond_with_json({"id": 42})
    api = client(
        httpserver.url_for("/").rstrip("/"),
        gate=OPEN,
        documents_path="/v2/{taskId}/docs",
    )
    assert api.upload_document("t", "a", "0" * 64, 1, [b"x"]) == "42"


def test_a_retried_upload_is_stored_once_thanks_to_the_idempotency_key(
    dev_api: DevApiServer,
) -> None:
    content = b"the same document, sent twice"
    sha = hashlib.sha256(content).hexdigest()
    with client(dev_api.url) as api:
        first = api.upload_document("t", "a/b.md", sha, len(content), [content])
        again = api.upload_document("t", "a/b.md", sha, len(content), [content])
    assert first is not None
    assert again == first  # the server replayed its answer: the same document
    assert len(dev_api.store.documents("t")) == 1


# ----------------------------------------------------------------- hostile servers (issue 9)

MIB = 1024 * 1024


def trickling(_seen: Seen) -> Answer:
    """Headers at once, then one byte every half second: never idle long enough for the one
    second read timeout the tests set (a byte a second raced it: a late byte on a busy machine
    ended the request as "no progress" before the watchdog could)."""
    return Answer(200, (("Content-Length", "1000000"),), endless(b"[", None), interval=0.5)


def test_a_trickling_answer_is_cut_at_the_total_time_limit() -> None:
    with ScriptedServer(trickling) as server, client(server.url, timeout=1.0) as api:
        started = time.monotonic()
        with pytest.raises(RetryableError) as info:
            api.list_documents("t")
        elapsed = time.monotonic() - started
    message = str(info.value)
    assert "--timeout" in message
    assert "KiB/s" in message  # names the minimum rate it fell below
    assert elapsed < 15, f"a trickling answer held the request for {elapsed:.0f}s"


def test_the_overall_deadline_cuts_a_request_short() -> None:
    deadline = time.monotonic() + 1.0
    with (
        ScriptedServer(trickling) as server,
        client(server.url, timeout=60.0, deadline=deadline) as api,
        pytest.raises(RetryableError, match="--deadline"),
    ):
        api.set_status("t", TaskStatus.COMPLETED, "done")


def stop_once(requested: threading.Event, stop: threading.Event) -> None:
    """SIGTERM's part: set `stop` as soon as the server has the request."""
    if requested.wait(10):
        stop.set()


def test_stop_abandons_a_waiting_request_after_a_short_grace() -> None:
    stop = threading.Event()
    with ScriptedServer(trickling) as server, client(server.url, stop=stop) as api:
        threading.Thread(target=stop_once, args=(server.requested, stop)).start()
        started = time.monotonic()
        with pytest.raises(Interrupted, match="interrupted"):
            api.list_documents("t")
        elapsed = time.monotonic() - started
        assert elapsed < 15, f"the stop took {elapsed:.0f}s to end the request"
        # Once stopped, no new request leaves at all.
        with pytest.raises(Interrupted):
            api.set_status("t", TaskStatus.COMPLETED, "done")
    assert len(server.seen) == 1


@pytest.mark.parametrize("status", [201, 500])
def test_a_huge_answer_to_an_upload_is_not_read_whole(status: int) -> None:
    huge = 256 * MIB

    def answer(_seen: Seen) -> Answer:
        return Answer(status, (("Content-Type", "application/json"),), endless(total=huge))

    with ScriptedServer(answer) as server, client(server.url) as api:
        if status == 201:
            assert api.upload_document("t", "a.txt", "0" * 64, 1, [b"x"]) is None
        else:
            with pytest.raises(RetryableError, match="500") as info:
                api.upload_document("t", "a.txt", "0" * 64, 1, [b"x"])
            assert "cut" in str(info.value)
    # The client hung up after its cap: the server got only socket buffers' worth further.
    assert server.sent[0] < 32 * MIB, f"the client read {server.sent[0] / MIB:.0f} MiB"


def test_a_listing_past_its_cap_means_unknown_with_a_warning() -> None:
    def answer(_seen: Seen) -> Answer:
        return Answer(200, (("Content-Type", "application/json"),), endless(total=256 * MIB))

    notices: list[str] = []
    with ScriptedServer(answer) as server, client(server.url) as api:
        assert api.list_documents("t", notice=notices.append) is None
    assert server.sent[0] < (LISTING_CAP + 32 * MIB)
    (notice,) = notices
    assert "Idempotency-Key" in notice
    assert "MiB" in notice


def echo_authorization(status: int) -> Callable[[Seen], Answer]:
    def answer(seen: Seen) -> Answer:
        echoed = seen.headers.get("authorization", "")
        body = json.dumps({"message": f"bad header {echoed}; again: {echoed.lower()}"})
        headers = (("Content-Type", "application/json"), ("Location", f"/x?h={echoed}"))
        return Answer(status, headers, [body.encode()])

    return answer


@pytest.mark.parametrize("status", [401, 500, 400, 307])
def test_a_server_echoing_the_token_never_gets_it_into_a_message(status: int) -> None:
    with (
        ScriptedServer(echo_authorization(status)) as server,
        client(server.url, token=TOKEN) as api,
        pytest.raises(ApiError) as info,
    ):
        api.upload_document("t", "a.txt", "0" * 64, 1, [b"x"])
    message = str(info.value)
    assert str(status) in message
    assert TOKEN not in message
    assert TOKEN.lower() not in message
    assert "[redacted]" in message


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_is_refused_naming_where_it_pointed(status: int) -> None:
    location = "https://elsewhere.example/api/tasks/t/documents\x85"

    def answer(_seen: Seen) -> Answer:
        return Answer(status, (("Location", location), ("Content-Length", "0")))

    with ScriptedServer(answer) as server, client(server.url, token=TOKEN) as api:
        for call in (
            lambda: api.upload_document("t", "a.txt", "0" * 64, 1, [b"x"]),
            lambda: api.set_status("t", TaskStatus.COMPLETED, "done"),
            lambda: api.list_documents("t"),
        ):
            with pytest.raises(RejectedError) as info:
                call()
            message = str(info.value)
            assert not isinstance(info.value, RetryableError)
            assert f"{status} {HTTPStatus(status).phrase}" in message
            assert "https://elsewhere.example/api/tasks/t/documents" in message
            assert "\x85" not in message
            assert "--api-url" in message
    # Nothing was followed: one request per call, all to this server.
    assert len(server.seen) == 3
