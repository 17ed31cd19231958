"""Below the client: one request on the shared httpcore pool, bounded in time and in memory.

Takes a connection pool (`new_pool` makes the one a harvest shares), --timeout, the overall
--deadline, the harvest's stop event and a clock; gives `Transport.send`, which makes one request
and returns its `Answer`: the status, the headers and the body read up to a cap. It raises
`CutShort` when the watchdog ended the request, and httpcore's own errors otherwise
(`TRANSPORT_ERRORS`, `httpcore.UnsupportedProtocol`); the client turns both into the errors of
`harvester.errors`. Nothing here builds a message for a person.

Why httpcore and not httpx.Client: for many small documents the client's per-request overhead is
the limit, and a shared `httpcore.ConnectionPool` on worker threads costs a fraction of what
`httpx.Client` does per request (see bench/), with the same keep-alive pool underneath.

What a hostile or broken server cannot do here (issue 9; the client keeps the token and the
redirects, see client.py):
- Hold a request forever. --timeout bounds each wait without progress; on top, a request may
  take --timeout plus one second per `MIN_RATE` bytes it has moved (sent or received), and never
  run past the overall --deadline. Since bodies sent are of known size and bodies read are
  capped, that is a total limit. A trickle of one byte a second counts as no progress.
- Outlast a stop. Once the stop event is set (SIGTERM), a request in flight is abandoned after
  `STOP_GRACE` seconds (time for one about to finish); the client starts no new one. Both limits
  are enforced by a `_Watchdog` thread that shuts down the socket of the request it ends: sync
  httpcore has no cancel, so the pool is built on `_WatchedBackend`, whose streams let the
  watchdog find the socket the calling thread is using. Only pools made by `new_pool` (or any
  httpcore connection built on `_WatchedBackend`) can be cut short this way. A connect that hangs
  is bounded by --timeout alone.
- Fill the memory. Answers are streamed and read up to the cap the caller names; past it the
  rest is left unread and `Answer.complete` is False.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from enum import Enum
from typing import Any

import httpcore

KIB = 1024
MIB = 1024 * KIB
# What a request must average, after its first --timeout, to go on: 1 Mbit/s. Slower than this,
# a 100 MB document would take a quarter of an hour; a trickling server is far below it.
MIN_RATE = 128 * KIB
# How long a request in flight may still take after a stop (SIGTERM): one about to finish does;
# Kubernetes' default grace before SIGKILL (30 s) leaves ample room for the summary after it.
STOP_GRACE = 2.0
# What httpcore raises when the network, the peer or a timeout ends a request.
TRANSPORT_ERRORS = (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError)
_WATCH_INTERVAL = 0.25  # how often the watchdog looks at the requests in flight
_WATCHDOG_IDLE = 5.0  # its thread ends after this long without a request


def new_pool(concurrency: int) -> httpcore.ConnectionPool:
    """The pool the harvest shares: one keep-alive connection per concurrent upload, on
    streams the watchdog can cut (see the module docstring)."""
    return httpcore.ConnectionPool(
        max_connections=concurrency,
        max_keepalive_connections=concurrency,
        keepalive_expiry=30.0,
        retries=0,
        network_backend=_WatchedBackend(),
    )


@dataclass(frozen=True, slots=True)
class Answer:
    """A response, read: its body up to the request's cap; `complete` is False past it."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    complete: bool

    def header(self, name: bytes) -> str | None:
        """The first value of header `name` (lower case), or None."""
        for key, value in self.headers:
            if key.lower() == name:
                return value.decode("latin-1")
        return None


class End(Enum):
    """Why the watchdog ended a request."""

    LIMIT = "limit"  # slower than MIN_RATE after its first --timeout
    DEADLINE = "deadline"  # the overall --deadline passed
    STOP = "stop"  # the harvest was stopped, and STOP_GRACE passed


class CutShort(Exception):
    """The watchdog ended the request: `why`, after `elapsed` seconds."""

    def __init__(self, why: End, elapsed: float) -> None:
        super().__init__(f"ended by the watchdog ({why.value}) after {elapsed:.1f}s")
        self.why = why
        self.elapsed = elapsed


class Transport:
    """Sends one request at a time per calling thread on `pool`, each watched by one watchdog.

    `timeout` is --timeout (a wait without progress); `deadline` the overall --deadline on
    `clock`'s scale; `stop` the harvest's stop event. See the module docstring for the limits.
    """

    def __init__(
        self,
        pool: httpcore.ConnectionPool,
        *,
        timeout: float,
        deadline: float | None,
        stop: threading.Event,
        clock: Callable[[], float],
    ) -> None:
        self._pool = pool
        self._timeout = timeout
        self._watchdog = _Watchdog(timeout=timeout, deadline=deadline, stop=stop, clock=clock)

    def send(
        self,
        method: str,
        url: str,
        headers: list[tuple[bytes, bytes]],
        content: bytes | Iterator[bytes] | None,
        *,
        cap: int,
    ) -> Answer:
        """Make the request and read its answer up to `cap` bytes of body.

        An exception raised by an iterable `content` aborts the request mid-body and propagates
        unchanged.
        """
        timeout = self._timeout
        extensions = {
            "timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": None}
        }
        with self._watchdog.watching() as call:
            try:
                with self._pool.stream(
                    method, url, headers=headers, content=content, extensions=extensions
                ) as response:
                    body, complete = _read_capped(response, cap)
                    return Answer(response.status, response.headers, body, complete)
            except TRANSPORT_ERRORS as exc:
                if call.ended is not None:
                    raise CutShort(call.ended, call.elapsed) from exc
                raise


def _read_capped(response: httpcore.Response, cap: int) -> tuple[bytes, bool]:
    """The body up to `cap` bytes, and whether that was all of it. Past the cap the rest is
    left unread: closing the response then closes the connection instead of reusing it."""
    body = bytearray()
    for chunk in response.iter_stream():
        body += chunk
        if len(body) > cap:
            del body[cap:]
            return bytes(body), False
    return bytes(body), True


# --------------------------------------------------------------------------- the watchdog


# The request the current thread is making: sync httpcore does its I/O on the calling thread.
_current = threading.local()


class _Call:
    """One request in flight, as the watchdog sees it: when it began, the bytes it moved,
    the stream it is reading or writing right now, and why it was ended (if it was)."""

    __slots__ = ("_lock", "_stream", "elapsed", "ended", "moved", "started")

    def __init__(self, started: float) -> None:
        self.started = started
        self.elapsed = 0.0
        self.moved = 0
        self.ended: End | None = None
        self._stream: _WatchedStream | None = None
        self._lock = threading.Lock()

    def enter(self, stream: _WatchedStream) -> None:
        with self._lock:
            if self.ended is not None:
                raise httpcore.ReadError(f"ended by the watchdog ({self.ended.value})")
            self._stream = stream

    def leave(self, nbytes: int) -> None:
        with self._lock:
            self._stream = None
            self.moved += nbytes

    def end(self, why: End, elapsed: float) -> None:
        """Mark the request ended; a read or write under way fails at once, a later one too."""
        with self._lock:
            if self.ended is not None:
                return
            self.ended = why
            self.elapsed = elapsed
            if self._stream is not None:
                self._stream.shut()


class _Watchdog:
    """Ends the requests in flight that pass their limit, or a stop's grace, from one thread."""

    def __init__(
        self,
        *,
        timeout: float,
        deadline: float | None,
        stop: threading.Event,
        clock: Callable[[], float],
    ) -> None:
        self._timeout = timeout
        self._deadline = deadline
        self._stop = stop
        self._clock = clock
        self._calls: set[_Call] = set()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped_at: float | None = None

    @contextmanager
    def watching(self) -> Iterator[_Call]:
        """Watch the request the current thread makes inside this block."""
        call = _Call(self._clock())
        with self._cond:
            self._calls.add(call)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="keruta-api-watchdog", daemon=True
                )
                self._thread.start()
            self._cond.notify()
        _current.call = call
        try:
            yield call
        finally:
            _current.call = None
            with self._cond:
                self._calls.discard(call)

    def _run(self) -> None:
        with self._cond:
            while True:
                if not self._calls:
                    self._cond.wait(_WATCHDOG_IDLE)
                    if not self._calls:
                        self._thread = None
                        return
                now = self._clock()
                for call in self._calls:
                    why = self._why_end(call, now)
                    if why is not None:
                        call.end(why, now - call.started)
                self._cond.wait(_WATCH_INTERVAL)

    def _why_end(self, call: _Call, now: float) -> End | None:
        if self._stop.is_set():
            if self._stopped_at is None:
                self._stopped_at = now
            if now >= self._stopped_at + STOP_GRACE:
                return End.STOP
        if self._deadline is not None and now >= self._deadline:
            return End.DEADLINE
        if now - call.started > self._timeout + call.moved / MIN_RATE:
            return End.LIMIT
        return None


class _WatchedStream(httpcore.NetworkStream):
    """A network stream that tells the current request's `_Call` when it reads or writes, so
    the watchdog can shut its socket down mid-wait."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        call: _Call | None = getattr(_current, "call", None)
        if call is None:
            return self._inner.read(max_bytes, timeout)
        call.enter(self)
        data = b""
        try:
            data = self._inner.read(max_bytes, timeout)
        finally:
            call.leave(len(data))
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        call: _Call | None = getattr(_current, "call", None)
        if call is None:
            self._inner.write(buffer, timeout)
            return
        call.enter(self)
        done = 0
        try:
            self._inner.write(buffer, timeout)
            done = len(buffer)
        finally:
            call.leave(done)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        return _WatchedStream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)

    def shut(self) -> None:
        """Shut the socket down: a blocked read returns at once, a blocked write fails."""
        sock = self._inner.get_extra_info("socket")
        if isinstance(sock, socket.socket):
            with suppress(OSError):
                # socket.socket's own shutdown, not SSLSocket's: that one also drops its TLS
                # state under the feet of the thread still reading.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _WatchedBackend(httpcore.NetworkBackend):
    """httpcore's sync backend, with streams the watchdog can cut."""

    def __init__(self, inner: httpcore.NetworkBackend | None = None) -> None:
        self._inner = inner or httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _WatchedStream(stream)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        return _WatchedStream(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)
