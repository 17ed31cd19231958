"""What the PVC tests on both Kubernetes backends share: a listener that keeps the notices, and
the report of a complete harvest to hand to `Volume.record_outcome`."""

from __future__ import annotations

from harvester.model import HarvestReport, StepResult, StepState
from harvester.stats import Level, NullListener

TASK = "123"
SOURCE_POD = "keruta-job-123-abcde"
OWN_POD = "cleanup-job-for-task-123-xyz"


class Notices(NullListener):
    """A listener that keeps every notice, for assertions."""

    def __init__(self) -> None:
        self.lines: list[tuple[Level, str]] = []

    def notice(self, level: Level, message: str) -> None:
        self.lines.append((level, message))


def complete_harvest(pvc: StepResult) -> HarvestReport:
    """The report of a harvest whose uploads and status update succeeded, with `pvc` as its
    PVC step."""
    return HarvestReport(
        task_id=TASK,
        root="/.keruta/doc",
        dry_run=False,
        files=(),
        elapsed_seconds=0.1,
        bytes_uploaded=0,
        status=StepResult(StepState.DONE, "set to COMPLETED"),
        pvc=pvc,
    )
