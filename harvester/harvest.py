"""One harvest, end to end: survey (scan) → what is held → hash, plan and upload → status →
release → report.

Takes validated `Settings`, a `Listener` for progress and the outside world's seams (the PVC
step, the ledger's store, a stop event, the clock); gives a `Harvest`: the plan it followed and
one `HarvestReport`. What is already held (the ledger of accepted uploads, keruta-api's listing)
is read before hashing starts, so each document's plan is final as soon as its hash and those it
could duplicate are known (`Planner`), and it is uploaded while the other files are still read.
The ledger is written as the uploads are acknowledged and closed (flushed) before the status is
set. A dry run reads the ledger too and plans with the same `Planner`.
It reads like the design's diagram on purpose: every stage is a call into its own package, this
module only decides what happens next, and every way out (a dry run, a signal, an unusable
keruta-api, a finished run) ends in the same report builder. It never prints and never exits.
A little over 400 lines: the steps read together, in the order they run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, replace

from harvester.errors import (
    INTERRUPTED,
    ApiError,
    AuthRejected,
    HarvesterError,
    Interrupted,
    LedgerError,
    RejectedError,
)
from harvester.gate import Act, Gate
from harvester.model import (
    NOT_HARVESTED,
    Action,
    Digest,
    Failed,
    FileReport,
    HarvestReport,
    LedgerEntry,
    LedgerUse,
    Outcome,
    PlanItem,
    Receipt,
    RemoteDocument,
    ScanResult,
    StepResult,
    StepState,
    TaskStatus,
    UploadPlan,
)
from harvester.pipeline.digest import hash_entries
from harvester.pipeline.ledger import Ledger, LedgerStore
from harvester.pipeline.mounts import require_mounted_volume
from harvester.pipeline.plan import Planner
from harvester.pipeline.rootfs import WHOLE_UPLOAD_MAX_SIZE, RootDir
from harvester.pipeline.scan import ScanOptions, scan
from harvester.pipeline.upload import Uploader
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


def gate_for(settings: Settings) -> Gate:
    """The gate every act of a run with `settings` passes (see `harvester.gate`)."""
    return Gate(dry_run=settings.dry_run, keep_pvc=settings.keep_pvc)


def run_harvest(
    settings: Settings,
    listener: Listener,
    *,
    pvc_step: PvcStep | None = None,
    ledger_store: LedgerStore | None = None,
    no_ledger_because: str = "no ledger",
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] | None = None,
) -> Harvest:
    """Run one harvest. With `settings.dry_run` nothing is sent and nothing is changed.

    `ledger_store` keeps the ledger of accepted uploads (None: no ledger, `no_ledger_because`
    says why, in the report).

    A set `stop` event (SIGTERM) is looked at before every step: once it is set no new upload
    starts, the task status is left as it is and the volume is kept; the report says
    `interrupted`. A signal that comes after the status was recorded lets the PVC step finish.
    """
    run = _Run(settings, listener, stop or threading.Event(), clock, sleep, pvc_step)
    run.ledger_store = ledger_store
    run.ledger_use = LedgerUse(None, no_ledger_because)
    with ExitStack() as resources:
        return run.harvest(resources)


@dataclass(frozen=True, slots=True)
class _Survey:
    """What is on the volume (the scan, the root opened to read it) and what the ledger
    recorded of it."""

    scanned: ScanResult
    root: RootDir | None
    keep_duplicates: bool
    recorded: tuple[LedgerEntry, ...] = ()
    recorded_in: str | None = None

    def planner(self, remote: list[RemoteDocument] | None = None) -> Planner:
        return Planner(
            self.scanned.entries,
            keep_duplicates=self.keep_duplicates,
            remote=remote,
            recorded=self.recorded,
            recorded_in=self.recorded_in,
        )


class _Run:
    """One harvest's settings and seams, and its steps in the order they run."""

    def __init__(
        self,
        settings: Settings,
        listener: Listener,
        stop: threading.Event,
        clock: Callable[[], float],
        sleep: Callable[[float], object] | None,
        pvc_step: PvcStep | None,
    ) -> None:
        self.settings, self.listener, self.stop, self.clock = settings, listener, stop, clock
        self.started = clock()
        self.gate = gate_for(settings)
        self.deadline = self.started + settings.deadline if settings.deadline else None
        self.pvc_step = pvc_step
        self.retrier = Retrier(
            RetryPolicy(retries=settings.retries, deadline=self.deadline),
            sleep=sleep or stop.wait,
            clock=clock,
            stop=stop,
        )
        self.ledger_store: LedgerStore | None = None
        self.ledger_use = LedgerUse(None, "no ledger")
        self.ledger: Ledger | None = None

    def harvest(self, resources: ExitStack) -> Harvest:
        if self.settings.dry_run:
            survey = self.read_ledger(self.survey(resources), resources)
            dry = StepResult(StepState.SKIPPED, "dry run (--dry-run)")
            plan = self.plan_only(survey)
            return self.report(survey, plan, _file_reports(plan, unsent=Outcome.PLANNED), dry, dry)

        api = resources.enter_context(self.client())
        # The listing is a round trip to keruta-api: it runs while the root is scanned. However
        # the harvest ends, it is waited for (bounded by --timeout) before the client closes.
        listing_thread = resources.enter_context(
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="listing")
        )
        listing = listing_thread.submit(
            self.retrier.call, lambda _attempt: self.already_uploaded(api)
        )
        survey = self.read_ledger(self.survey(resources), resources)
        if self.stop.is_set():
            return self.unsent(survey, self.plan_only(survey), INTERRUPTED, _INTERRUPTED_STATUS)
        try:
            remote = listing.result()
        except Interrupted:
            return self.unsent(survey, self.plan_only(survey), INTERRUPTED, _INTERRUPTED_STATUS)
        except ApiError as exc:
            # Nothing can be uploaded: say so once, rather than once for every file.
            self.listener.notice(Level.ERROR, str(exc))
            plan = self.plan_only(survey)
            if self.stop.is_set():  # a signal while the files were hashed
                return self.unsent(survey, plan, INTERRUPTED, _INTERRUPTED_STATUS)
            return self.unsent(survey, plan, _unusable(exc), error=exc)

        plan, receipts, auth_error = self.execute(api, survey, remote)
        self.close_ledger()
        interrupted = self.stop.is_set()
        files = _file_reports(
            plan, receipts, unsent_error=f"not attempted: {INTERRUPTED}" if interrupted else None
        )
        if auth_error is not None:
            status = StepResult(StepState.SKIPPED, "keruta-api rejected the token")
        elif interrupted:
            status = StepResult(StepState.SKIPPED, _INTERRUPTED_STATUS)
        else:
            try:
                status = self.set_status(api, files, survey.scanned.root_exists)
            except Interrupted:
                status, interrupted = StepResult(StepState.SKIPPED, _INTERRUPTED_STATUS), True
        pvc = self.release(files, status)
        return self.report(
            survey,
            plan,
            files,
            status,
            pvc,
            auth_rejected=auth_error is not None,
            interrupted=interrupted,
        )

    def survey(self, resources: ExitStack) -> _Survey:
        """Scan the root and open it for reading; a missing root is "no documents" only when
        that cannot lose any (see `require_mounted_volume`)."""
        settings, listener, stop = self.settings, self.listener, self.stop
        options = ScanOptions(
            include=settings.include,
            exclude=settings.exclude,
            include_hidden=settings.include_hidden,
            max_file_size=settings.max_file_size,
        )
        scanned = scan(settings.root, options, listener, stop=stop)
        if not scanned.root_exists:
            if self.pvc_step is not None and self.gate.why_closed(Act.DELETE_PVC) is None:
                # "No documents" would release the volume: only believe it when the volume is
                # demonstrably mounted, so a mistyped --root or a missing volumeMount loses nothing.
                require_mounted_volume(settings.root)
            listener.notice(
                Level.WARNING, f"{settings.root}: does not exist; no documents to harvest"
            )
            return _Survey(scanned, None, settings.keep_duplicates)
        root = resources.enter_context(RootDir(settings.root))
        return _Survey(scanned, root, settings.keep_duplicates)

    def hash_into(
        self,
        survey: _Survey,
        planner: Planner,
        send: Callable[[PlanItem, bytes | None], None],
        *,
        content_up_to: int | None = None,
    ) -> None:
        """Hash every scanned file into `planner`, handing each upload to `send` the moment its
        decision is final, while the other files are still read; with the content the hashing
        read when the file is at most `content_up_to` bytes and its upload was decided at once
        (one decided later, after an earlier path of its size, is read again by the upload)."""
        if survey.root is None:
            return

        def decided(index: int, result: Digest | Failed, content: bytes | None) -> None:
            for upload in planner.add(index, result):
                send(upload, content if upload.digest is result else None)

        hash_entries(
            survey.root,
            survey.scanned.entries,
            workers=self.settings.hash_workers,
            listener=self.listener,
            stop=self.stop,
            on_result=decided,
            content_up_to=content_up_to,
        )

    def plan_only(self, survey: _Survey) -> UploadPlan:
        """The plan without uploading (a dry run, or a run that cannot upload): every file
        hashed into the same `Planner` the uploads follow, so the two cannot disagree."""
        planner = survey.planner()
        self.hash_into(survey, planner, lambda _upload, _content: None)
        return planner.plan(survey.scanned)

    def read_ledger(self, survey: _Survey, resources: ExitStack) -> _Survey:
        """The survey with what the ledger recorded; a run that acts opens it for writing too
        (closed by `close_ledger`, or when the run ends). A ledger that cannot be read is said
        once, and the harvest goes on without it."""
        store = self.ledger_store
        if store is None:
            return survey
        try:
            if self.settings.dry_run:
                recorded = store.read()  # a read is not an act
            else:
                self.ledger = Ledger(store, self.listener)
                resources.callback(self.ledger.close)
                recorded = self.ledger.known()
        except LedgerError as exc:
            self.listener.notice(
                Level.WARNING,
                f"ledger ({store.where}): not read: {exc}; the harvest goes on without it, "
                "relying on keruta-api's listing and Idempotency-Key",
            )
            self.ledger_use = LedgerUse(store.where, f"not read: {exc}")
            return survey
        self.listener.notice(
            Level.INFO, f"ledger ({store.where}): {len(recorded)} accepted uploads recorded"
        )
        self.ledger_use = LedgerUse(store.where, "read", read=len(recorded))
        return replace(survey, recorded=tuple(recorded), recorded_in=store.where)

    def close_ledger(self) -> None:
        """Write what the ledger still holds (before the status is set) and count it."""
        ledger = self.ledger
        if ledger is None:
            return
        ledger.close()
        note = "read and written" if ledger.on else "read; writing stopped (see the warning)"
        self.ledger_use = replace(self.ledger_use, note=note, written=ledger.written)

    def client(self) -> KerutaApi:
        settings = self.settings
        return KerutaApi(
            settings.api_url,
            gate=self.gate,
            token=settings.token,
            ca_cert=settings.ca_cert,
            timeout=settings.timeout,
            deadline=self.deadline,
            stop=self.stop,
            clock=self.clock,
            documents_path=settings.documents_path,
            status_path=settings.status_path,
        )

    def already_uploaded(self, api: KerutaApi) -> list[RemoteDocument] | None:
        listener = self.listener
        remote = api.list_documents(
            self.settings.task_id, notice=lambda text: listener.notice(Level.WARNING, text)
        )
        if remote is None:
            listener.notice(
                Level.DEBUG,
                "keruta-api did not list the task's documents; relying on Idempotency-Key for "
                "re-runs",
            )
        elif remote:
            listener.notice(
                Level.INFO, f"keruta-api already holds {len(remote)} documents of the task"
            )
        return remote

    def execute(
        self, api: KerutaApi, survey: _Survey, remote: list[RemoteDocument] | None
    ) -> tuple[UploadPlan, tuple[Receipt, ...], AuthRejected | None]:
        """Hash, plan and upload together: each document is sent as soon as its plan is final.
        Gives the plan and one receipt per planned upload, in plan order."""
        planner = survey.planner(remote)
        if survey.root is None:
            return planner.plan(survey.scanned), (), None
        uploader = Uploader(
            api,
            survey.root,
            self.settings.task_id,
            self.retrier,
            concurrency=self.settings.concurrency,
            listener=self.listener,
            stop=self.stop,
            deadline=self.deadline,
            clock=self.clock,
            ledger=self.ledger,
        )
        with uploader.uploading() as feed:
            self.hash_into(survey, planner, feed.put, content_up_to=WHOLE_UPLOAD_MAX_SIZE)
        plan = planner.plan(survey.scanned)
        # Paired by the very item the planner gave, never by name (see `_file_reports`).
        answers = {id(item): receipt for item, receipt in feed.answered}
        receipts = tuple(answers[id(item)] for item in plan.uploads)
        return plan, receipts, uploader.auth_error

    def set_status(
        self, api: KerutaApi, files: tuple[FileReport, ...], root_exists: bool
    ) -> StepResult:
        """COMPLETED when every document is harvested, else FAILED naming the first failure.
        Raises `Interrupted` when a signal ends its retries."""
        failures = [f for f in files if f.outcome in NOT_HARVESTED]
        if failures:
            first = failures[0].error or failures[0].path
            status, progress, code = TaskStatus.FAILED, None, UPLOAD_FAILED_CODE
            message = (
                f"Harvest incomplete: {len(failures)} of {_harvestable(files)} documents could "
                f"not be harvested; the volume was kept. First: {first}"
            )
        else:
            status, progress, code = TaskStatus.COMPLETED, 100, None
            message = (
                "Harvest complete: " + counts_sentence(outcome_counts(files))
                if root_exists
                else f"No documents: {self.settings.root} does not exist"
            )
        message = cut(message, _STATUS_MESSAGE_LIMIT)
        task_id, listener = self.settings.task_id, self.listener
        try:
            self.retrier.call(
                lambda _attempt: api.set_status(
                    task_id, status, message, progress=progress, error_code=code
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

    def release(self, files: tuple[FileReport, ...], status: StepResult) -> StepResult:
        """The PVC step, only after every document was harvested and the status recorded."""
        if any(f.outcome in NOT_HARVESTED for f in files) or status.state is not StepState.DONE:
            return StepResult(StepState.SKIPPED, _KEPT_INCOMPLETE)
        reason = self.gate.why_closed(Act.DELETE_PVC)
        if reason is not None:
            return StepResult(StepState.SKIPPED, reason)
        if self.pvc_step is None:
            return StepResult(StepState.SKIPPED, NO_PVC_STEP)
        return self.pvc_step()

    def unsent(
        self,
        survey: _Survey,
        plan: UploadPlan,
        reason: str,
        status: str | None = None,
        *,
        error: ApiError | None = None,
    ) -> Harvest:
        """The end of a run that uploaded nothing: every planned upload "not attempted" for
        `reason`, no status sent, the volume kept."""
        return self.report(
            survey,
            plan,
            _file_reports(plan, unsent_error=f"not attempted: {reason}"),
            StepResult(StepState.SKIPPED, status or reason),
            StepResult(StepState.SKIPPED, _KEPT_INCOMPLETE),
            auth_rejected=isinstance(error, AuthRejected),
            interrupted=reason == INTERRUPTED,
            notes=() if error is None else (str(error),),
        )

    def report(
        self,
        survey: _Survey,
        plan: UploadPlan,
        files: tuple[FileReport, ...],
        status: StepResult,
        pvc: StepResult,
        *,
        auth_rejected: bool = False,
        interrupted: bool = False,
        notes: tuple[str, ...] = (),
    ) -> Harvest:
        """The one place a `HarvestReport` is made, whichever way the run ended."""
        if not survey.scanned.root_exists:
            notes = (f"{self.settings.root} does not exist", *notes)
        report = HarvestReport(
            task_id=self.settings.task_id,
            root=self.settings.root,
            dry_run=self.settings.dry_run,
            files=files,
            elapsed_seconds=self.clock() - self.started,
            bytes_uploaded=sum(f.size or 0 for f in files if f.outcome is Outcome.UPLOADED),
            status=status,
            pvc=pvc,
            auth_rejected=auth_rejected,
            interrupted=interrupted,
            notes=notes,
            ledger=self.ledger_use,
        )
        return Harvest(plan, report)


def _unusable(error: ApiError) -> str:
    """Why keruta-api cannot be used at all, from the error its first request gave."""
    if isinstance(error, AuthRejected):
        return "keruta-api rejected the token"
    if isinstance(error, RejectedError):
        return "keruta-api refused the first request"
    return "keruta-api could not be reached"


# What a path that never reached the uploader ends as, by its planned action.
_OUTCOME_OF_ACTION = {
    Action.DUPLICATE: Outcome.DUPLICATE,
    Action.ALREADY_UPLOADED: Outcome.ALREADY_UPLOADED,
    Action.SKIP: Outcome.SKIPPED,
    Action.FAIL: Outcome.FAILED,
}


def _file_reports(
    plan: UploadPlan,
    receipts: tuple[Receipt, ...] = (),
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
    # Receipts are frozen, so every path that ended alike without a request of its own shares
    # one: a million-file plan would otherwise hold a million copies of a few values.
    unsent_receipt = Receipt(unsent, error=unsent_error)
    shared = {action: Receipt(outcome) for action, outcome in _OUTCOME_OF_ACTION.items()}
    reports = []
    for item in plan.items:
        action = item.action
        if action is Action.UPLOAD:
            receipt = next(answers, None) or unsent_receipt
        elif action is Action.FAIL:
            receipt = Receipt(Outcome.FAILED, error=item.reason)
        else:
            receipt = shared[action]
        reports.append(FileReport(item, receipt))
    return tuple(reports)


def _harvestable(files: tuple[FileReport, ...]) -> int:
    return sum(1 for f in files if f.action is not Action.SKIP)
