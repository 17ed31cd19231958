"""harvester/kube/jobs.py on the real control plane, acting as a ServiceAccount whose Role is
exactly `CONTROLLER_PERMISSIONS` (one rule each; each rule taken away in turn is named).

The watch: a listed Job, then a change to it; a change made while the connection is cut (a TCP
proxy that drops every connection and refuses new ones) arrives after the resume, without a
relist; 410 Gone leads to a relist. The shared API server cannot give 410 on demand: its watch
cache serves every resourceVersion since it started (it was filled from an empty etcd, and it
drops events only once over 100 are older than 75 s), compacted or not. So that test has its own
control plane with the Jobs' watch cache off (`--watch-cache-sizes=jobs.batch#0`), where a
watch reaches etcd and a compacted resourceVersion is 410, as on any cluster once the cache's
window has passed. (`cacheless_plane`, tests/kube_backends.py: one per test run, shared with
tests/test_controller_relist.py.)
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

import pytest
import yaml  # type: ignore[import-untyped]
from kubernetes import client, config

from bench.controlplane import ControlPlane, create
from harvester.controller.pods import SucceededPods
from harvester.kube.cluster import CONTROLLER_PERMISSIONS, KubeError, Permission
from harvester.kube.jobs import JOB_NAME_LABEL, JobsApi, connect
from harvester.kube.lease import LEASE_NAME, LeaderElector
from harvester.kube.watch import ADDED, DELETED, RESET, SYNCED
from harvester.model import MainJob
from harvester.settings import ClusterAccess
from tests.kube_backends import RealNamespace, can, service_account_kubeconfig, wait_until

CONTROLLER = "keruta-harvester-controller"
SELECTOR = "app=keruta"


def job_manifest(name: str, *, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A suspended Job (the job controller makes no pods for it) mounting claim `pvc-<name>`."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {"app": "keruta", "task-id": "7", **(labels or {})}},
        "spec": {
            "suspend": True,
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "main",
                            "image": "busybox:1.36",
                            "volumeMounts": [{"name": "work", "mountPath": "/.keruta"}],
                        }
                    ],
                    "volumes": [{"name": "work", "persistentVolumeClaim": {"claimName": "pvc-7"}}],
                }
            },
        },
    }


def controller_kubeconfig(
    real_api: RealNamespace, path: Path, *, without: Permission | None = None
) -> Path:
    """A kubeconfig acting as ServiceAccount `keruta-harvester-controller` of the namespace,
    whose Role has one rule per permission of CONTROLLER_PERMISSIONS, but `without`."""
    namespace, admin = real_api.namespace, real_api.admin
    granted = [p for p in CONTROLLER_PERMISSIONS if p != without]
    rules = [
        {"apiGroups": [p.api_group], "resources": [p.resource], "verbs": [p.verb]} for p in granted
    ]
    meta = {"name": CONTROLLER, "namespace": namespace}
    subject = {"kind": "ServiceAccount", "name": CONTROLLER, "namespace": namespace}
    for doc in (
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": meta,
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": meta,
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": CONTROLLER,
            },
            "subjects": [subject],
        },
    ):
        create(admin, doc, namespace)
    user = f"system:serviceaccount:{namespace}:{CONTROLLER}"

    def rbac_settled() -> bool:
        return all(can(admin, namespace, user, p) for p in granted) and not (
            without is not None and can(admin, namespace, user, without)
        )

    wait_until(rbac_settled, "the controller's Role to be in force")
    return service_account_kubeconfig(real_api.admin_kubeconfig, namespace, CONTROLLER, path)


@pytest.fixture
def jobs(real_api: RealNamespace, tmp_path: Path) -> Iterator[JobsApi]:
    kubeconfig = controller_kubeconfig(real_api, tmp_path / "controller.kubeconfig")
    with connect(ClusterAccess(kubeconfig=str(kubeconfig))) as api:
        yield api


T = TypeVar("T")


class Consumer(Generic[T]):
    """Iterates a watch on a thread, keeping everything it gives and the error it ended with."""

    def __init__(self, watch: Iterable[T]) -> None:
        self.watch = watch
        self.seen: list[T] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for job in self.watch:
                self.seen.append(job)
        except BaseException as exc:  # noqa: BLE001 - kept for the test to assert on
            self.error = exc

    def saw(self, condition: Callable[[T], bool]) -> bool:
        return any(condition(item) for item in list(self.seen))

    def wait_for(self, condition: Callable[[T], bool], what: str) -> None:
        self.wait_for_all(lambda seen: any(condition(item) for item in seen), what)

    def wait_for_all(self, condition: Callable[[list[T]], bool], what: str) -> None:
        wait_until(lambda: condition(list(self.seen)) or self.error is not None, what)
        assert self.error is None, self.error


def annotated(name: str, key: str, value: str) -> Callable[[MainJob], bool]:
    return lambda job: job.name == name and job.annotations.get(key) == value


def patch_annotation(real_api: RealNamespace, name: str, key: str, value: str) -> None:
    client.BatchV1Api(real_api.admin).patch_namespaced_job(
        name, real_api.namespace, {"metadata": {"annotations": {key: value}}}
    )


# -- the watch


def test_the_watch_gives_a_listed_job_then_its_change_and_ends_on_stop(
    real_api: RealNamespace, jobs: JobsApi
) -> None:
    real_api.add_job("other", labels={"app": "something-else"})
    assert jobs.create_job(real_api.namespace, job_manifest("main-1"))
    stop = threading.Event()
    watch = jobs.watch(SELECTOR, stop, namespaces=[real_api.namespace])
    consumer = Consumer(watch)

    consumer.wait_for(lambda job: job.name == "main-1", "the listed Job")
    listed = consumer.seen[0]
    assert listed.namespace == real_api.namespace
    assert listed.labels["task-id"] == "7"
    assert (listed.complete, listed.failed, listed.completed_at) == (False, False, None)
    assert [(c.claim, c.mount_paths) for c in listed.claims] == [("pvc-7", ("/.keruta",))]

    patch_annotation(real_api, "main-1", "seen", "twice")
    consumer.wait_for(annotated("main-1", "seen", "twice"), "the change to the Job")
    assert {job.name for job in consumer.seen} == {"main-1"}  # the selector holds

    started = time.monotonic()
    stop.set()
    consumer.thread.join(timeout=10)
    assert not consumer.thread.is_alive(), "the watch did not end on stop"
    assert time.monotonic() - started < 7  # one watch request (5 s) at most, plus a margin
    assert consumer.error is None
    assert (watch.restarts, watch.relists) == (0, 0)


class CuttableProxy:
    """A TCP forwarder on loopback to the API server (TLS passes through untouched). `cut()`
    drops every open connection and refuses new ones until `restore()`."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.refused = 0
        self._open: list[socket.socket] = []
        self._cut = False
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._cut:
                    self.refused += 1
                    downstream.close()
                    continue
                upstream = socket.create_connection(self.target)
                self._open += [downstream, upstream]
            for a, b in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def close(self) -> None:
        self.cut()
        self._listener.close()


def test_a_change_made_while_the_connection_is_cut_arrives_after_the_resume(
    real_api: RealNamespace, tmp_path: Path
) -> None:
    kubeconfig = controller_kubeconfig(real_api, tmp_path / "controller.kubeconfig")
    document = yaml.safe_load(kubeconfig.read_text())
    server = document["clusters"][0]["cluster"]["server"]
    host, port = server.removeprefix("https://").rsplit(":", 1)
    proxy = CuttableProxy((host, int(port)))
    document["clusters"][0]["cluster"]["server"] = f"https://{host}:{proxy.port}"
    kubeconfig.write_text(yaml.safe_dump(document))
    real_api.add_job("main-1", labels={"app": "keruta"})
    stop = threading.Event()
    retries: list[tuple[str, float]] = []
    try:
        with connect(ClusterAccess(kubeconfig=str(kubeconfig))) as jobs:
            watch = jobs.watch(
                SELECTOR,
                stop,
                namespaces=[real_api.namespace],
                backoff_base=0.05,
                backoff_max=0.2,
                on_retry=lambda error, delay: retries.append((str(error), delay)),
            )
            consumer = Consumer(watch)
            consumer.wait_for(lambda job: job.name == "main-1", "the listed Job")
            patch_annotation(real_api, "main-1", "step", "before")
            consumer.wait_for(annotated("main-1", "step", "before"), "the watch to stream")

            proxy.cut()
            patch_annotation(real_api, "main-1", "step", "during")  # the admin, not the proxy
            wait_until(lambda: proxy.refused > 0, "the watch to try to reconnect")
            assert not consumer.saw(annotated("main-1", "step", "during"))
            proxy.restore()

            consumer.wait_for(annotated("main-1", "step", "during"), "the change made while cut")
            assert watch.restarts >= 1
            assert watch.relists == 0  # resumed from its resourceVersion, not listed again
            assert retries and all("cannot be reached" in text for text, _ in retries)
            assert all(0 <= delay <= 0.2 for _, delay in retries)
            stop.set()
            consumer.thread.join(timeout=10)
    finally:
        stop.set()
        proxy.close()


def test_410_gone_lists_again_and_gives_the_current_jobs(cacheless_plane: ControlPlane) -> None:
    admin: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(cacheless_plane.admin_kubeconfig), persist_config=False
    )
    batch = client.BatchV1Api(admin)
    namespace = f"keruta-test-{uuid.uuid4().hex[:8]}"
    create(admin, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}, "")
    manifest: Any = job_manifest("main-1")
    created = batch.create_namespaced_job(namespace, manifest)
    assert created.metadata is not None
    old = str(created.metadata.resource_version)
    for value in ("1", "2"):
        answer = batch.patch_namespaced_job(
            "main-1", namespace, {"metadata": {"annotations": {"version": value}}}
        )
    assert answer.metadata is not None
    # etcd forgets every revision before the last patch: a watch from `old` is 410 Gone.
    compaction = json.dumps({"revision": answer.metadata.resource_version}).encode()
    with urllib.request.urlopen(f"{cacheless_plane.etcd_url}/v3/kv/compaction", compaction):
        pass
    stop = threading.Event()
    with JobsApi(admin) as jobs:
        watch = jobs.watch(SELECTOR, stop, namespaces=[namespace], resource_version=old)
        consumer = Consumer(watch)
        try:
            consumer.wait_for(annotated("main-1", "version", "2"), "the Job, listed again")
            assert watch.relists == 1
            assert watch.restarts == 0
            assert consumer.seen[0].annotations["version"] == "2"  # no event replayed: a list
        finally:
            stop.set()
            consumer.thread.join(timeout=10)
    assert consumer.error is None


def test_several_namespaces_and_all_namespaces(real_api: RealNamespace) -> None:
    """Run as the admin: across namespaces needs a ClusterRole, which deploy/ makes opt-in."""
    run = uuid.uuid4().hex[:8]
    other = f"keruta-test-{uuid.uuid4().hex[:8]}"
    create(
        real_api.admin, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other}}, ""
    )
    core = client.CoreV1Api(real_api.admin)
    try:
        with JobsApi(real_api.admin) as jobs:
            for namespace in (real_api.namespace, other):
                assert jobs.create_job(namespace, job_manifest("main-1", labels={"run": run}))
            for namespaces in ([real_api.namespace, other], None):
                stop = threading.Event()
                consumer = Consumer(jobs.watch(f"run={run}", stop, namespaces=namespaces))
                try:
                    consumer.wait_for_all(
                        lambda seen: {job.namespace for job in seen} == {real_api.namespace, other},
                        f"the Jobs of both namespaces ({namespaces})",
                    )
                    patch_annotation(real_api, "main-1", "changed", "yes")
                    consumer.wait_for(annotated("main-1", "changed", "yes"), "the change")
                finally:
                    stop.set()
                    consumer.thread.join(timeout=10)
                assert not consumer.thread.is_alive()
                assert consumer.error is None
                client.BatchV1Api(real_api.admin).patch_namespaced_job(
                    "main-1", real_api.namespace, {"metadata": {"annotations": {"changed": None}}}
                )
    finally:
        core.delete_namespace(other)


# -- the actions


def test_create_job_twice_is_created_then_already_there(
    real_api: RealNamespace, jobs: JobsApi
) -> None:
    assert jobs.create_job(real_api.namespace, job_manifest("cleanup-job-for-task-7")) is True
    assert jobs.create_job(real_api.namespace, job_manifest("cleanup-job-for-task-7")) is False
    created = real_api.get("jobs", "cleanup-job-for-task-7")
    assert created is not None
    assert created["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"] == {
        "claimName": "pvc-7"
    }


def test_record_on_job_is_refused_for_another_uid_and_merges_otherwise(
    real_api: RealNamespace, jobs: JobsApi
) -> None:
    uid = real_api.add_job("main-1", labels={"app": "keruta"})
    patch_annotation(real_api, "main-1", "someone.else/note", "kept")
    record = {"harvester.keruta.io/cleanup-job": "cleanup-job-for-task-7"}

    assert jobs.record_on_job(real_api.namespace, "main-1", "not-" + uid, record) is False
    job = real_api.get("jobs", "main-1")
    assert job is not None
    assert "harvester.keruta.io/cleanup-job" not in job["metadata"]["annotations"]

    assert jobs.record_on_job(real_api.namespace, "main-1", uid, record) is True
    job = real_api.get("jobs", "main-1")
    assert job is not None
    assert job["metadata"]["annotations"] == {"someone.else/note": "kept", **record}
    assert jobs.record_on_job(real_api.namespace, "gone", uid, record) is False


def test_the_succeeded_pods_watch_gives_each_jobs_newest_succeeded_pod(
    real_api: RealNamespace, jobs: JobsApi
) -> None:
    namespace, stop, pods = real_api.namespace, threading.Event(), SucceededPods(scopes=1)
    real_api.add_pod("main-1-early", labels={JOB_NAME_LABEL: "main-1"}, phase="Succeeded")
    watch = jobs.succeeded_pods_watch(stop, namespaces=[namespace])
    follower = threading.Thread(target=pods.follow, args=(watch,), daemon=True)
    follower.start()
    try:
        wait_until(pods.synced.is_set, "the first list")
        assert pods.newest(namespace, "main-1") == "main-1-early"  # listed
        # Names that sort after the one expected: a filter that let them through would show.
        real_api.add_pod("main-1-zzz-running", labels={JOB_NAME_LABEL: "main-1"}, phase="Running")
        real_api.add_pod("main-1-zz-done", labels={JOB_NAME_LABEL: "main-1"}, phase="Succeeded")
        real_api.add_pod("other-1-done", labels={JOB_NAME_LABEL: "other-1"}, phase="Succeeded")
        wait_until(lambda: pods.newest(namespace, "main-1") == "main-1-zz-done", "the newer pod")
        wait_until(lambda: pods.newest(namespace, "other-1") == "other-1-done", "other-1's pod")
        assert pods.newest(namespace, "main-2") is None
    finally:
        stop.set()
        follower.join(timeout=30)
    assert not follower.is_alive()


def test_the_template_watch_lists_then_follows_its_config_map_alone(
    real_api: RealNamespace, jobs: JobsApi
) -> None:
    name, namespace = "keruta-harvester-cleanup-job", real_api.namespace
    stop = threading.Event()
    changes = Consumer(jobs.template_watch(name, stop, namespaces=[namespace]))
    try:
        changes.wait_for(lambda c: c.kind == SYNCED, "the first list")
        assert [c.kind for c in changes.seen] == [RESET, SYNCED]  # none there yet
        for config_map in ("other", name):
            manifest = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": config_map},
                "data": {"cleanup-job.yaml": f"kind: Job  # {config_map}\n"},
            }
            create(real_api.admin, manifest, namespace)
        changes.wait_for(lambda c: c.kind == ADDED, "the template added")
        client.CoreV1Api(real_api.admin).delete_namespaced_config_map(name, namespace)
        changes.wait_for(lambda c: c.kind == DELETED, "the template deleted")
    finally:
        stop.set()
        changes.thread.join(timeout=30)
    added = [c.obj["data"] for c in changes.seen if c.kind == ADDED]
    assert added == [{"cleanup-job.yaml": f"kind: Job  # {name}\n"}]  # never "other"


def test_job_event_is_on_the_job(real_api: RealNamespace, jobs: JobsApi) -> None:
    uid = real_api.add_job("main-1", labels={"app": "keruta"})
    job = MainJob(real_api.namespace, "main-1", uid, {}, {}, True, False, None, ())
    assert jobs.job_event(job, "CleanupJobCreated", "cleanup-job-for-task-7", warning=False) is None
    # The job controller writes its own (Suspended); ours is the one from keruta-harvester.
    (event,) = [e for e in real_api.events if e.get("reportingComponent") == "keruta-harvester"]
    assert event["involvedObject"] == {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": "main-1",
        "namespace": real_api.namespace,
        "uid": uid,
    }
    assert (event["reason"], event["message"], event["type"]) == (
        "CleanupJobCreated",
        "cleanup-job-for-task-7",
        "Normal",
    )


# -- each rule of the Role, taken away


@pytest.mark.parametrize("missing", CONTROLLER_PERMISSIONS, ids=lambda p: f"{p.verb}-{p.resource}")
def test_each_missing_rule_is_named(
    real_api: RealNamespace, tmp_path: Path, missing: Permission
) -> None:
    kubeconfig = controller_kubeconfig(
        real_api, tmp_path / "controller.kubeconfig", without=missing
    )
    uid = real_api.add_job("main-1", labels={"app": "keruta"})
    namespace = real_api.namespace
    sentence = f'verb "{missing.verb}" on "{missing.resource}"'
    stop = threading.Event()
    with connect(ClusterAccess(kubeconfig=str(kubeconfig))) as jobs:
        actions: dict[tuple[str, str], Callable[[], object]] = {
            ("jobs", "list"): lambda: list(jobs.watch(SELECTOR, stop, namespaces=[namespace])),
            ("jobs", "watch"): lambda: list(jobs.watch(SELECTOR, stop, namespaces=[namespace])),
            ("jobs", "create"): lambda: jobs.create_job(namespace, job_manifest("cleanup-1")),
            ("jobs", "patch"): lambda: jobs.record_on_job(namespace, "main-1", uid, {"a": "b"}),
            ("pods", "list"): lambda: list(jobs.succeeded_pods_watch(stop, namespaces=[namespace])),
            ("pods", "watch"): lambda: list(
                jobs.succeeded_pods_watch(stop, namespaces=[namespace])
            ),
            ("configmaps", "list"): lambda: list(
                jobs.template_watch("template", stop, namespaces=[namespace])
            ),
            ("configmaps", "watch"): lambda: list(
                jobs.template_watch("template", stop, namespaces=[namespace])
            ),
            ("persistentvolumeclaims", "list"): lambda: jobs.terminating_claims(
                [namespace], SELECTOR
            ),
            ("leases", "get"): lambda: elector.try_hold(),
            ("leases", "create"): lambda: elector.try_hold(),  # none yet: made
            ("leases", "update"): lambda: elector.try_hold(),  # expired: taken over
        }
        elector = LeaderElector(jobs.api_client, namespace, "replica-1")
        if missing.verb == "update":
            expired = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": LEASE_NAME},
                "spec": {
                    "holderIdentity": "a-replica-long-gone",
                    "leaseDurationSeconds": 15,
                    "renewTime": "2020-01-01T00:00:00.000001Z",
                },
            }
            create(real_api.admin, expired, namespace)
        if missing.resource == "events":
            job = MainJob(namespace, "main-1", uid, {}, {}, True, False, None, ())
            problem = jobs.job_event(job, "CleanupJobCreated", "made")
            assert problem is not None and sentence in problem, problem
            assert "deploy/controller-role.yaml" in problem
            return
        with pytest.raises(KubeError) as refused:
            actions[(missing.resource, missing.verb)]()
    assert sentence in str(refused.value)
    assert "deploy/controller-role.yaml" in str(refused.value)


# -- backing off, without a cluster


def test_an_unreachable_api_server_is_retried_with_capped_full_jitter() -> None:
    """Nothing listens on the port: every list fails to connect. The waits asked for double
    from 0.5 s up to the 30 s cap (`rand` 1.0: the top of each jitter range), scaled by `rand`,
    and the stop ends the waiting."""
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    configuration = client.Configuration()
    configuration.host = f"https://127.0.0.1:{port}"
    configuration.retries = 0
    stop = threading.Event()
    asked: list[float] = []
    told: list[str] = []

    def sleep(delay: float) -> None:
        asked.append(delay)
        if len(asked) == 8:
            stop.set()

    with JobsApi(client.ApiClient(configuration)) as jobs:
        watch = jobs.watch(
            SELECTOR,
            stop,
            namespaces=["default"],
            sleep=sleep,
            rand=lambda: 1.0,
            on_retry=lambda error, _delay: told.append(str(error)),
        )
        assert list(watch) == []
    assert asked == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert (watch.restarts, watch.relists) == (8, 0)
    assert all(f"127.0.0.1:{port} cannot be reached" in text for text in told), told
