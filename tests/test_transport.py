"""The transport under the keruta-api client, against real loopback servers: a connection per
thread kept alive, connections servers close, resets, stalls, early answers, and TLS."""

from __future__ import annotations

import hashlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from harvester.errors import ConfigError, RejectedError, RetryableError
from harvester.gate import Gate
from harvester.model import TaskStatus
from harvester.settings import ControllerSettings, Settings
from harvester.wire.client import KerutaApi
from tests.servers import (
    Answer,
    KeepAliveServer,
    ResettingProxy,
    ScriptedServer,
    Seen,
    json_answer,
    routes,
)

MIB = 1024 * 1024
SHA = "0" * 64


def client(url: str, **kwargs: Any) -> KerutaApi:
    kwargs.setdefault("gate", Gate())
    kwargs.setdefault("timeout", 30.0)
    return KerutaApi(url, **kwargs)


def upload(api: KerutaApi, name: str, content: bytes = b"x") -> str | None:
    return api.upload_document(
        "t", name, hashlib.sha256(content).hexdigest(), len(content), content
    )


def upload_from_threads(api: KerutaApi, threads: int, each: int) -> list[str | None]:
    """`threads` threads upload `each` documents apiece; every id the server answered."""
    ids: list[str | None] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(number: int) -> None:
        try:
            for index in range(each):
                document_id = upload(api, f"w{number}/d{index}.md", f"{number}/{index}".encode())
                with lock:
                    ids.append(document_id)
        except BaseException as exc:  # noqa: BLE001 - handed to the test below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert not errors, errors[0]
    return ids


# ------------------------------------------------------------------ connections kept alive


def test_each_thread_keeps_one_connection_alive() -> None:
    with KeepAliveServer() as server, client(server.url) as api:
        ids = upload_from_threads(api, threads=4, each=10)
        api.set_status("t", TaskStatus.COMPLETED, "done")  # the main thread: one more
    assert len(ids) == 40 and None not in ids
    assert server.answered == 41
    assert server.connections == 5


def test_a_server_closing_after_every_answer_loses_no_upload() -> None:
    with KeepAliveServer(close="announce") as server, client(server.url) as api:
        ids = upload_from_threads(api, threads=8, each=25)
    assert len(set(ids)) == 200 and None not in ids
    assert server.requests == server.answered == 200
    assert server.connections == 200  # none reused after its Connection: close


def test_a_kept_connection_closed_as_the_request_arrives_is_replaced() -> None:
    with KeepAliveServer(close="next") as server, client(server.url) as api:
        first = upload(api, "a.md")
        second = upload(api, "b.md")  # on the kept connection, which the server drops
        api.set_status("t", TaskStatus.COMPLETED, "done")  # PUT: idempotent, resent too
    assert first and second and first != second
    assert server.requests == 5  # two of them sent twice
    assert server.answered == 3
    assert server.connections == 3


def test_a_streamed_body_is_not_resent_when_a_kept_connection_drops_it() -> None:
    def body() -> Iterator[bytes]:
        yield b"x" * 10

    with KeepAliveServer(close="next") as server, client(server.url) as api:
        upload(api, "a.md")
        # A generator cannot be read twice: the caller's retrier decides (and reads the file
        # again); the transport says what happened.
        with pytest.raises(RetryableError, match="closed the kept-alive connection"):
            api.upload_document("t", "b.md", SHA, 10, body())
        assert upload(api, "c.md")  # a new connection
    assert server.answered == 2


# ------------------------------------------------------------------ broken and slow servers


def test_a_reset_mid_body_is_retryable_and_the_next_upload_goes_through() -> None:
    total = 8 * MIB
    consumed = 0

    def large() -> Iterator[bytes]:
        nonlocal consumed
        for _ in range(total // (256 * 1024)):
            consumed += 256 * 1024
            yield b"y" * (256 * 1024)

    with (
        KeepAliveServer() as server,
        ResettingProxy("127.0.0.1", server.port, resets=1) as proxy,
        client(proxy.url) as api,
    ):
        with pytest.raises(RetryableError, match=r"connection to keruta-api .* broke"):
            api.upload_document("t", "big.bin", SHA, total, large())
        assert consumed < total, "the whole body went out although the connection was reset"
        assert upload(api, "after.md")
    assert server.answered == 1  # only the upload after the reset arrived


def test_a_stalled_answer_hits_the_timeout() -> None:
    def stalled(_seen: Seen) -> Answer:
        return Answer(201, (("Content-Length", "2"),), [b"{}"], stall=30)

    with (
        ScriptedServer(stalled) as server,
        client(server.url, timeout=0.5) as api,
        pytest.raises(RetryableError) as info,
    ):
        upload(api, "a.md")
    message = str(info.value)
    assert "made no progress for 0.5s (waiting for the answer)" in message
    assert "--timeout" in message


def stalled_message(api: KerutaApi, send: Callable[[KerutaApi], object]) -> str:
    """What `send` fails with: a stall the watchdog ends (the sockets have no timeout)."""
    with pytest.raises(RetryableError) as info:
        send(api)
    return str(info.value)


@pytest.mark.timeout(30)  # a guard against a hang, not a measure
def test_a_server_that_accepts_and_never_reads_stalls_waiting_for_the_answer() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with client(url, timeout=0.5) as api:
            # The small request fits in the kernel's buffers: sent, then nothing comes back.
            message = stalled_message(api, lambda api: upload(api, "a.md"))
    assert "made no progress for 0.5s (waiting for the answer)" in message


@pytest.mark.timeout(30)
@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_an_answer_stopping_mid_body_stalls_reading_the_answer(
    tls: bool, ca: trustme.CA, ca_file: Path
) -> None:
    def head_then_nothing(_seen: Seen) -> Answer:
        return Answer(200, (("Content-Length", "1000"),), [b"[" * 10])

    context = server_context(ca, "localhost")[0] if tls else None
    with (
        ScriptedServer(head_then_nothing, hold=30, tls=context) as server,
        client(server.url, timeout=1.0, ca_cert=ca_file if tls else None) as api,
    ):
        message = stalled_message(api, lambda api: api.list_documents("t"))
    assert "made no progress for 1s (reading the answer)" in message


@pytest.mark.timeout(30)
def test_https_a_server_that_never_answers_stalls_waiting_for_the_answer(
    ca: trustme.CA, ca_file: Path
) -> None:
    def stalled(_seen: Seen) -> Answer:
        return Answer(201, (("Content-Length", "2"),), [b"{}"], stall=30)

    context, _sni = server_context(ca, "localhost")
    with (
        ScriptedServer(stalled, tls=context) as server,
        client(server.url, timeout=0.5, ca_cert=ca_file) as api,
    ):
        message = stalled_message(api, lambda api: upload(api, "a.md"))
    assert "made no progress for 0.5s (waiting for the answer)" in message


@pytest.mark.timeout(60)
def test_https_a_server_that_never_reads_a_large_body_stalls_sending(
    ca: trustme.CA, ca_file: Path
) -> None:
    """A TLS write takes its chunk whole (no partial send as on plain TCP): one blocked on a
    full buffer is ended by the watchdog."""
    context, _sni = server_context(ca, "localhost")
    total = 64 * MIB

    def large() -> Iterator[bytes]:
        for _ in range(total // MIB):
            yield b"z" * MIB

    def silent(_seen: Seen) -> Answer:
        return Answer(201, (("Content-Length", "2"),), [b"{}"], stall=30)

    with (
        ScriptedServer(silent, read_body=False, tls=context) as server,
        client(server.url, timeout=0.5, ca_cert=ca_file) as api,
    ):
        message = stalled_message(
            api, lambda api: api.upload_document("t", "big.bin", SHA, total, large())
        )
    assert "made no progress for 0.5s (sending)" in message


@pytest.mark.parametrize(("streamed", "hold"), [(False, 0.0), (True, 0.0), (True, 30.0)])
def test_an_answer_before_the_body_is_read_is_what_the_client_reports(
    streamed: bool, hold: float
) -> None:
    """A server refusing a body too large answers at once, and closes without reading it, or
    holds the connection open without reading (then the client must stop sending by itself:
    its writes would block until --timeout)."""

    def too_large(seen: Seen) -> Answer:
        if int(seen.headers["content-length"]) < MIB:
            return json_answer(201, {"id": "small"})
        body = b'{"message": "Maximum upload size exceeded"}'
        return Answer(413, (("Content-Length", str(len(body))),), [body])

    total = 32 * MIB
    consumed = 0

    def large() -> Iterator[bytes]:
        nonlocal consumed
        for _ in range(total // MIB):
            consumed += MIB
            yield b"z" * MIB

    with (
        ScriptedServer(too_large, read_body=False, hold=hold) as server,
        client(server.url, timeout=5.0) as api,
    ):
        with pytest.raises(RejectedError) as info:
            if streamed:
                api.upload_document("t", "big.bin", SHA, total, large())
            else:
                upload(api, "big.bin", b"z" * (4 * MIB))
        assert upload(api, "small.md") == "small"  # the next request: a new connection
    message = str(info.value)
    assert not isinstance(info.value, RetryableError)
    assert "413" in message and "Maximum upload size exceeded" in message
    assert "--max-file-size" in message
    if streamed:
        assert consumed < total, "the client sent the whole body after the server had answered"


def test_the_scheme_and_host_may_be_written_in_capitals() -> None:
    with KeepAliveServer() as server, client(server.url.replace("http://", "HTTP://")) as api:
        assert upload(api, "a.md") == "doc-1"


def test_unsupported_scheme_is_refused_naming_the_flag() -> None:
    with client("ftp://keruta-api:21") as api, pytest.raises(RejectedError) as info:
        api.set_status("t", TaskStatus.COMPLETED, "done")
    assert "ftp" in str(info.value)
    assert "--api-url" in str(info.value)


# ------------------------------------------------------------------ TLS


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA, *names: str) -> tuple[ssl.SSLContext, list[str]]:
    """A server's TLS context with a certificate for `names`, and the SNI names it was sent."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(*names).configure_cert(context)
    seen: list[str] = []

    def sni(_sock: Any, name: str | None, _context: Any) -> None:
        seen.append(name or "")

    context.sni_callback = sni
    return context, seen


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def test_https_with_a_private_ca_named_by_ca_cert(ca: trustme.CA, ca_file: Path) -> None:
    context, sni = server_context(ca, "localhost")
    with KeepAliveServer(tls=context) as server, client(server.url, ca_cert=ca_file) as api:
        ids = upload_from_threads(api, threads=2, each=5)
        api.set_status("t", TaskStatus.COMPLETED, "done")
    assert len(set(ids)) == 10
    assert server.answered == 11
    assert server.connections == 3  # kept alive over TLS too
    assert set(sni) == {"localhost"}


@pytest.mark.timeout(60)
def test_https_a_streamed_document_goes_out_whole_on_a_new_connection(
    ca: trustme.CA, ca_file: Path
) -> None:
    """A TLS 1.3 server's session tickets arrive after the handshake: they are not an early
    answer (taken for one, the body was abandoned before its head left, and the upload timed
    out)."""
    context, _sni = server_context(ca, "localhost")
    chunks = [bytes([65 + n]) * MIB for n in range(8)]
    with KeepAliveServer(tls=context) as server, client(server.url, ca_cert=ca_file) as api:
        for name in ("a.bin", "b.bin"):  # the second on the kept connection
            assert api.upload_document("t", name, SHA, 8 * MIB, iter(chunks))
    assert server.connections == 1
    assert len(server.bodies) == 2
    assert all(b"".join(chunks) in body for body in server.bodies)


@pytest.mark.timeout(60)
def test_https_an_answer_before_the_body_is_read_is_what_the_client_reports(
    ca: trustme.CA, ca_file: Path
) -> None:
    """Over TLS, only a read tells an answer from the session tickets: the answer's first bytes
    are read while the body goes out, and the rest of it after."""

    def too_large(_seen: Seen) -> Answer:
        body = b'{"message": "Maximum upload size exceeded"}'
        return Answer(413, (("Content-Length", str(len(body))),), [body])

    context, _sni = server_context(ca, "localhost")
    total = 32 * MIB
    offered = 0

    with (
        ScriptedServer(too_large, read_body=False, hold=30, tls=context) as server,
        client(server.url, ca_cert=ca_file, timeout=5.0) as api,
    ):

        def large() -> Iterator[bytes]:
            nonlocal offered
            # The head is out; the body waits until the answer is, so that it is there to be
            # seen between two writes.
            while not (server.sent and server.sent[0]):
                time.sleep(0.01)
            for _ in range(total // MIB):
                offered += MIB
                yield b"z" * MIB

        with pytest.raises(RejectedError) as info:
            api.upload_document("t", "big.bin", SHA, total, large())
    message = str(info.value)
    assert "413" in message and "Maximum upload size exceeded" in message
    assert offered < total, "the client sent the whole body after the server had answered"


def test_https_refuses_a_certificate_the_system_does_not_trust(ca: trustme.CA) -> None:
    context, _sni = server_context(ca, "localhost")
    with (
        KeepAliveServer(tls=context) as server,
        client(server.url) as api,
        pytest.raises(RetryableError) as info,
    ):
        upload(api, "a.md")
    message = str(info.value)
    assert "TLS handshake" in message and "certificate" in message
    assert "--ca-cert" in message
    assert server.answered == 0


def test_https_checks_the_name_on_the_certificate(ca: trustme.CA, ca_file: Path) -> None:
    context, _sni = server_context(ca, "keruta-api.elsewhere.example")
    with (
        KeepAliveServer(tls=context) as server,
        client(server.url, ca_cert=ca_file) as api,
        pytest.raises(RetryableError, match="localhost") as info,
    ):
        upload(api, "a.md")
    assert "TLS handshake" in str(info.value)
    assert server.answered == 0


def test_ca_cert_must_hold_a_certificate(tmp_path: Path, ca_file: Path) -> None:
    def settings(ca_cert: Path) -> Settings:
        return Settings(task_id="t", api_url="https://keruta-api:8443", ca_cert=ca_cert)

    assert settings(ca_file).ca_cert == ca_file
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("not a certificate\n")
    for path, problem in [
        (tmp_path / "missing.pem", "cannot be read"),
        (tmp_path, "is a folder"),
        (not_pem, "holds no PEM certificate"),
    ]:
        with pytest.raises(ConfigError) as info:
            settings(path)
        assert str(info.value).startswith(f"--ca-cert {path}: {problem}")


def test_the_controller_refuses_a_bad_ca_cert_only_when_it_reports(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    url = "https://keruta-api:8443"
    assert ControllerSettings(api_url=url, ca_cert=missing).ca_cert == missing  # unused
    with pytest.raises(ConfigError, match="--ca-cert"):
        ControllerSettings(report_failed=True, api_url=url, ca_cert=missing)


def test_proxy_variables_are_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """keruta-api is reached directly: a proxy would see the documents and the token."""
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    with ScriptedServer(routes()) as server, client(server.url) as api:
        assert upload(api, "a.md") == "doc"
    assert len(server.seen) == 1
