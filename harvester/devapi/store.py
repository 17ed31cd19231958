"""The dev-api's memory: tasks, their documents and status histories.

Takes a data folder; gives a `DevApiStore` that keeps every task's documents (`StoredDocument`)
and status history (`StatusUpdate`) in memory, answers with immutable snapshots (`TaskState`), and
names the content-addressed blob `<data_dir>/blobs/<sha256>` each document's bytes live in (plus
`<data_dir>/tmp` for uploads still arriving). It only records what the server already checked; it
writes no blob itself.

Everything runs on uvicorn's one event loop, so the store needs no locking against itself; a lock
only guards readers on other threads (tests inspecting `DevApiServer.store`).
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from harvester.model import TaskStatus

__all__ = ["DevApiStore", "StatusUpdate", "StoredDocument", "TaskState"]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class StoredDocument:
    """One accepted upload; its bytes are the blob named by `sha256`."""

    id: str
    task_id: str
    path: str
    filename: str
    sha256: str
    size: int
    content_type: str
    created_at: str
    idempotency_key: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "taskId": self.task_id,
            "path": self.path,
            "filename": self.filename,
            "sha256": self.sha256,
            "size": self.size,
            "contentType": self.content_type,
            "createdAt": self.created_at,
        }


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """One accepted `PUT .../status`."""

    status: TaskStatus
    message: str | None
    progress: int | None
    error_code: str | None
    updated_at: str

    def to_json(self) -> dict[str, object]:
        return {
            "status": self.status,
            "message": self.message,
            "progress": self.progress,
            "errorCode": self.error_code,
            "updatedAt": self.updated_at,
        }


@dataclass(frozen=True, slots=True)
class TaskState:
    """A snapshot of one task: its latest status (PENDING until one is set) and its history."""

    id: str
    status: TaskStatus
    message: str | None
    progress: int | None
    error_code: str | None
    updated_at: str
    history: tuple[StatusUpdate, ...]

    def to_json(self, *, with_history: bool = False) -> dict[str, object]:
        body: dict[str, object] = {
            "id": self.id,
            "status": self.status,
            "message": self.message,
            "progress": self.progress,
            "errorCode": self.error_code,
            "updatedAt": self.updated_at,
        }
        if with_history:
            body["statusHistory"] = [update.to_json() for update in self.history]
        return body


@dataclass(slots=True)
class _TaskRecord:
    id: str
    created_at: str
    history: list[StatusUpdate] = field(default_factory=list)
    documents: list[StoredDocument] = field(default_factory=list)
    by_id: dict[str, StoredDocument] = field(default_factory=dict)
    by_key: dict[str, StoredDocument] = field(default_factory=dict)

    def snapshot(self) -> TaskState:
        if not self.history:
            return TaskState(self.id, TaskStatus.PENDING, None, None, None, self.created_at, ())
        last = self.history[-1]
        return TaskState(
            self.id,
            last.status,
            last.message,
            last.progress,
            last.error_code,
            last.updated_at,
            tuple(self.history),
        )


class DevApiStore:
    """Tasks, documents and status histories in memory; blobs under `data_dir/blobs`.

    Mutated only from the server's event loop; the read methods return immutable snapshots so
    another thread may call them at any time.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.blobs_dir = data_dir / "blobs"
        self.tmp_dir = data_dir / "tmp"
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._tasks: dict[str, _TaskRecord] = {}
        self._lock = threading.Lock()

    def blob_path(self, sha256: str) -> Path:
        return self.blobs_dir / sha256

    def task_ids(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._tasks)

    def task(self, task_id: str) -> TaskState | None:
        """The task's state, or None when no request ever named it."""
        with self._lock:
            record = self._tasks.get(task_id)
            return None if record is None else record.snapshot()

    def documents(self, task_id: str) -> tuple[StoredDocument, ...]:
        """The task's documents in upload order."""
        with self._lock:
            record = self._tasks.get(task_id)
            return () if record is None else tuple(record.documents)

    def document(self, task_id: str, document_id: str) -> StoredDocument | None:
        with self._lock:
            record = self._tasks.get(task_id)
            return None if record is None else record.by_id.get(document_id)

    def by_idempotency_key(self, task_id: str, key: str) -> StoredDocument | None:
        with self._lock:
            record = self._tasks.get(task_id)
            return None if record is None else record.by_key.get(key)

    def add_document(
        self,
        task_id: str,
        *,
        path: str,
        filename: str,
        sha256: str,
        size: int,
        content_type: str,
        idempotency_key: str | None = None,
    ) -> tuple[StoredDocument, bool]:
        """Record a document whose blob is already in place.

        Returns the document and True, or, when the task already holds a document under the same
        idempotency key (a concurrent retry that won the race), that original and False.
        """
        with self._lock:
            record = self._record(task_id)
            if idempotency_key is not None:
                original = record.by_key.get(idempotency_key)
                if original is not None:
                    return original, False
            document = StoredDocument(
                id=str(uuid.uuid4()),
                task_id=task_id,
                path=path,
                filename=filename,
                sha256=sha256,
                size=size,
                content_type=content_type,
                created_at=_now(),
                idempotency_key=idempotency_key,
            )
            record.documents.append(document)
            record.by_id[document.id] = document
            if idempotency_key is not None:
                record.by_key[idempotency_key] = document
            return document, True

    def set_status(
        self,
        task_id: str,
        status: TaskStatus,
        *,
        message: str | None = None,
        progress: int | None = None,
        error_code: str | None = None,
    ) -> TaskState:
        """Append a (validated) status update to the task's history; returns the new state."""
        update = StatusUpdate(status, message, progress, error_code, _now())
        with self._lock:
            record = self._record(task_id)
            record.history.append(update)
            return record.snapshot()

    def _record(self, task_id: str) -> _TaskRecord:
        record = self._tasks.get(task_id)
        if record is None:
            record = self._tasks[task_id] = _TaskRecord(task_id, _now())
        return record
