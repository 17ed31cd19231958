"""One watch, start to end: a full pass, then documents as they settle, then a final pass.

Takes `WatchSettings`, a `Listener`, the event that ends the following (SIGTERM: the main
container ended), a `Ledger` or None, and the seams (the watch function, the clocks); gives one
`HarvestReport` from `Sidecar.run()`. It never prints, never sets the task status and never
touches the PVC.

- **Start**: the tree is scanned and hashed; files quiet for `--settle` are uploaded unless the
  ledger holds them (or, without a ledger, keruta-api's listing lists them; Idempotency-Key
  covers the rest), so a restarted sidecar catches up; files written in the last `--settle`
  seconds wait to settle like any other.
- **Following**: each batch of changes is looked at (lstat) and handed to the `Settler`; the
  documents it calls written are hashed and uploaded through the pipeline's digest, plan and
  upload (verified streaming: a file that changes while sent is hashed and sent again). What
  was sent is keyed by relative path and content hash, never by inode: a rewrite with the same
  content is not sent again, identical content under another path is a duplicate as in
  `cleanup`, a changed file is sent again. The loop blocks on the change events, with a timeout
  only while files wait to settle.
- **End**: one final full pass without waiting to settle (the writer is gone), then the report:
  every path of the tree with its outcome, and the paths sent meanwhile that are gone since.

Each upload holds a slot of the ledger when there is one (`Ledger.slot`), recorded once the
server acknowledged that very document.

Over 500 lines because the three phases share one state (what is held, sent and dealt with)
and read best together; the settle rule (`settle`) and the events (`events`) are apart.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from harvester.errors import ApiError, AuthRejected, Interrupted
from harvester.gate import Gate
from harvester.model import (
    Action,
    Digest,
    DocumentContent,
    FileEntry,
    FileReport,
    HarvestReport,
    LedgerEntry,
    Outcome,
    PlanItem,
    Receipt,
    RemoteDocument,
    ScanResult,
    StepResult,
    StepState,
    UploadPlan,
)
from harvester.pipeline.digest import hash_entries
from harvester.pipeline.globs import GlobSet
from harvester.pipeline.ledger import Ledger
from harvester.pipeline.plan import build_plan
from harvester.pipeline.rootfs import RootDir
from harvester.pipeline.scan import ScanOptions, display_path, scan
from harvester.pipeline.upload import DocumentSink, Uploader
from harvester.retry import Retrier, RetryPolicy
from harvester.settings import WatchSettings
from harvester.stats import Level, Listener, Stage
from harvester.text import plural
from harvester.watch.events import Events, Signal, WatchFailed, WatchFn
from harvester.watch.settle import Change, Look, Seen, Settler
from harvester.wire.client import KerutaApi

NO_STATUS = "never set by watch: the cleanup Job sets the task status"
NO_PVC = "never touched by watch"


def look_of(info: os.stat_result) -> Look:
    return Look(info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino)


def _look_of_digest(digest: Digest) -> Look:
    return Look(digest.size, digest.mtime_ns, digest.ctime_ns, digest.inode)


class _Quiet:
    """A listener for the small batches of the following: no stage lines (a document sent is
    its own line), everything else passed on."""

    def __init__(self, listener: Listener) -> None:
        self._listener = listener

    def stage_started(self, stage: Stage, files: int, nbytes: int) -> None:
        pass

    def stage_grew(self, stage: Stage, files: int, nbytes: int) -> None:
        pass

    def stage_finished(self, stage: Stage) -> None:
        pass

    def advanced(self, stage: Stage, files: int = 0, nbytes: int = 0) -> None:
        self._listener.advanced(stage, files, nbytes)

    def file_failed(self, rel_path: str, message: str, stage: Stage | None = None) -> None:
        self._listener.file_failed(rel_path, message, stage)

    def notice(self, level: Level, message: str) -> None:
        self._listener.notice(level, message)


class _Accepting:
    """keruta-api's client as the uploader's sink, noting each document the server accepted
    (the content actually sent: a file re-hashed after a change is noted with its new hash).
    The ledger is the Uploader's to write: it records the path as read (`os_path`), as
    `cleanup` does, so a cleanup after the watch finds every entry."""

    def __init__(self, api: DocumentSink, listener: Listener) -> None:
        self._api, self._listener = api, listener
        self._lock = threading.Lock()
        self._accepted: list[LedgerEntry] = []

    def upload_document(
        self,
        task_id: str,
        rel_path: str,
        sha256: str,
        size: int,
        content: DocumentContent,
    ) -> str | None:
        document_id = self._api.upload_document(task_id, rel_path, sha256, size, content)
        self._accept(LedgerEntry(rel_path, sha256, size, document_id))
        return document_id

    def _accept(self, entry: LedgerEntry) -> None:
        with self._lock:
            self._accepted.append(entry)
        shown_id = f" as document {entry.document_id}" if entry.document_id else ""
        self._listener.notice(
            Level.INFO, f"{entry.path}: sent ({plural(entry.size, 'byte')}){shown_id}"
        )

    def take(self) -> list[LedgerEntry]:
        with self._lock:
            taken, self._accepted = self._accepted, []
        return taken


@dataclass(frozen=True, slots=True)
class _Filter:
    """Which paths may be documents: the scan's rules (hidden, --include, --exclude), plus
    --ignore."""

    include_hidden: bool
    includes: GlobSet
    excludes: GlobSet

    def why_not(self, rel_path: str) -> str | None:
        parts = rel_path.split("/")
        if not self.include_hidden and any(part.startswith(".") for part in parts):
            return "hidden"
        if self.excludes:
            for depth in range(1, len(parts)):
                if self.excludes.matches_dir("/".join(parts[:depth])):
                    return "excluded"
            if self.excludes.matches_file(rel_path):
                return "excluded or ignored"
        if self.includes and not self.includes.matches_file(rel_path):
            return "not included"
        return None


class Sidecar:
    """One `harvester watch`; see the module docstring."""

    def __init__(
        self,
        settings: WatchSettings,
        listener: Listener,
        *,
        end: threading.Event,
        ledger: Ledger | None = None,
        watch_fn: WatchFn | None = None,
        progress_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.settings = settings
        self.harvest = harvest = settings.harvest
        self.root = Path(harvest.root)
        self.listener = listener
        self.end = end
        self.ledger = ledger
        self.clock, self.wall_clock_ns = clock, wall_clock_ns
        self.started = clock()
        self.progress_interval = progress_interval
        # The uploads' own stop: never the end of following, since the final pass must run.
        # A second signal ends the process (the default handler is back by then).
        self.abort = threading.Event()
        self.retrier = Retrier(
            RetryPolicy(retries=harvest.retries, deadline=None),
            sleep=self.abort.wait,
            clock=clock,
            stop=self.abort,
        )
        exclude = (*harvest.exclude, *settings.ignore)
        self.scan_options = ScanOptions(
            include=harvest.include,
            exclude=exclude,
            include_hidden=harvest.include_hidden,
            max_file_size=harvest.max_file_size,
        )
        self.filter = _Filter(
            harvest.include_hidden,
            GlobSet(harvest.include, option="--include"),
            GlobSet(exclude, option="--exclude"),
        )
        events_args = {} if watch_fn is None else {"watch_fn": watch_fn}
        self.events = Events(
            harvest.root,
            end,
            listener,
            poll=settings.poll,
            poll_interval=settings.poll_interval,
            **events_args,
        )
        self.settler = Settler(settings.settle)
        self.held_first_path: dict[str, str] = {}  # sha256 -> the first path it was held as
        self.held: set[tuple[str, str]] = set()  # (path, sha256) keruta-api holds
        self.sent: dict[tuple[str, str], LedgerEntry] = {}  # what this run sent
        self.dealt_with: dict[str, Look] = {}  # os path -> the look whose content is held
        self.sent_bytes = 0
        self.auth_error: AuthRejected | None = None
        self.notes: list[str] = []
        self.sending = 0

    # ------------------------------------------------------------------ the three phases

    def run(self) -> HarvestReport:
        with KerutaApi(
            self.harvest.api_url,
            gate=Gate(),
            token=self.harvest.token,
            ca_cert=self.harvest.ca_cert,
            timeout=self.harvest.timeout,
            stop=self.abort,
            clock=self.clock,
            documents_path=self.harvest.documents_path,
        ) as api:
            self.sink = _Accepting(api, self.listener)
            self.hold_known(api)
            if self.auth_error is None:
                # Watched before the first pass, so nothing written during it goes unseen.
                self.events.start()
                self.full_pass(final=False)
            ticker = threading.Thread(target=self.tick, name="watch-progress", daemon=True)
            ticker.start()
            try:
                if self.auth_error is None:
                    self.follow()
            finally:
                self.end.set()
                self.events.join()
            plan, receipts = (None, ()) if self.auth_error else self.full_pass(final=True)
            ticker.join()
        return self.report(plan, receipts)

    def hold_known(self, api: KerutaApi) -> None:
        """What keruta-api holds already: the ledger's entries, else the server's listing."""
        if self.ledger is not None:
            known = self.ledger.known()
            for entry in known:
                # The ledger keeps the path as read; this run keys by the path as sent.
                self.hold(display_path(entry.path), entry.sha256)
            where = self.ledger.store.where
            self.listener.notice(Level.INFO, f"ledger ({where}): {len(known)} documents held")
            return
        try:
            remote = self.retrier.call(
                lambda _attempt: api.list_documents(
                    self.harvest.task_id,
                    notice=lambda text: self.listener.notice(Level.WARNING, text),
                )
            )
        except AuthRejected as exc:
            self.stop_for(exc)
            return
        except (ApiError, Interrupted) as exc:
            self.listener.notice(
                Level.WARNING,
                f"keruta-api's document listing: {exc}; going on without it (re-sent documents "
                "rely on Idempotency-Key)",
            )
            return
        for document in remote or ():
            self.hold(document.path, document.sha256)

    def follow(self) -> None:
        """Until the end event: changes in, settled documents out."""
        while True:
            due = self.settler.next_check()
            timeout = None if due is None else due - self.clock()
            try:
                item = self.events.get(timeout)
            except WatchFailed as exc:
                self.listener.notice(Level.ERROR, f"{exc}; the final pass will still run")
                self.notes.append(str(exc))
                self.end.wait()
                return
            if item is Signal.CLOSED:
                return
            if item is Signal.RESCAN:
                self.rescan()
            elif isinstance(item, list):
                self.saw(item)
            written = self.settler.ready(self.clock(), self.look)
            if written:
                self.send_written(written)
            if self.auth_error is not None:
                return

    def full_pass(self, *, final: bool) -> tuple[UploadPlan | None, tuple[Receipt, ...]]:
        """Scan, hash, plan against what is held, upload. At start, files written in the last
        `--settle` seconds are left to settle instead; at the end nothing waits."""
        scanned = scan(self.harvest.root, self.scan_options, self.listener, stop=self.abort)
        if not scanned.root_exists:
            return None, ()
        entries: Sequence[FileEntry] = scanned.entries
        if not final:
            entries = self.without_recent(entries)
        with RootDir(self.harvest.root) as root:
            digests, failures = hash_entries(
                root,
                entries,
                workers=self.harvest.hash_workers,
                listener=self.listener,
                stop=self.abort,
            )
            if not final:
                scanned = ScanResult(tuple(entries), scanned.skipped, scanned.failed)
            plan = build_plan(
                scanned,
                digests,
                failures,
                keep_duplicates=self.harvest.keep_duplicates,
                remote=self.remote(),
            )
            receipts = self.upload(root, plan, self.listener)
        return plan, receipts

    # ------------------------------------------------------------------ following

    def without_recent(self, entries: Sequence[FileEntry]) -> list[FileEntry]:
        """The entries quiet for `--settle`; the others are handed to the settler."""
        settle_ns = int(self.settings.settle * 1e9)
        now_ns = self.wall_clock_ns()
        quiet: list[FileEntry] = []
        recent: list[FileEntry] = []
        for entry in entries:
            (quiet if now_ns - entry.mtime_ns >= settle_ns else recent).append(entry)
        if recent:
            self.settler.saw(
                (Seen(Change.MODIFIED, e.os_path, self.look(e.os_path)) for e in recent),
                self.clock(),
            )
        return quiet

    def look(self, os_rel: str) -> Look | None:
        """lstat of a regular file below the root; None when it is gone or no regular file."""
        try:
            info = (self.root / os_rel).lstat()
        except OSError:
            return None
        return look_of(info) if stat.S_ISREG(info.st_mode) else None

    def saw(self, batch: Sequence[tuple[Change, str]]) -> None:
        seen: list[Seen] = []
        for change, os_rel in batch:
            try:
                info = (self.root / os_rel).lstat()
            except OSError:
                seen.append(Seen(change, os_rel, None))
                continue
            if stat.S_ISDIR(info.st_mode):
                # Files written before the new folder's watch was in place raise no event.
                if change is not Change.DELETED:
                    seen.extend(self.files_below(os_rel, Change.ADDED))
            elif stat.S_ISREG(info.st_mode):
                seen.append(self.seen(change, os_rel, look_of(info)))
        self.settler.saw(seen, self.clock())

    def seen(self, change: Change, os_rel: str, look: Look) -> Seen:
        rel = display_path(os_rel)
        why_not = self.filter.why_not(rel)
        if why_not is not None:
            self.listener.notice(
                Level.DEBUG,
                f"{rel}: not a document ({why_not}), {plural(look.size, 'byte')}; watched so "
                "that a rename of it is sent at once",
            )
        return Seen(change, os_rel, look, candidate=why_not is None)

    def files_below(self, os_rel_dir: str, change: Change) -> list[Seen]:
        found: list[Seen] = []
        for folder, _dirs, names in os.walk(self.root / os_rel_dir):
            for name in names:
                os_rel = str((Path(folder) / name).relative_to(self.root))
                look = self.look(os_rel)
                if look is not None and self.dealt_with.get(os_rel) != look:
                    found.append(self.seen(change, os_rel, look))
        return found

    def rescan(self) -> None:
        """Changes may have gone unseen (the root appeared, the watch restarted): every file
        not dealt with in its present state waits to settle."""
        if self.root.is_dir():
            self.settler.saw(self.files_below("", Change.MODIFIED), self.clock())

    def send_written(self, written: list[tuple[str, Look]]) -> None:
        entries = [
            FileEntry(display_path(os_rel), os_rel, look.size, look.mtime_ns)
            for os_rel, look in written
            if self.dealt_with.get(os_rel) != look
        ]
        limit = self.harvest.max_file_size
        entries = [e for e in entries if limit is None or e.size <= limit]
        if not entries:
            return
        quiet = _Quiet(self.listener)
        self.sending = len(entries)
        try:
            with RootDir(self.harvest.root) as root:
                digests, failures = hash_entries(
                    root, entries, workers=self.harvest.hash_workers, listener=quiet
                )
                plan = build_plan(
                    ScanResult(tuple(entries), (), ()),
                    digests,
                    failures,
                    keep_duplicates=self.harvest.keep_duplicates,
                    remote=self.remote(),
                )
                self.upload(root, plan, quiet)
        finally:
            self.sending = 0

    # ------------------------------------------------------------------ what is held

    def hold(self, path: str, sha256: str) -> None:
        self.held.add((path, sha256))
        self.held_first_path.setdefault(sha256, path)

    def remote(self) -> list[RemoteDocument]:
        return [RemoteDocument(path, sha) for path, sha in self.held]

    def upload(self, root: RootDir, plan: UploadPlan, listener: Listener) -> tuple[Receipt, ...]:
        """Upload the plan's uploads; note what is held now, and the content dealt with."""
        receipts: tuple[Receipt, ...] = ()
        if plan.uploads and not self.auth_error:
            uploader = Uploader(
                self.sink,
                root,
                self.harvest.task_id,
                self.retrier,
                concurrency=self.harvest.concurrency,
                listener=listener,
                stop=self.abort,
                clock=self.clock,
                ledger=self.ledger,
            )
            receipts = uploader.upload_all(plan.uploads)
            if uploader.auth_error is not None:
                self.stop_for(uploader.auth_error)
        for entry in self.sink.take():
            self.hold(entry.path, entry.sha256)
            self.sent[(entry.path, entry.sha256)] = entry
            self.sent_bytes += entry.size
        for item in plan.items:
            digest = item.digest
            if digest is not None and (
                item.action is not Action.UPLOAD or (item.rel_path, digest.sha256) in self.held
            ):
                self.dealt_with[digest.entry.os_path] = _look_of_digest(digest)
        return receipts

    def stop_for(self, error: AuthRejected) -> None:
        self.listener.notice(Level.ERROR, f"keruta-api rejected the token: {error}")
        self.auth_error = error
        self.end.set()

    # ------------------------------------------------------------------ progress and report

    def tick(self) -> None:
        """A progress line every interval while there is work: files waiting or being sent."""
        while not self.end.wait(self.progress_interval):
            waiting, sending = self.settler.waiting, self.sending
            if waiting or sending:
                self.listener.notice(
                    Level.INFO,
                    f"watch: {plural(len(self.sent), 'document')} sent "
                    f"({plural(self.sent_bytes, 'byte')}), {waiting} waiting to settle, "
                    f"{sending} being sent",
                )

    def report(self, plan: UploadPlan | None, receipts: tuple[Receipt, ...]) -> HarvestReport:
        """Every path of the final pass with its outcome, and the paths sent meanwhile that are
        gone since (their last version)."""
        files: list[FileReport] = []
        answers = iter(receipts)
        listed: set[str] = set()
        for item in plan.items if plan is not None else ():
            listed.add(item.rel_path)
            sent = self.sent.get((item.rel_path, item.sha256 or ""))
            if item.action is Action.UPLOAD:
                receipt = next(answers, None) or Receipt(Outcome.NOT_ATTEMPTED)
            elif item.action is Action.ALREADY_UPLOADED and sent is not None:
                receipt = Receipt(Outcome.UPLOADED, 1, document_id=sent.document_id)
            elif item.action is Action.FAIL:
                receipt = Receipt(Outcome.FAILED, error=item.reason)
            else:
                receipt = Receipt(_OUTCOME_OF_ACTION[item.action])
            files.append(FileReport(item, receipt))
        for (path, sha), entry in self.sent.items():
            if path not in listed:
                listed.add(path)
                item = PlanItem(path, Action.UPLOAD, size=entry.size, sha256=sha)
                receipt = Receipt(Outcome.UPLOADED, 1, document_id=entry.document_id)
                files.append(FileReport(item, receipt))
        files.sort(key=lambda f: f.path)
        if plan is None and self.auth_error is None:
            self.notes.append(f"{self.harvest.root} does not exist")
        versions = len(self.sent) - sum(1 for f in files if f.outcome is Outcome.UPLOADED)
        if versions > 0:
            self.notes.append(f"{plural(versions, 'earlier version')} of changed files also sent")
        return HarvestReport(
            task_id=self.harvest.task_id,
            root=self.harvest.root,
            dry_run=False,
            files=tuple(files),
            elapsed_seconds=self.clock() - self.started,
            bytes_uploaded=self.sent_bytes,
            status=StepResult(StepState.SKIPPED, NO_STATUS),
            pvc=StepResult(StepState.SKIPPED, NO_PVC),
            auth_rejected=self.auth_error is not None,
            notes=tuple(self.notes),
        )


_OUTCOME_OF_ACTION = {
    Action.DUPLICATE: Outcome.DUPLICATE,
    Action.ALREADY_UPLOADED: Outcome.ALREADY_UPLOADED,
    Action.SKIP: Outcome.SKIPPED,
    Action.FAIL: Outcome.FAILED,
}
