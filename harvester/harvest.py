"""One harvest, end to end: scan → hash → plan → upload → status → PVC.

Takes validated `Settings`, a `Listener` for progress and the outside world's seams (the
keruta-api client, the PVC step, a stop event); gives a `HarvestReport`. It reads like the design's
diagram on purpose: every stage is a call into its own module, and this module only decides what
happens next. It never prints and never exits: `cli.py` renders the report and picks the exit code.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

from harvester.errors import (
    INTERRUPTED,
    ApiError,
    AuthRejected,
    HarvesterError,
    Interrupted,
    RejectedError,
)
from harvester.gate import Act, Gate
from harvester.model import (
    Action,
    FileReport,
    HarvestReport,
    Outcome,
    Receipt,
    RemoteDocument,
    StepResult,
    StepState,
    TaskStatus,
    UploadPlan,
)
from harvester.pipeline.digest import hash_entries
from harvester.pipeline.mounts import require_mounted_volume
from harvester.pipeline.plan import build_plan
from harvester.pipeline.rootfs import RootDir
from harvester.pipeline.scan import ScanOptions, scan
from harvester.pipeline.upload import Uploader, UploadResult
from harvester.retry import Retrier, RetryPolicy
from harvester.settings import NO_CLUSTER, Settings
from harvester.stats import Level, Listener
from harvester.text import counts_sentence, cut, outcome_counts
from harvester.wire.client import KerutaApi

UPLOAD_FAILED_CODE = "HARVEST_UPLOAD_FAILED"
_STATUS_MESSAGE_LIMIT = 500
_KEPT_INCOMPLETE = "the harvest is not complete, so the documents stay on the volume"
NO_PVC_STEP = f"{NO_CLUSTER}; the PVC was left in place"
_INTERRUPTED_STATUS = f"{INTERRUPTED}; the status was left as it is and a new run will finish it"

PvcStep = Callable[[], StepResult]


@dataclass(frozen=True, slots=True)
class Harvest:
    """What a harvest produced: the plan it followed and the report of what happened."""

    plan: UploadPlan
    report: HarvestReport


def run_harvest(
    settings: Settings,
    listener: Listener,
    *,
    api: KerutaApi | None = None,
    pvc_step: PvcStep | None = None,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] | None = None,
) -> Harvest:
    """Run one harvest. With `settings.dry_run` nothing is sent and nothing is changed.

    A set `stop` event (SIGTERM) is looked at before every step: once it is set no new upload
    starts, the task status is left as it is and the volume is kept; the report says
    `interrupted`. A signal that comes after the status was recorded lets the PVC step finish.
    """
    started = clock()
    stop = stop or threading.Event()
    gate = gate_for(settings)
    deadline = started + settings.deadline if settings.deadline else None
    options = ScanOptions(
        include=settings.include,
        exclude=settings.exclude,
        include_hidden=settings.include_hidden,
        max_file_size=settings.max_file_size,
    )

    scanned = scan(settings.root, options, listener, stop=stop)
    if not scanned.root_exists:
        if pvc_step is not None and gate.why_closed(Act.DELETE_PVC) is None:
            # "No documents" would release the volume: only believe it when the volume is
            # demonstrably mounted, so a mistyped --root or a missing volumeMount loses nothing.
            require_mounted_volume(settings.root)
        listener.notice(Level.WARNING, f"{settings.root}: does not exist; no documents to harvest")

    with ExitStack() as resources:
        root = resources.enter_context(RootDir(settings.root)) if scanned.root_exists else None
        digests, hash_failures = (
            hash_entries(
                root, scanned.entries, workers=settings.hash_workers, listener=listener, stop=stop
            )
            if root is not None
            else ([], [])
        )

        def plan_for(remote: list[RemoteDocument] | None = None) -> UploadPlan:
            return build_plan(
                scanned,
                digests,
                hash_failures,
                keep_duplicates=settings.keep_duplicates,
                remote=remote,
            )

        if settings.dry_run:
            plan = plan_for()
            return Harvest(plan, _dry_run_report(settings, plan, clock() - started))
        if stop.is_set():
            plan = plan_for()
            return Harvest(plan, _interrupted_report(settings, plan, clock() - started))

        if api is None:
            api = resources.enter_context(_new_api(settings, gate, stop, deadline, clock))
        retrier = Retrier(
            RetryPolicy(retries=settings.retries, deadline=deadline),
            sleep=sleep or stop.wait,
            clock=clock,
            stop=stop,
        )
        try:
            remote = retrier.call(lambda _attempt: _already_uploaded(api, settings, listener))
        except Interrupted:
            plan = plan_for()
            return Harvest(plan, _interrupted_report(settings, plan, clock() - started))
        except ApiError as exc:
            # Nothing can be uploaded: say so once, rather than once for every file.
            listener.notice(Level.ERROR, str(exc))
            plan = plan_for()
            return Harvest(plan, _aborted_report(settings, plan, exc, clock() - started))
        plan = plan_for(remote)
        result = UploadResult(receipts=())
        if root is not None and plan.uploads and not stop.is_set():
            uploader = Uploader(
                api,
                root,
                settings.task_id,
                retrier,
                concurrency=settings.concurrency,
                listener=listener,
                stop=stop,
                deadline=deadline,
                clock=clock,
            )
            result = uploader.upload_all(plan.uploads)
        interrupted = result.interrupted or stop.is_set()
        files = _file_reports(
            plan,
            result.receipts,
            unsent_error=f"not attempted: {INTERRUPTED}" if interrupted else None,
        )
        failures = [f for f in files if f.outcome in (Outcome.FAILED, Outcome.NOT_ATTEMPTED)]

        if result.auth_error is not None:
            status = StepResult(StepState.SKIPPED, "keruta-api rejected the token")
        elif interrupted:
            status = StepResult(StepState.SKIPPED, _INTERRUPTED_STATUS)
        else:
            message = (
                None if scanned.root_exists else f"No documents: {settings.root} does not exist"
            )
            try:
                status = _update_status(api, settings, retrier, files, failures, listener, message)
            except Interrupted:
                status, interrupted = StepResult(StepState.SKIPPED, _INTERRUPTED_STATUS), True

        if failures or status.state is not StepState.DONE:
            pvc = StepResult(StepState.SKIPPED, _KEPT_INCOMPLETE)
        else:
            pvc = _release_pvc(gate, pvc_step)
        report = HarvestReport(
            task_id=settings.task_id,
            root=settings.root,
            dry_run=False,
            files=files,
            elapsed_seconds=clock() - started,
            bytes_uploaded=sum(f.size or 0 for f in files if f.outcome is Outcome.UPLOADED),
            status=status,
            pvc=pvc,
            auth_rejected=result.auth_error is not None,
            interrupted=interrupted,
            notes=() if scanned.root_exists else (f"{settings.root} does not exist",),
        )
        return Harvest(plan, report)


def gate_for(settings: Settings) -> Gate:
    """The gate every act of a run with `settings` passes (see `harvester.gate`)."""
    return Gate(dry_run=settings.dry_run, keep_pvc=settings.keep_pvc)


def _new_api(
    settings: Settings,
    gate: Gate,
    stop: threading.Event,
    deadline: float | None,
    clock: Callable[[], float],
) -> KerutaApi:
    return KerutaApi(
        settings.api_url,
        token=settings.token,
        concurrency=settings.concurrency,
        timeout=settings.timeout,
        deadline=deadline,
        stop=stop,
        clock=clock,
        documents_path=settings.documents_path,
        status_path=settings.status_path,
        gate=gate,
    )


def _already_uploaded(
    api: KerutaApi, settings: Settings, listener: Listener
) -> list[RemoteDocument] | None:
    remote = api.list_documents(
        settings.task_id, notice=lambda text: listener.notice(Level.WARNING, text)
    )
    if remote is None:
        listener.notice(
            Level.DEBUG,
            "keruta-api did not list the task's documents; relying on Idempotency-Key for re-runs",
        )
    elif remote:
        listener.notice(Level.INFO, f"keruta-api already holds {len(remote)} documents of the task")
    return remote


# What a path that never reached the uploader ends as, by its planned action.
_OUTCOME_OF_ACTION = {
    Action.DUPLICATE: Outcome.DUPLICATE,
    Action.ALREADY_UPLOADED: Outcome.ALREADY_UPLOADED,
    Action.SKIP: Outcome.SKIPPED,
    Action.FAIL: Outcome.FAILED,
}


def _file_reports(
    plan: UploadPlan,
    receipts: tuple[Receipt, ...],
    *,
    unsent: Outcome = Outcome.NOT_ATTEMPTED,
    unsent_error: str | None = None,
) -> tuple[FileReport, ...]:
    """One report per planned path; planned uploads without a receipt end as `unsent`.

    `receipts` answer `plan.uploads` one for one, in order (or are empty when nothing was sent):
    a receipt is matched to the very item it answers, never by its printed name, since two
    files can print alike (a name that is not UTF-8 is shown escaped).
    """
    if receipts and len(receipts) != len(plan.uploads):
        raise ValueError(f"{len(receipts)} receipts for {len(plan.uploads)} planned uploads")
    answers = iter(receipts)
    reports = []
    for item in plan.items:
        if item.action is Action.UPLOAD:
            receipt = next(answers, None) or Receipt(item.rel_path, unsent, error=unsent_error)
        else:
            error = item.reason if item.action is Action.FAIL else None
            receipt = Receipt(item.rel_path, _OUTCOME_OF_ACTION[item.action], error=error)
        reports.append(
            FileReport(
                path=item.rel_path,
                action=item.action,
                outcome=receipt.outcome,
                size=item.size,
                sha256=item.sha256,
                duplicate_of=item.duplicate_of,
                reason=item.reason,
                document_id=receipt.document_id,
                error=receipt.error,
                attempts=receipt.attempts,
            )
        )
    return tuple(reports)


def _update_status(
    api: KerutaApi,
    settings: Settings,
    retrier: Retrier,
    files: tuple[FileReport, ...],
    failures: list[FileReport],
    listener: Listener,
    complete_message: str | None = None,
) -> StepResult:
    if failures:
        first = failures[0].error or failures[0].path
        status, progress, code = TaskStatus.FAILED, None, UPLOAD_FAILED_CODE
        message = (
            f"Harvest incomplete: {len(failures)} of {_harvestable(files)} documents could not be "
            f"harvested; the volume was kept. First: {first}"
        )
    else:
        status, progress, code = TaskStatus.COMPLETED, 100, None
        message = complete_message or "Harvest complete: " + counts_sentence(outcome_counts(files))
    message = cut(message, _STATUS_MESSAGE_LIMIT)
    try:
        retrier.call(
            lambda _attempt: api.set_status(
                settings.task_id, status, message, progress=progress, error_code=code
            ),
            on_retry=lambda n, err, wait: listener.notice(
                Level.WARNING, f"task status: {err}; retrying in {wait:.1f}s (attempt {n})"
            ),
        )
    except Interrupted:
        raise
    except HarvesterError as exc:
        listener.notice(Level.ERROR, f"task status: {exc}")
        return StepResult(StepState.FAILED, f"{status} not recorded: {exc}")
    return StepResult(StepState.DONE, f"set to {status}: {message}")


def _release_pvc(gate: Gate, pvc_step: PvcStep | None) -> StepResult:
    reason = gate.why_closed(Act.DELETE_PVC)
    if reason is not None:
        return StepResult(StepState.SKIPPED, reason)
    if pvc_step is None:
        return StepResult(StepState.SKIPPED, NO_PVC_STEP)
    return pvc_step()


def _dry_run_report(settings: Settings, plan: UploadPlan, elapsed: float) -> HarvestReport:
    files = _file_reports(plan, (), unsent=Outcome.PLANNED)
    nothing = StepResult(StepState.SKIPPED, "dry run (--dry-run)")
    return HarvestReport(
        task_id=settings.task_id,
        root=settings.root,
        dry_run=True,
        files=files,
        elapsed_seconds=elapsed,
        bytes_uploaded=0,
        status=nothing,
        pvc=nothing,
    )


def _interrupted_report(settings: Settings, plan: UploadPlan, elapsed: float) -> HarvestReport:
    """The report of a harvest stopped by a signal before it uploaded anything."""
    return _report_without_uploads(
        settings, plan, elapsed, INTERRUPTED, status=_INTERRUPTED_STATUS, interrupted=True
    )


def _aborted_report(
    settings: Settings, plan: UploadPlan, error: ApiError, elapsed: float
) -> HarvestReport:
    """The report of a harvest that found keruta-api unusable before uploading anything."""
    auth = isinstance(error, AuthRejected)
    if auth:
        reason = "keruta-api rejected the token"
    elif isinstance(error, RejectedError):
        reason = "keruta-api refused the first request"
    else:
        reason = "keruta-api could not be reached"
    return _report_without_uploads(
        settings, plan, elapsed, reason, status=reason, auth_rejected=auth, notes=(str(error),)
    )


def _report_without_uploads(
    settings: Settings,
    plan: UploadPlan,
    elapsed: float,
    reason: str,
    *,
    status: str,
    auth_rejected: bool = False,
    interrupted: bool = False,
    notes: tuple[str, ...] = (),
) -> HarvestReport:
    """Every planned upload "not attempted" for `reason`; no status sent, the volume kept."""
    return HarvestReport(
        task_id=settings.task_id,
        root=settings.root,
        dry_run=False,
        files=_file_reports(plan, (), unsent_error=f"not attempted: {reason}"),
        elapsed_seconds=elapsed,
        bytes_uploaded=0,
        status=StepResult(StepState.SKIPPED, status),
        pvc=StepResult(StepState.SKIPPED, _KEPT_INCOMPLETE),
        auth_rejected=auth_rejected,
        interrupted=interrupted,
        notes=notes,
    )


def _harvestable(files: tuple[FileReport, ...]) -> int:
    return sum(1 for f in files if f.action is not Action.SKIP)
