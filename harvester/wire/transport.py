"""Below the client: one request at a time per calling thread, on that thread's own keep-alive
connection, bounded in time and in memory.

Takes the API's base URL, --timeout, the overall --deadline, the harvest's stop event, a clock
and, for https, a TLS context (`tls_context`); gives `Transport.send`, which makes one request
and returns its `Answer`: the status, the headers and the body read up to a cap. It raises
`watchdog.CutShort` when the watchdog ended the request, a `connection.TransportError`
(`ConnectFailed`, `TlsRefused`, `Stalled`, `Broken`) when the network, the peer or a wait did,
and `UnsupportedScheme` for a URL that is not http(s); the client turns them into the errors of
`harvester.errors`. Each thread's connection is a `connection.Connection`; the limits are
enforced by a `watchdog.Watchdog`. Nothing here builds a message for a person beyond the cause.

Why a socket per thread, with httptools reading the answers (issue 13): for many small
documents the client's cost per request is the limit. A shared `httpcore.ConnectionPool` made
every request of 8 upload workers take the pool's lock several times (a third of a profile
waited on it), and its stream wrappers for the watchdog added more. `python -m bench.transports`
(5,000 uploads of 4 KiB on 8 threads against bench.fast_server; figures in bench/README.md,
"Transports") measured the candidates in client CPU per upload: the shared httpcore pool
0.31 ms (0.47 ms as the harvester used it, with the watchdog's wrappers),
`httpcore.HTTPConnection` per thread 0.25, urllib3's pool 0.24, the standard library's
`http.client` per thread 0.15, h11 on a socket per thread 0.16. This transport was h11 on a
socket per thread (0.21 ms with the client around it); with the answers parsed by httptools
instead (http1.py says why) it is 0.13 ms, below `http.client`. Unlike `http.client` it leaves
the socket to this module: one `sendall` for head and body, a watchdog that can shut it, an
answer that arrives before the body is sent.

Connections: each thread that calls `send` gets its own connection (a `Connection`), made on first
use and kept alive between requests; nothing is shared between threads on the way of a
request. A connection is dropped, never reused, after anything but a complete exchange (an
error, an answer cut at its cap, a request body abandoned, `Connection: close`). One idle for
`KEEPALIVE_EXPIRY`, or that the server has closed meanwhile (it is readable while idle), is
replaced before use. If a reused connection fails before the first byte of an answer (the
server closed it as the request left), the request is sent once more on a new connection, but
only when that is safe: the body is in memory, and the method is idempotent or the request
carries an Idempotency-Key (which every upload does). `close` closes every connection; a
thread's connection is also closed when the thread ends.

TLS: `tls_context` is the system's trust store (`ssl.create_default_context()`, which reads the
OS bundle) or, with --ca-cert, that file's CAs instead; the server's name goes out as SNI and its
certificate must name it. Proxies: none. keruta-api is reached directly, in the cluster;
`HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` are not read (httpcore's pool, before, did not read them
either), because a proxy on the way would see every document and the token.

What a hostile or broken server cannot do here (issue 9; the client keeps the token and the
redirects, see client.py):
- Hold a request forever. --timeout bounds each wait without progress: a request that moves
  no byte (sent or received) for --timeout is ended as `Stalled`, naming the phase it was in.
  The connect and the TLS handshake are bounded by the socket's timeout; after them the socket
  has none (CPython implements one as a poll() before every send and recv, see connection.py)
  and the `Watchdog` ends a request whose byte count has not changed for --timeout (its
  docstring says how precisely). On top, a request may take --timeout
  plus one second per `MIN_RATE` bytes it has moved, and never run past the overall --deadline.
  Since bodies sent are of known size and bodies read are capped, that is a total limit. A
  trickle of one byte a second counts as no progress.
- Outlast a stop. Once the stop event is set (SIGTERM), a request in flight is abandoned after
  `STOP_GRACE` seconds (time for one about to finish); the client starts no new one. These
  limits are enforced by the `Watchdog` thread, which shuts down the socket of the request it
  ends, from the TLS handshake on; a TCP connect that hangs is bounded by --timeout alone.
- Fill the memory. Answers are read up to the cap the caller names; past it the rest is left
  unread, the connection is dropped and `Answer.complete` is False.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

from harvester.model import FileSpan
from harvester.wire.connection import Answer, Broken, Connection, Endpoint, Request
from harvester.wire.http1 import InvalidRequest, request_head
from harvester.wire.watchdog import Watchdog

# Methods that may be sent twice with the effect of once (RFC 9110, 9.2.2).
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
_IDEMPOTENCY_KEY = b"idempotency-key"


def tls_context(ca_cert: Path | None = None) -> ssl.SSLContext:
    """Certificates checked, names checked: the system's CAs, or only `ca_cert`'s when given."""
    if ca_cert is None:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=str(ca_cert))


class UnsupportedScheme(ValueError):
    """The URL is not http or https."""


class Transport:
    """Sends one request at a time per calling thread, each on that thread's connection and
    watched by one watchdog.

    `base_url` names the server (scheme, host, port); every URL sent must start with it.
    `timeout` is --timeout (a wait without progress); `deadline` the overall --deadline on
    `clock`'s scale; `stop` the harvest's stop event; `tls` the context for https (default: the
    system's trust store). See the module docstring for the limits and the connections.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float,
        deadline: float | None,
        stop: threading.Event,
        clock: Callable[[], float],
        tls: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        self._scheme = parts.scheme.lower()
        # As written (urlsplit lowers the scheme): the URLs sent are the base URL and a path.
        self._origin = base_url[: len(parts.scheme) + 3 + len(parts.netloc)]
        self._host_header = parts.netloc.encode("ascii")
        address = (parts.hostname or "", parts.port or (443 if self._scheme == "https" else 80))
        if tls is None and self._scheme == "https":
            tls = tls_context()
        self._endpoint = Endpoint(address, tls, timeout, clock, stop)
        self._clock = clock
        self._watchdog = Watchdog(timeout=timeout, deadline=deadline, stop=stop, clock=clock)
        self._local = threading.local()

    def send(
        self,
        method: str,
        url: str,
        headers: list[tuple[bytes, bytes]],
        content: bytes | Iterator[bytes | FileSpan] | None,
        *,
        cap: int,
    ) -> Answer:
        """Make the request and read its answer up to `cap` bytes of body.

        `headers` must not name Host. A Content-Length is added for bytes; an iterable `content`
        needs the Content-Length given in `headers` (a body that turns out longer or shorter is
        never sent as it is). An exception raised by an iterable `content` aborts the request
        mid-body and propagates unchanged.
        """
        if self._scheme not in ("http", "https"):
            raise UnsupportedScheme(f"Request URL has an unsupported protocol '{self._scheme}://'")
        if not url.startswith(self._origin):
            raise ValueError(f"{url} is not on {self._origin}")
        target = url[len(self._origin) :] or "/"
        connection: Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = Connection(self._endpoint)
            self._watchdog.register(connection)
        names = {name.lower(): value for name, value in headers}
        framing: list[tuple[bytes, bytes]] = []
        if b"content-length" in names:
            length = int(names[b"content-length"])
        elif isinstance(content, bytes):
            length = len(content)
            framing.append((b"Content-Length", str(length).encode("ascii")))
        elif content is None:
            length = 0
        else:
            raise ValueError("a body given in pieces needs its Content-Length in `headers`")
        try:
            head = request_head(method, target, [(b"Host", self._host_header), *headers, *framing])
        except InvalidRequest as exc:
            raise Broken(f"the request is not valid HTTP/1.1: {exc}") from exc
        resendable = not isinstance(content, Iterator) and (
            method in _IDEMPOTENT or _IDEMPOTENCY_KEY in names
        )
        connection.begin(self._clock())
        self._watchdog.wake()
        try:
            return connection.exchange(Request(head, content, length, resendable), cap)
        finally:
            connection.finish()

    def close(self) -> None:
        """Close every thread's connection."""
        self._watchdog.close()
