"""What the controller does about one main Job, from its current state alone.

Takes a `MainJob` (as listed or watched); gives a `Decision`. Level-triggered on purpose: the
decision depends only on the Job as it is now (its labels, its `Complete`/`Failed` condition,
the record the controller left on it), so a restart, a relist, a duplicate or a missed event
leads to the same decision, and acting on it twice changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from harvester.model import MainJob

# The record of a decision, left on the main Job: the cleanup Job's name once it was created, or
# why none was. Its presence is what keeps a relist from starting a second cleanup, even after
# the cleanup Job itself was removed by its TTL. Remove it to have the controller decide again.
DECISION_ANNOTATION = "harvester.keruta.io/cleanup-job"
TASK_LABEL = "task-id"
COMPONENT_LABEL = "app.kubernetes.io/component"
CLEANUP_COMPONENT = "cleanup"
CLEANUP_JOB_PREFIX = "cleanup-job-for-task-"
# What the record says when no cleanup Job was started for a Job that ended.
NO_CLEANUP_PREFIX = "none: "


class Verdict(StrEnum):
    IGNORE = "ignore"  # not a main Job of a task (our own cleanup Job, or no task-id label)
    DECIDED = "decided"  # already decided earlier: the record is on the Job
    RUNNING = "running"  # neither Complete nor Failed yet
    START_CLEANUP = "start-cleanup"  # Complete=True: ensure the cleanup Job
    FAILED = "failed"  # Failed=True: no cleanup Job; say so once


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    job: MainJob
    reason: str
    task_id: str | None = None

    @property
    def cleanup_job_name(self) -> str:
        """The cleanup Job's name: `cleanup-job-for-task-<task id>` (the seed's)."""
        if self.task_id is None:
            raise ValueError(f"{self.job.name}: no task id, so no cleanup Job")
        return CLEANUP_JOB_PREFIX + self.task_id


def decide(job: MainJob) -> Decision:
    """The decision for `job`; see the module docstring."""
    if job.labels.get(COMPONENT_LABEL) == CLEANUP_COMPONENT:
        return Decision(Verdict.IGNORE, job, "a cleanup Job itself")
    task_id = job.labels.get(TASK_LABEL)
    if not task_id:
        return Decision(Verdict.IGNORE, job, f"no {TASK_LABEL} label")
    record = job.annotations.get(DECISION_ANNOTATION)
    if record is not None:
        return Decision(Verdict.DECIDED, job, f"decided before: {record}", task_id)
    if job.failed:
        return Decision(Verdict.FAILED, job, "the main Job failed", task_id)
    if job.complete:
        return Decision(Verdict.START_CLEANUP, job, "the main Job is complete", task_id)
    return Decision(Verdict.RUNNING, job, "the main Job has not finished", task_id)
