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

import threading
from collections.abc import Callable, Iterable, Mapping
from contextlib import ExitStack
from dataclasses import replace
from typing import Any, Protocol, TextIO

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
from harvester.controller.render import TEMPLATE_KEY, TemplateError, parse_template, render
from harvester.errors import ConfigError, HarvesterError
from harvester.exitcodes import ExitCode
from harvester.gate import Gate
from harvester.kube.jobs import connect
from harvester.kube.volume import claim_holding
from harvester.model import MainJob, TaskStatus
from harvester.report import JsonReporter, LogReporter
from harvester.retry import Retrier, RetryPolicy
from harvester.settings import (
    DEFAULT_ROOT,
    NO_CLUSTER,
    ControllerSettings,
    LogFormat,
    Reporting,
    Settings,
    default_of,
)
from harvester.stats import Level, Listener, Tally
from harvester.wire.client import KerutaApi


class JobActions(Protocol):
    """What the controller asks of Kubernetes besides the watch (see `harvester.kube.jobs`)."""

    def create_job(self, namespace: str, manifest: Mapping[str, Any]) -> bool: ...

    def record_on_job(
        self, namespace: str, name: str, uid: str, annotations: Mapping[str, str | None]
    ) -> bool: ...

    def set_job_ttl(self, namespace: str, name: str, seconds: int) -> bool: ...

    def succeeded_pod(self, namespace: str, job_name: str) -> str | None: ...

    def read_template(self, namespace: str, name: str, key: str) -> str | None: ...

    def job_event(
        self, job: MainJob, reason: str, message: str, *, warning: bool = False
    ) -> str | None: ...

    def config_map_event(
        self, namespace: str, name: str, reason: str, message: str, *, warning: bool = True
    ) -> str | None: ...


class Controller:
    """Decides about each main Job and acts on the decision."""

    def __init__(
        self,
        actions: JobActions,
        template_config_map: str,
        listener: Listener,
        *,
        release_after: float = 0.0,
        report_failure: Callable[[Decision], None] | None = None,
    ) -> None:
        self._release_after = int(release_after)
        self._report_failure = report_failure
        self._actions = actions
        self._template_config_map = template_config_map
        self._listener = listener
        # Per namespace: the last template that parsed, and the text of the last broken one
        # said (so a broken template is reported once, not for every Job that completes).
        self._last_good: dict[str, dict[str, Any]] = {}
        self._reported_broken: dict[str, str] = {}

    def run(self, jobs: Iterable[MainJob]) -> None:
        """Handle every Job the watch gives, until it ends (on stop)."""
        for job in jobs:
            self.handle(job)

    def handle(self, job: MainJob) -> Decision:
        decision = decide(job)
        subject = f"Job {job.namespace}/{job.name}"
        try:
            if decision.verdict is Verdict.START_CLEANUP:
                self._start_cleanup(decision)
            elif decision.verdict is Verdict.FAILED:
                if self._report_failure is not None:
                    # Before the record: a report that did not reach keruta-api is tried again.
                    self._report_failure(decision)
                self._no_cleanup(
                    decision, "the main Job failed, so its documents are not harvested"
                )
            elif decision.verdict is Verdict.CLEANUP_SUCCEEDED:
                self._release(decision)
            elif decision.verdict is Verdict.CLEANUP_FAILED:
                self._cleanup_failed(decision)
            else:
                self._listener.notice(Level.DEBUG, f"{subject}: {decision.reason}; nothing to do")
        except HarvesterError as exc:
            # Nothing was recorded, so the Job is decided again when it is next seen.
            self._listener.notice(
                Level.ERROR, f"{subject}: {exc}; it is tried again when next seen"
            )
        return decision

    def _start_cleanup(self, decision: Decision) -> None:
        job, name = decision.job, decision.cleanup_job_name
        claim = self._claim(job)
        if claim is None:
            self._no_cleanup(
                decision,
                "its pod template mounts no PersistentVolumeClaim holding "
                f"{DEFAULT_ROOT}, so there is nothing to harvest",
            )
            return
        template = self._template(job)
        if template is None:
            return
        source = f"ConfigMap {job.namespace}/{self._template_config_map}"
        source_pod = self._actions.succeeded_pod(job.namespace, job.name)
        try:
            manifest = render(template, decision, claim=claim, source_pod=source_pod, source=source)
        except TemplateError as exc:
            self._warn(job, "CleanupNotStarted", str(exc))
            return
        created = self._actions.create_job(job.namespace, manifest)
        self._record(decision, name)
        what = "created" if created else "already existed"
        message = (
            f"task {decision.task_id}: cleanup Job {name} {what} (claim {claim}, source pod "
            f"{source_pod or 'none left'})"
        )
        self._tell(job, "CleanupJobCreated" if created else "CleanupJobExists", message)

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

    def _template(self, job: MainJob) -> dict[str, Any] | None:
        source = f"ConfigMap {job.namespace}/{self._template_config_map}"
        text = self._actions.read_template(job.namespace, self._template_config_map, TEMPLATE_KEY)
        if text is None:
            self._warn(
                job,
                "CleanupNotStarted",
                f"{source} has no key {TEMPLATE_KEY}: apply deploy/ in this namespace or pass "
                "--template-config-map",
            )
            return None
        try:
            template = parse_template(text, source=f"{source} key {TEMPLATE_KEY}")
        except TemplateError as exc:
            return self._broken_template(job, text, exc)
        self._last_good[job.namespace] = template
        self._reported_broken.pop(job.namespace, None)
        return template

    def _broken_template(
        self, job: MainJob, text: str, problem: TemplateError
    ) -> dict[str, Any] | None:
        """The last good template stays in force; the broken one is said once, with an Event on
        its ConfigMap. With no good template yet, no cleanup Job can start."""
        last_good = self._last_good.get(job.namespace)
        if self._reported_broken.get(job.namespace) != text:
            self._reported_broken[job.namespace] = text
            keeps = (
                "the last good template stays in force"
                if last_good is not None
                else "no cleanup Job can start until it is fixed"
            )
            message = f"{problem}; {keeps}"
            self._listener.notice(Level.ERROR, message)
            problem_writing = self._actions.config_map_event(
                job.namespace, self._template_config_map, "TemplateInvalid", message
            )
            if problem_writing is not None:
                self._listener.notice(
                    Level.WARNING, f"Kubernetes Event not written: {problem_writing}"
                )
        if last_good is None:
            self._warn(job, "CleanupNotStarted", f"{problem}; fix the template")
        return last_good

    def _tell(self, job: MainJob, reason: str, message: str) -> None:
        self._listener.notice(Level.INFO, f"Job {job.namespace}/{job.name}: {message}")
        self._event(job, reason, message, warning=False)

    def _warn(self, job: MainJob, reason: str, message: str) -> None:
        self._listener.notice(Level.ERROR, f"Job {job.namespace}/{job.name}: {message}")
        self._event(job, reason, message, warning=True)

    def _event(self, job: MainJob, reason: str, message: str, *, warning: bool) -> None:
        problem = self._actions.job_event(job, reason, message, warning=warning)
        if problem is not None:
            self._listener.notice(Level.WARNING, f"Kubernetes Event not written: {problem}")


def run_controller(
    settings: ControllerSettings,
    reporting: Reporting,
    *,
    stop: threading.Event,
    stdout: TextIO,
    stderr: TextIO,
) -> ExitCode:
    """Watch and act until `stop` is set (SIGTERM); decisions and problems as log lines (JSON
    lines on stdout with --log-format json, else plain lines on stderr)."""
    tally = Tally()
    interval, level = reporting.progress_interval, reporting.log_level
    reporter: LogReporter | JsonReporter = (
        JsonReporter(stdout, tally, interval=interval, level=level)
        if reporting.log_format is LogFormat.JSON
        else LogReporter(stderr, tally, interval=interval, level=level)
    )
    with reporter:
        if not settings.cluster.available:
            tally.notice(Level.ERROR, f"controller: {NO_CLUSTER}; it needs one to watch")
            return ExitCode.USAGE
        try:
            with connect(settings.cluster) as api:
                namespaces = (
                    None
                    if settings.all_namespaces
                    else (settings.namespaces or (api.default_namespace,))
                )
                where = "every namespace" if namespaces is None else ", ".join(namespaces)
                tally.notice(
                    Level.INFO,
                    f"controller: watching Jobs labelled {settings.selector} in {where}; cleanup "
                    f"Jobs from ConfigMap {settings.template_config_map}",
                )
                with ExitStack() as resources:
                    report = (
                        _failure_reporter(settings, stop, tally, resources)
                        if settings.report_failed
                        else None
                    )
                    controller = Controller(
                        api,
                        settings.template_config_map,
                        tally,
                        release_after=settings.release_after or 0.0,
                        report_failure=report,
                    )
                    controller.run(api.watch(settings.selector, stop, namespaces=namespaces))
        except ConfigError as exc:
            tally.notice(Level.ERROR, f"controller: {exc}")
            return ExitCode.USAGE
        except HarvesterError as exc:
            tally.notice(Level.ERROR, f"controller: stopped: {exc}")
            return ExitCode.UNEXPECTED
        tally.notice(Level.INFO, "controller: stopped")
    return ExitCode.OK


MAIN_JOB_FAILED = "MAIN_JOB_FAILED"


def _failure_reporter(
    settings: ControllerSettings, stop: threading.Event, listener: Listener, resources: ExitStack
) -> Callable[[Decision], None]:
    """--report-failed: set the task FAILED in keruta-api, with the cleanup's timeout and
    retries (`Settings`' defaults). Raises what the last attempt raised."""
    api = resources.enter_context(
        KerutaApi(
            settings.api_url,
            gate=Gate(),
            timeout=default_of(Settings, "timeout"),
            concurrency=1,
            token=settings.token,
            stop=stop,
        )
    )
    retrier = Retrier(
        RetryPolicy(retries=default_of(Settings, "retries")), sleep=stop.wait, stop=stop
    )

    def report(decision: Decision) -> None:
        job, task_id = decision.job, decision.task_id
        assert task_id is not None, "a FAILED decision names its task"
        message = (
            f"The main Job {job.namespace}/{job.name} failed; its documents were not harvested"
        )
        retrier.call(
            lambda _attempt: api.set_status(
                task_id, TaskStatus.FAILED, message, error_code=MAIN_JOB_FAILED
            ),
            on_retry=lambda n, err, wait: listener.notice(
                Level.WARNING, f"task {task_id} status: {err}; retrying in {wait:.1f}s"
            ),
        )
        listener.notice(Level.INFO, f"task {task_id}: set FAILED in keruta-api ({MAIN_JOB_FAILED})")

    return report
