"""Running `harvester controller`: the reporter, the connection, the lease, the health server,
and the loop, until SIGTERM.

Takes `ControllerSettings`, `Reporting` and the stop event; gives the process's `ExitCode`.
With `--leader-elect` (the default) it first waits for the Lease (`kube.lease`); only the holder
watches and acts, and a replica that loses the lease stops acting at once and exits 1, so its
restart campaigns again. `/healthz`, `/readyz` and `/metrics` (`serve`) answer meanwhile.
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from typing import TextIO

from harvester.controller.claims import StuckClaims
from harvester.controller.decide import Decision
from harvester.controller.events import EventWriter
from harvester.controller.loop import Controller
from harvester.controller.pods import SucceededPods
from harvester.controller.serve import HealthServer, Metrics, parse_address
from harvester.controller.templates import Templates
from harvester.errors import ConfigError, HarvesterError
from harvester.exitcodes import ExitCode
from harvester.gate import Gate
from harvester.kube.cluster import KubeError
from harvester.kube.jobs import JobsApi, connect
from harvester.kube.lease import LEASE_NAME, LeaderElector
from harvester.kube.watch import ResourceWatch
from harvester.model import TaskStatus
from harvester.report import JsonReporter, LogReporter
from harvester.retry import Retrier, RetryPolicy
from harvester.settings import (
    NO_CLUSTER,
    ControllerSettings,
    LogFormat,
    Reporting,
    Settings,
    default_of,
)
from harvester.stats import Level, Listener, Tally
from harvester.wire.client import KerutaApi

MAIN_JOB_FAILED = "MAIN_JOB_FAILED"


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
            with connect(settings.cluster) as api, ExitStack() as resources:
                return _run(settings, api, tally, stop, resources)
        except ConfigError as exc:
            tally.notice(Level.ERROR, f"controller: {exc}")
            return ExitCode.USAGE
        except HarvesterError as exc:
            tally.notice(Level.ERROR, f"controller: stopped: {exc}")
            return ExitCode.UNEXPECTED


def _run(
    settings: ControllerSettings,
    api: JobsApi,
    tally: Tally,
    stop: threading.Event,
    resources: ExitStack,
) -> ExitCode:
    namespaces = (
        None if settings.all_namespaces else (settings.namespaces or (api.default_namespace,))
    )
    # The Lease lives in the controller's own namespace (the first watched one).
    home = namespaces[0] if namespaces else api.default_namespace
    metrics = Metrics()
    elector: LeaderElector | None = None
    connected = threading.Event()
    address = parse_address(settings.metrics_bind_address)
    if address is not None:
        server = resources.enter_context(HealthServer(address, metrics, ready=connected.is_set))
        tally.notice(Level.INFO, f"controller: /healthz, /readyz and /metrics on {server.address}")

    if settings.leader_elect:
        identity = f"{settings.pod_name or socket.gethostname()}_{uuid.uuid4().hex[:8]}"
        duration = settings.lease_duration
        elector = LeaderElector(
            api.api_client,
            home,
            identity,
            lease_duration=duration,
            renew_deadline=duration * 2 / 3,
            retry_period=duration * 2 / 15,
            on_problem=lambda text: tally.notice(Level.WARNING, f"controller: {text}"),
        ).start()
        resources.callback(elector.stop)
        connected.set()  # a follower is ready too: it stands by
        tally.notice(Level.INFO, f"controller: {identity} waiting for Lease {home}/{LEASE_NAME}")
        while not (elector.leading.wait(0.2) or stop.is_set() or elector.lost.is_set()):
            pass
        if not elector.leading.is_set():
            tally.notice(Level.INFO, "controller: stopped before leading")
            return ExitCode.OK
        metrics.leader.set(1)
        tally.notice(Level.INFO, f"controller: {identity} leads (Lease {home}/{LEASE_NAME})")

    lost = elector.lost if elector is not None else threading.Event()
    broken = threading.Event()  # the template's or the pods' watch was refused: it stops
    acting = _either(stop, lost, broken)
    events = resources.enter_context(EventWriter(tally))
    templates = _follow_templates(settings, api, namespaces, events, tally, acting, broken)
    pods = _follow_pods(api, namespaces, tally, acting, broken)
    while not (templates.synced.wait(0.2) and pods.synced.wait(0.2)) and not acting.is_set():
        pass
    where = "every namespace" if namespaces is None else ", ".join(namespaces)
    tally.notice(
        Level.INFO,
        f"controller: watching Jobs labelled {settings.selector} in {where}; cleanup Jobs from "
        f"ConfigMap {settings.template_config_map}",
    )
    report = _failure_reporter(settings, stop, tally, resources) if settings.report_failed else None
    controller = Controller(
        api,
        templates,
        pods,
        events,
        tally,
        release_after=settings.release_after or 0.0,
        report_failure=report,
        metrics=metrics,
        may_act=lambda: not lost.is_set(),
    )
    stuck = StuckClaims(
        api,
        namespaces,
        settings.selector,
        settings.stuck_claim_after,
        tally,
        metrics.claims_stuck.set,
    )
    threading.Thread(target=stuck.run, args=(acting,), name="stuck-claims", daemon=True).start()
    watch = api.watch(
        settings.selector,
        acting,
        namespaces=namespaces,
        on_retry=_retrying(tally, "Jobs"),
        on_relist=lambda: tally.notice(
            Level.INFO,
            "controller: the Jobs watch's resourceVersion expired (410 Gone); listing again",
        ),
    )
    metrics.watch.source = watch
    connected.set()
    controller.run(watch, workers=settings.workers)
    if broken.is_set():
        return ExitCode.UNEXPECTED
    if lost.is_set():
        metrics.leader.set(0)
        tally.notice(
            Level.ERROR,
            "controller: lost the lease (not renewed in time); stopped acting, exiting so a "
            "restart campaigns again",
        )
        return ExitCode.UNEXPECTED
    tally.notice(Level.INFO, "controller: stopped")
    return ExitCode.OK


def _follow_templates(
    settings: ControllerSettings,
    api: JobsApi,
    namespaces: tuple[str, ...] | None,
    events: EventWriter,
    listener: Listener,
    acting: threading.Event,
    broken: threading.Event,
) -> Templates:
    """The template ConfigMap, watched on a thread of its own until `acting` ends."""
    name = settings.template_config_map

    def template_event(namespace: str, config_map: str, reason: str, message: str) -> None:
        events.submit(lambda: api.config_map_event(namespace, config_map, reason, message))

    templates = Templates(name, _scopes(namespaces), listener, template_event)
    watch = api.template_watch(
        name, acting, namespaces=namespaces, on_retry=_retrying(listener, f"ConfigMap {name}")
    )
    _follow("template", templates.follow, watch, listener, broken)
    return templates


def _follow_pods(
    api: JobsApi,
    namespaces: tuple[str, ...] | None,
    listener: Listener,
    acting: threading.Event,
    broken: threading.Event,
) -> SucceededPods:
    """The main Jobs' succeeded pods, watched on a thread of their own until `acting` ends."""
    pods = SucceededPods(_scopes(namespaces))
    watch = api.succeeded_pods_watch(
        acting, namespaces=namespaces, on_retry=_retrying(listener, "succeeded pods")
    )
    _follow("pods", pods.follow, watch, listener, broken)
    return pods


def _follow(
    name: str,
    follow: Callable[[ResourceWatch], None],
    watch: ResourceWatch,
    listener: Listener,
    broken: threading.Event,
) -> None:
    """Run `follow(watch)` on a thread; a refusal (its Role rule missing) is said and sets
    `broken`, which stops the controller."""

    def run() -> None:
        try:
            follow(watch)
        except HarvesterError as exc:
            listener.notice(Level.ERROR, f"controller: stopped: {exc}")
            broken.set()

    threading.Thread(target=run, name=name, daemon=True).start()


def _retrying(listener: Listener, what: str) -> Callable[[KubeError, float], None]:
    def said(error: KubeError, delay: float) -> None:
        listener.notice(
            Level.WARNING, f"controller: watching {what}: {error}; resuming in {delay:.1f}s"
        )

    return said


def _scopes(namespaces: tuple[str, ...] | None) -> int:
    return 1 if namespaces is None else len(namespaces)


def _either(*events: threading.Event) -> threading.Event:
    """An event set as soon as one of `events` is."""
    either = threading.Event()

    def wait() -> None:
        while not any(event.wait(0.1) for event in events):
            pass
        either.set()

    threading.Thread(target=wait, name="stop-or-lost", daemon=True).start()
    return either


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
            token=settings.token,
            ca_cert=settings.ca_cert,
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
