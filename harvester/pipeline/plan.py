"""Deciding what to do with every path: upload, duplicate, already uploaded, skip or fail.

Takes the scan's result, the digests (and the paths that could not be hashed), the entries of
the ledger of accepted uploads and, when the server could tell, the documents it already holds;
gives an `UploadPlan` in sorted path order. Identical content is uploaded once, from the first
path in sorted order; the other paths are duplicates of it. A file whose path (as it was read)
and sha256 the ledger recorded, or content the server already holds, is not sent again; the
reason says which of them knew.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from harvester.model import (
    RECORDED_IN_LEDGER,
    Action,
    Digest,
    Failed,
    LedgerEntry,
    PlanItem,
    RemoteDocument,
    ScanResult,
    UploadPlan,
)


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
    """The plan for one harvest; see the module docstring for the rules. `recorded_in` names
    where the ledger's `recorded` entries were read ("ConfigMaps keruta-ledger-<uid>-*")."""
    in_ledger = {(entry.path, entry.sha256) for entry in recorded}
    ledger_reason = RECORDED_IN_LEDGER + (f" ({recorded_in})" if recorded_in else "")
    remote_by_sha: dict[str, str] = {}
    remote_pairs: set[tuple[str, str]] = set()
    for document in remote or ():
        remote_by_sha.setdefault(document.sha256, document.path)
        remote_pairs.add((document.path, document.sha256))

    items: list[PlanItem] = []
    first_path_of: dict[str, str] = {}
    for digest in sorted(digests, key=lambda d: d.rel_path):
        path, sha = digest.rel_path, digest.sha256
        if (digest.entry.os_path, sha) in in_ledger:
            items.append(_item(digest, Action.ALREADY_UPLOADED, reason=ledger_reason))
            first_path_of.setdefault(sha, path)
            continue
        if keep_duplicates:
            if (path, sha) in remote_pairs:
                items.append(_item(digest, Action.ALREADY_UPLOADED, reason="on the server"))
            else:
                items.append(_item(digest, Action.UPLOAD))
            continue
        original = first_path_of.setdefault(sha, path)
        if original != path:
            items.append(_item(digest, Action.DUPLICATE, duplicate_of=original))
        elif sha in remote_by_sha:
            held_as = remote_by_sha[sha]
            reason = "on the server" if held_as == path else f"on the server as {held_as}"
            items.append(_item(digest, Action.ALREADY_UPLOADED, reason=reason))
        else:
            items.append(_item(digest, Action.UPLOAD))

    for skipped in scan.skipped:
        items.append(
            PlanItem(skipped.rel_path, Action.SKIP, size=skipped.size, reason=str(skipped.reason))
        )
    for failed in (*scan.failed, *hash_failures):
        items.append(PlanItem(failed.rel_path, Action.FAIL, size=failed.size, reason=failed.error))
    items.sort(key=lambda item: item.rel_path)
    return UploadPlan(tuple(items))


def _item(
    digest: Digest, action: Action, *, duplicate_of: str | None = None, reason: str | None = None
) -> PlanItem:
    return PlanItem(
        digest.rel_path,
        action,
        size=digest.size,
        sha256=digest.sha256,
        digest=digest,
        duplicate_of=duplicate_of,
        reason=reason,
    )
