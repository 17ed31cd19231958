"""The keruta-api client: one request per call, errors classified for the caller.

Takes the API's base URL, an optional token and an httpcore connection pool (the seam: tests hand
it real loopback servers, benchmarks could swap it); gives `upload_document`, `set_status` and
`list_documents`. Each call makes exactly one attempt: retrying is the caller's choice (retry.py).
httpcore's errors never leave this module: they become `RetryableError`, `RejectedError`,
`AuthRejected` or `Interrupted`, with a sentence naming the request, the server's answer and what
to do.

Why httpcore and not httpx.Client: for many small documents the client's per-request overhead is
the limit, and a shared `httpcore.ConnectionPool` on worker threads costs a fraction of what
`httpx.Client` does per request (see bench/), with the same keep-alive pool underneath.

What a hostile or broken server cannot do (issue 9):
- Hold a request forever. `--timeout` bounds each wait without progress; on top, a request may
  take `--timeout` plus one second per `MIN_RATE` bytes it has moved (sent or received), and never
  run past the overall `--deadline`. Since bodies sent are of known size and bodies read are
  capped, that is a total limit. A trickle of one byte a second counts as no progress.
- Outlast a stop. Once the harvest's stop event is set (SIGTERM), no request starts, and one in
  flight is abandoned after `STOP_GRACE` seconds (time for one about to finish) as `Interrupted`.
  Both limits are enforced by a `_Watchdog` thread that shuts down the socket of the request it
  ends: sync httpcore has no cancel, so the pool is built on `_WatchedBackend`, whose streams let
  the watchdog find the socket the calling thread is using. Only pools made by `new_pool` (or any
  httpcore connection built on `_WatchedBackend`) can be cut short this way. A connect that hangs
  is bounded by `--timeout` alone.
- Fill the memory. Answers are streamed and read up to a cap: `ANSWER_CAP` for uploads, status
  updates and every error (past it the document id is unknown and the excerpt says it was cut),
  `LISTING_CAP` for the listing (past it the listing counts as unknown, with a warning: the
  listing is optional by contract, and Idempotency-Key still keeps re-sent documents single).
- Make us print the token. All text taken from a server (bodies, Location, ids) passes
  `_Redactor` first: the client's own token, and anything after `Bearer `, become `[redacted]`.
- Send the token and the documents elsewhere. Redirects are never followed: a POST or PUT
  would be sent again, token included, to wherever the server points. Any 3xx, the listing's
  included, is a `RejectedError` naming the status, the Location and the flag to change; on the
  listing (the first request) that stops the harvest before anything is uploaded.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from enum import Enum
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, urlsplit

import httpcore

from harvester import USER_AGENT
from harvester.errors import AuthRejected, Interrupted, RejectedError, RetryableError
from harvester.gate import Act, Gate
from harvester.model import RemoteDocument
from harvester.retry import parse_retry_after
from harvester.settings import DEFAULT_DOCUMENTS_PATH, DEFAULT_STATUS_PATH
from harvester.text import cut
from harvester.wire.multipart import document_body

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
TASK_STATUSES = frozenset(
    {"PENDING", "IN_PROGRESS", "COMPLETED", "FAILED", "WAITING_FOR_INPUT", "RETRYING"}
)
KIB = 1024
MIB = 1024 * KIB
# What a request must average, after its first --timeout, to go on: 1 Mbit/s. Slower than this,
# a 100 MB document would take a quarter of an hour; a trickling server is far below it.
MIN_RATE = 128 * KIB
# How long a request in flight may still take after a stop (SIGTERM): one about to finish does;
# Kubernetes' default grace before SIGKILL (30 s) leaves ample room for the summary after it.
STOP_GRACE = 2.0
# Upload and status answers carry an id or an error: this is plenty, and bounds the memory.
ANSWER_CAP = 64 * KIB
# The listing: some 100,000 documents of JSON. Larger means "unknown" (see the docstring).
LISTING_CAP = 16 * MIB
_BODY_EXCERPT = 300
_LOCATION_CHARS = 200
_WATCH_INTERVAL = 0.25  # how often the watchdog looks at the requests in flight
_WATCHDOG_IDLE = 5.0  # its thread ends after this long without a request
_TRANSPORT_ERRORS = (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError)
_REDACTED = "[redacted]"
_BEARER = re.compile(r"\bbearer(?:\s|%20|\+)+[^\s\"',;&]+", re.IGNORECASE)
# A Location shown in a message: URL characters stay, anything else is %-escaped.
_URL_SAFE = "!#$%&'()*+,/:;=?@[]~"


def idempotency_key(task_id: str, rel_path: str, sha256: str) -> str:
    """Stable across retries and re-runs of the same harvest, distinct per path and content."""
    material = "\0".join((task_id, rel_path, sha256)).encode("utf-8", "surrogateescape")
    return hashlib.sha256(material).hexdigest()


def describe_status(code: int) -> str:
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return str(code)


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
class _Answer:
    """A response, read: its body up to the request's cap; `complete` is False past it."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    complete: bool


class KerutaApi:
    """A client for the parts of keruta-api a harvest needs.

    `gate` is asked before every upload and status update (never defaulted: a client that may
    write is a decision); `timeout` is --timeout (a wait without progress); `deadline` the
    overall --deadline on `clock`'s scale; `stop` the harvest's stop event. See the module
    docstring for the limits.
    """

    def __init__(
        self,
        base_url: str,
        *,
        gate: Gate,
        token: str | None = None,
        pool: httpcore.ConnectionPool | None = None,
        concurrency: int = 8,
        timeout: float = 30.0,
        deadline: float | None = None,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        documents_path: str = DEFAULT_DOCUMENTS_PATH,
        status_path: str = DEFAULT_STATUS_PATH,
        user_agent: str = USER_AGENT,
    ) -> None:
        self._gate = gate
        self.base_url = base_url.rstrip("/")
        self._origin = urlsplit(self.base_url)
        self._pool = pool if pool is not None else new_pool(concurrency)
        self._owns_pool = pool is None
        self._timeout = timeout
        self._stop = stop or threading.Event()
        self._watchdog = _Watchdog(timeout=timeout, deadline=deadline, stop=self._stop, clock=clock)
        self._redact = _Redactor(token)
        self._documents_path = documents_path
        self._status_path = status_path
        self._headers = [(b"User-Agent", user_agent.encode("ascii"))]
        if token:
            # The token only ever lives in this header list; no message below includes headers,
            # and what the server sends back passes self._redact before it reaches a message.
            self._headers.append((b"Authorization", b"Bearer " + token.encode("latin-1")))

    def close(self) -> None:
        if self._owns_pool:
            self._pool.close()

    def __enter__(self) -> KerutaApi:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def documents_url(self, task_id: str) -> str:
        return self.base_url + self._documents_path.replace("{taskId}", quote(task_id, safe=""))

    def status_url(self, task_id: str) -> str:
        return self.base_url + self._status_path.replace("{taskId}", quote(task_id, safe=""))

    def upload_document(
        self,
        task_id: str,
        rel_path: str,
        sha256: str,
        size: int,
        content: bytes | Iterable[bytes],
    ) -> str | None:
        """POST one document. `content` is, or yields, exactly `size` bytes of the file.

        Given as bytes, the whole body goes out in one write. An exception raised by an iterable
        `content` (the file changed, say) aborts the request mid-body, so the server never
        receives a complete, wrong document; it propagates unchanged.
        """
        self._gate.check(Act.UPLOAD)
        body = document_body(rel_path, sha256, size)
        headers = [
            *self._headers,
            (b"Content-Type", body.content_type.encode("ascii")),
            (b"Content-Length", str(body.content_length).encode("ascii")),
            (b"Idempotency-Key", idempotency_key(task_id, rel_path, sha256).encode("ascii")),
            (b"Accept", b"application/json"),
        ]
        if isinstance(content, bytes):
            payload: bytes | Iterator[bytes] = body.head + content + body.tail
        else:
            payload = _framed(body.head, content, body.tail)
        url = self.documents_url(task_id)
        response = self._send("POST", url, headers, payload, what="upload")
        if not 200 <= response.status < 300:
            raise self._classify(response, what="upload")
        document_id = _document_id(response.body) if response.complete else None
        return self._redact(document_id) if document_id else None

    def set_status(
        self,
        task_id: str,
        status: str,
        message: str,
        *,
        progress: int | None = None,
        error_code: str | None = None,
    ) -> None:
        """PUT the task's status; the body carries only the keys the server accepts."""
        self._gate.check(Act.SET_STATUS)
        if status not in TASK_STATUSES:
            raise ValueError(f"{status!r} is not a keruta task status")
        payload: dict[str, Any] = {"status": status, "message": message}
        if progress is not None:
            payload["progress"] = progress
        if error_code is not None:
            payload["errorCode"] = error_code
        data = json.dumps(payload).encode("utf-8")
        headers = [
            *self._headers,
            (b"Content-Type", b"application/json"),
            (b"Accept", b"application/json"),
        ]
        response = self._send("PUT", self.status_url(task_id), headers, data, what="status update")
        if not 200 <= response.status < 300:
            raise self._classify(response, what="status update")

    def list_documents(
        self, task_id: str, *, notice: Callable[[str], None] | None = None
    ) -> list[RemoteDocument] | None:
        """What the server already holds for the task, or None when it cannot tell us.

        keruta-api's contract does not promise a listing; dev-api serves one. Anything that is
        not a JSON list of objects with a path and a sha256 means "unknown", and the harvest
        then relies on Idempotency-Key alone; a listing past `LISTING_CAP` too, and `notice`
        is told why. Auth rejections, redirects and an unreachable server raise as for any
        other request: the harvest learns of them before it uploads anything.
        """
        headers = [*self._headers, (b"Accept", b"application/json")]
        response = self._send(
            "GET",
            self.documents_url(task_id),
            headers,
            None,
            what="keruta-api check",
            cap=LISTING_CAP,
        )
        if response.status in (401, 403) or 300 <= response.status < 400:
            raise self._classify(response, what="document listing")
        if response.status != 200:
            return None
        if not response.complete:
            if notice is not None:
                notice(
                    f"keruta-api's document listing is larger than {LISTING_CAP // MIB} MiB; "
                    "it was not read, so documents the server already holds are sent again "
                    "and rely on Idempotency-Key not to be stored twice"
                )
            return None
        return _remote_documents(response.body)

    def _send(
        self,
        method: str,
        url: str,
        headers: list[tuple[bytes, bytes]],
        content: bytes | Iterator[bytes] | None,
        *,
        what: str,
        cap: int = ANSWER_CAP,
    ) -> _Answer:
        if self._stop.is_set():
            raise Interrupted(f"{what} not sent: the harvest was interrupted")
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
                    return _Answer(response.status, response.headers, body, complete)
            except _TRANSPORT_ERRORS as exc:
                if call.ended is not None:
                    raise self._ended(call, what) from exc
                raise self._broken(exc, what) from exc
            except httpcore.UnsupportedProtocol as exc:
                raise RejectedError(f"{what} failed: {exc}; check --api-url") from exc

    def _ended(self, call: _Call, what: str) -> RetryableError | Interrupted:
        """The error for a request the watchdog cut short."""
        if call.ended is _End.STOP:
            return Interrupted(
                f"{what} abandoned: the harvest was interrupted while keruta-api at "
                f"{self.base_url} was still answering"
            )
        if call.ended is _End.DEADLINE:
            return RetryableError(
                f"{what} timed out: the overall deadline passed while keruta-api at "
                f"{self.base_url} was still answering; raise --deadline to wait longer"
            )
        return RetryableError(
            f"{what} timed out: keruta-api at {self.base_url} was still answering after "
            f"{call.elapsed:.0f}s, slower than the {MIN_RATE // KIB} KiB/s a request must average "
            f"after its first {self._timeout:g}s; raise --timeout if the server is this slow"
        )

    def _broken(self, exc: Exception, what: str) -> RetryableError:
        if isinstance(exc, httpcore.TimeoutException):
            return RetryableError(
                f"{what} timed out: keruta-api at {self.base_url} made no progress for "
                f"{self._timeout:g}s ({type(exc).__name__}); raise --timeout if the server is slow"
            )
        if isinstance(exc, httpcore.ConnectError):
            return RetryableError(
                f"{what} failed: cannot connect to keruta-api at {self.base_url} "
                f"({exc or 'refused'}); check --api-url and the NetworkPolicy"
            )
        return RetryableError(
            f"{what} failed: the connection to keruta-api at {self.base_url} broke "
            f"({type(exc).__name__}: {self._redact(str(exc)) or 'closed'})"
        )

    def _classify(self, response: _Answer, *, what: str) -> Exception:
        code = response.status
        if 300 <= code < 400:
            return self._redirected(response, what=what)
        excerpt = _excerpt(response.body, self._redact)
        if excerpt and not response.complete:
            excerpt += f" (answer cut at {ANSWER_CAP // KIB} KiB)"
        answer = f"{describe_status(code)} from keruta-api" + (f": {excerpt}" if excerpt else "")
        if code in (401, 403):
            return AuthRejected(
                f"{what} rejected: {answer}; check the token (KERUTA_API_TOKEN or --token-file, "
                "from Secret keruta-api-token)",
                status_code=code,
            )
        if code in RETRYABLE_STATUS:
            retry_after = parse_retry_after(_header(response, b"retry-after"))
            return RetryableError(
                f"{what} failed: {answer}", status_code=code, retry_after=retry_after
            )
        hint = {
            413: "; raise the server's upload limit or lower --max-file-size",
            404: "; check --task-id and --api-url (or --documents-path/--status-path)",
            405: "; this server serves another path or method: see --documents-path/--status-path",
        }.get(code, "")
        return RejectedError(f"{what} failed: {answer}{hint}", status_code=code)

    def _redirected(self, response: _Answer, *, what: str) -> RejectedError:
        """A 3xx: never followed (see the module docstring); say where it pointed."""
        location = _header(response, b"location")
        if location:
            shown = quote(self._redact(location.strip()), safe=_URL_SAFE)
            where = f" to {cut(shown, _LOCATION_CHARS)}"
        else:
            where = " without a Location"
        return RejectedError(
            f"{what} failed: keruta-api at {self.base_url} redirected with "
            f"{describe_status(response.status)}{where}; redirects are not followed (they would "
            "send the request and the token again elsewhere): set --api-url (or "
            "--documents-path/--status-path) to where keruta-api answers directly",
            status_code=response.status,
        )


class _Redactor:
    """Removes the client's token, and whatever follows `Bearer `, from a server's text."""

    def __init__(self, token: str | None) -> None:
        self._token = re.compile(re.escape(token), re.IGNORECASE) if token else None

    def __call__(self, text: str) -> str:
        if self._token is not None:
            text = self._token.sub(_REDACTED, text)
        return _BEARER.sub("Bearer " + _REDACTED, text)


# --------------------------------------------------------------------------- the watchdog


class _End(Enum):
    """Why the watchdog ended a request."""

    LIMIT = "limit"
    DEADLINE = "deadline"
    STOP = "stop"


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
        self.ended: _End | None = None
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

    def end(self, why: _End, elapsed: float) -> None:
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

    def _why_end(self, call: _Call, now: float) -> _End | None:
        if self._stop.is_set():
            if self._stopped_at is None:
                self._stopped_at = now
            if now >= self._stopped_at + STOP_GRACE:
                return _End.STOP
        if self._deadline is not None and now >= self._deadline:
            return _End.DEADLINE
        if now - call.started > self._timeout + call.moved / MIN_RATE:
            return _End.LIMIT
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


# --------------------------------------------------------------------------- small helpers


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


def _framed(head: bytes, content: Iterable[bytes], tail: bytes) -> Iterator[bytes]:
    yield head
    yield from content
    yield tail


def _header(response: _Answer, name: bytes) -> str | None:
    for key, value in response.headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _excerpt(content: bytes, redact: Callable[[str], str]) -> str:
    """The server's error message (or body) as one line, redacted before it is cut."""
    text = content.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        pass
    else:
        if isinstance(data, dict):
            for key in ("message", "error", "detail"):
                if isinstance(data.get(key), str) and data[key]:
                    text = data[key]
                    break
    return cut(" ".join(redact(text).split()), _BODY_EXCERPT)


def _document_id(content: bytes) -> str | None:
    if not content:
        return None
    try:
        data = json.loads(content)
    except ValueError:
        return None
    if isinstance(data, dict) and data.get("id") is not None:
        return str(data["id"])
    return None


def _remote_documents(content: bytes) -> list[RemoteDocument] | None:
    try:
        data = json.loads(content)
    except ValueError:
        return None
    if isinstance(data, dict):
        data = data.get("documents", data.get("content"))
    if not isinstance(data, list):
        return None
    documents = []
    for item in data:
        if not isinstance(item, dict):
            return None
        path = item.get("path") or item.get("filename") or item.get("name")
        sha256 = item.get("sha256")
        if isinstance(path, str) and isinstance(sha256, str):
            documents.append(RemoteDocument(path, sha256.lower()))
    return documents
