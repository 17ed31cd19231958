"""Running `harvester watch` for a sidecar: reporters, the ledger, the summary, the exit code.

Takes `WatchSettings`, how to talk (`run.Output`), the event the first SIGTERM sets and, for
tests, a ledger's store; otherwise the ledger is the one `cleanup` uses (`run.cluster_steps`:
ConfigMaps owned by the located PVC), so the cleanup afterwards finds what the watch sent;
without a cluster, or with --no-ledger, keruta-api's listing and Idempotency-Key stand in.
Gives the process's `ExitCode`: 0 when every document seen was uploaded, 3 otherwise, 6 when
keruta-api rejected the token, 2 for a configuration it cannot use.
"""

from __future__ import annotations

import threading
from contextlib import ExitStack

from harvester.errors import ConfigError
from harvester.exitcodes import ExitCode, watch_exit_code
from harvester.model import UploadPlan
from harvester.pipeline.ledger import Ledger, LedgerStore
from harvester.report import (
    json_event,
    print_result,
    report_to_json,
    write_summary_json,
    write_termination_log,
)
from harvester.run import Output, cluster_steps, fail, make_reporter, not_written, warn
from harvester.settings import LogFormat, WatchSettings
from harvester.stats import Tally
from harvester.watch.events import WatchFn
from harvester.watch.live import Sidecar


def run_watch(
    settings: WatchSettings,
    output: Output,
    *,
    end: threading.Event,
    ledger_store: LedgerStore | None = None,
    watch_fn: WatchFn | None = None,
) -> ExitCode:
    """Follow the documents root until `end` is set, then a final pass; report as `cleanup`."""
    tally = Tally()
    reporter = make_reporter(output, tally)
    try:
        with reporter, ExitStack() as resources:
            if ledger_store is None and not settings.harvest.no_ledger:
                # The PVC is only located (a read): the watch never acts on it (keep_pvc).
                ledger_store = cluster_steps(settings.harvest, tally, resources).ledger_store
            ledger = None if ledger_store is None else Ledger(ledger_store, tally)
            try:
                sidecar = Sidecar(
                    settings,
                    tally,
                    end=end,
                    ledger=ledger,
                    watch_fn=watch_fn,
                    progress_interval=output.reporting.progress_interval,
                )
                report = sidecar.run()
            finally:
                if ledger is not None:
                    ledger.close()
    except ConfigError as exc:
        fail(output, str(exc))
        return ExitCode.USAGE

    if output.reporting.log_format is LogFormat.JSON:
        print(json_event("summary", **report_to_json(report)), file=output.stdout, flush=True)
    else:
        print_result(
            output.stdout, interactive=output.is_interactive, plan=UploadPlan(()), report=report
        )
    summary_json = settings.harvest.summary_json
    if summary_json is not None:
        try:
            write_summary_json(report, summary_json)
        except OSError as exc:
            warn(output, f"--summary-json {summary_json}: {not_written(exc)}")
    error = write_termination_log(report, output.termination_log)
    if error is not None:
        warn(output, f"{output.termination_log}: the termination message {not_written(error)}")
    return watch_exit_code(report)
