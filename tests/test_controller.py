"""`harvester controller` end to end on the real control plane: the real CLI as a subprocess,
acting as deploy/'s controller ServiceAccount and Role, while the real job controller turns main
Jobs Complete or Failed (a test sets each pod's phase, as a kubelet would: there is none).

What it must show: a succeeded main Job gets exactly one cleanup Job, rendered from the template
ConfigMap with the task's name, env and claim (read-only); a failed one gets none; the same Job
seen again, a controller restart, and the cleanup Job removed by its TTL still give one; Jobs
without a task-id and cleanup Jobs themselves are ignored.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from harvester.devapi.server import DevApiServer
from tests.controller_helpers import (
    TEMPLATE,
    Controller,
    cleanup_jobs,
    controller_starter,
    events_on,
    get,
    metrics,
    record,
    served,
)
from tests.kube_backends import DEPLOY, RealNamespace, wait_until
from tests.process import BIN, isolated_env


@pytest.fixture
def start_controller(
    real_api: RealNamespace, tmp_path: Path
) -> Iterator[Callable[..., Controller]]:
    """Start controllers in the namespace, as deploy/'s controller (see `controller_starter`)."""
    with controller_starter(real_api, tmp_path) as start:
        yield start


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


def set_template(real_api: RealNamespace, text: str) -> None:
    client.CoreV1Api(real_api.admin).patch_namespaced_config_map(
        TEMPLATE, real_api.namespace, {"data": {"cleanup-job.yaml": text}}
    )


def cleanup_image(real_api: RealNamespace, task: str) -> str:
    found = real_api.get("jobs", f"cleanup-job-for-task-{task}")
    assert found is not None
    (container,) = found["spec"]["template"]["spec"]["containers"]
    return str(container["image"])


def test_a_template_change_applies_without_a_restart_and_a_broken_one_keeps_the_last_good(
    real_api: RealNamespace, start_controller: Any
) -> None:
    controller = start_controller()
    text = (DEPLOY / "cleanup-job.yaml").read_text()
    assert "image: keruta-harvester:latest" in text

    def harvest(task: str) -> None:
        job = main_job(real_api, task)
        finish(real_api, job, "Succeeded")
        wait_until(lambda: record(real_api, job) is not None, f"task {task}'s decision")

    def in_force() -> int:
        said = [str(line.get("message")) for line in controller.lines()]
        return sum(
            f"template of ConfigMap {real_api.namespace}/{TEMPLATE} is in force" in line
            for line in said
        )

    harvest("21")
    assert cleanup_image(real_api, "21") == "keruta-harvester:latest"

    set_template(real_api, text.replace("keruta-harvester:latest", "registry.example/kh:2"))
    # The watch brings the change: the next cleanup Job is made from it, without a restart.
    wait_until(lambda: in_force() == 2, "the changed template to be in force")
    harvest("22")
    assert cleanup_image(real_api, "22") == "registry.example/kh:2"

    set_template(real_api, "kind: [")  # broken: the last good one stays in force
    wait_until(lambda: controller.said("not valid YAML"), "the broken template to be said")
    harvest("23")
    assert cleanup_image(real_api, "23") == "registry.example/kh:2"
    wait_until(
        lambda: any(
            e["reason"] == "TemplateInvalid" and e["involvedObject"]["name"] == TEMPLATE
            for e in real_api.events
        ),
        "the Event on the template's ConfigMap",
    )
    assert controller.stop() == 0


def test_report_failed_sets_the_task_failed_in_keruta_api(
    real_api: RealNamespace, start_controller: Any, dev_api: DevApiServer
) -> None:
    controller = start_controller("--report-failed", f"--api-url={dev_api.url}")
    job = main_job(real_api, "31")
    finish(real_api, job, "Failed")

    wait_until(lambda: record(real_api, job) is not None, "the controller to record its decision")
    task = dev_api.store.task("31")
    assert task is not None
    assert (task.status, task.error_code) == ("FAILED", "MAIN_JOB_FAILED")
    assert job in (task.message or "")
    assert cleanup_jobs(real_api) == []
    assert controller.stop() == 0


def test_a_report_keruta_api_refused_is_not_recorded_as_done_and_is_tried_again(
    real_api: RealNamespace, start_controller: Any, tmp_path: Path
) -> None:
    """Nothing is marked done that did not complete: with keruta-api unreachable the failure is
    said and the Job stays undecided; it is tried again after a backoff (no change to the Job
    needed), and once keruta-api answers the task is FAILED and the decision recorded."""
    with socket.socket() as sock:  # a port nobody listens on, for now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    controller = start_controller("--report-failed", f"--api-url=http://127.0.0.1:{port}")
    job = main_job(real_api, "32")
    finish(real_api, job, "Failed")

    wait_until(
        lambda: (
            controller.said(f"Job {real_api.namespace}/{job}: ")
            and controller.said("it is tried again")
        ),
        "the controller to give up on the report",
        timeout=60,
    )
    assert record(real_api, job) is None
    with DevApiServer(tmp_path / "late-api", port=port) as late_api:
        wait_until(
            lambda: record(real_api, job) is not None,
            "the retry to report the failure and record it",
            timeout=90,
        )
        task = late_api.store.task("32")
        assert task is not None and task.status == "FAILED"
    assert controller.stop() == 0


def cleanup_pod(real_api: RealNamespace, task: str) -> str:
    core = client.CoreV1Api(real_api.admin)
    selector = f"batch.kubernetes.io/job-name=cleanup-job-for-task-{task}"

    def pods() -> list[Any]:
        return list(core.list_namespaced_pod(real_api.namespace, label_selector=selector).items)

    wait_until(lambda: len(pods()) == 1, "the job controller to make the cleanup pod")
    return str(pods()[0].metadata.name)


def test_a_successful_cleanup_lets_the_claim_go(
    real_api: RealNamespace, start_controller: Any, dev_api: DevApiServer, tmp_path: Path
) -> None:
    controller = start_controller("--release-after=0s")
    job = main_job(real_api, "41")
    finish(real_api, job, "Succeeded")
    wait_until(lambda: record(real_api, job) is not None, "the cleanup Job")
    found = real_api.get("jobs", "cleanup-job-for-task-41")
    assert found is not None
    (container,) = found["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}

    # The cleanup pod's work, done here as it would do it: its env, deploy/'s cleanup Role.
    pod = cleanup_pod(real_api, "41")
    docs = tmp_path / "doc"
    docs.mkdir()
    (docs / "report.md").write_text("# done\n")
    harvest = subprocess.run(
        [str(BIN / "harvester"), "cleanup", "--log-format=json"],
        env=isolated_env(
            {
                "KUBECONFIG": str(real_api.kubeconfig),
                "KERUTA_TASK_ID": env["KERUTA_TASK_ID"],
                "KERUTA_SOURCE_POD": env["KERUTA_SOURCE_POD"],
                "KERUTA_PVC": env["KERUTA_PVC"],
                "KERUTA_API_URL": dev_api.url,
                "KERUTA_ARTIFACTS_DIR": str(docs),
                "POD_NAME": pod,
                "POD_NAMESPACE": real_api.namespace,
            }
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert harvest.returncode == 0, harvest.stdout + harvest.stderr
    claim = real_api.get("persistentvolumeclaims", "pvc-41")
    assert claim is not None and claim["metadata"].get("deletionTimestamp")  # held by the pods

    client.CoreV1Api(real_api.admin).patch_namespaced_pod_status(
        pod, real_api.namespace, {"status": {"phase": "Succeeded"}}
    )
    wait_until(
        lambda: real_api.get("persistentvolumeclaims", "pvc-41") is None,
        "the Jobs' TTL, their pods' removal and pvc-protection to let the claim go",
        timeout=90,
    )
    wait_until(lambda: "CleanupSucceeded" in events_on(real_api, job), "the Event on the Job")
    task = dev_api.store.task("41")
    assert task is not None and task.status == "COMPLETED"
    assert controller.stop() == 0


def test_a_failed_cleanup_is_reported_and_keeps_the_volume(
    real_api: RealNamespace, start_controller: Any
) -> None:
    controller = start_controller()
    job = main_job(real_api, "42")
    finish(real_api, job, "Succeeded")
    wait_until(lambda: record(real_api, job) is not None, "the cleanup Job")
    batch = client.BatchV1Api(real_api.admin)
    # Its backoff spent at once: the next failed pod fails the Job.
    batch.patch_namespaced_job(
        "cleanup-job-for-task-42", real_api.namespace, {"spec": {"backoffLimit": 0}}
    )
    pod = cleanup_pod(real_api, "42")
    client.CoreV1Api(real_api.admin).patch_namespaced_pod_status(
        pod, real_api.namespace, {"status": {"phase": "Failed"}}
    )

    wait_until(
        lambda: record(real_api, job) == "cleanup-job-for-task-42 failed",
        "the failure to be recorded on the main Job",
        timeout=60,
    )
    wait_until(lambda: "CleanupFailed" in events_on(real_api, job), "the Event on the main Job")
    claim = real_api.get("persistentvolumeclaims", "pvc-42")
    assert claim is not None and not claim["metadata"].get("deletionTimestamp")
    main = real_api.get("jobs", job)
    assert main is not None and main["spec"].get("ttlSecondsAfterFinished") is None
    assert controller.said("to run it again, delete that Job and remove the annotation")
    assert controller.stop() == 0


def test_health_readiness_and_metrics_answer(
    real_api: RealNamespace, start_controller: Any
) -> None:
    controller = start_controller()
    base = served(controller)
    assert get(base + "/healthz")[0] == 200
    wait_until(lambda: get(base + "/readyz")[0] == 200, "the controller to be ready")
    job = main_job(real_api, "61")
    finish(real_api, job, "Succeeded")
    wait_until(lambda: record(real_api, job) is not None, "the cleanup Job")

    values = metrics(base)
    assert values["keruta_harvester_cleanup_jobs_created_total"] == 1.0
    assert values["keruta_harvester_leader"] == 1.0
    assert values["keruta_harvester_completion_to_cleanup_seconds_count"] == 1.0
    assert values["keruta_harvester_jobs_seen_total"] >= 2  # running, then complete
    assert get(base + "/nothing")[0] == 404
    assert controller.stop() == 0


def test_two_replicas_only_the_leader_acts_and_the_other_takes_over(
    real_api: RealNamespace, start_controller: Any
) -> None:
    first, second = start_controller(), start_controller()
    wait_until(lambda: first.said(" leads (Lease") or second.said(" leads (Lease"), "one to lead")
    leader, follower = (first, second) if first.said(" leads (Lease") else (second, first)
    job = main_job(real_api, "71")
    finish(real_api, job, "Succeeded")
    wait_until(lambda: record(real_api, job) is not None, "the leader's cleanup Job")
    assert leader.said("cleanup Job cleanup-job-for-task-71 created")
    assert not follower.said("cleanup-job-for-task-71")
    assert not follower.said(" leads (Lease")

    leader.process.kill()  # SIGKILL: no goodbye, the lease has to run out
    leader.process.wait(timeout=10)
    job = main_job(real_api, "72")
    finish(real_api, job, "Succeeded")
    wait_until(
        lambda: record(real_api, job) is not None,
        "the follower to take the lease over and finish the pending work",
        timeout=60,
    )
    assert follower.said(" leads (Lease")
    assert follower.said("cleanup Job cleanup-job-for-task-72 created")
    assert sorted(j.metadata.name for j in cleanup_jobs(real_api)) == [
        "cleanup-job-for-task-71",
        "cleanup-job-for-task-72",
    ]
    assert follower.stop() == 0


def test_a_claim_stuck_terminating_is_reported_once(
    real_api: RealNamespace, start_controller: Any
) -> None:
    real_api.add_pvc("pvc-91", labels={"app": "keruta", "task-id": "91"})
    # Another workload's pod (scheduled, finished) still names the claim: pvc-protection keeps it.
    real_api.add_pod("holder-91", claims=["pvc-91"], phase="Succeeded")
    client.CoreV1Api(real_api.admin).delete_namespaced_persistent_volume_claim(
        "pvc-91", real_api.namespace
    )
    controller = start_controller("--stuck-claim-after=1s")
    base = served(controller)

    def stuck_events() -> list[dict[str, Any]]:
        return [
            e
            for e in real_api.events
            if e["reason"] == "StuckTerminating" and e["involvedObject"]["name"] == "pvc-91"
        ]

    wait_until(lambda: len(stuck_events()) == 1, "the Event on the stuck claim")
    assert controller.said(f"PVC {real_api.namespace}/pvc-91 has been Terminating for")
    wait_until(
        lambda: "keruta_harvester_claims_stuck_terminating 1.0" in get(base + "/metrics")[1],
        "the gauge",
    )

    def checks() -> int:
        return sum("claims Terminating past the threshold" in str(x) for x in controller.lines())

    wait_until(lambda: checks() >= 3, "the claims to be checked again")
    assert len(stuck_events()) == 1  # said once, however often it is checked
    assert controller.stop() == 0
