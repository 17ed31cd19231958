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
# On a cleanup Job: the main Job it harvests (set when it is rendered), and the record that its
# outcome was acted on (so a relist does not act on it again).
MAIN_JOB_ANNOTATION = "harvester.keruta.io/main-job"
MAIN_JOB_UID_ANNOTATION = "harvester.keruta.io/main-job-uid"
OUTCOME_ANNOTATION = "harvester.keruta.io/outcome"


class Verdict(StrEnum):
    IGNORE = "ignore"  # not a main Job of a task (our own cleanup Job, or no task-id label)
    DECIDED = "decided"  # already decided earlier: the record is on the Job
    RUNNING = "running"  # neither Complete nor Failed yet
    START_CLEANUP = "start-cleanup"  # Complete=True: ensure the cleanup Job
    FAILED = "failed"  # Failed=True: no cleanup Job; say so once
    CLEANUP_SUCCEEDED = "cleanup-succeeded"  # our cleanup Job is Complete: let the volume go
    CLEANUP_FAILED = "cleanup-failed"  # our cleanup Job failed for good: say so, keep the volume


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
        return _decide_cleanup(job)
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


def _decide_cleanup(job: MainJob) -> Decision:
    """A cleanup Job: once it ended, its outcome is acted on once (see `Verdict`)."""
    task_id = job.labels.get(TASK_LABEL) or None
    if MAIN_JOB_ANNOTATION not in job.annotations or task_id is None:
        return Decision(Verdict.IGNORE, job, "a cleanup Job itself, not one this controller made")
    outcome = job.annotations.get(OUTCOME_ANNOTATION)
    if outcome is not None:
        return Decision(Verdict.DECIDED, job, f"a cleanup Job whose outcome was seen: {outcome}")
    if job.complete:
        return Decision(Verdict.CLEANUP_SUCCEEDED, job, "the cleanup Job is complete", task_id)
    if job.failed:
        return Decision(Verdict.CLEANUP_FAILED, job, "the cleanup Job failed", task_id)
    return Decision(Verdict.RUNNING, job, "a cleanup Job that has not finished", task_id)
