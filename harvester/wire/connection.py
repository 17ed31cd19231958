"""One thread's keep-alive connection to keruta-api: HTTP/1.1 on a socket, one request at a time.

Takes an `Endpoint` (the server's address, TLS context, --timeout, clock and the harvest's stop
event) and `Request`s (a head from http1.py and its body); gives `Connection.exchange`, which
sends one request, reads its `Answer` (http1.py parses it) up to a cap and keeps the connection
for the next request when the exchange was complete. It raises a `TransportError`
(`ConnectFailed`, `TlsRefused`, `Stalled`, `Broken`) when the network, the peer or a wait ended
the request, and `CutShort` when the watchdog did (the watchdog sees each connection as
`watchdog.Watched`); a request the watchdog ended for moving no byte (`End.STALLED`) is a
`Stalled` with the phase it was in, like a wait that timed out. transport.py says how
connections are shared (never) and kept, and when a request is sent twice.

Once connected (and through the TLS handshake) the socket has no timeout: CPython implements
one with a poll() before every send and recv, two system calls (each a release of the GIL) per
small upload. The connect and the handshake keep theirs (--timeout); after them the watchdog
bounds every wait, and a large body's writes poll anyway (see `_write`).

A streamed body's pieces may be `model.FileSpan`s: sent by `os.sendfile` from the open file on
a plain socket (no copy through Python), read in pieces on a TLS one; a file that ends before
its span does raises `FileChanged`, unchanged to the caller, like any error of the content.

A little over 500 lines: one exchange with all its ways to fail (before, while and after the
body goes out; on a kept or a new connection; by the server or by the watchdog) reads as one.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass

from harvester.errors import FileChanged
from harvester.model import FileSpan
from harvester.wire.http1 import Incoming, NotHttp
from harvester.wire.watchdog import KIB, CutShort, End

# An idle connection older than this is closed rather than reused: servers close theirs after
# 5 to 60 seconds, and one closed as our request leaves costs a failed attempt.
KEEPALIVE_EXPIRY = 30.0
_READ_SIZE = 64 * KIB
# A request up to this size leaves in one sendall (a small document with its head); a larger one
# in writes of up to _WRITE_SIZE, watching for an early answer between them.
_ONE_WRITE_MAX = 64 * KIB
_WRITE_SIZE = 256 * KIB
# What poll says when the server has answered, closed or reset while the body goes out.
_READABLE = select.POLLIN | select.POLLHUP | select.POLLERR


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how a connection reaches the server: (host, port), the TLS context for https
    (None for http), --timeout (a wait without progress), the clock, the harvest's stop."""

    address: tuple[str, int]
    tls: ssl.SSLContext | None
    timeout: float
    clock: Callable[[], float]
    stop: threading.Event


@dataclass(frozen=True, slots=True)
class Request:
    """One request as it goes out: its head (`http1.request_head`), then `length` bytes of body,
    given whole or as pieces (an iterator, whose exception aborts the request mid-body).
    `resendable`: it may be sent twice with the effect of once (see transport.py)."""

    head: bytes
    content: bytes | Iterator[bytes | FileSpan] | None
    length: int
    resendable: bool


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


class TransportError(Exception):
    """The network, the peer or a wait ended the request; the text is the cause, for a person."""


class ConnectFailed(TransportError):
    """No connection could be made (refused, unreachable, a name that does not resolve)."""


class TlsRefused(ConnectFailed):
    """The TLS handshake failed: most often a certificate this client does not trust."""


class Stalled(TransportError):
    """No progress for --timeout while `phase` (connecting, in the TLS handshake, sending,
    waiting for the answer, reading the answer)."""

    def __init__(self, phase: str) -> None:
        super().__init__(phase)
        self.phase = phase


class Broken(TransportError):
    """The connection broke (reset, closed early) or the peer did not speak HTTP/1.1."""


class _Retry(Exception):
    """A reused connection failed before any answer: send the request again on a new one."""


class Connection:
    """One thread's connection to `endpoint` (its socket), and the request it is
    making as the watchdog sees it: when it began, the bytes it moved, why it was ended."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._idle_since = 0.0
        self.started: float | None = None
        self.serial = 0  # which request `started` belongs to
        self.moved = 0
        self.ended: End | None = None
        self.elapsed = 0.0

    def __del__(self) -> None:
        # The thread that owned this connection has ended: its connection goes with it.
        self.drop()

    # -- the request's lifetime, as the watchdog sees it

    def begin(self, now: float) -> None:
        with self._lock:
            # serial last: the watchdog reads it first (see watchdog.Watched).
            self.started = now
            self.moved = 0
            self.ended = None
            self.serial += 1

    def finish(self) -> None:
        with self._lock:
            self.started = None

    def attach(self, sock: socket.socket) -> None:
        """Use `sock` from now on; refused if the watchdog ended the request while it connected."""
        with self._lock:
            self._sock = sock
            ended = self.ended
        if ended is not None:
            self.drop()
            self.check_ended("connecting")

    def check_ended(self, phase: str) -> None:
        """Raise what the watchdog's end of the request means, if it ended it while `phase`."""
        ended = self.ended
        if ended is End.STALLED:
            raise Stalled(phase)
        if ended is not None:
            raise CutShort(ended, self.elapsed)

    def end(self, serial: int, why: End, now: float) -> None:
        """Mark request `serial` ended and shut its socket: a blocked read returns at once, a
        blocked write fails, and so does every later one. A request that already finished
        (the watchdog looked before it did) is left alone."""
        with self._lock:
            if self.started is None or self.serial != serial or self.ended is not None:
                return
            self.ended = why
            self.elapsed = now - self.started
            sock = self._sock
        if sock is not None:
            with suppress(OSError):
                # socket.socket's own shutdown, not SSLSocket's: that one also drops its TLS
                # state under the feet of the thread still reading.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def drop(self) -> None:
        """Close the connection; the next request makes a new one."""
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            with suppress(OSError):
                sock.close()

    # -- one exchange

    def exchange(self, request: Request, cap: int) -> Answer:
        """Send `request` and read the answer up to `cap`, on the kept connection or a new one;
        sent once more on a new one when the kept one failed before any answer and the request
        is resendable."""
        reused = self._usable()
        if not reused:
            self._open()
        try:
            return self._exchange(request, cap, retry_if_unanswered=reused)
        except _Retry:
            if not request.resendable or self._endpoint.stop.is_set():
                raise Broken(
                    "ConnectionClosed: the server closed the kept-alive connection before answering"
                ) from None
        self._open()
        return self._exchange(request, cap, retry_if_unanswered=False)

    def _open(self) -> None:
        """A new socket, attached before the TLS handshake so the watchdog can end that too."""
        endpoint = self._endpoint
        try:
            sock = socket.create_connection(endpoint.address, timeout=endpoint.timeout)
        except TimeoutError:
            raise Stalled("connecting") from None
        except OSError as exc:
            raise ConnectFailed(exc.strerror or str(exc) or type(exc).__name__) from exc
        # The request leaves in one write, or in large chunks: nothing for Nagle to gather.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if endpoint.tls is None:
            sock.settimeout(None)  # from here on the watchdog bounds the waits
            self.attach(sock)
            return
        try:
            secure = endpoint.tls.wrap_socket(
                sock, server_hostname=endpoint.address[0], do_handshake_on_connect=False
            )
        except BaseException:
            sock.close()
            raise
        self.attach(secure)
        try:
            secure.do_handshake()
        except TimeoutError:
            self.drop()
            raise Stalled("in the TLS handshake") from None
        except ssl.SSLCertVerificationError as exc:
            self.drop()
            raise TlsRefused(exc.verify_message or exc.reason or str(exc)) from exc
        except OSError as exc:
            self.drop()
            self.check_ended("in the TLS handshake")
            if isinstance(exc, ssl.SSLError):
                raise TlsRefused(exc.reason or str(exc)) from exc
            raise ConnectFailed(exc.strerror or str(exc) or type(exc).__name__) from exc
        secure.settimeout(None)  # from here on the watchdog bounds the waits

    def _usable(self) -> bool:
        """Is the kept connection there and fit for another request?"""
        sock = self._sock
        if sock is None:
            return False
        now = self._endpoint.clock()
        # Readable while idle: the server closed it (or sent what nobody asked for).
        if now - self._idle_since > KEEPALIVE_EXPIRY or _readable(sock):
            self.drop()
            return False
        return True

    def _exchange(self, request: Request, cap: int, *, retry_if_unanswered: bool) -> Answer:
        sock = self._sock
        assert sock is not None
        reader = _Reader(self, sock, cap)

        def failed(exc: BaseException, phase: str | None = None) -> Exception:
            """What a broken exchange raises: a retry when nothing was answered on a reused
            connection (see the module docstring), else `Broken`."""
            self.check_ended(phase or reader.phase)
            if retry_if_unanswered and not reader.got_any:
                return _Retry()
            return exc if isinstance(exc, Broken) else _broken(exc, phase or reader.phase)

        reusable = False
        try:
            try:
                sent_all = self._send(sock, reader, request)
            except TimeoutError:
                raise
            except OSError as exc:
                # The server may have answered before reading the body (413, 401) and closed.
                self.check_ended("sending")
                try:
                    return reader.answer()
                except (OSError, TransportError):
                    raise failed(exc, "sending") from exc
            answer = reader.answer()
            reusable = sent_all and reader.reusable
            return answer
        except _ContentFailed as content_failed:
            raise content_failed.original from content_failed.original.__cause__
        except TimeoutError:
            self.check_ended(reader.phase)
            raise Stalled(reader.phase) from None
        except (OSError, Broken) as exc:
            raise failed(exc) from exc
        except _Unsendable as exc:
            self.check_ended(reader.phase)
            raise Broken(f"the request is not valid HTTP/1.1: {exc}") from exc
        finally:
            if reusable:
                self._idle_since = self._endpoint.clock()
            else:
                self.drop()

    def _send(self, sock: socket.socket, reader: _Reader, request: Request) -> bool:
        """Send the request: True once it is all out; False, the rest unsent, if the server
        answered first (what arrived of its answer is then `reader`'s)."""
        content = request.content
        if content is None or isinstance(content, bytes):
            body = content or b""
            if len(body) != request.length:
                raise _Unsendable(f"{len(body)} bytes of body, {request.length} announced")
            if len(request.head) + len(body) <= _ONE_WRITE_MAX:
                # Head and body in one write: one system call, one packet for a small document.
                data = request.head + body
                sock.sendall(data)
                self.moved += len(data)
                return True
            return self._write(sock, request.head, reader) and self._write(sock, body, reader)
        if not self._write(sock, request.head, reader):
            return False
        left = request.length
        while True:
            try:
                chunk = next(content)
            except StopIteration:
                break
            except BaseException as exc:
                raise _ContentFailed(exc) from exc
            left -= len(chunk)
            if left < 0:
                raise _Unsendable(f"the body is longer than the {request.length} bytes announced")
            if not self._write(sock, chunk, reader):
                return False  # the rest is not wanted; the connection is dropped after the answer
        if left:
            raise _Unsendable(f"the body is {left} bytes shorter than announced")
        return True

    def _write(self, sock: socket.socket, data: bytes | FileSpan, reader: _Reader) -> bool:
        """Send `data`, unless the server answers (or closes) first: then False, the rest
        unsent. A server refusing a large body answers at once and may never read it, so a
        write must not block where the answer would go unseen. A `FileSpan` goes by sendfile
        on a plain socket, and is read in pieces for TLS."""
        poller = select.poll()
        poller.register(sock, _READABLE | select.POLLOUT)
        wait = int(self._endpoint.timeout * 1000)
        if isinstance(data, FileSpan):
            if isinstance(sock, ssl.SSLSocket):
                return all(self._write(sock, piece, reader) for piece in _read_span(data))
            return self._send_span(sock, data, poller, wait)
        view = memoryview(data)
        while view:
            if not self._may_send(sock, poller, wait, reader):
                return False
            if isinstance(sock, ssl.SSLSocket):
                # SSL takes no flags and writes the chunk whole: blocked, the watchdog ends it.
                sent = sock.send(view[:_WRITE_SIZE])
            else:
                # Only what fits now, as the socket's timeout did, so the next poll can see an
                # answer; a blocking send would wait for the whole chunk to be read.
                try:
                    sent = sock.send(view[:_WRITE_SIZE], socket.MSG_DONTWAIT)
                except BlockingIOError:
                    continue
            view = view[sent:]
            self.moved += sent
        return True

    def _send_span(
        self, sock: socket.socket, span: FileSpan, poller: select.poll, wait: int
    ) -> bool:
        """`_write` for a span on a plain socket: by sendfile, only what fits at a time (the
        socket is made non-blocking for it: sendfile takes no MSG_DONTWAIT)."""
        offset, end = span.offset, span.offset + span.length
        previous = sock.gettimeout()
        sock.setblocking(False)
        try:
            while offset < end:
                if not self._may_send(sock, poller, wait):
                    return False
                try:
                    sent = os.sendfile(
                        sock.fileno(), span.fd, offset, min(_WRITE_SIZE, end - offset)
                    )
                except BlockingIOError:
                    continue
                if sent == 0:  # the file ends before the span does
                    raise _shrank(span)
                offset += sent
                self.moved += sent
        finally:
            sock.settimeout(previous)
        return True

    def _may_send(
        self, sock: socket.socket, poller: select.poll, wait: int, reader: _Reader | None = None
    ) -> bool:
        """Wait until `sock` takes more (True), or the server has answered or closed (False);
        TimeoutError after `wait` milliseconds of neither. On TLS what made the socket readable
        may be TLS's own records only (see `_answered`, which hands an answer's first bytes
        to `reader`): then the wait goes on."""
        secure = sock if isinstance(sock, ssl.SSLSocket) else None
        while True:
            if secure is not None and secure.pending():
                return False
            events = poller.poll(wait)
            if not events:
                raise TimeoutError
            if not events[0][1] & _READABLE:
                return True
            if secure is not None and reader is not None and not _answered(secure, reader):
                continue
            return False


class _ContentFailed(Exception):
    """The request's own content raised (the file changed): `original` goes to the caller
    unchanged, never mistaken for a network error."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


class _Unsendable(Exception):
    """The request's body does not match the length its head announced: never sent as it is."""


class _Reader:
    """Reads one answer from a connection: the status, the headers, the body up to `cap`.
    `got_any` says whether any byte of it arrived; `phase` what the request waits for;
    `reusable` whether the connection may carry the next request once the answer is read."""

    def __init__(self, connection: Connection, sock: socket.socket, cap: int) -> None:
        self._connection = connection
        self._sock = sock
        self._incoming = Incoming(cap)
        self._waiting = False
        self.got_any = False

    @property
    def phase(self) -> str:
        if self._incoming.head_done:
            return "reading the answer"
        return "waiting for the answer" if self._waiting else "sending"

    @property
    def reusable(self) -> bool:
        return self._incoming.reusable

    def take(self, data: bytes) -> None:
        """`data`, received: part of the answer."""
        self.got_any = True
        self._connection.moved += len(data)
        try:
            self._incoming.feed(data)
        except NotHttp as exc:
            raise Broken(f"not an HTTP/1.1 answer: {exc}") from None

    def answer(self) -> Answer:
        self._waiting = True
        incoming, sock = self._incoming, self._sock
        while not incoming.done and not incoming.over_cap:
            data = sock.recv(_READ_SIZE)
            if data:
                self.take(data)
            elif not self.got_any:
                raise Broken("ConnectionClosed: the server closed the connection")
            else:
                try:
                    incoming.closed()
                except NotHttp as exc:
                    raise Broken(f"ConnectionClosed: {exc}") from None
        complete = incoming.done and not incoming.over_cap
        return Answer(incoming.status, incoming.headers, bytes(incoming.body), complete)


def _shrank(span: FileSpan) -> _ContentFailed:
    """The file ended before `span` did: a change of the content, for the caller."""
    return _ContentFailed(FileChanged.shrank(span.rel_path))


def _read_span(span: FileSpan) -> Iterator[bytes]:
    """A span's bytes in pieces of `_WRITE_SIZE`, for a socket sendfile cannot write to."""
    offset, end = span.offset, span.offset + span.length
    while offset < end:
        piece = os.pread(span.fd, min(_WRITE_SIZE, end - offset), offset)
        if not piece:
            raise _shrank(span)
        offset += len(piece)
        yield piece


def _answered(sock: ssl.SSLSocket, reader: _Reader) -> bool:
    """Did the server answer (or close, or fail) on readable `sock`, or send records for the TLS
    layer alone? A TLS 1.3 server sends its session tickets after the handshake: taken for an
    early answer, they stopped every streamed body on a new https connection before its head
    left. Only a read tells them apart; an answer's first bytes read here go to `reader`."""
    previous = sock.gettimeout()
    sock.settimeout(0.0)
    try:
        data = sock.recv(_READ_SIZE)
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
        return False  # nothing for us (yet)
    except OSError:
        return True  # the reader meets it again
    finally:
        sock.settimeout(previous)
    if data:
        reader.take(data)
    return True


def _readable(sock: socket.socket) -> bool:
    """Is there something to read (or a close) on `sock`, right now? poll, not select: select
    refuses descriptors past 1023."""
    poller = select.poll()
    poller.register(sock, _READABLE)
    return bool(poller.poll(0))


def _broken(exc: BaseException, phase: str) -> Broken:
    detail = getattr(exc, "strerror", None) or str(exc) or "closed"
    return Broken(f"{type(exc).__name__} while {phase}: {detail}")
