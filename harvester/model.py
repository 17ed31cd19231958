"""Plain data passed between the stages of a harvest.

scan gives `FileEntry`s and `Skipped`s, digest turns entries into `Digest`s (or `Failed`s),
plan gives an `UploadPlan` of `PlanItem`s, upload gives one `Receipt` per planned upload, and the
orchestrator folds all of it into a `HarvestReport`; the task's `TaskStatus` is what it sends at the
end. Everything here is frozen and printable.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class SkipReason(StrEnum):
    """Why the scan left a path out. The value is the phrase shown to people."""

    HIDDEN = "hidden (use --include-hidden to harvest it)"
    SYMLINK = "symbolic link (never followed)"
    FIFO = "named pipe (never opened)"
    SOCKET = "socket"
    DEVICE = "device file"
    OTHER_TYPE = "not a regular file"
    TOO_LARGE = "larger than --max-file-size"
    EXCLUDED = "matches --exclude"
    NOT_INCLUDED = "matches no --include"


@dataclass(frozen=True, slots=True)
class FileEntry:
    """A regular file found under the documents root.

    `rel_path` is the POSIX path relative to the root as it is sent to keruta-api; `os_path` is
    the same path as the operating system names it (they differ only for names that are not valid
    UTF-8, whose odd bytes appear as %XX in `rel_path`).
    """

    rel_path: str
    os_path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class Skipped:
    """A path the scan deliberately left out, with the reason."""

    rel_path: str
    reason: SkipReason
    size: int | None = None


@dataclass(frozen=True, slots=True)
class Failed:
    """A path that should have been harvested but could not be read; it blocks PVC deletion."""

    rel_path: str
    error: str
    size: int | None = None


@dataclass(frozen=True, slots=True)
class ScanResult:
    """Everything the scan saw, each list in sorted path order."""

    entries: tuple[FileEntry, ...]
    skipped: tuple[Skipped, ...]
    failed: tuple[Failed, ...]
    root_exists: bool = True


@dataclass(frozen=True, slots=True)
class Digest:
    """A file entry with the SHA-256 of its content, read while size and mtime held still."""

    entry: FileEntry
    sha256: str
    size: int
    mtime_ns: int
    # The change time and inode seen while hashing: any write since changes the ctime, which
    # no one can set back, so the uploader can prove it sends exactly the hashed content.
    ctime_ns: int
    inode: int

    @property
    def rel_path(self) -> str:
        return self.entry.rel_path


@dataclass(frozen=True, slots=True)
class FileSpan:
    """`length` bytes of a document's open file `fd` from `offset`, as a piece of a request
    body: sent by the kernel (sendfile) on a plain connection, never through a buffer of ours;
    read in pieces on a TLS one. `rel_path` names the file if it turns out shorter."""

    fd: int
    offset: int
    length: int
    rel_path: str

    def __len__(self) -> int:
        return self.length


# A document's content as an upload takes it: all of it, or its pieces in order.
DocumentContent = bytes | Iterable[bytes | FileSpan]


class TaskStatus(StrEnum):
    """A keruta task's status, as keruta-api accepts it in a status update (and dev-api too)."""

    PENDING = "PENDING"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    WAITING_FOR_INPUT = "WAITING_FOR_INPUT"
    RETRYING = "RETRYING"


@dataclass(frozen=True, slots=True)
class RemoteDocument:
    """A document keruta-api already holds for the task, as far as its listing tells."""

    path: str
    sha256: str


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """A document keruta-api acknowledged, as the ledger of accepted uploads keeps it: the
    path it was read from (relative to the root), its content's sha256 and size, and the id the
    server gave it (None when it named none)."""

    path: str
    sha256: str
    size: int
    document_id: str | None = None


# How a plan item's reason begins when the ledger, not the server, knew the document.
RECORDED_IN_LEDGER = "recorded in the ledger"


@dataclass(frozen=True, slots=True)
class LedgerUse:
    """What the ledger of accepted uploads did in one run: where it is (None when there was
    none), how it went (`note`: used, or why not, or why it stopped), the entries it held when
    the run began and the entries this run wrote."""

    where: str | None
    note: str
    read: int = 0
    written: int = 0


class Action(StrEnum):
    """What the plan does with a path."""

    UPLOAD = "upload"
    DUPLICATE = "duplicate"
    ALREADY_UPLOADED = "already-uploaded"
    SKIP = "skip"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class PlanItem:
    """One path of the plan: its action and, for uploads, the digest to send."""

    rel_path: str
    action: Action
    size: int | None = None
    sha256: str | None = None
    digest: Digest | None = None
    duplicate_of: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class UploadPlan:
    """Every path seen, in sorted order, each with its action."""

    items: tuple[PlanItem, ...]

    def with_action(self, action: Action) -> tuple[PlanItem, ...]:
        return tuple(item for item in self.items if item.action is action)

    @property
    def uploads(self) -> tuple[PlanItem, ...]:
        return self.with_action(Action.UPLOAD)

    @property
    def upload_bytes(self) -> int:
        return sum(item.size or 0 for item in self.uploads)


class Outcome(StrEnum):
    """What finally happened to a path."""

    UPLOADED = "uploaded"
    DUPLICATE = "duplicate"
    ALREADY_UPLOADED = "already-uploaded"
    SKIPPED = "skipped"
    FAILED = "failed"
    NOT_ATTEMPTED = "not-attempted"
    PLANNED = "planned"  # dry run: nothing was sent


# The outcomes that leave a document off the server: they keep the volume and fail the task.
NOT_HARVESTED = frozenset({Outcome.FAILED, Outcome.NOT_ATTEMPTED})


@dataclass(frozen=True, slots=True)
class Receipt:
    """What became of one planned item: for an upload, the uploader's answer for that very item
    (receipts are matched to items by position, never by name)."""

    outcome: Outcome
    attempts: int = 0
    document_id: str | None = None
    error: str | None = None


class StepState(StrEnum):
    """The state of a step after the uploads: the status update and the PVC deletion."""

    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class StepResult:
    state: StepState
    message: str


@dataclass(frozen=True, slots=True)
class FileReport:
    """One line of the final report: a planned path and what became of it."""

    item: PlanItem
    receipt: Receipt

    @property
    def path(self) -> str:
        return self.item.rel_path

    @property
    def action(self) -> Action:
        return self.item.action

    @property
    def size(self) -> int | None:
        return self.item.size

    @property
    def sha256(self) -> str | None:
        return self.item.sha256

    @property
    def duplicate_of(self) -> str | None:
        return self.item.duplicate_of

    @property
    def reason(self) -> str | None:
        return self.item.reason

    @property
    def outcome(self) -> Outcome:
        return self.receipt.outcome

    @property
    def document_id(self) -> str | None:
        return self.receipt.document_id

    @property
    def error(self) -> str | None:
        return self.receipt.error

    @property
    def attempts(self) -> int:
        return self.receipt.attempts


@dataclass(frozen=True, slots=True)
class HarvestReport:
    """The whole result of one harvest, from which every summary is rendered."""

    task_id: str
    root: str
    dry_run: bool
    files: tuple[FileReport, ...]
    elapsed_seconds: float
    bytes_uploaded: int
    status: StepResult
    pvc: StepResult
    auth_rejected: bool = False
    interrupted: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)
    ledger: LedgerUse | None = None

    def count(self, outcome: Outcome) -> int:
        return sum(1 for f in self.files if f.outcome is outcome)

    @property
    def already_uploaded_from_ledger(self) -> int:
        """The files planned "already uploaded" because the ledger recorded them (the others
        because keruta-api's listing holds them)."""
        return sum(
            1
            for f in self.files
            if f.action is Action.ALREADY_UPLOADED
            and (f.reason or "").startswith(RECORDED_IN_LEDGER)
        )

    @property
    def failures(self) -> tuple[FileReport, ...]:
        return tuple(f for f in self.files if f.outcome in NOT_HARVESTED)


@dataclass(frozen=True, slots=True)
class ClaimMount:
    """A PersistentVolumeClaim a pod (template) mounts, and where."""

    claim: str
    mount_paths: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MainJob:
    """A keruta main Job (batch/v1) as the controller sees it: who it is, its labels and
    annotations, how it ended (the `Complete` or `Failed` condition), and the claims its pod
    template mounts."""

    namespace: str
    name: str
    uid: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    complete: bool
    failed: bool
    completed_at: datetime | None
    claims: tuple[ClaimMount, ...]


@dataclass(frozen=True, slots=True)
class TerminatingClaim:
    """A PersistentVolumeClaim whose deletion was requested and is not done yet."""

    namespace: str
    name: str
    uid: str
    deleted_at: datetime
