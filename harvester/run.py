"""Running a harvest for a person or a Job: reporters, signals, summaries, the exit code.

Takes `Settings` and how to talk (`Output`); gives the process's `ExitCode`. This is the one
place that knows the terminal from `kubectl logs`: the stages below only count, the reporters
chosen here print, and the report is rendered here once the harvest is over.
"""

from __future__ import annotations

import gc
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, TextIO

from harvester.errors import ConfigError
from harvester.exitcodes import ExitCode, exit_code_for
from harvester.harvest import NO_PVC_STEP, Harvest, PvcStep, gate_for, run_harvest
from harvester.report import (
    TERMINATION_LOG,
    JsonReporter,
    LogReporter,
    console_for,
    json_event,
    print_json_result,
    print_line,
    print_result,
    write_summary_json,
    write_termination_log,
)
from harvester.settings import NO_CLUSTER, LogFormat, Reporting, Settings
from harvester.stats import Level, Listener, Tally

if TYPE_CHECKING:
    from harvester.kube.volume import Volume
    from harvester.pipeline.ledger import LedgerStore
    from harvester.report.terminal import TerminalReporter


@dataclass(frozen=True)
class Output:
    """Where and how a run reports. `interactive=None` means: ask whether stderr is a TTY."""

    reporting: Reporting = field(default_factory=Reporting)
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    interactive: bool | None = None
    termination_log: Path = TERMINATION_LOG

    @property
    def is_interactive(self) -> bool:
        if self.interactive is not None:
            return self.interactive
        return self.stderr.isatty()


def make_reporter(output: Output, tally: Tally) -> TerminalReporter | LogReporter | JsonReporter:
    """The reporter `output` asks for, watching `tally`."""
    level, interval = output.reporting.log_level, output.reporting.progress_interval
    if output.reporting.log_format is LogFormat.JSON:
        return JsonReporter(output.stdout, tally, interval=interval, level=level)
    if output.is_interactive:
        # Imported here: only a terminal gets progress bars, and rich's live display costs the
        # other runs some 30 ms of start-up.
        from harvester.report.terminal import TerminalReporter

        return TerminalReporter(console_for(output.stderr, interactive=True), tally, level=level)
    return LogReporter(output.stderr, tally, interval=interval, level=level)


def run_cleanup(
    settings: Settings,
    output: Output,
    *,
    stop: threading.Event | None = None,
    kubernetes: bool = True,
) -> tuple[ExitCode, Harvest | None]:
    """Run one harvest with the reporters `output` asks for; render and record its result.

    With `kubernetes` the task's PVC is located before the harvest and (not in a dry run)
    released after a complete one; without a cluster that step is skipped with one line. The
    located PVC owns the ledger of accepted uploads, read first (a dry run too) and written as
    the uploads are acknowledged, unless --no-ledger.
    """
    tally = Tally()  # what the stages count, and the reporter draws from
    reporter = make_reporter(output, tally)
    try:
        with reporter, ExitStack() as resources:
            resources.enter_context(few_full_collections())
            off = "off (--no-ledger)" if settings.no_ledger else f"off ({NO_CLUSTER})"
            steps = ClusterSteps(None, None, None, off)
            # A dry run acts on nothing, so it needs a cluster only to read the ledger (its gate
            # would refuse the volume's every act); skipping it spares the client's import and
            # a connection.
            if kubernetes and not (settings.dry_run and settings.no_ledger):
                steps = cluster_steps(settings, tally, resources)
            harvest = run_harvest(
                settings,
                tally,
                pvc_step=None if settings.dry_run else steps.pvc_step,
                ledger_store=steps.ledger_store,
                no_ledger_because=steps.no_ledger_because,
                stop=stop,
            )
            if steps.volume is not None and not settings.dry_run:
                steps.volume.record_outcome(harvest.report)
    except ConfigError as exc:
        fail(output, str(exc))
        return ExitCode.USAGE, None

    report = harvest.report
    if output.reporting.log_format is LogFormat.JSON:
        print_json_result(output.stdout, plan=harvest.plan, report=report)
    else:
        print_result(
            output.stdout, interactive=output.is_interactive, plan=harvest.plan, report=report
        )

    # The harvest is over (the status sent, the volume perhaps released): a report that cannot
    # be written now is said once, and the harvest's own exit code stands, since a Job retried
    # for it would find no volume. The path was checked before anything was sent.
    if settings.summary_json is not None:
        try:
            write_summary_json(report, settings.summary_json)
        except OSError as exc:
            warn(output, f"--summary-json {settings.summary_json}: {not_written(exc)}")
    if not settings.dry_run:
        error = write_termination_log(report, output.termination_log)
        if error is not None:
            warn(output, f"{output.termination_log}: the termination message {not_written(error)}")
    return exit_code_for(report), harvest


@contextmanager
def few_full_collections() -> Iterator[None]:
    """Python's cycle collector walks every object again whenever the old ones grew by a
    quarter; a harvest keeps a few objects per file until it ends, so a dry run of 100,000
    files spent a fifth of its CPU there. Within this block the old generation is looked at
    after 1,000 collections of the young ones instead of 10; the young ones, where short-lived
    cycles die, are collected as often as before."""
    young, middle, old = gc.get_threshold()
    gc.set_threshold(young, middle, max(old, 1000))
    try:
        yield
    finally:
        gc.set_threshold(young, middle, old)


def not_written(exc: OSError) -> str:
    reason = exc.strerror or type(exc).__name__
    return f"cannot be written ({reason}); the harvest's result above stands"


@dataclass(frozen=True)
class ClusterSteps:
    """What a run does with the cluster: the located volume, its PVC step and the ledger's
    store (None, and why not)."""

    volume: Volume | None
    pvc_step: PvcStep | None
    ledger_store: LedgerStore | None
    no_ledger_because: str


def cluster_steps(settings: Settings, listener: Listener, resources: ExitStack) -> ClusterSteps:
    """Connect to the cluster and locate the PVC now, so its UID is known before the harvest,
    and open the ledger it owns. Without a cluster there is no PVC step and no ledger."""
    if not settings.cluster.available:
        listener.notice(Level.INFO, f"PVC: {NO_PVC_STEP}")
        listener.notice(Level.DEBUG, f"ledger: off ({NO_CLUSTER})")
        return ClusterSteps(None, None, None, f"off ({NO_CLUSTER})")
    # Imported only with a cluster to talk to: the official client costs a quarter of a second
    # and some 30 MB, for nothing on a laptop or in a dry run.
    from harvester.kube.cluster import connect
    from harvester.kube.volume import Volume, VolumeOptions

    try:
        cluster = resources.enter_context(connect(settings.cluster, namespace=settings.namespace))
    except ConfigError as exc:
        if not settings.dry_run:
            raise
        # A rehearsal does not need the cluster: say why the ledger is not read, and go on.
        listener.notice(Level.WARNING, f"ledger: not read: {exc}")
        return ClusterSteps(None, None, None, f"not read: {exc}")
    volume = Volume(
        cluster,
        VolumeOptions(
            task_id=settings.task_id,
            root=settings.root,
            source_pod=settings.source_pod,
            pvc=settings.pvc,
            own_pod=settings.own_pod,
            force_delete=settings.force_delete_pvc,
            release_finalizer=settings.release_pvc_finalizer,
        ),
        listener,
        gate=gate_for(settings),
    )
    target = volume.locate()
    if settings.no_ledger:
        because = "off (--no-ledger)"
    elif target is None:
        because = "off (the PVC that would own it was not located)"
    else:
        from harvester.kube.ledger import ConfigMapLedger

        store = ConfigMapLedger(
            cluster.rest,
            cluster.namespace,
            target.name,
            target.uid,
            settings.task_id,
            listener=listener,
        )
        return ClusterSteps(volume, volume.release, store, "")
    listener.notice(Level.INFO, f"ledger: {because}")
    return ClusterSteps(volume, volume.release, None, because)


def fail(output: Output, message: str) -> None:
    """Tell a person (and the pod's termination message) that the run could not start."""
    _say(output, message, json_event("error", message=message), prefix="error", style="bold red")
    write_termination_log(message, output.termination_log)  # a pod's last word; never raises


def warn(output: Output, message: str) -> None:
    """Tell a person that something went wrong after the harvest; its result stands."""
    level = Level.WARNING.value
    event = json_event("notice", level=level, message=message)
    _say(output, message, event, prefix=level, style="yellow")


def _say(output: Output, message: str, event: str, *, prefix: str, style: str) -> None:
    """One line outside the reporters: the JSON `event`, or `prefix: message` on stderr."""
    if output.reporting.log_format is LogFormat.JSON:
        print(event, file=output.stdout, flush=True)
    else:
        print_line(
            f"{prefix}: {message}", output.stderr, interactive=output.is_interactive, style=style
        )


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """SIGTERM/SIGINT set the returned event: in-flight uploads finish, no new ones start, the
    summary is still written. A second signal stops at once (the default behaviour)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handle(signum: int, _frame: FrameType | None) -> None:
        stop.set()
        signal.signal(signum, previous[signal.Signals(signum)])

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        signal.signal(sig, handle)
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
