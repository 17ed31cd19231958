"""Building `FileReport`s for renderer tests the way the harvest builds them: a `PlanItem` and the
`Receipt` of what became of it."""

from __future__ import annotations

from harvester.model import Action, FileReport, Outcome, PlanItem, Receipt


def file_report(
    path: str,
    action: Action,
    outcome: Outcome,
    size: int | None = None,
    sha256: str | None = None,
    *,
    duplicate_of: str | None = None,
    reason: str | None = None,
    document_id: str | None = None,
    error: str | None = None,
    attempts: int = 0,
) -> FileReport:
    item = PlanItem(
        path, action, size=size, sha256=sha256, duplicate_of=duplicate_of, reason=reason
    )
    return FileReport(item, Receipt(outcome, attempts, document_id=document_id, error=error))
