"""`harvester controller` end to end on the real control plane: the real CLI as a subprocess,
acting as deploy/'s controller ServiceAccount and Role, while the real job controller turns main
Jobs Complete or Failed (a test sets each pod's phase, as a kubelet would: there is none).

What it must show: a succeeded main Job gets exactly one cleanup Job, rendered from the template
ConfigMap with the task's name, env and claim (read-only); a failed one gets none; the same Job
seen again, a controller restart, and the cleanup Job removed by its TTL still give one; Jobs
without a task-id and cleanup Jobs themselves are ignored.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from bench.controlplane import create
from harvester.controller.decide import DECISION_ANNOTATION
from harvester.kube.cluster import CONTROLLER_PERMISSIONS
from tests.kube_backends import (
    DEPLOY,
    RealNamespace,
    can,
    manifests,
    service_account_kubeconfig,
    wait_until,
)
from tests.process import BIN, isolated_env

CONTROLLER = "keruta-harvester-controller"
TEMPLATE = "keruta-harvester-cleanup-job"
CLEANUP_SELECTOR = "app.kubernetes.io/component=cleanup"


class Controller:
    """`harvester controller` as a child process, its JSON log lines kept in a file."""

    def __init__(self, kubeconfig: Path, namespace: str, log: Path) -> None:
        self._log = log
        with log.open("a") as out:
            self.process = subprocess.Popen(
                [
                    str(BIN / "harvester"),
                    "controller",
                    f"--namespace={namespace}",
                    "--log-format=json",
                    "--log-level=debug",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=isolated_env({"KUBECONFIG": str(kubeconfig)}),
            )

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self._log.read_text().splitlines() if line]

    def said(self, text: str) -> bool:
        return any(text in str(line.get("message", "")) for line in self.lines())

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


@pytest.fixture
def start_controller(real_api: RealNamespace, tmp_path: Path) -> Iterator[Any]:
    """Arrange deploy/'s controller identity and template in the namespace; give a function
    that starts a controller (each stopped at the end of the test)."""
    namespace, admin = real_api.namespace, real_api.admin
    for name in (
        "controller-serviceaccount.yaml",
        "controller-role.yaml",
        "controller-rolebinding.yaml",
    ):
        for doc in manifests(name):
            create(admin, doc, namespace)
    template = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": TEMPLATE},
        "data": {"cleanup-job.yaml": (DEPLOY / "cleanup-job.yaml").read_text()},
    }
    create(admin, template, namespace)
    user = f"system:serviceaccount:{namespace}:{CONTROLLER}"
    wait_until(
        lambda: all(can(admin, namespace, user, p) for p in CONTROLLER_PERMISSIONS),
        "deploy/'s controller Role to be in force",
    )
    kubeconfig = service_account_kubeconfig(
        real_api.admin_kubeconfig, namespace, CONTROLLER, tmp_path / "controller.kubeconfig"
    )
    started: list[Controller] = []

    def start() -> Controller:
        controller = Controller(kubeconfig, namespace, tmp_path / f"controller-{len(started)}.log")
        started.append(controller)
        return controller

    yield start
    for controller in started:
        if controller.process.poll() is None:
            controller.stop()


def main_job(real_api: RealNamespace, task: str, **labels: str) -> str:
    """Main Job keruta-job-<task> (running: the job controller makes its pod) mounting pvc-<task>
    at /.keruta, labelled app=keruta and task-id=<task> unless `labels` say otherwise."""
    claim, name = f"pvc-{task}", f"keruta-job-{task}"
    real_api.add_pvc(claim, labels={"app": "keruta", "task-id": task})
    real_api.add_job(
        name,
        claims=[claim],
        labels={"app": "keruta", "task-id": task, **labels},
        mount_paths={claim: "/.keruta"},
        suspended=False,
    )
    return name


def finish(real_api: RealNamespace, job: str, phase: str) -> str:
    """Set the phase of the Job's pod as a kubelet would; wait for the job controller to give
    the Job its Complete (or Failed) condition. Returns the pod's name."""
    core, batch = client.CoreV1Api(real_api.admin), client.BatchV1Api(real_api.admin)

    def pods() -> list[Any]:
        answer = core.list_namespaced_pod(
            real_api.namespace, label_selector=f"batch.kubernetes.io/job-name={job}"
        )
        return list(answer.items)

    wait_until(lambda: len(pods()) == 1, f"the job controller to make {job}'s pod")
    (pod,) = pods()
    core.patch_namespaced_pod_status(
        pod.metadata.name, real_api.namespace, {"status": {"phase": phase}}
    )
    condition = "Complete" if phase == "Succeeded" else "Failed"

    def ended() -> bool:
        status = batch.read_namespaced_job_status(job, real_api.namespace).status
        conditions = (status.conditions if status else None) or []
        return any(c.type == condition and c.status == "True" for c in conditions)

    wait_until(ended, f"{job} to be {condition}")
    return str(pod.metadata.name)


def cleanup_jobs(real_api: RealNamespace) -> list[Any]:
    batch = client.BatchV1Api(real_api.admin)
    return list(
        batch.list_namespaced_job(real_api.namespace, label_selector=CLEANUP_SELECTOR).items
    )


def record(real_api: RealNamespace, job: str) -> str | None:
    found = real_api.get("jobs", job)
    assert found is not None
    value = (found["metadata"].get("annotations") or {}).get(DECISION_ANNOTATION)
    return None if value is None else str(value)


def events_on(real_api: RealNamespace, job: str) -> list[str]:
    return [
        e["reason"]
        for e in real_api.events
        if e["involvedObject"]["kind"] == "Job" and e["involvedObject"]["name"] == job
    ]


def test_a_succeeded_main_job_gets_exactly_one_cleanup_job(
    real_api: RealNamespace, start_controller: Any
) -> None:
    controller = start_controller()
    job = main_job(real_api, "7")
    source_pod = finish(real_api, job, "Succeeded")

    wait_until(lambda: record(real_api, job) is not None, "the controller to record its decision")
    (cleanup,) = cleanup_jobs(real_api)
    assert cleanup.metadata.name == "cleanup-job-for-task-7"
    assert record(real_api, job) == "cleanup-job-for-task-7"
    assert cleanup.metadata.labels["task-id"] == "7"
    pod = cleanup.spec.template.spec
    (container,) = pod.containers
    env = {e.name: e.value for e in container.env if e.value is not None}
    assert env["KERUTA_TASK_ID"] == "7"
    assert env["KERUTA_PVC"] == "pvc-7"
    assert env["KERUTA_SOURCE_POD"] == source_pod
    (volume,) = [v for v in pod.volumes if v.persistent_volume_claim is not None]
    assert volume.persistent_volume_claim.claim_name == "pvc-7"
    assert volume.persistent_volume_claim.read_only is True
    assert pod.service_account_name == "keruta-harvester"
    wait_until(lambda: "CleanupJobCreated" in events_on(real_api, job), "the Event on the Job")
    assert controller.stop() == 0
    assert controller.said("cleanup Job cleanup-job-for-task-7 created")


def test_seen_again_restarted_or_after_its_ttl_still_one_cleanup_job(
    real_api: RealNamespace, start_controller: Any
) -> None:
    first = start_controller()
    job = main_job(real_api, "8")
    finish(real_api, job, "Succeeded")
    wait_until(lambda: record(real_api, job) is not None, "the first decision")
    assert first.stop() == 0

    # The cleanup Job finished and its TTL removed it; the main Job keeps the record.
    batch = client.BatchV1Api(real_api.admin)
    batch.delete_namespaced_job(
        "cleanup-job-for-task-8", real_api.namespace, propagation_policy="Background"
    )
    wait_until(lambda: cleanup_jobs(real_api) == [], "the cleanup Job to be gone")

    second = start_controller()  # lists every Job again: the same Job, seen again
    wait_until(
        lambda: second.said(f"Job {real_api.namespace}/{job}: decided before"),
        "the restarted controller to see the main Job",
    )
    assert cleanup_jobs(real_api) == []
    assert second.stop() == 0


def test_a_failed_main_job_gets_no_cleanup_job(
    real_api: RealNamespace, start_controller: Any
) -> None:
    controller = start_controller()
    job = main_job(real_api, "9")
    finish(real_api, job, "Failed")

    wait_until(lambda: record(real_api, job) is not None, "the controller to record its decision")
    assert (record(real_api, job) or "").startswith("none: the main Job failed")
    assert cleanup_jobs(real_api) == []
    wait_until(lambda: "CleanupNotStarted" in events_on(real_api, job), "the Event on the Job")
    assert controller.stop() == 0


def test_jobs_without_a_task_and_cleanup_jobs_are_ignored(
    real_api: RealNamespace, start_controller: Any
) -> None:
    controller = start_controller()
    untasked = main_job(real_api, "10", **{"task-id": ""})
    ours = main_job(real_api, "11", **{"app.kubernetes.io/component": "cleanup"})
    finish(real_api, untasked, "Succeeded")
    finish(real_api, ours, "Succeeded")

    prefix = f"Job {real_api.namespace}/"
    wait_until(
        lambda: (
            controller.said(f"{prefix}{untasked}: no task-id label")
            and controller.said(f"{prefix}{ours}: a cleanup Job itself")
        ),
        "the controller to see both complete Jobs",
    )
    assert [j.metadata.name for j in cleanup_jobs(real_api)] == [ours]  # only the one we made
    assert record(real_api, untasked) is None
    assert record(real_api, ours) is None
    assert controller.stop() == 0
