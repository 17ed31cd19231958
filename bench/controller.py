"""The `controller` scenario (issue 11): `harvester controller` against a bare create loop, on the
real control plane.

Takes a scratch folder, the sizes (quick or full), the number of runs and a log function; gives
a `ScenarioResult` with three rows:

- `harvester controller`: N main Jobs (1,000; `--quick` 50) are already Complete when the real
  CLI starts (`harvester controller --namespace NS`, admin kubeconfig); timed from its start
  until the N-th cleanup Job exists.
- `ceiling: create loop`: `python -m bench.kube_ceiling` creating the same N cleanup Jobs one
  after another through the controller's own create call, as fast as it can; timed the same
  way.
- `controller, 5,000 Jobs`: the controller's peak RSS (VmHWM) while it lists, watches and
  decides 5,000 main Jobs (`--quick` 500), of which only the last few are Complete.

How the Jobs become Complete at once: making 1,000 Jobs Complete through the job controller
needs 1,000 pods whose status a test sets, one by one, slowly. Instead every main Job is
created suspended and with `spec.managedBy` naming no real controller, so the built-in job
controller never touches it (no pods, no status of its own), and the benchmark, as the admin,
writes its status subresource as the job controller would for a success. The API server (1.34)
validates the transition: it refuses `Complete` without `SuccessCriteriaMet`, and a finished
Job without `startTime` or `completionTime`, so all four are set (and `succeeded: 1`). The pod
template mounts a claim at /.keruta, as a keruta main Job's does; the claim itself need not
exist, since no pod is made.

"Exists" is what the API server announces: a watch on the cleanup label, opened before the
contender starts, counts ADDED events (raw lines, not parsed into models, so the counting costs
the shared CPUs next to nothing). Each measured run gets a fresh control plane: the job
controller goes on making the pods of the previous run's cleanup Jobs for a minute or more (at
its 20 requests/s), which would otherwise load the next contender's run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from kubernetes import client, config

from bench.contenders import Measurement
from bench.controlplane import BIN, ControlPlane, binaries_built
from bench.results import ContenderResult, Ratio, ScenarioResult, Target
from bench.tools import HARVESTER, BenchError, PeakRss, isolated_env, proc_cpu_seconds
from harvester.controller.decide import DECISION_ANNOTATION
from harvester.kube.watch import WATCH_SECONDS

__all__ = ["complete_main_job", "controller_scenario", "create_main_job", "unavailable"]

REPO = Path(__file__).resolve().parent.parent
TEMPLATE_FILE = REPO / "deploy" / "cleanup-job.yaml"
TEMPLATE_CONFIG_MAP = "keruta-harvester-cleanup-job"
TEMPLATE_KEY = "cleanup-job.yaml"
CLEANUP_SELECTOR = "app.kubernetes.io/component=cleanup"
CLEANUP_SERVICE_ACCOUNT = "keruta-harvester"  # the template's serviceAccountName
# No such controller exists: the built-in job controller leaves Jobs managed by another alone.
MANAGED_BY = "bench.keruta.io/none"
SETUP_THREADS = 8  # making the Jobs is not measured; a few requests in flight make it shorter
FIRST_TO_LAST = "first to last Job"
TO_FIRST = "start to first Job"

_SIZES = {False: (1_000, 5_000, 50), True: (50, 500, 10)}  # quick: (jobs, cached jobs, complete)


def unavailable() -> str | None:
    """Why the scenario cannot run here (the control plane binaries are missing), or None."""
    if binaries_built():
        return None
    return (
        f"the control plane binaries are not built in {BIN} (`make cluster` builds them with Go, "
        "about 8 minutes the first time; or set KERUTA_K8S_BIN to where they are)"
    )


def create_main_job(batch: Any, namespace: str, task: str) -> str:
    """Main Job `keruta-job-<task>` (labels app=keruta and task-id, claim `pvc-<task>` mounted at
    /.keruta), suspended and managed by no real controller: it gets no pods, and its status is
    the caller's to write (see the module docstring). `batch`: an admin's `BatchV1Api` (public:
    the controller's relist and RBAC tests make their main Jobs the same way). Returns its name."""
    name, claim = f"keruta-job-{task}", f"pvc-{task}"
    pod = {
        "restartPolicy": "Never",
        "containers": [
            {
                "name": "main",
                "image": "keruta-task:latest",
                "volumeMounts": [{"name": "task-volume", "mountPath": "/.keruta"}],
            }
        ],
        "volumes": [{"name": "task-volume", "persistentVolumeClaim": {"claimName": claim}}],
    }
    batch.create_namespaced_job(
        namespace,
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": name, "labels": {"app": "keruta", "task-id": task}},
            "spec": {"suspend": True, "managedBy": MANAGED_BY, "template": {"spec": pod}},
        },
    )
    return name


def complete_main_job(batch: Any, namespace: str, task: str) -> None:
    """Write `Complete` into the status of `create_main_job`'s Job, as the job controller would
    for a success (with what the API server requires of that transition)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    conditions = [
        {
            "type": kind,
            "status": "True",
            "reason": "CompletionsReached",
            "message": "Reached expected number of succeeded pods",
            "lastProbeTime": now,
            "lastTransitionTime": now,
        }
        for kind in ("SuccessCriteriaMet", "Complete")
    ]
    status = {"startTime": now, "completionTime": now, "succeeded": 1}
    batch.patch_namespaced_job_status(
        f"keruta-job-{task}", namespace, {"status": {**status, "conditions": conditions}}
    )


class _Cluster:
    """A fresh control plane and an admin client for it; gone on exit, its folder too."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.plane = ControlPlane(workdir)
        self.core: Any = None
        self.batch: Any = None
        self._api: Any = None

    def __enter__(self) -> Self:
        try:
            self.plane.start()
        except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
            self.plane.stop()
            raise BenchError(f"the control plane did not start: {exc}") from exc
        self._api = config.new_client_from_config(  # type: ignore[no-untyped-call]
            str(self.plane.admin_kubeconfig)
        )
        self.core, self.batch = client.CoreV1Api(self._api), client.BatchV1Api(self._api)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._api.close()
        self.plane.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def kubeconfig(self) -> Path:
        return self.plane.admin_kubeconfig

    def cpu_seconds(self) -> float | None:
        """CPU seconds etcd, kube-apiserver and kube-controller-manager have used so far."""
        seconds = [proc_cpu_seconds(pid) for pid in self.plane.pids().values()]
        return None if None in seconds else sum(s for s in seconds if s is not None)

    def namespace(self, name: str) -> str:
        """A namespace holding the template ConfigMap and the cleanup Jobs' ServiceAccount
        (without it every cleanup pod the job controller makes is refused, and retried)."""
        self.core.create_namespace({"metadata": {"name": name}})
        self.core.create_namespaced_service_account(
            name, {"metadata": {"name": CLEANUP_SERVICE_ACCOUNT}}
        )
        self.core.create_namespaced_config_map(
            name,
            {
                "metadata": {"name": TEMPLATE_CONFIG_MAP},
                "data": {TEMPLATE_KEY: TEMPLATE_FILE.read_text()},
            },
        )
        return name

    def main_jobs(self, namespace: str, tasks: list[str], complete: Iterable[str]) -> None:
        """Create a suspended main Job per task, then write `Complete` into the status of those
        in `complete` (see the module docstring)."""
        with ThreadPoolExecutor(SETUP_THREADS) as pool:
            list(pool.map(lambda task: create_main_job(self.batch, namespace, task), tasks))
            list(pool.map(lambda task: complete_main_job(self.batch, namespace, task), complete))

    def recorded(self, namespace: str) -> int:
        """Main Jobs carrying the controller's decision record."""
        jobs = self.batch.list_namespaced_job(namespace, label_selector="app=keruta,task-id")
        return sum(
            1
            for job in jobs.items
            if DECISION_ANNOTATION in (job.metadata.annotations or {})
            and (job.metadata.labels or {}).get("app.kubernetes.io/component") != "cleanup"
        )


class _Arrivals:
    """Counts the cleanup Jobs the API server announces in a namespace, from now on."""

    def __init__(self, batch: Any, namespace: str, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.first: float | None = None
        self.last: float | None = None
        self.done = threading.Event()
        listed = batch.list_namespaced_job(namespace, label_selector=CLEANUP_SELECTOR, limit=1)
        if listed.items:
            raise BenchError(f"namespace {namespace} already holds cleanup Jobs")
        # The call returns once the server has answered the watch's headers: from here on,
        # every cleanup Job created is announced on this stream.
        self._stream = batch.list_namespaced_job(
            namespace,
            label_selector=CLEANUP_SELECTOR,
            watch=True,
            resource_version=listed.metadata.resource_version,
            timeout_seconds=3600,
            _preload_content=False,
        )
        self._thread = threading.Thread(target=self._read, daemon=True, name="arrivals")
        self._thread.start()

    def _read(self) -> None:
        try:
            for line in self._stream:
                if line.startswith(b'{"type":"ADDED"'):
                    now = time.perf_counter()
                    self.count += 1
                    self.first = self.first or now
                    if self.count == self.expected:
                        self.last = now
                        self.done.set()
        except Exception:  # noqa: BLE001 - closed by close(); the waiter reports a shortfall
            return

    def wait(self, timeout: float, alive: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + timeout
        while not self.done.wait(0.1):
            if not alive():
                raise BenchError(f"{what} exited after {self.count} of {self.expected} Jobs")
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{what}: {self.count} of {self.expected} Jobs after {timeout:.0f} s"
                )

    def close(self) -> None:
        # Shut the socket down first: closing the response while the reader is blocked in it
        # waits for the reader's buffer lock, that is, for ever.
        sock = getattr(getattr(self._stream, "connection", None), "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(10)
        self._stream.close()


def _tail(path: Path, limit: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _timeout(jobs: int) -> float:
    return 120.0 + jobs * 0.5


def _measure(
    arrivals: _Arrivals, started: float, jobs: int, cpu_s: float | None, server: float | None
) -> Measurement:
    assert arrivals.first is not None and arrivals.last is not None
    stages = {TO_FIRST: arrivals.first - started, FIRST_TO_LAST: arrivals.last - arrivals.first}
    return Measurement(
        wall_s=arrivals.last - started,
        files=jobs,
        bytes=0,
        detail={"stage_seconds": stages},
        client_cpu_s=cpu_s,
        server_cpu_s=server,
    )


def _run_controller(
    cluster: _Cluster, namespace: str, jobs: int, scratch: Path, *, hold_s: float = 0.0
) -> Measurement:
    """Start `harvester controller` on `namespace`; measure it until `jobs` cleanup Jobs exist
    (then keep it `hold_s` seconds more, for the peak RSS to include a watch renewal)."""
    arrivals = _Arrivals(cluster.batch, namespace, jobs)
    log = scratch / f"controller-{namespace}.log"
    argv = [str(HARVESTER), "controller", f"--namespace={namespace}", "--log-format=json"]
    server_before = cluster.cpu_seconds()
    with log.open("wb") as out:
        started = time.perf_counter()
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=isolated_env({"KUBECONFIG": str(cluster.kubeconfig)}),
        )
    peak = PeakRss(process.pid)
    try:
        try:
            arrivals.wait(_timeout(jobs), lambda: process.poll() is None, "harvester controller")
        except BenchError as exc:
            raise BenchError(f"{exc}; its log ends:\n{_tail(log)}") from None
        cpu = proc_cpu_seconds(process.pid)
        server_after = cluster.cpu_seconds()
        time.sleep(hold_s)
    finally:
        peak.stop()
        _stop(process)
        arrivals.close()
    server = None if server_before is None or server_after is None else server_after - server_before
    measured = _measure(arrivals, started, jobs, cpu, server)
    log.unlink(missing_ok=True)
    return dataclasses.replace(measured, peak_rss=peak.value)


def _run_ceiling(cluster: _Cluster, namespace: str, jobs: int, scratch: Path) -> Measurement:
    """`python -m bench.kube_ceiling` creating `jobs` cleanup Jobs in `namespace`."""
    arrivals = _Arrivals(cluster.batch, namespace, jobs)
    err = scratch / f"ceiling-{namespace}.err"
    argv = [sys.executable, "-m", "bench.kube_ceiling", f"--kubeconfig={cluster.kubeconfig}"]
    argv += [f"--namespace={namespace}", f"--count={jobs}", f"--template={TEMPLATE_FILE}"]
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    server_before = cluster.cpu_seconds()
    with err.open("wb") as errors:
        started = time.perf_counter()
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errors,
            env=isolated_env({"PYTHONPATH": path}),
        )
    try:
        arrivals.wait(_timeout(jobs), lambda: process.poll() is None, "the create loop")
        server_after = cluster.cpu_seconds()
        _pid, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    except BenchError as exc:
        raise BenchError(f"{exc}:\n{_tail(err)}") from None
    finally:
        _stop(process)
        arrivals.close()
    if process.returncode != 0:
        raise BenchError(f"the create loop exited {process.returncode}:\n{_tail(err)}")
    err.unlink(missing_ok=True)
    server = None if server_before is None or server_after is None else server_after - server_before
    return _measure(arrivals, started, jobs, usage.ru_utime + usage.ru_stime, server)


def _tasks(count: int) -> list[str]:
    # Zero-padded, so the API server lists them in this order (by name).
    return [f"{number:05d}" for number in range(count)]


def controller_scenario(
    scratch: Path, *, quick: bool, runs: int, log: Callable[[str], None]
) -> ScenarioResult:
    """The scenario; see the module docstring."""
    jobs, cached, cached_complete = _SIZES[quick]
    ceiling = ContenderResult(
        "ceiling",
        "ceiling: create loop",
        note=(
            f"{jobs:,} creates, one after another, through the controller's create call "
            "(python -m bench.kube_ceiling)"
        ),
    )
    controller = ContenderResult(
        "controller",
        "harvester controller",
        note=f"{jobs:,} Complete main Jobs before it starts; admin kubeconfig",
    )
    cache = ContenderResult(
        "cache",
        f"controller, {cached:,} Jobs",
        note=(
            f"lists, watches and decides {cached:,} main Jobs, the last {cached_complete} "
            f"Complete; Jobs/s = Jobs decided/s; measured once, held {WATCH_SECONDS + 1} s more"
        ),
    )
    checks: list[str] = []
    for number in range(1, runs + 1):
        with _Cluster(scratch / f"plane-{number}-ceiling") as cluster:
            namespace = cluster.namespace(f"bench-ceiling-{number}")
            measured = _run_ceiling(cluster, namespace, jobs, scratch)
        ceiling.runs.append(measured)
        log(f"  controller run {number}/{runs}: {ceiling.label}: {_said(measured)}")
        with _Cluster(scratch / f"plane-{number}-controller") as cluster:
            namespace = cluster.namespace(f"bench-controller-{number}")
            tasks = _tasks(jobs)
            cluster.main_jobs(namespace, tasks, tasks)
            measured = _run_controller(cluster, namespace, jobs, scratch)
            recorded = _wait_recorded(cluster, namespace, jobs)
        controller.runs.append(measured)
        checks.append(
            f"run {number}: {jobs:,} cleanup Jobs created; {recorded:,} of {jobs:,} main Jobs "
            "carry the controller's record"
        )
        log(f"  controller run {number}/{runs}: {controller.label}: {_said(measured)}")
    with _Cluster(scratch / "plane-cache") as cluster:
        namespace = cluster.namespace("bench-cache")
        tasks = _tasks(cached)
        log(f"  data: {cached:,} main Jobs, the last {cached_complete} Complete")
        cluster.main_jobs(namespace, tasks, tasks[-cached_complete:])
        measured = _run_controller(
            cluster, namespace, cached_complete, scratch, hold_s=WATCH_SECONDS + 1
        )
    # Its rate is of the Jobs it went through: the Complete ones come last in the list.
    cache.runs.append(dataclasses.replace(measured, files=cached))
    log(
        f"  controller, {cached:,} Jobs: {measured.wall_s:.2f} s, peak RSS "
        f"{(measured.peak_rss or 0) / 1e6:.0f} MB"
    )
    return _result(jobs, cached, runs, ceiling, controller, cache, checks)


def _wait_recorded(cluster: _Cluster, namespace: str, jobs: int, timeout: float = 30.0) -> int:
    """The records follow the creates by one request each; wait for the last of them."""
    deadline = time.monotonic() + timeout
    recorded = cluster.recorded(namespace)
    while recorded < jobs and time.monotonic() < deadline:
        time.sleep(0.5)
        recorded = cluster.recorded(namespace)
    return recorded


def _said(measured: Measurement) -> str:
    return (
        f"{measured.wall_s:.2f} s, {measured.files / measured.wall_s:,.1f} Jobs/s, "
        f"first after {measured.detail['stage_seconds'][TO_FIRST]:.2f} s"
    )


def _result(
    jobs: int,
    cached: int,
    runs: int,
    ceiling: ContenderResult,
    controller: ContenderResult,
    cache: ContenderResult,
    checks: list[str],
) -> ScenarioResult:
    result = ScenarioResult(
        "controller",
        f"{jobs:,} main Jobs Complete at once, a cleanup Job each; a fresh control plane per run",
        jobs,
        0,
        runs,
        [controller, ceiling, cache],
        checks=checks,
        item="Job",
        issue="issue 11",
    )
    vs_ceiling = Ratio(
        "controller / ceiling",
        controller.files_per_s(jobs),
        ceiling.files_per_s(jobs),
        "Jobs/s",
    )
    steady = Ratio(
        "controller / ceiling, first to last Job",
        controller.stage_rate(FIRST_TO_LAST, jobs - 1),
        ceiling.stage_rate(FIRST_TO_LAST, jobs - 1),
        "Jobs/s",
    )
    result.ratios = [vs_ceiling, steady]
    result.targets = [
        Target("controller / ceiling Jobs/s", vs_ceiling.value, ">=", 0.7),
        Target(f"controller peak RSS, {cached:,} Jobs", cache.peak_rss_mb(), "<", 150.0, "MB"),
    ]
    result.limits = (
        "requests per Job: the controller creates the cleanup Job, patches its record and "
        "writes an Event (3 requests, the Event from a thread of its own; the template and the "
        "succeeded pods are watched, not read per Job), on 8 workers; the ceiling only creates "
        "(1), one at a time. Both share 2 cores with the API server, etcd and the job controller"
    )
    return result
