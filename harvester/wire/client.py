"""The keruta-api client: one request per call, errors classified for the caller.

Takes the API's base URL, an optional token and, for https, an optional CA file (--ca-cert);
gives `upload_document`, `set_status` and `list_documents`. Each call makes exactly one attempt:
retrying is the caller's choice (retry.py). It builds each request from the contract
(contract.py), sends it through `Transport` (transport.py: a connection per calling thread, the
time limits, the stop, the capped read, TLS) and turns the answer, or the
transport's failure, into `RetryableError`, `RejectedError`, `AuthRejected` or `Interrupted`, with
a sentence naming the request, the server's answer and what to do. The transport's errors never
leave this package.

What a hostile or broken server cannot do here (issue 9; time and stops are transport.py's):
- Fill the memory. Each request names its cap: `ANSWER_CAP` for uploads, status updates and
  every error (past it the document id is unknown and the excerpt says it was cut),
  `LISTING_CAP` for the listing (past it the listing counts as unknown, with a warning: the
  listing is optional by contract, and Idempotency-Key still keeps re-sent documents single).
- Make us print the token. All text taken from a server (bodies, Location, ids) passes
  `_Redactor` first: the client's own token, and anything after `Bearer `, become `[redacted]`.
- Send the token and the documents elsewhere. Redirects are never followed: a POST or PUT
  would be sent again, token included, to wherever the server points. Any 3xx, the listing's
  included, is a `RejectedError` naming the status, the Location and the flag to change; on the
  listing (the first request) that stops the harvest before anything is uploaded.
- Keep us waiting with Retry-After: a wait asked for is honoured up to `MAX_RETRY_AFTER`.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import quote

from harvester import USER_AGENT
from harvester.errors import AuthRejected, Interrupted, RejectedError, RetryableError
from harvester.gate import Act, Gate
from harvester.model import DocumentContent, FileSpan, RemoteDocument, TaskStatus
from harvester.settings import DEFAULT_DOCUMENTS_PATH, DEFAULT_STATUS_PATH
from harvester.text import cut
from harvester.wire.connection import (
    Answer,
    ConnectFailed,
    Stalled,
    TlsRefused,
    TransportError,
)
from harvester.wire.contract import (
    IDEMPOTENCY_KEY_HEADER,
    RETRYABLE_STATUS,
    describe_status,
    document_id,
    error_message,
    idempotency_key,
    remote_documents,
    status_body,
)
from harvester.wire.multipart import document_body
from harvester.wire.transport import Transport, UnsupportedScheme, tls_context
from harvester.wire.watchdog import KIB, MIB, MIN_RATE, CutShort, End

# Upload and status answers carry an id or an error: this is plenty, and bounds the memory.
ANSWER_CAP = 64 * KIB
# The listing: some 100,000 documents of JSON. Larger means "unknown" (see the docstring).
LISTING_CAP = 16 * MIB
# A server asking for more than this is treated as asking for this: a cleanup Job that sleeps
# for an hour because of one header is worse than one that tries again and fails clearly.
MAX_RETRY_AFTER = 300.0
_BODY_EXCERPT = 300
_LOCATION_CHARS = 200
_REDACTED = "[redacted]"
_BEARER = re.compile(r"\bbearer(?:\s|%20|\+)+[^\s\"',;&]+", re.IGNORECASE)
# A Location shown in a message: URL characters stay, anything else is %-escaped.
_URL_SAFE = "!#$%&'()*+,/:;=?@[]~"


class KerutaApi:
    """A client for the parts of keruta-api a harvest needs.

    `gate` is asked before every upload and status update (never defaulted: a client that may
    write is a decision); `timeout` is --timeout (a wait without progress); `deadline` the
    overall --deadline on `clock`'s scale; `stop` the harvest's stop event; `ca_cert` the CAs
    an https server's certificate must come from (default: the system's). The limits and the
    connections (one per calling thread) are transport.py's.
    """

    def __init__(
        self,
        base_url: str,
        *,
        gate: Gate,
        timeout: float,
        token: str | None = None,
        ca_cert: Path | None = None,
        deadline: float | None = None,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        documents_path: str = DEFAULT_DOCUMENTS_PATH,
        status_path: str = DEFAULT_STATUS_PATH,
        user_agent: str = USER_AGENT,
    ) -> None:
        self._gate = gate
        self.base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._stop = stop or threading.Event()
        self._transport = Transport(
            self.base_url,
            timeout=timeout,
            deadline=deadline,
            stop=self._stop,
            clock=clock,
            # The transport decides whether the URL needs TLS (the system's CAs by default).
            tls=None if ca_cert is None else tls_context(ca_cert),
        )
        self._redact = _Redactor(token)
        self._documents_path = documents_path
        self._status_path = status_path
        self._headers = [(b"User-Agent", user_agent.encode("ascii"))]
        if token:
            # The token only ever lives in this header list; no message below includes headers,
            # and what the server sends back passes self._redact before it reaches a message.
            self._headers.append((b"Authorization", b"Bearer " + token.encode("latin-1")))

    def close(self) -> None:
        """Close every connection (each thread that sent a request has one)."""
        self._transport.close()

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
        content: DocumentContent,
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
            (
                IDEMPOTENCY_KEY_HEADER.encode("ascii"),
                idempotency_key(task_id, rel_path, sha256).encode("ascii"),
            ),
            (b"Accept", b"application/json"),
        ]
        if isinstance(content, bytes):
            payload: bytes | Iterator[bytes | FileSpan] = body.head + content + body.tail
        else:
            payload = _framed(body.head, content, body.tail)
        url = self.documents_url(task_id)
        response = self._send("POST", url, headers, payload, what="upload")
        if not 200 <= response.status < 300:
            raise self._classify(response, what="upload")
        answered_id = document_id(response.body) if response.complete else None
        return self._redact(answered_id) if answered_id else None

    def set_status(
        self,
        task_id: str,
        status: TaskStatus,
        message: str,
        *,
        progress: int | None = None,
        error_code: str | None = None,
    ) -> None:
        """PUT the task's status; the body carries only the keys the server accepts."""
        self._gate.check(Act.SET_STATUS)
        payload = status_body(status, message, progress=progress, error_code=error_code)
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
        return remote_documents(response.body)

    def _send(
        self,
        method: str,
        url: str,
        headers: list[tuple[bytes, bytes]],
        content: bytes | Iterator[bytes | FileSpan] | None,
        *,
        what: str,
        cap: int = ANSWER_CAP,
    ) -> Answer:
        if self._stop.is_set():
            raise Interrupted(f"{what} not sent: the harvest was interrupted")
        try:
            return self._transport.send(method, url, headers, content, cap=cap)
        except CutShort as exc:
            raise self._cut_short(exc, what) from exc
        except TransportError as exc:
            raise self._broken(exc, what) from exc
        except UnsupportedScheme as exc:
            raise RejectedError(f"{what} failed: {exc}; check --api-url") from exc

    def _cut_short(self, cut: CutShort, what: str) -> RetryableError | Interrupted:
        """The error for a request the watchdog ended."""
        if cut.why is End.STOP:
            return Interrupted(
                f"{what} abandoned: the harvest was interrupted while keruta-api at "
                f"{self.base_url} was still answering"
            )
        if cut.why is End.DEADLINE:
            return RetryableError(
                f"{what} timed out: the overall deadline passed while keruta-api at "
                f"{self.base_url} was still answering; raise --deadline to wait longer"
            )
        return RetryableError(
            f"{what} timed out: keruta-api at {self.base_url} was still answering after "
            f"{cut.elapsed:.0f}s, slower than the {MIN_RATE // KIB} KiB/s a request must average "
            f"after its first {self._timeout:g}s; raise --timeout if the server is this slow"
        )

    def _broken(self, exc: TransportError, what: str) -> RetryableError:
        if isinstance(exc, Stalled):
            return RetryableError(
                f"{what} timed out: keruta-api at {self.base_url} made no progress for "
                f"{self._timeout:g}s ({exc.phase}); raise --timeout if the server is slow"
            )
        if isinstance(exc, TlsRefused):
            return RetryableError(
                f"{what} failed: keruta-api at {self.base_url} failed the TLS handshake "
                f"({exc}); if its certificate comes from a private CA, name the CA's file "
                "with --ca-cert (KERUTA_CA_CERT)"
            )
        if isinstance(exc, ConnectFailed):
            return RetryableError(
                f"{what} failed: cannot connect to keruta-api at {self.base_url} "
                f"({exc or 'refused'}); check --api-url and the NetworkPolicy"
            )
        return RetryableError(
            f"{what} failed: the connection to keruta-api at {self.base_url} broke "
            f"({self._redact(str(exc)) or 'closed'})"
        )

    def _classify(self, response: Answer, *, what: str) -> Exception:
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
            retry_after = parse_retry_after(response.header(b"retry-after"))
            return RetryableError(
                f"{what} failed: {answer}", status_code=code, retry_after=retry_after
            )
        hint = {
            413: "; raise the server's upload limit or lower --max-file-size",
            404: "; check --task-id and --api-url (or --documents-path/--status-path)",
            405: "; this server serves another path or method: see --documents-path/--status-path",
        }.get(code, "")
        return RejectedError(f"{what} failed: {answer}{hint}", status_code=code)

    def _redirected(self, response: Answer, *, what: str) -> RejectedError:
        """A 3xx: never followed (see the module docstring); say where it pointed."""
        location = response.header(b"location")
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


def parse_retry_after(
    value: str | None, *, now: Callable[[], datetime] | None = None
) -> float | None:
    """A Retry-After header (delta-seconds or an HTTP date) -> seconds to wait, or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now() if now else datetime.now(UTC)
    return min(max(0.0, (when - current).total_seconds()), MAX_RETRY_AFTER)


def _framed(
    head: bytes, content: Iterable[bytes | FileSpan], tail: bytes
) -> Iterator[bytes | FileSpan]:
    yield head
    yield from content
    yield tail


def _excerpt(content: bytes, redact: Callable[[str], str]) -> str:
    """The server's error message (or body) as one line, redacted before it is cut."""
    return cut(" ".join(redact(error_message(content)).split()), _BODY_EXCERPT)
