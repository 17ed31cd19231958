"""Deciding what to do with every path: upload, duplicate, already uploaded, skip or fail.

Takes the scan's entries, each one's hash result (a `Digest`, or a `Failed` for a path that could
not be hashed) in any order, the entries of the ledger of accepted uploads and, when the server
could tell, the documents it already holds; gives each upload as soon as its decision is final
(`Planner.add`), and at the end an `UploadPlan` of every path in sorted order (`Planner.plan`).
`build_plan` feeds a `Planner` everything at once: the real run, which uploads while it hashes,
and the dry run cannot disagree.

Identical content is uploaded once, from the first path in sorted order; the other paths are
duplicates of it. A file whose path (as it was read) and sha256 the ledger recorded, or content
the server already holds, is not sent again; the reason says which of them knew.

When a decision is final: only files of one size can share content, so the entries are grouped
by their size at the scan (a size class), and within a class a path is decided once every
earlier path of its class has its result; a path whose size nobody else has is decided as soon
as it is hashed, and with `keep_duplicates` nothing waits. Grouping by the scan's size makes the
plan the same whatever order the hashes come in: a file that changes size between the scan and
its hash (a writer still at work) is deduplicated within the class it was found in, never
against a later path already on its way.
"""

from __future__ import annotations

from array import array
from collections.abc import Collection, Sequence
from operator import attrgetter

from harvester.model import (
    RECORDED_IN_LEDGER,
    Action,
    Digest,
    Failed,
    FileEntry,
    LedgerEntry,
    PlanItem,
    RemoteDocument,
    ScanResult,
    UploadPlan,
)

__all__ = ["Planner", "build_plan"]

_LAST = -1  # the end of a size class's chain
_BY_PATH = attrgetter("rel_path")


class Planner:
    """One harvest's plan, decided as the hash results come in.

    `entries` are the scan's, in sorted path order; `add(index, result)` takes the result for
    `entries[index]`, once each, from one thread at a time. Memory: one machine word per entry
    while it waits, beyond what the finished plan holds.
    """

    def __init__(
        self,
        entries: Sequence[FileEntry],
        *,
        keep_duplicates: bool = False,
        remote: Collection[RemoteDocument] | None = None,
        recorded: Collection[LedgerEntry] = (),
        recorded_in: str | None = None,
    ) -> None:
        """`recorded_in` names where the ledger's `recorded` entries were read
        ("ConfigMaps keruta-ledger-<uid>-*")."""
        self._entries = entries
        self._keep_duplicates = keep_duplicates
        self._in_ledger = {(entry.path, entry.sha256) for entry in recorded}
        self._ledger_reason = RECORDED_IN_LEDGER + (f" ({recorded_in})" if recorded_in else "")
        self._remote_by_sha: dict[str, str] = {}
        self._remote_pairs: set[tuple[str, str]] = set()
        for document in remote or ():
            self._remote_by_sha.setdefault(document.sha256, document.path)
            self._remote_pairs.add((document.path, document.sha256))
        # The first digest of each content, and (rarely) the first path of a content met again
        # in another size class: a million paths would otherwise each hold a (size, sha256)
        # tuple key, some 56 bytes apiece, where the digest already holds both.
        self._first_of: dict[str, Digest] = {}
        self._first_in_other_class: dict[tuple[int, str], str] = {}
        self._decided: list[PlanItem] = []
        self._failed: list[Failed] = []
        self._waiting: dict[int, Digest | Failed] = {}
        # Each size class is a chain through `_next` (the next index of the same size), and
        # `_head` holds, per size, the first index not decided yet.
        self._next = array("q", bytes(0 if keep_duplicates else 8 * len(entries)))
        self._head: dict[int, int] = {}
        if not keep_duplicates:
            for index in range(len(entries) - 1, -1, -1):
                size = entries[index].size
                self._next[index] = self._head.get(size, _LAST)
                self._head[size] = index

    def add(self, index: int, result: Digest | Failed) -> list[PlanItem]:
        """Take `entries[index]`'s hash result; give the uploads whose decision it made final."""
        if self._keep_duplicates:
            return self._resolve(result)
        size = self._entries[index].size
        if self._head[size] != index:
            self._waiting[index] = result  # an earlier path of its size is not hashed yet
            return []
        uploads = self._resolve(result)
        following = self._next[index]
        while following != _LAST and following in self._waiting:
            uploads += self._resolve(self._waiting.pop(following))
            following = self._next[following]
        self._head[size] = following
        return uploads

    def plan(self, scan: ScanResult) -> UploadPlan:
        """Every path in sorted order: the decisions made, then the scan's skips and failures.
        Call it once every entry's result was added."""
        if self._waiting:
            raise ValueError(f"{len(self._waiting)} hash results are still waiting for others")
        items = self._decided
        for skipped in scan.skipped:
            items.append(
                PlanItem(
                    skipped.rel_path, Action.SKIP, size=skipped.size, reason=str(skipped.reason)
                )
            )
        for failed in (*scan.failed, *self._failed):
            items.append(
                PlanItem(failed.rel_path, Action.FAIL, size=failed.size, reason=failed.error)
            )
        items.sort(key=_BY_PATH)
        self._decided = []
        return UploadPlan(tuple(items))

    def _resolve(self, result: Digest | Failed) -> list[PlanItem]:
        if isinstance(result, Failed):
            self._failed.append(result)
            return []
        item = self._decide(result)
        self._decided.append(item)
        return [item] if item.action is Action.UPLOAD else []

    def _decide(self, digest: Digest) -> PlanItem:
        """The action for `digest`, given that every earlier path of its size class is decided."""
        path, sha = digest.rel_path, digest.sha256
        if (digest.entry.os_path, sha) in self._in_ledger:
            if not self._keep_duplicates:
                self._original(digest)
            return _item(digest, Action.ALREADY_UPLOADED, reason=self._ledger_reason)
        if self._keep_duplicates:
            if (path, sha) in self._remote_pairs:
                return _item(digest, Action.ALREADY_UPLOADED, reason="on the server")
            return _item(digest, Action.UPLOAD)
        original = self._original(digest)
        if original != path:
            return _item(digest, Action.DUPLICATE, duplicate_of=original)
        held_as = self._remote_by_sha.get(sha)
        if held_as is not None:
            reason = "on the server" if held_as == path else f"on the server as {held_as}"
            return _item(digest, Action.ALREADY_UPLOADED, reason=reason)
        return _item(digest, Action.UPLOAD)

    def _original(self, digest: Digest) -> str:
        """The first path of `digest`'s size class with its content (its own, if it is the
        first). Within a class paths are decided in order, so the first to ask is the first."""
        sha = digest.sha256
        first = self._first_of.setdefault(sha, digest)
        if first.entry.size == digest.entry.size:
            return first.rel_path
        return self._first_in_other_class.setdefault((digest.entry.size, sha), digest.rel_path)


def build_plan(
    scan: ScanResult,
    digests: Sequence[Digest],
    hash_failures: Sequence[Failed] = (),
    *,
    keep_duplicates: bool = False,
    remote: Collection[RemoteDocument] | None = None,
    recorded: Collection[LedgerEntry] = (),
    recorded_in: str | None = None,
) -> UploadPlan:
    """The plan for digests known all at once: a `Planner` fed everything (see the module
    docstring for the rules)."""
    ordered = sorted(digests, key=_BY_PATH)
    planner = Planner(
        [digest.entry for digest in ordered],
        keep_duplicates=keep_duplicates,
        remote=remote,
        recorded=recorded,
        recorded_in=recorded_in,
    )
    for index, digest in enumerate(ordered):
        planner.add(index, digest)
    if hash_failures:
        scan = ScanResult(scan.entries, scan.skipped, (*scan.failed, *hash_failures))
    return planner.plan(scan)


def _item(
    digest: Digest, action: Action, *, duplicate_of: str | None = None, reason: str | None = None
) -> PlanItem:
    # Positional: a frozen dataclass's keyword call costs measurably at a million paths.
    return PlanItem(
        digest.rel_path, action, digest.size, digest.sha256, digest, duplicate_of, reason
    )
