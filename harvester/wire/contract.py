"""The keruta-api contract as data: what a request carries and what an answer may say.

Takes nothing; gives the names both sides of the wire must agree on, said once: the multipart
parts of a document upload (`FILE_PART` and the `TEXT_PARTS` sent before it), the
`Idempotency-Key` header and its derivation, the keys a status body may carry (`status_body`,
`STATUS_KEYS`; the values are `harvester.model.TaskStatus`), the statuses worth retrying, and the
shapes of the answers the client reads (a document id, the optional listing, an error message).
The client (`client.py`) and the multipart framing (`multipart.py`) build requests from these;
dev-api (`harvester.devapi.server`) checks what it receives against the same names.

The endpoint paths are options with defaults (`--documents-path`, `--status-path`, in
`harvester.settings`), so they are not repeated here.
"""

from __future__ import annotations

import hashlib
import json
from http import HTTPStatus
from typing import Final

from harvester.model import RemoteDocument, TaskStatus

# A document upload is multipart/form-data: these text parts, in this order, then the file.
PATH_PART: Final = "path"
SHA256_PART: Final = "sha256"
SIZE_PART: Final = "size"
TEXT_PARTS: Final = (PATH_PART, SHA256_PART, SIZE_PART)
FILE_PART: Final = "file"

# Sent with every upload; the server stores a document once per key, so a retry or a re-run
# of the same harvest never stores it twice.
IDEMPOTENCY_KEY_HEADER: Final = "Idempotency-Key"

# keruta-api rejects a status body with any other key.
STATUS_KEYS: Final = ("status", "message", "progress", "errorCode")

# Statuses after which the same request may succeed later.
RETRYABLE_STATUS: Final = frozenset({408, 425, 429, 500, 502, 503, 504})

# Where an error answer's JSON object carries its sentence, most specific first.
ERROR_MESSAGE_KEYS: Final = ("message", "error", "detail")


def idempotency_key(task_id: str, rel_path: str, sha256: str) -> str:
    """Stable across retries and re-runs of the same harvest, distinct per path and content."""
    material = "\0".join((task_id, rel_path, sha256)).encode("utf-8", "surrogateescape")
    return hashlib.sha256(material).hexdigest()


def status_body(
    status: TaskStatus,
    message: str,
    *,
    progress: int | None = None,
    error_code: str | None = None,
) -> dict[str, object]:
    """The JSON object of a status update: only `STATUS_KEYS`, and only those with a value."""
    body: dict[str, object] = {"status": status.value, "message": message}
    if progress is not None:
        body["progress"] = progress
    if error_code is not None:
        body["errorCode"] = error_code
    return body


def describe_status(code: int) -> str:
    """`404 Not Found`; a code without a standard phrase as the number alone."""
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return str(code)


def document_id(content: bytes) -> str | None:
    """The id in an upload's answer (`{"id": ...}`), or None when it names none."""
    if not content:
        return None
    try:
        data = json.loads(content)
    except ValueError:
        return None
    if isinstance(data, dict) and data.get("id") is not None:
        return str(data["id"])
    return None


def remote_documents(content: bytes) -> list[RemoteDocument] | None:
    """The documents a listing names, or None when it is not a listing we can read.

    keruta-api does not promise one; dev-api serves a JSON list of objects with a path and a
    sha256. A page object (`{"documents": [...]}` or `{"content": [...]}`) is read too.
    """
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


def error_message(content: bytes) -> str:
    """The sentence of an error answer: its JSON message when it has one, else the body."""
    text = content.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text
    if isinstance(data, dict):
        for key in ERROR_MESSAGE_KEYS:
            if isinstance(data.get(key), str) and data[key]:
                return str(data[key])
    return text
