"""HTTP/1.1 transports for many small uploads, side by side: `python -m bench.transports`.

Takes a number of uploads, a thread count and a body size (defaults: 5,000 uploads of 4 KiB
multipart bodies on 8 threads, as a harvest of many small documents sends them); starts
`python -m bench.fast_server` as a separate process and, for each candidate, sends the same
uploads to it and prints uploads/s and CPU milliseconds per upload: `client` is this process
(`os.times`, user + system), `server` the fast server's (/proc). Client CPU per upload is the
figure to compare on a shared machine: wall time moves with the neighbours.

The candidates (issue 13):
- `httpcore pool`: one shared `httpcore.ConnectionPool` for every thread (the transport before
  issue 13, without the stream wrappers its watchdog needed).
- `httpcore conn/thread`: one `httpcore.HTTPConnection` per thread.
- `h11 conn/thread`: h11 over a plain socket per thread, the request in one `sendall`.
- `h11 + httptools conn/thread`: h11 writes the request, httptools (uvicorn's C parser) reads
  the answer: what a C parser saves (the product reads its answers with it since 8 December).
- `http.client conn/thread`: the standard library's `HTTPConnection` per thread (the floor a
  Python client can reach without a parser of its own).
- `urllib3 pool`: one shared `urllib3.HTTPConnectionPool`.
- `keruta wire`: `harvester.wire.client.KerutaApi.upload_document` itself: the product's
  transport with the multipart framing, headers and answer handling around it.
- `h11 selector, 1 thread`: every upload from one thread over as many non-blocking connections
  as there are threads, h11 on each: the design without GIL hand-offs between threads (a
  measurement, not a client: no timeouts, retries or TLS).

Each thread sends its own share of the uploads (no queue between threads), every body is
distinct (its own path and content, as in a harvest) and every answer is read whole and checked
for 201. The figures measured here, and what they chose, are in bench/README.md ("Transports").
httpcore and urllib3 are here only as candidates: httpcore comes with httpx (a dev
dependency), urllib3 with the kubernetes client.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import selectors
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h11
import httpcore
import httptools
import urllib3

from bench.tools import isolated_env, proc_cpu_seconds
from harvester import USER_AGENT
from harvester.gate import Gate
from harvester.wire.client import KerutaApi
from harvester.wire.contract import IDEMPOTENCY_KEY_HEADER, idempotency_key
from harvester.wire.multipart import document_body

__all__ = ["CANDIDATES", "main"]

TASK = "bench"
PATH = f"/api/tasks/{TASK}/documents"
_READY = re.compile(r"listening on (http://\S+?)[\s(]")


@dataclass(frozen=True, slots=True)
class Upload:
    """One upload as every candidate sends it: the headers and the whole body."""

    rel_path: str
    sha256: str
    content: bytes
    headers: list[tuple[str, str]]
    body: bytes


def make_uploads(count: int, size: int) -> list[Upload]:
    uploads = []
    for index in range(count):
        rel_path = f"d{index // 100:03d}/f{index:05d}.bin"
        content = os.urandom(size)
        sha256 = hashlib.sha256(content).hexdigest()
        framing = document_body(rel_path, sha256, size)
        body = framing.head + content + framing.tail
        headers = [
            ("Host", "127.0.0.1"),
            ("User-Agent", USER_AGENT),
            ("Content-Type", framing.content_type),
            ("Content-Length", str(len(body))),
            (IDEMPOTENCY_KEY_HEADER, idempotency_key(TASK, rel_path, sha256)),
            ("Accept", "application/json"),
        ]
        uploads.append(Upload(rel_path, sha256, content, headers, body))
    return uploads


# A candidate: given the server's host and port, a factory of per-thread senders (each sends
# one upload and returns the status) and a closer run once all threads are done.
Sender = Callable[[Upload], int]
Candidate = Callable[[str, int], tuple[Callable[[], Sender], Callable[[], None]]]


def _connect(host: str, port: int) -> socket.socket:
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _h11_request(conn: h11.Connection, upload: Upload) -> bytes:
    """`upload` as h11 frames it on `conn`: head, body and end, for one write."""
    request = h11.Request(method="POST", target=PATH, headers=upload.headers)
    head = conn.send(request) or b""
    return (
        head
        + (conn.send(h11.Data(data=upload.body)) or b"")
        + (conn.send(h11.EndOfMessage()) or b"")
    )


def _bytes_headers(upload: Upload) -> list[tuple[bytes, bytes]]:
    return [(k.encode(), v.encode()) for k, v in upload.headers if k != "Host"]


def httpcore_pool(host: str, port: int) -> tuple[Callable[[], Sender], Callable[[], None]]:
    pool = httpcore.ConnectionPool(max_connections=8, max_keepalive_connections=8, retries=0)
    url = f"http://{host}:{port}{PATH}"

    def factory() -> Sender:
        def send(upload: Upload) -> int:
            with pool.stream(
                "POST", url, headers=_bytes_headers(upload), content=upload.body
            ) as response:
                for _chunk in response.iter_stream():
                    pass
                return response.status

        return send

    return factory, pool.close


def httpcore_connection(host: str, port: int) -> tuple[Callable[[], Sender], Callable[[], None]]:
    url = f"http://{host}:{port}{PATH}"
    made: list[httpcore.HTTPConnection] = []

    def factory() -> Sender:
        connection = httpcore.HTTPConnection(httpcore.Origin(b"http", host.encode(), port))
        made.append(connection)

        def send(upload: Upload) -> int:
            with connection.stream(
                "POST", url, headers=_bytes_headers(upload), content=upload.body
            ) as response:
                for _chunk in response.iter_stream():
                    pass
                return response.status

        return send

    return factory, lambda: _close_all(made)


def h11_connection(host: str, port: int) -> tuple[Callable[[], Sender], Callable[[], None]]:
    made: list[socket.socket] = []

    def factory() -> Sender:
        sock = _connect(host, port)
        made.append(sock)
        conn = h11.Connection(h11.CLIENT)

        def send(upload: Upload) -> int:
            sock.sendall(_h11_request(conn, upload))
            status = 0
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(sock.recv(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.EndOfMessage):
                    conn.start_next_cycle()
                    return status

        return send

    return factory, lambda: _close_all(made)


def h11_httptools_connection(
    host: str, port: int
) -> tuple[Callable[[], Sender], Callable[[], None]]:
    """h11 writes each request (a fresh h11 connection per request, which only serializes);
    httptools, uvicorn's C parser of llhttp, reads the answer."""
    made: list[socket.socket] = []

    class Answered:
        __slots__ = ("done",)

        def __init__(self) -> None:
            self.done = False

        def on_message_complete(self) -> None:
            self.done = True

    def factory() -> Sender:
        sock = _connect(host, port)
        made.append(sock)

        def send(upload: Upload) -> int:
            conn = h11.Connection(h11.CLIENT)
            sock.sendall(_h11_request(conn, upload))
            answered = Answered()
            parser = httptools.HttpResponseParser(answered)
            while not answered.done:
                parser.feed_data(sock.recv(65536))
            return int(parser.get_status_code())

        return send

    return factory, lambda: _close_all(made)


def http_client_connection(host: str, port: int) -> tuple[Callable[[], Sender], Callable[[], None]]:
    import http.client

    made: list[http.client.HTTPConnection] = []

    def factory() -> Sender:
        connection = http.client.HTTPConnection(host, port)
        made.append(connection)

        def send(upload: Upload) -> int:
            connection.request("POST", PATH, body=upload.body, headers=dict(upload.headers[1:]))
            response = connection.getresponse()
            response.read()
            return response.status

        return send

    return factory, lambda: _close_all(made)


def urllib3_pool(host: str, port: int) -> tuple[Callable[[], Sender], Callable[[], None]]:
    pool = urllib3.HTTPConnectionPool(host, port, maxsize=8, block=True, retries=False)

    def factory() -> Sender:
        def send(upload: Upload) -> int:
            response = pool.urlopen(
                "POST", PATH, body=upload.body, headers=dict(upload.headers[1:]), retries=False
            )
            return int(response.status)

        return send

    return factory, pool.close


def keruta_wire(host: str, port: int) -> tuple[Callable[[], Sender], Callable[[], None]]:
    api = KerutaApi(f"http://{host}:{port}", gate=Gate(), timeout=30.0)

    def factory() -> Sender:
        def send(upload: Upload) -> int:
            api.upload_document(
                TASK, upload.rel_path, upload.sha256, len(upload.content), upload.content
            )
            return 201  # any other answer raises

        return send

    return factory, api.close


def _close_all(made: list[Any]) -> None:
    for thing in made:
        thing.close()


def h11_selector(host: str, port: int, uploads: list[Upload], connections: int) -> list[int]:
    """Every upload from one thread over `connections` non-blocking sockets, h11 on each, a
    selector waking the thread for whichever answer comes: no GIL hand-off between threads.
    A measurement of the design, not a client: no timeouts, no retries, no TLS."""
    waiting = list(reversed(uploads))
    statuses: list[int] = []
    selector = selectors.DefaultSelector()
    made: list[socket.socket] = []

    def send_next(sock: socket.socket, conn: h11.Connection) -> None:
        sock.sendall(_h11_request(conn, waiting.pop()))

    for _ in range(min(connections, len(uploads))):
        sock = _connect(host, port)
        made.append(sock)
        conn = h11.Connection(h11.CLIENT)
        send_next(sock, conn)  # a small body fits the socket's buffer: sendall does not wait
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, (conn, [0]))
    try:
        while len(statuses) < len(uploads):
            for key, _events in selector.select():
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                conn, status = key.data
                conn.receive_data(ready.recv(65536))
                while (event := conn.next_event()) is not h11.NEED_DATA:
                    if isinstance(event, h11.Response):
                        status[0] = event.status_code
                    elif isinstance(event, h11.EndOfMessage):
                        statuses.append(status[0])
                        conn.start_next_cycle()
                        if waiting:
                            ready.setblocking(True)
                            send_next(ready, conn)
                            ready.setblocking(False)
                        break
                    elif isinstance(event, h11.ConnectionClosed):
                        raise ConnectionError("the server closed a connection")
    finally:
        selector.close()
        _close_all(made)
    return statuses


# Candidates that send every upload themselves, on as many connections as there are threads.
Multiplexed = Callable[[str, int, list[Upload], int], list[int]]
MULTIPLEXED: dict[str, Multiplexed] = {"h11 selector, 1 thread": h11_selector}

CANDIDATES: dict[str, Candidate] = {
    "httpcore pool": httpcore_pool,
    "httpcore conn/thread": httpcore_connection,
    "h11 conn/thread": h11_connection,
    "h11 + httptools conn/thread": h11_httptools_connection,
    "http.client conn/thread": http_client_connection,
    "urllib3 pool": urllib3_pool,
    "keruta wire": keruta_wire,
}


@dataclass(frozen=True, slots=True)
class Measured:
    wall_s: float
    client_cpu_s: float
    server_cpu_s: float | None


def measure(
    candidate: Candidate, host: str, port: int, uploads: list[Upload], threads: int, pid: int
) -> Measured:
    factory, close = candidate(host, port)
    failures: list[str] = []
    ready = threading.Barrier(threads + 1)

    def work(share: list[Upload]) -> None:
        try:
            send = factory()
        finally:
            ready.wait()
        try:
            for upload in share:
                status = send(upload)
                if status != 201:
                    failures.append(f"{upload.rel_path}: {status}")
                    return
        except Exception as exc:  # noqa: BLE001 - counted as a failure, the run is refused
            failures.append(f"{type(exc).__name__}: {exc}")

    workers = [
        threading.Thread(target=work, args=(uploads[index::threads],)) for index in range(threads)
    ]
    for worker in workers:
        worker.start()
    ready.wait()  # connections are made (where a candidate makes them up front)
    server_before = proc_cpu_seconds(pid)
    before, started = os.times(), time.perf_counter()
    for worker in workers:
        worker.join()
    wall, after = time.perf_counter() - started, os.times()
    server_after = proc_cpu_seconds(pid)
    close()
    if failures:
        raise SystemExit(f"{len(failures)} uploads failed, e.g. {failures[0]}")
    server = None
    if server_before is not None and server_after is not None:
        server = server_after - server_before
    return Measured(wall, (after.user - before.user) + (after.system - before.system), server)


def measure_multiplexed(
    candidate: Multiplexed, host: str, port: int, uploads: list[Upload], threads: int, pid: int
) -> Measured:
    server_before = proc_cpu_seconds(pid)
    before, started = os.times(), time.perf_counter()
    statuses = candidate(host, port, uploads, threads)
    wall, after = time.perf_counter() - started, os.times()
    server_after = proc_cpu_seconds(pid)
    refused = [status for status in statuses if status != 201]
    if refused or len(statuses) != len(uploads):
        raise SystemExit(f"{len(uploads) - statuses.count(201)} uploads failed, e.g. {refused[:1]}")
    server = None
    if server_before is not None and server_after is not None:
        server = server_after - server_before
    return Measured(wall, (after.user - before.user) + (after.system - before.system), server)


def start_server() -> tuple[subprocess.Popen[bytes], str, int]:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.fast_server", "--port", "0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=isolated_env(),
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert process.stderr is not None
    line = process.stderr.readline().decode(errors="replace")
    match = _READY.search(line)
    if not match:
        process.kill()
        raise SystemExit(f"bench.fast_server did not start: {line.strip()}")
    host, _, port_text = match.group(1).removeprefix("http://").partition(":")
    port = int(port_text)
    # The line comes once the socket is bound; uvicorn listens on it a moment later.
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return process, host, port
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise SystemExit("bench.fast_server does not accept connections") from None
            time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.transports", description=__doc__)
    parser.add_argument("--uploads", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--size", type=int, default=4096, help="bytes of content per upload")
    parser.add_argument("--runs", type=int, default=3, help="runs per candidate, interleaved")
    parser.add_argument(
        "--candidate",
        action="append",
        choices=sorted([*CANDIDATES, *MULTIPLEXED]),
        help="default: all",
    )
    args = parser.parse_args(argv)
    names = args.candidate or [*CANDIDATES, *MULTIPLEXED]
    uploads = make_uploads(args.uploads, args.size)
    process, host, port = start_server()
    results: dict[str, list[Measured]] = {name: [] for name in names}
    try:
        for run in range(args.runs):
            for name in names:
                if name in MULTIPLEXED:
                    measured = measure_multiplexed(
                        MULTIPLEXED[name], host, port, uploads, args.threads, process.pid
                    )
                else:
                    measured = measure(
                        CANDIDATES[name], host, port, uploads, args.threads, process.pid
                    )
                results[name].append(measured)
                sys.stderr.write(
                    f"run {run + 1} {name}: {measured.wall_s:.2f}s, "
                    f"client {measured.client_cpu_s * 1000 / len(uploads):.3f} ms/upload\n"
                )
    finally:
        process.terminate()
        process.wait(10)
    count = len(uploads)
    print(
        f"{count:,} uploads of {args.size:,} B on {args.threads} threads against "
        f"bench.fast_server; median of {args.runs}"
    )
    print(f"  {'candidate':<30}{'uploads/s':>10}{'CPU ms/upload: client':>24}{'server':>8}")
    for name in names:
        runs = results[name]
        rate = statistics.median(count / m.wall_s for m in runs)
        client = statistics.median(m.client_cpu_s for m in runs) * 1000 / count
        servers = [m.server_cpu_s for m in runs if m.server_cpu_s is not None]
        server = f"{statistics.median(servers) * 1000 / count:.3f}" if servers else "-"
        print(f"  {name:<30}{rate:>10,.0f}{client:>24.3f}{server:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
