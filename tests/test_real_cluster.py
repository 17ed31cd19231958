"""What only a real API server can answer, on each real backend (tests/kube_backends.py: the
control plane tests/cluster/build.sh built, and an existing cluster when one is named): every
deploy/ manifest applies server-side (the cluster-wide/ component's too), the pods the base runs
pass the restricted Pod Security Standard as the API server enforces it, the deploy/ Role is
enough and each of its rules is needed, and pvc-protection keeps a deleted claim Terminating
while a scheduled pod uses it.

The contract suite (tests/test_volume.py) runs there too, as deploy/'s ServiceAccount; the UID
precondition's server-side check is one of its tests."""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

from bench.controlplane import create
from harvester.kube.cluster import LEDGER_PERMISSIONS, PERMISSIONS
from harvester.model import StepState
from harvester.stats import Level
from tests.kube_backends import DEPLOY, RealNamespace, manifests, wait_until
from tests.volume_support import (
    OWN_POD,
    SOURCE_POD,
    TASK,
    main_job_volume,
    run_cleanup_steps,
)


def pvc_state(real_api: RealNamespace, name: str) -> str:
    claim = real_api.get("persistentvolumeclaims", name)
    if claim is None:
        return "gone"
    return "terminating" if claim["metadata"].get("deletionTimestamp") else "present"


def test_every_manifest_applies_with_a_server_side_dry_run(real_api: RealNamespace) -> None:
    """`kubectl apply --server-side --dry-run=server` for each object: admission, validation
    and defaulting as the API server does them, over what the namespace already holds."""
    cluster = DynamicClient(real_api.admin)  # type: ignore[no-untyped-call]
    files = sorted(p for p in DEPLOY.rglob("*.yaml") if p.name != "kustomization.yaml")
    # Every directory of deploy/: the base, its examples and the opt-in cluster-wide/ component.
    assert {p.parent.relative_to(DEPLOY).as_posix() for p in files} == {
        ".",
        "examples",
        "cluster-wide",
    }
    applied = []
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                kind = cluster.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
                answer = cluster.server_side_apply(  # type: ignore[no-untyped-call]
                    kind,
                    body=doc,
                    namespace=real_api.namespace,
                    field_manager="keruta-harvester-tests",
                    dry_run="All",
                )
                applied.append(answer)
    # The answers are the server's own: defaulted, as only a real API server does it.
    (job,) = (
        obj for obj in applied if obj.kind == "Job" and obj.metadata.name.startswith("cleanup")
    )
    assert job.spec.completionMode == "NonIndexed"
    assert job.spec.template.spec.dnsPolicy == "ClusterFirst"
    answered = {(obj.kind, obj.metadata.name) for obj in applied}
    # The main Job with `harvester watch` as a native sidecar, and the sidecar's own RBAC.
    (watched,) = (obj for obj in applied if obj.metadata.name == "keruta-job-123-with-watch")
    assert watched.spec.template.spec.initContainers[0].restartPolicy == "Always"
    for kind in ("ServiceAccount", "Role", "RoleBinding"):
        assert (kind, "keruta-harvester-watch") in answered
    controller = "keruta-harvester-controller"
    kinds = ("ServiceAccount", "Role", "RoleBinding", "NetworkPolicy", "Deployment")
    assert {(kind, controller) for kind in (*kinds, "ClusterRole", "ClusterRoleBinding")} <= (
        answered
    )
    (deployment,) = (obj for obj in applied if obj.kind == "Deployment")
    assert deployment.spec.progressDeadlineSeconds == 600


def pod_from(path: str, kind: str) -> dict[str, Any]:
    """A Pod made from the pod template of the one `kind` in deploy/`path`, as its controller
    would make it."""
    (workload,) = (doc for doc in manifests(path) if doc["kind"] == kind)
    template = workload["spec"]["template"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{workload['metadata']['name']}-x7k2p", **template["metadata"]},
        "spec": template["spec"],
    }


def test_the_pods_pass_the_restricted_pod_security_standard(real_api: RealNamespace) -> None:
    """The PodSecurity admission plugin, enforcing `restricted` on the namespace, admits the
    cleanup pod and the controller pod (a server-side dry run: nothing is created). A Deployment
    or Job itself is only warned about; the pods its controller makes are what is refused."""
    core = client.CoreV1Api(real_api.admin)
    labels = {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    core.patch_namespace(real_api.namespace, {"metadata": {"labels": labels}})
    # The ServiceAccount admission plugin refuses a pod whose ServiceAccount does not exist;
    # the cleanup pods' is there already (RealNamespace), the controller's is made here.
    for doc in manifests("controller-serviceaccount.yaml"):
        create(real_api.admin, doc, real_api.namespace)
    cleanup_pod = pod_from("cleanup-job.yaml", "Job")
    controller_pod = pod_from("controller-deployment.yaml", "Deployment")

    def refusal(pod: dict[str, Any]) -> str | None:
        try:
            core.create_namespaced_pod(real_api.namespace, pod, dry_run="All")  # type: ignore[arg-type]
        except ApiException as exc:
            return str(exc.body)
        return None

    # The namespace's label reaches the plugin through an informer: wait until a pod that only
    # the restricted level forbids (no runAsNonRoot, no seccomp profile) is refused, so the
    # admissions below are the plugin's answer, not its ignorance of the label.
    unrestricted = pod_from("controller-deployment.yaml", "Deployment")
    unrestricted["spec"] = unrestricted["spec"] | {"securityContext": {}}
    wait_until(
        lambda: "violates PodSecurity" in (refusal(unrestricted) or ""),
        "PodSecurity to enforce restricted on the namespace",
    )
    assert refusal(cleanup_pod) is None
    assert refusal(controller_pod) is None


def test_the_deploy_role_suffices_and_the_pvc_stays_terminating_while_used(
    real_api: RealNamespace,
) -> None:
    main_job_volume(real_api)

    volume, result, notices = run_cleanup_steps(real_api.kubeconfig)

    assert volume.problem is None, volume.problem
    assert result.state is StepState.DONE, result.message
    assert not [text for level, text in notices.lines if level is Level.WARNING]
    assert [e["reason"] for e in real_api.events] == ["HarvestSucceeded", "DeletionRequested"]
    # pvc-protection: every scheduled pod that names the claim keeps it Terminating, the main
    # Job's finished pod too, as the release message says; the harvester waited for none.
    assert f"{SOURCE_POD} (Succeeded)" in result.message
    assert pvc_state(real_api, "pvc-123") == "terminating"
    real_api.remove("pods", OWN_POD)
    time.sleep(2)  # pvc-protection answers within milliseconds; give it ample time to be wrong
    assert pvc_state(real_api, "pvc-123") == "terminating"
    real_api.remove("pods", SOURCE_POD)
    wait_until(lambda: pvc_state(real_api, "pvc-123") == "gone", "pvc-protection to let it go")


# The ledger's rules are each proven needed in tests/test_ledger.py.
RULES = sorted(
    {(p.api_group, p.resource, p.verb) for p in PERMISSIONS if p not in LEDGER_PERMISSIONS}
)


@pytest.mark.parametrize(("group", "resource", "verb"), RULES, ids=lambda v: v or "core")
def test_each_rule_of_the_role_is_needed(
    real_api: RealNamespace, group: str, resource: str, verb: str
) -> None:
    # The path that uses every permission: the source pod is gone (get pods: 404), so its Job
    # (get jobs: 404), then the PVC labelled task-id (list, get), live users (list pods), the
    # delete, the finalizer (patch), and the Events (create). This cleanup pod mounts the claim,
    # so pvc-protection holds it and the finalizer is still there to patch after the delete.
    real_api.add_pvc("pvc-123", labels={"task-id": TASK})
    real_api.add_pod(OWN_POD, claims=["pvc-123"])
    real_api.forbid(verb, resource)
    assert not real_api.can(group, resource, verb)

    volume, result, notices = run_cleanup_steps(real_api.kubeconfig, release_finalizer=True)

    said = [volume.problem or "", result.message, *(text for _level, text in notices.lines)]
    sentence = f'verb "{verb}" on "{resource}"'
    assert any(sentence in text for text in said), said
    if (resource, verb) != ("events", "create"):
        assert result.state is StepState.FAILED, result.message
    else:  # an Event that cannot be written never fails the harvest
        assert result.state is StepState.DONE, result.message


def test_a_finished_main_job_removed_by_its_ttl_frees_the_released_claim(
    real_api: RealNamespace,
) -> None:
    """The remedy the PVC step names, through the real controllers: the job controller makes
    the main Job's pod; once it has finished the harvest releases the claim, which that pod
    keeps Terminating; when the Job is given a ttlSecondsAfterFinished, ttl-after-finished
    deletes it, the garbage collector its pod (ownerReferences), and pvc-protection lets the
    claim go."""
    if real_api.runs_pods:
        pytest.skip("needs a control plane with no scheduler or kubelet: phases are set here")
    real_api.add_pvc("pvc-123", labels={"app": "keruta", "task-id": TASK})
    real_api.add_job(
        "keruta-job-123",
        claims=["pvc-123"],
        labels={"task-id": TASK},
        mount_paths={"pvc-123": "/.keruta"},
        suspended=False,
    )
    core, batch = client.CoreV1Api(real_api.admin), client.BatchV1Api(real_api.admin)

    def job_pods() -> list[client.V1Pod]:
        pods = core.list_namespaced_pod(
            real_api.namespace, label_selector="job-name=keruta-job-123"
        )
        return list(pods.items)

    wait_until(lambda: len(job_pods()) == 1, "the job controller to create the main pod")
    (main_pod,) = job_pods()
    assert main_pod.metadata is not None and main_pod.metadata.owner_references
    source_pod = str(main_pod.metadata.name)
    core.patch_namespaced_pod_status(
        source_pod, real_api.namespace, {"status": {"phase": "Succeeded"}}
    )

    def job_complete() -> bool:
        job = batch.read_namespaced_job_status("keruta-job-123", real_api.namespace)
        conditions = (job.status.conditions if job.status else None) or []
        return any(c.type == "Complete" and c.status == "True" for c in conditions)

    wait_until(job_complete, "the main Job to complete")

    _volume, result, _notices = run_cleanup_steps(real_api.kubeconfig, source_pod=source_pod)

    assert result.state is StepState.DONE, result.message
    assert f"{source_pod} (Succeeded)" in result.message
    assert pvc_state(real_api, "pvc-123") == "terminating"
    batch.patch_namespaced_job(
        "keruta-job-123", real_api.namespace, {"spec": {"ttlSecondsAfterFinished": 0}}
    )
    wait_until(lambda: pvc_state(real_api, "pvc-123") == "gone", "the claim to go", timeout=60)
    # The TTL controller deletes in the foreground: the pod (and so the claim) can go before
    # the Job object does, so its deletion is waited for, not asserted at once.
    wait_until(lambda: real_api.get("jobs", "keruta-job-123") is None, "the Job to go")
    assert real_api.get("pods", source_pod) is None
