"""Real loopback servers that misbehave on purpose, for the fault tests.

`ResettingProxy` forwards TCP connections to a target server, except the first `resets`
connections, which it answers with a TCP reset once the request has started to arrive.
`ScriptedServer` answers each request with what a test scripts: any status and headers, a body
that trickles, never ends, or echoes the request's headers; late, or before the request's body
has arrived. `KeepAliveServer` answers many requests per connection, and closes its connections
the ways real servers do. Each can speak TLS (`tls=`, a server-side `ssl.SSLContext`).
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import BinaryIO, Self


class _LoopbackServer:
    """A TCP listener on 127.0.0.1 that hands each connection to `_handle` on its own thread,
    from `with` until the block ends; `connections` counts the connections accepted."""

    def __init__(self, *, tls: ssl.SSLContext | None = None) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self._tls = tls
        self.port = self._listener.getsockname()[1]
        # A certificate names a host, not an address: https goes to "localhost".
        self.url = f"https://localhost:{self.port}" if tls else f"http://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.connections = 0
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _addr = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with self._lock:
            self.connections += 1
        if self._tls is not None:
            try:
                client.settimeout(10)
                client = self._tls.wrap_socket(client, server_side=True)
            except (OSError, ssl.SSLError):
                client.close()  # the client refused our certificate: nothing to serve
                return
        self._handle(client)

    def _handle(self, client: socket.socket) -> None:
        raise NotImplementedError


class ResettingProxy(_LoopbackServer):
    """A TCP proxy on 127.0.0.1 that resets the first `resets` connections."""

    def __init__(self, target_host: str, target_port: int, *, resets: int = 1) -> None:
        super().__init__()
        self._target = (target_host, target_port)
        self._resets_left = resets
        self.resets_done = 0

    def _handle(self, client: socket.socket) -> None:
        with self._lock:
            reset = self._resets_left > 0
            self._resets_left -= 1 if reset else 0
        if reset:
            self._reset(client)
        else:
            self._forward(client)

    def _reset(self, client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            client.settimeout(5)
            client.recv(1024)  # let the request start, so the reset hits mid-request
            # SO_LINGER with a zero timeout turns close() into a RST instead of a FIN.
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        with self._lock:
            self.resets_done += 1

    def _forward(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self._target, timeout=10)
        except OSError:
            client.close()
            return
        with client, upstream:
            back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
            back.start()
            _pump(client, upstream)
            back.join(10)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def read_head(reader: BinaryIO) -> tuple[str, str, dict[str, str]] | None:
    """The next request's method, target and headers (names in lower case) from a connection's
    reader, or None when the client closed the connection instead."""
    request_line = reader.readline(65536).decode("latin-1").split()
    if len(request_line) < 2:
        return None
    headers: dict[str, str] = {}
    while (line := reader.readline(65536)) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return request_line[0], request_line[1], headers


@dataclass(frozen=True)
class Seen:
    """One request as a `ScriptedServer` received it (header names in lower case)."""

    method: str
    path: str
    headers: dict[str, str]


@dataclass(frozen=True)
class Answer:
    """What a `ScriptedServer` sends back: a status line, headers, then `body` chunk by chunk,
    `interval` seconds apart. Without a Content-Length header the body ends when the
    connection closes, so it may be endless."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: Iterable[bytes] = ()
    interval: float = 0.0
    stall: float = 0.0  # seconds before the status line


def endless(chunk: bytes = b"x" * 65536, total: int | None = None) -> Iterator[bytes]:
    """`chunk` again and again: forever, or until `total` bytes were given."""
    given = 0
    while total is None or given < total:
        yield chunk
        given += len(chunk)


class ScriptedServer(_LoopbackServer):
    """An HTTP/1.1 server on 127.0.0.1 whose answers a test writes byte by byte.

    Each connection carries one request (`Connection: close`); the request body is read and
    dropped, or with `read_body=False` left unread: the answer goes out as soon as the headers
    are in, and the connection is closed without reading the rest (a server refusing a body
    too large, which makes the client's kernel see a reset), after `hold` seconds (a server
    that neither reads nor closes for a while). `seen` lists the requests, `sent`
    counts the body bytes sent to each (in order), `received` the request body bytes read, and
    `requested` is set as soon as a request has arrived.
    """

    def __init__(
        self,
        answer: Callable[[Seen], Answer],
        *,
        read_body: bool = True,
        hold: float = 0.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(tls=tls)
        self._answer = answer
        self._read_body = read_body
        self._hold = hold
        self.received: list[int] = []
        self.seen: list[Seen] = []
        self.sent: list[int] = []
        self.requested = threading.Event()

    def requests_to(self, method: str, path_part: str = "") -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.method == method and path_part in s.path]

    def _handle(self, client: socket.socket) -> None:
        with client, contextlib.suppress(OSError):
            client.settimeout(10)
            reader = client.makefile("rb")
            request = read_head(reader)
            if request is None:
                return
            method, target, headers = request
            remaining = int(headers.get("content-length", "0")) if self._read_body else 0
            received = 0
            while remaining > 0:
                data = reader.read(min(remaining, 65536)) or b"\0" * remaining
                remaining -= len(data)
                received += len(data)
            seen = Seen(method, target, headers)
            with self._lock:
                self.seen.append(seen)
                index = len(self.sent)
                self.sent.append(0)
                self.received.append(received)
            self.requested.set()
            answer = self._answer(seen)
            if answer.stall:
                self._stop.wait(answer.stall)
            head = [f"HTTP/1.1 {answer.status} Scripted", "Connection: close"]
            head += [f"{name}: {value}" for name, value in answer.headers]
            client.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
            for chunk in answer.body:
                if self._stop.is_set():
                    return
                client.sendall(chunk)
                with self._lock:
                    self.sent[index] += len(chunk)
                if answer.interval:
                    self._stop.wait(answer.interval)
            if self._hold:
                self._stop.wait(self._hold)


def routes(
    *,
    listing: Callable[[Seen], Answer] | None = None,
    upload: Callable[[Seen], Answer] | None = None,
    status: Callable[[Seen], Answer] | None = None,
) -> Callable[[Seen], Answer]:
    """A keruta-api: an empty listing, uploads and status accepted, unless told otherwise."""

    def answer(seen: Seen) -> Answer:
        if seen.method == "GET":
            return listing(seen) if listing else json_answer(200, [])
        if seen.method == "POST":
            return upload(seen) if upload else json_answer(201, {"id": "doc"})
        return status(seen) if status else json_answer(200, {"status": "COMPLETED"})

    return answer


def json_answer(code: int, data: object, *headers: tuple[str, str]) -> Answer:
    body = json.dumps(data).encode()
    return Answer(
        code,
        (("Content-Type", "application/json"), ("Content-Length", str(len(body))), *headers),
        [body],
    )


class KeepAliveServer(_LoopbackServer):
    """An HTTP/1.1 server on 127.0.0.1 that keeps connections alive, as keruta-api does, and
    answers every request with 201 and a document id; the request body is read whole.

    `close` says how it ends connections: "never"; "announce" (`Connection: close` on every
    answer, then it closes); "next" (it answers the first request of a connection, and closes
    the connection when the next one arrives, unanswered: a keep-alive timeout that fires as
    the request comes, which the client cannot see coming). `connections` counts the
    connections accepted, `requests` the requests received, `answered` those answered, and
    `bodies` holds each answered request's body.
    """

    def __init__(self, *, close: str = "never", tls: ssl.SSLContext | None = None) -> None:
        super().__init__(tls=tls)
        if close not in ("never", "announce", "next"):
            raise ValueError(close)
        self._close = close
        self.requests = 0
        self.answered = 0
        self.bodies: list[bytes] = []

    def _handle(self, client: socket.socket) -> None:
        with client, contextlib.suppress(OSError):
            client.settimeout(10)
            reader = client.makefile("rb")
            served = 0
            while not self._stop.is_set():
                request = read_head(reader)
                if request is None:
                    return  # the client closed the connection
                body = reader.read(int(request[2].get("content-length", "0")))
                with self._lock:
                    self.requests += 1
                if self._close == "next" and served:
                    return
                served += 1
                with self._lock:
                    self.answered += 1
                    self.bodies.append(body)
                    number = self.answered
                data = json.dumps({"id": f"doc-{number}"}).encode()
                head = ["HTTP/1.1 201 Created", "Content-Type: application/json"]
                head.append(f"Content-Length: {len(data)}")
                if self._close == "announce":
                    head.append("Connection: close")
                client.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data)
                if self._close == "announce":
                    return


class RawServer(_LoopbackServer):
    """An HTTP/1.1 server on 127.0.0.1 that answers the n-th request it receives (from 0, over
    all connections) with exactly the bytes `reply(n)` gives, and keeps the connection open
    for the next request until the client closes it; `close_after` closes it after each answer
    instead. For answers no well-behaved server would send. `connections` counts the
    connections accepted, `requests` the requests read whole (head and body), `cut` the
    requests whose connection closed before their whole body arrived."""

    def __init__(self, reply: Callable[[int], bytes], *, close_after: bool = False) -> None:
        super().__init__()
        self._reply = reply
        self._close_after = close_after
        self.requests = 0
        self.cut = 0

    def _handle(self, client: socket.socket) -> None:
        with client, contextlib.suppress(OSError):
            client.settimeout(10)
            reader = client.makefile("rb")
            while not self._stop.is_set():
                request = read_head(reader)
                if request is None:
                    return  # the client closed the connection
                length = int(request[2].get("content-length", "0"))
                if len(reader.read(length)) < length:
                    with self._lock:
                        self.cut += 1
                    return
                with self._lock:
                    number = self.requests
                    self.requests += 1
                client.sendall(self._reply(number))
                if self._close_after:
                    return
