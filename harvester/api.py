"""The keruta-api client: one request per call, errors classified for the caller.

Takes the API's base URL, an optional token and an httpcore connection pool (the seam: tests hand
it real loopback servers, benchmarks could swap it); gives `upload_document`, `set_status` and
`list_documents`. Each call makes exactly one attempt: retrying is the caller's choice (retry.py).
httpcore's errors never leave this module: they become `RetryableError`, `RejectedError` or
`AuthRejected`, with a sentence naming the request, the server's answer and what to do.

Why httpcore and not httpx.Client: for many small documents the client's per-request overhead is
the limit, and a shared `httpcore.ConnectionPool` on worker threads costs a fraction of what
`httpx.Client` does per request (see bench/), with the same keep-alive pool underneath.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httpcore

from harvester import USER_AGENT
from harvester.errors import AuthRejected, RejectedError, RetryableError
from harvester.gate import Act, Gate
from harvester.model import RemoteDocument
from harvester.multipart import document_body
from harvester.retry import parse_retry_after
from harvester.settings import DEFAULT_DOCUMENTS_PATH, DEFAULT_STATUS_PATH

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
TASK_STATUSES = frozenset(
    {"PENDING", "IN_PROGRESS", "COMPLETED", "FAILED", "WAITING_FOR_INPUT", "RETRYING"}
)
_BODY_EXCERPT = 300
_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Entity",
    425: "Too Early",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


@dataclass(frozen=True, slots=True)
class UploadAnswer:
    status_code: int
    document_id: str | None
    replayed: bool = False


def idempotency_key(task_id: str, rel_path: str, sha256: str) -> str:
    """Stable across retries and re-runs of the same harvest, distinct per path and content."""
    material = "\0".join((task_id, rel_path, sha256)).encode("utf-8", "surrogateescape")
    return hashlib.sha256(material).hexdigest()


def describe_status(code: int) -> str:
    reason = _REASONS.get(code)
    return f"{code} {reason}" if reason else str(code)


def new_pool(concurrency: int) -> httpcore.ConnectionPool:
    """The pool the harvest shares: one keep-alive connection per concurrent upload."""
    return httpcore.ConnectionPool(
        max_connections=concurrency,
        max_keepalive_connections=concurrency,
        keepalive_expiry=30.0,
        retries=0,
    )


class KerutaApi:
    """A client for the parts of keruta-api a harvest needs."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        pool: httpcore.ConnectionPool | None = None,
        concurrency: int = 8,
        timeout: float = 30.0,
        documents_path: str = DEFAULT_DOCUMENTS_PATH,
        status_path: str = DEFAULT_STATUS_PATH,
        user_agent: str = USER_AGENT,
        gate: Gate | None = None,
    ) -> None:
        self._gate = gate or Gate()
        self.base_url = base_url.rstrip("/")
        self._origin = urlsplit(self.base_url)
        self._pool = pool if pool is not None else new_pool(concurrency)
        self._owns_pool = pool is None
        self._timeout = timeout
        self._documents_path = documents_path
        self._status_path = status_path
        self._headers = [(b"User-Agent", user_agent.encode("ascii"))]
        if token:
            # The token only ever lives in this header list; no message below includes headers.
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
    ) -> UploadAnswer:
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
        document_id = _document_id(response.content)
        replayed = _header(response, b"idempotent-replayed") == "true"
        return UploadAnswer(response.status, document_id, replayed)

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

    def list_documents(self, task_id: str) -> list[RemoteDocument] | None:
        """What the server already holds for the task, or None when it cannot tell us.

        keruta-api's contract does not promise a listing; dev-api serves one. Anything that is
        not a JSON list of objects with a path and a sha256 means "unknown", and the harvest
        then relies on Idempotency-Key alone. Auth rejections and an unreachable server raise
        as for any other request: the harvest learns of them before it uploads anything.
        """
        headers = [*self._headers, (b"Accept", b"application/json")]
        response = self._send(
            "GET", self.documents_url(task_id), headers, None, what="keruta-api check"
        )
        if response.status in (401, 403):
            raise self._classify(response, what="document listing")
        if response.status != 200:
            return None
        return _remote_documents(response.content)

    def _send(
        self,
        method: str,
        url: str,
        headers: list[tuple[bytes, bytes]],
        content: bytes | Iterator[bytes] | None,
        *,
        what: str,
    ) -> httpcore.Response:
        timeout = self._timeout
        extensions = {
            "timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": None}
        }
        try:
            return self._pool.request(
                method, url, headers=headers, content=content, extensions=extensions
            )
        except httpcore.TimeoutException as exc:
            raise RetryableError(
                f"{what} timed out: keruta-api at {self.base_url} made no progress for "
                f"{timeout:g}s ({type(exc).__name__}); raise --timeout if the server is slow"
            ) from exc
        except httpcore.ConnectError as exc:
            raise RetryableError(
                f"{what} failed: cannot connect to keruta-api at {self.base_url} "
                f"({exc or 'refused'}); check --api-url and the NetworkPolicy"
            ) from exc
        except (httpcore.NetworkError, httpcore.RemoteProtocolError) as exc:
            raise RetryableError(
                f"{what} failed: the connection to keruta-api at {self.base_url} broke "
                f"({type(exc).__name__}: {exc or 'closed'})"
            ) from exc
        except httpcore.UnsupportedProtocol as exc:
            raise RejectedError(f"{what} failed: {exc}; check --api-url") from exc

    def _classify(self, response: httpcore.Response, *, what: str) -> Exception:
        code = response.status
        excerpt = _excerpt(response.content)
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


def _framed(head: bytes, content: Iterable[bytes], tail: bytes) -> Iterator[bytes]:
    yield head
    yield from content
    yield tail


def _header(response: httpcore.Response, name: bytes) -> str | None:
    for key, value in response.headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _excerpt(content: bytes) -> str:
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
    text = " ".join(text.split())
    return text if len(text) <= _BODY_EXCERPT else text[: _BODY_EXCERPT - 1] + "…"


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
