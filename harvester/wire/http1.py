"""HTTP/1.1 as the transport speaks it: the request head it writes, the answer it reads.

Takes a request's method, target and headers; gives `request_head`, their bytes, checked (a
name that is not a token, a value with a line break or a control character, a target with a
space is an `InvalidRequest`, never sent). And `Incoming`, fed the bytes of one answer as they
arrive: its status, headers and body up to a cap, whether it is whole, and whether the
connection may carry another request. A peer that does not speak HTTP/1.1 raises `NotHttp`.

Why httptools (llhttp, Node.js's parser, which uvicorn uses) and not h11 (issue 13): for many
small documents the client's CPU per request is the limit, and h11's answer parsing in Python
was a quarter of a harvest's samples, its request validation another tenth.
`python -m bench.transports` (bench/README.md, "Transports") measured h11 with this parser
reading the answers at 0.118 ms of client CPU per upload against h11 alone at 0.166. A request
head is a few lines this module writes itself, each part checked.

What a hostile server cannot do here: send headers without end (past `MAX_HEAD` the answer is
`NotHttp`), or slip a second answer in after the first (the bytes after an answer are never
read as the next request's: the connection is then not reused, see `Incoming.reusable`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import httptools

from harvester.wire.watchdog import KIB

# An answer's status line and headers: a server sending more is not a keruta-api.
MAX_HEAD = 64 * KIB

# RFC 9110 5.1 (a header's name is a token) and 5.5 (a value: visible characters, spaces, tabs
# and obs-text; never a CR, LF or NUL, which would end the header or the head early).
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
# The origin-form target as it is sent (already %-escaped): visible ASCII, no space.
_TARGET = re.compile(r"/[!-~]*")


class InvalidRequest(ValueError):
    """A request that HTTP/1.1 cannot carry as given (a line break in a header, say)."""


class NotHttp(Exception):
    """The peer's answer is not HTTP/1.1, or not one this client reads (headers past
    `MAX_HEAD`, a switch to another protocol)."""


def request_head(method: str, target: str, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The request line and headers of one request, ending with the blank line."""
    if not _TARGET.fullmatch(target):
        raise InvalidRequest(f"the request target {target!r} is not a path of visible ASCII")
    lines = [f"{method} {target} HTTP/1.1\r\n".encode("ascii")]
    for name, value in headers:
        if not _TOKEN.fullmatch(name):
            raise InvalidRequest(f"{name!r} is not a header name")
        if not _FIELD_VALUE.fullmatch(value):
            raise InvalidRequest(f"header {name.decode('latin-1')} has a line break or a control")
        lines.append(b"%s: %s\r\n" % (name, value))
    lines.append(b"\r\n")
    return b"".join(lines)


class Incoming:
    """One answer, read as its bytes arrive (`feed`, then `closed` if the peer closes).

    `status`, `headers` (as sent) and `body` (up to `cap` bytes; past it `over_cap`) fill as
    the answer arrives; `head_done` once the headers are in, `done` once the answer is whole.
    Informational answers (1xx) are skipped: the final answer is the one read.
    """

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._parser = httptools.HttpResponseParser(self)
        self._head_size = 0
        self._after = False  # bytes arrived after the answer
        self._keep_alive = False
        self._close_delimited = True
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.head_done = False
        self.done = False
        self.over_cap = False

    def feed(self, data: bytes) -> None:
        """Bytes of the answer, as received."""
        if self.done:
            self._after = True
            return
        if not self.head_done:
            self._head_size += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            raise NotHttp("the server switched to another protocol") from None
        except httptools.HttpParserError as exc:
            if not self.done:
                raise NotHttp(str(exc) or type(exc).__name__) from None
            self._after = True  # garbage after a whole answer: the answer stands
        if not self.head_done and self._head_size > MAX_HEAD:
            raise NotHttp(f"the answer's headers are larger than {MAX_HEAD // KIB} KiB")

    def closed(self) -> None:
        """The peer closed the connection: the end of an answer whose body runs to the close,
        else an answer cut short (`NotHttp`)."""
        if self.done:
            return
        if not self.head_done or not self._close_delimited:
            raise NotHttp("the server closed the connection mid-answer")
        self.done = True
        self._keep_alive = False

    @property
    def reusable(self) -> bool:
        """May the connection carry the next request? Only after a whole answer that asked for
        nothing else (HTTP/1.0, `Connection: close`) and nothing after it."""
        return self.done and self._keep_alive and not self._after and not self.over_cap

    # -- httptools' callbacks

    def on_message_begin(self) -> None:
        if self.done:
            self._after = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.done:
            return
        self.headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-length" or (
            lowered == b"transfer-encoding" and value.lower().rstrip().endswith(b"chunked")
        ):
            self._close_delimited = False

    def on_headers_complete(self) -> None:
        if self.done:
            return
        self.status = self._parser.get_status_code()
        self.head_done = self.status >= 200

    def on_body(self, body: bytes) -> None:
        if self.done or self.over_cap:
            return
        room = self._cap - len(self.body)
        if len(body) > room:
            self.body += body[:room]
            self.over_cap = True
        else:
            self.body += body

    def on_message_complete(self) -> None:
        if self.done:
            return
        if self.status < 200:  # 100 Continue and the like: the real answer follows
            self.headers = []
            self._head_size = 0
            self._close_delimited = True
            return
        self._keep_alive = self._parser.should_keep_alive()
        self.done = True
