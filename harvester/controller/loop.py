"""The controller's loop: each main Job it sees, decided and acted on.

Takes the stream of `MainJob`s a watch gives (listed, then changed), the Kubernetes actions
(`JobActions`, which `harvester.kube.jobs` provides) and a `Listener` for its log lines; acts on
each `Decision` (see `decide`). Every act is idempotent: the cleanup Job is created under a fixed
name (a 409 means it exists), and the decision is recorded on the main Job, so a relist, a
restart or two controllers at once start one cleanup Job per task, never two. A failed act is
said once and left for the next time the Job is seen (a change, a relist, a restart): nothing is
recorded that did not happen.
"""

from __future__ import annotations

import queue
import threading
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Protocol

from harvester.controller.decide import (
    DECISION_ANNOTATION,
    MAIN_JOB_ANNOTATION,
    MAIN_JOB_UID_ANNOTATION,
    NO_CLEANUP_PREFIX,
    OUTCOME_ANNOTATION,
    Decision,
    Verdict,
    decide,
)
from harvester.controller.events import EventWriter
from harvester.controller.pods import SucceededPods
from harvester.controller.render import TemplateError, render
from harvester.controller.retries import Retries
from harvester.controller.serve import Metrics
from harvester.controller.templates import Templates
from harvester.errors import HarvesterError
from harvester.kube.volume import claim_holding
from harvester.model import MainJob
from harvester.settings import DEFAULT_ROOT
from harvester.stats import Level, Listener


class JobActions(Protocol):
    """What the controller asks of Kubernetes besides the watch (see `harvester.kube.jobs`)."""

    def create_job(self, namespace: str, manifest: Mapping[str, Any]) -> bool: ...

    def record_on_job(
        self, namespace: str, name: str, uid: str, annotations: Mapping[str, str | None]
    ) -> bool: ...

    def set_job_ttl(self, namespace: str, name: str, seconds: int) -> bool: ...

    def job_event(
        self, job: MainJob, reason: str, message: str, *, warning: bool = False
    ) -> str | None: ...


# The verdicts that change something: only the leader acts on them.
_ACTS = frozenset(
    {Verdict.START_CLEANUP, Verdict.FAILED, Verdict.CLEANUP_SUCCEEDED, Verdict.CLEANUP_FAILED}
)


class Controller:
    """Decides about each main Job and acts on the decision."""

    def __init__(
        self,
        actions: JobActions,
        templates: Templates,
        pods: SucceededPods,
        events: EventWriter,
        listener: Listener,
        *,
        release_after: float = 0.0,
        report_failure: Callable[[Decision], None] | None = None,
        metrics: Metrics | None = None,
        may_act: Callable[[], bool] = lambda: True,
    ) -> None:
        self._metrics = metrics or Metrics()
        self._may_act = may_act
        self._release_after = int(release_after)
        self._report_failure = report_failure
        self._actions = actions
        self._templates = templates
        self._pods = pods
        self._events = events
        self._listener = listener

    def run(self, jobs: Iterable[MainJob], *, workers: int = 1) -> None:
        """Handle every Job the watch gives, until it ends (on stop), on `workers` threads.

        A Job always goes to the same worker (by its uid), so its events are handled in the
        order they came and never two at once; different Jobs are handled side by side, since
        each takes a few round trips to the API server. A Job whose act failed is handled
        again after a backoff (`Retries`), in the newest version the watch gave of it."""
        queues: list[queue.SimpleQueue[MainJob | None]] = [
            queue.SimpleQueue() for _ in range(max(workers, 1))
        ]

        def put(job: MainJob) -> None:
            queues[zlib.crc32(job.uid.encode()) % len(queues)].put(job)

        retries = Retries(put)

        def work(jobs_of_worker: queue.SimpleQueue[MainJob | None]) -> None:
            while (job := jobs_of_worker.get()) is not None:
                if self.handle(job):
                    retries.done(job)
                else:
                    delay = retries.failed(job)
                    self._listener.notice(
                        Level.DEBUG, f"Job {job.namespace}/{job.name}: next try in {delay:.1f}s"
                    )

        threads = [
            threading.Thread(target=work, args=(q,), name=f"controller-{i}", daemon=True)
            for i, q in enumerate(queues)
        ]
        for thread in threads:
            thread.start()
        try:
            for job in jobs:
                retries.seen(job)
                put(job)
        finally:
            retries.close()
            for q in queues:
                q.put(None)
            for thread in threads:
                thread.join()

    def handle(self, job: MainJob) -> bool:
        """Decide about `job` and act; False when an act failed (nothing was recorded, so it
        may be tried again)."""
        decision = decide(job)
        subject = f"Job {job.namespace}/{job.name}"
        self._metrics.jobs_seen.inc()
        if decision.verdict in _ACTS and not self._may_act():
            # The lease was lost since the watch gave this Job: another replica acts now.
            self._listener.notice(Level.DEBUG, f"{subject}: {decision.reason}; not the leader")
            return True
        try:
            if decision.verdict is Verdict.START_CLEANUP:
                return self._start_cleanup(decision)
            elif decision.verdict is Verdict.FAILED:
                self._metrics.failed_jobs_skipped.inc()
                if self._report_failure is not None:
                    # Before the record: a report that did not reach keruta-api is tried again.
                    self._report_failure(decision)
                self._no_cleanup(
                    decision, "the main Job failed, so its documents are not harvested"
                )
            elif decision.verdict is Verdict.CLEANUP_SUCCEEDED:
                self._release(decision)
            elif decision.verdict is Verdict.CLEANUP_FAILED:
                self._metrics.cleanup_jobs_failed.inc()
                self._cleanup_failed(decision)
            else:
                self._listener.notice(Level.DEBUG, f"{subject}: {decision.reason}; nothing to do")
        except HarvesterError as exc:
            # Nothing was recorded, so the Job is decided again: after a backoff, or when the
            # watch gives it again (a change, a relist, a restart).
            self._listener.notice(Level.ERROR, f"{subject}: {exc}; it is tried again")
            return False
        return True

    def _start_cleanup(self, decision: Decision) -> bool:
        """True when decided (a cleanup Job created or found, or none needed, recorded); False
        when it could not start yet (no usable template in the namespace). A cleanup Job the
        template cannot make for this task (its id cannot name a Job) is said, not retried."""
        job, name = decision.job, decision.cleanup_job_name
        claim = self._claim(job)
        if claim is None:
            self._no_cleanup(
                decision,
                "its pod template mounts no PersistentVolumeClaim holding "
                f"{DEFAULT_ROOT}, so there is nothing to harvest",
            )
            return True
        template, missing = self._templates.lookup(job.namespace)
        if template is None:
            self._warn(job, "CleanupNotStarted", missing)
            return False
        source = self._templates.source(job.namespace)
        source_pod = self._pods.newest(job.namespace, job.name)
        try:
            manifest = render(template, decision, claim=claim, source_pod=source_pod, source=source)
        except TemplateError as exc:
            self._warn(job, "CleanupNotStarted", str(exc))
            return True
        created = self._actions.create_job(job.namespace, manifest)
        if created:
            self._metrics.cleanup_jobs_created.inc()
            if job.completed_at is not None:
                waited = (datetime.now(UTC) - job.completed_at).total_seconds()
                self._metrics.completion_to_cleanup.observe(max(waited, 0.0))
        self._record(decision, name)
        what = "created" if created else "already existed"
        message = (
            f"task {decision.task_id}: cleanup Job {name} {what} (claim {claim}, source pod "
            f"{source_pod or 'none left'})"
        )
        self._tell(job, "CleanupJobCreated" if created else "CleanupJobExists", message)
        return True

    def _release(self, decision: Decision) -> None:
        """The cleanup succeeded: the harvest deleted the claim, which pvc-protection keeps
        `Terminating` while any pod object that used it exists, finished ones included. Both
        Jobs get a TTL, so the ttl-after-finished controller removes them and the garbage
        collector their pods; then the claim goes. The outcome stays as an Event on the main
        Job and as the task's status in keruta-api."""
        cleanup, main = decision.job, decision.job.annotations[MAIN_JOB_ANNOTATION]
        ttl = self._release_after
        kept = self._actions.set_job_ttl(cleanup.namespace, main, ttl)
        self._actions.set_job_ttl(cleanup.namespace, cleanup.name, ttl)
        self._actions.record_on_job(
            cleanup.namespace, cleanup.name, cleanup.uid, {OUTCOME_ANNOTATION: "succeeded"}
        )
        removed = f"removed {ttl}s after they finished" if ttl else "removed now"
        both = f"Job {main}" if kept else "its main Job (gone already)"
        message = (
            f"task {decision.task_id}: cleanup Job {cleanup.name} succeeded; it and {both} are "
            f"{removed}, so their pods go and the released claim with them"
        )
        self._listener.notice(Level.INFO, f"Job {cleanup.namespace}/{cleanup.name}: {message}")
        self._event_on_main(cleanup, "CleanupSucceeded", message, warning=False)

    def _cleanup_failed(self, decision: Decision) -> None:
        """The cleanup Job failed for good: the volume stays (the harvester released nothing)
        and the record on the main Job says so, so nothing is taken for done."""
        cleanup, main = decision.job, decision.job.annotations[MAIN_JOB_ANNOTATION]
        message = (
            f"task {decision.task_id}: cleanup Job {cleanup.name} failed; the volume is kept. "
            f"See `kubectl logs job/{cleanup.name}`; to run it again, delete that Job and remove "
            f"the annotation {DECISION_ANNOTATION} from Job {main}"
        )
        main_uid = cleanup.annotations.get(MAIN_JOB_UID_ANNOTATION, "")
        self._actions.record_on_job(
            cleanup.namespace, main, main_uid, {DECISION_ANNOTATION: f"{cleanup.name} failed"}
        )
        self._actions.record_on_job(
            cleanup.namespace, cleanup.name, cleanup.uid, {OUTCOME_ANNOTATION: "failed"}
        )
        self._listener.notice(Level.ERROR, f"Job {cleanup.namespace}/{cleanup.name}: {message}")
        self._event_on_main(cleanup, "CleanupFailed", message, warning=True)

    def _event_on_main(self, cleanup: MainJob, reason: str, message: str, *, warning: bool) -> None:
        """An Event on the main Job the cleanup Job harvests (even once it is gone: Events
        outlive their object, so `kubectl get events` still tells the story)."""
        main = replace(
            cleanup,
            name=cleanup.annotations[MAIN_JOB_ANNOTATION],
            uid=cleanup.annotations.get(MAIN_JOB_UID_ANNOTATION, ""),
        )
        self._event(main, reason, message, warning=warning)

    def _no_cleanup(self, decision: Decision, why: str) -> None:
        self._record(decision, NO_CLEANUP_PREFIX + why)
        self._tell(
            decision.job, "CleanupNotStarted", f"task {decision.task_id}: no cleanup Job: {why}"
        )

    def _record(self, decision: Decision, record: str) -> None:
        job = decision.job
        annotations = {DECISION_ANNOTATION: record}
        if not self._actions.record_on_job(job.namespace, job.name, job.uid, annotations):
            self._listener.notice(
                Level.WARNING,
                f"Job {job.namespace}/{job.name}: deleted or replaced before the decision could "
                f"be recorded on it ({record})",
            )

    def _claim(self, job: MainJob) -> str | None:
        if len(job.claims) == 1:
            return job.claims[0].claim
        held = claim_holding(job.claims, DEFAULT_ROOT)
        return held.claim if held is not None else None

    def _tell(self, job: MainJob, reason: str, message: str) -> None:
        self._listener.notice(Level.INFO, f"Job {job.namespace}/{job.name}: {message}")
        self._event(job, reason, message, warning=False)

    def _warn(self, job: MainJob, reason: str, message: str) -> None:
        self._listener.notice(Level.ERROR, f"Job {job.namespace}/{job.name}: {message}")
        self._event(job, reason, message, warning=True)

    def _event(self, job: MainJob, reason: str, message: str, *, warning: bool) -> None:
        self._events.submit(lambda: self._actions.job_event(job, reason, message, warning=warning))
