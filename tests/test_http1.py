"""HTTP/1.1 as the transport speaks it (wire/http1.py): request heads that cannot carry what
they should not, and answers no well-behaved server sends, read by the real client over real
loopback sockets."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest

from harvester.errors import RetryableError
from harvester.gate import Gate
from harvester.wire.client import KerutaApi
from harvester.wire.http1 import MAX_HEAD, InvalidRequest, request_head
from tests.kube_backends import wait_until
from tests.servers import RawServer


def created(number: int, *extra: bytes) -> bytes:
    """A 201 answer with document id `doc-NUMBER`, `extra` header lines added."""
    body = b'{"id": "doc-%d"}' % number
    head = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
    head += b"".join(line + b"\r\n" for line in extra)
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


def upload(api: KerutaApi, name: str) -> str | None:
    content = name.encode()
    return api.upload_document(
        "t", name, hashlib.sha256(content).hexdigest(), len(content), content
    )


def client(url: str) -> KerutaApi:
    return KerutaApi(url, gate=Gate(), timeout=10.0)


# ------------------------------------------------------------------ the request head


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/a b", []),
        ("/a\r\nX-Injected: 1", []),
        ("/ä", []),
        ("/a", [(b"X-Value", b"one\r\nX-Injected: 1")]),
        ("/a", [(b"X-Value", b"nul\x00")]),
        ("/a", [(b"X Name", b"v")]),
        ("/a", [(b"X-Name:", b"v")]),
    ],
)
def test_a_head_that_would_say_more_than_it_was_given_is_refused(
    target: str, headers: list[tuple[bytes, bytes]]
) -> None:
    with pytest.raises(InvalidRequest):
        request_head("GET", target, headers)


def test_a_head_is_its_lines_in_order() -> None:
    head = request_head("PUT", "/api/t%2F1?x=1", [(b"Host", b"h:1"), (b"X-A", b"v\tw ~")])
    assert head == b"PUT /api/t%2F1?x=1 HTTP/1.1\r\nHost: h:1\r\nX-A: v\tw ~\r\n\r\n"


# ------------------------------------------------------------------ answers, kept or not


def two_uploads(reply: Callable[[int], bytes], *, close_after: bool = False) -> int:
    """Upload two documents to a `RawServer` answering with `reply`; each must get its own id
    (`doc-0`, `doc-1`). How many connections they took."""
    with RawServer(reply, close_after=close_after) as server, client(server.url) as api:
        assert [upload(api, "a.md"), upload(api, "b.md")] == ["doc-0", "doc-1"]
    return server.connections


def chunked(number: int) -> bytes:
    body = b'{"id": "doc-%d"}' % number
    chunks = b"3\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (body[:3], len(body) - 3, body[3:])
    return b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks


def test_an_informational_answer_is_skipped_and_the_connection_kept() -> None:
    assert two_uploads(lambda n: b"HTTP/1.1 100 Continue\r\n\r\n" + created(n)) == 1


def test_a_chunked_answer_is_read_whole_and_the_connection_kept() -> None:
    assert two_uploads(chunked) == 1


def test_a_second_answer_slipped_in_after_the_first_is_never_read_as_the_next() -> None:
    # The first connection, with the extra answer on it, is dropped: a new one for the second.
    assert two_uploads(lambda n: created(n) + created(100 + n)) == 2


@pytest.mark.parametrize(
    "reply",
    [
        lambda n: created(n, b"Connection: close"),
        lambda n: created(n).replace(b"HTTP/1.1", b"HTTP/1.0", 1),
        lambda n: b"HTTP/1.1 201 Created\r\n\r\n" + b'{"id": "doc-%d"}' % n,
    ],
    ids=["connection-close", "http-1.0", "body-ends-with-the-connection"],
)
def test_an_answer_that_ends_its_connection_is_read_whole_and_not_reused(
    reply: Callable[[int], bytes],
) -> None:
    assert two_uploads(reply, close_after=True) == 2


@pytest.mark.parametrize(
    ("reply", "said"),
    [
        (
            lambda n: b"HTTP/1.1 201 Created\r\n" + b"X-Flood: yes\r\n" * (MAX_HEAD // 8),
            "headers are larger than 64 KiB",
        ),
        (
            lambda n: (
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
            ),
            "switched to another protocol",
        ),
        (lambda n: b"HTTP/1.1 2000 Created\r\n\r\n", "not an HTTP/1.1 answer"),
        (lambda n: b"SSH-2.0-OpenSSH_9.2\r\n", "not an HTTP/1.1 answer"),
        (
            lambda n: b"HTTP/1.1 201 Created\r\nContent-Length: 100\r\n\r\n{}",
            "closed the connection mid-answer",
        ),
    ],
    ids=["header-flood", "upgrade", "bad-status", "not-http", "cut-short"],
)
def test_an_answer_the_client_cannot_read_fails_the_request_clearly(
    reply: Callable[[int], bytes], said: str
) -> None:
    with (
        RawServer(reply, close_after=True) as server,
        client(server.url) as api,
        pytest.raises(RetryableError, match=said) as caught,
    ):
        upload(api, "a.md")
    assert "upload failed: the connection to keruta-api" in str(caught.value)


@pytest.mark.parametrize("given", [9, 11])
def test_a_body_other_than_announced_is_never_sent_whole(given: int) -> None:
    with RawServer(created) as server:
        with client(server.url) as api, pytest.raises(RetryableError, match="not valid HTTP"):
            api.upload_document("t", "a.md", "0" * 64, 10, iter([b"x" * given]))
        # Waited for: a request cut short is counted when the server sees its connection end.
        wait_until(lambda: server.cut == 1, "the server to see the request end")
    assert server.requests == 0
