"""What only a real control plane can answer (tests/controlplane.py; built by
tests/cluster/build.sh, skipped when the binaries are not there): the deploy/ Role is enough and
each of its rules is needed, the server enforces the delete's UID precondition, pvc-protection
keeps a deleted PVC Terminating while a scheduled pod uses it, and deploy/ applies server-side."""

from __future__ import annotations

import copy
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from harvester.kube import PERMISSIONS, Cluster, DeleteResult, connect
from harvester.model import StepResult, StepState
from harvester.settings import ClusterAccess
from harvester.stats import Level
from harvester.volume import Volume, VolumeOptions
from tests.controlplane import ControlPlane, binaries_built, create
from tests.volume_support import OWN_POD, SOURCE_POD, TASK, Notices, complete_harvest

pytestmark = [
    pytest.mark.skipif(
        not binaries_built(), reason="no control plane built (run tests/cluster/build.sh)"
    ),
    pytest.mark.skipif(
        bool(os.environ.get("KERUTA_SKIP_CLUSTER")), reason="make test-fast: kmock only"
    ),
]

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with ControlPlane(tmp_path_factory.mktemp("control-plane")) as plane:
        yield plane


@pytest.fixture
def admin(control_plane: ControlPlane) -> Iterator[client.ApiClient]:
    with control_plane.api_client() as api_client:
        yield api_client


@pytest.fixture
def namespace(admin: client.ApiClient) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    create(admin, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}, "")
    return name


def manifests(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc]


def install_rbac(admin: client.ApiClient, namespace: str, role: dict[str, Any]) -> None:
    """deploy/'s ServiceAccount and RoleBinding, with `role` as the Role."""
    for doc in (*manifests("serviceaccount.yaml"), role, *manifests("rolebinding.yaml")):
        create(admin, doc, namespace)


def pvc(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "labels": labels},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }


def pod(name: str, claim: str, *, mount: str = "/.keruta") -> dict[str, Any]:
    # nodeName makes it a scheduled pod: only those hold a PVC in pvc-protection's eyes.
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"job-name": "keruta-job-123"}},
        "spec": {
            "nodeName": "fake-node",
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "main",
                    "image": "busybox",
                    "volumeMounts": [{"name": "task-volume", "mountPath": mount}],
                }
            ],
            "volumes": [{"name": "task-volume", "persistentVolumeClaim": {"claimName": claim}}],
        },
    }


def set_phase(admin: client.ApiClient, namespace: str, name: str, phase: str) -> None:
    client.CoreV1Api(admin).patch_namespaced_pod_status(
        name, namespace, {"status": {"phase": phase}}
    )


def wait_until(condition: Any, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def pvc_state(admin: client.ApiClient, namespace: str, name: str) -> str:
    try:
        claim = client.CoreV1Api(admin).read_namespaced_persistent_volume_claim(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return "gone"
        raise
    return "terminating" if claim.metadata and claim.metadata.deletion_timestamp else "present"


def can(admin: client.ApiClient, namespace: str, group: str, resource: str, verb: str) -> bool:
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=f"system:serviceaccount:{namespace}:keruta-harvester",
            groups=["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
            resource_attributes=client.V1ResourceAttributes(
                namespace=namespace, group=group, resource=resource, verb=verb
            ),
        )
    )
    answer = client.AuthorizationV1Api(admin).create_subject_access_review(review)
    return bool(answer.status and answer.status.allowed)


def run_cleanup_steps(
    plane: ControlPlane, namespace: str, *, release_finalizer: bool = False
) -> tuple[Volume, StepResult, Notices]:
    """Locate, release and record, acting as deploy/'s ServiceAccount and nothing else."""
    kubeconfig = plane.service_account_kubeconfig(namespace, "keruta-harvester")
    notices = Notices()
    with connect(ClusterAccess(kubeconfig=str(kubeconfig)), namespace=namespace) as cluster:
        volume = Volume(
            cluster,
            VolumeOptions(
                task_id=TASK,
                root="/.keruta/doc",
                source_pod=SOURCE_POD,
                own_pod=OWN_POD,
                release_finalizer=release_finalizer,
            ),
            notices,
        )
        volume.locate()
        result = volume.release()
        volume.record_outcome(complete_harvest(result))
    return volume, result, notices


def test_every_manifest_applies_with_a_server_side_dry_run(
    admin: client.ApiClient, namespace: str
) -> None:
    files = sorted(p for p in DEPLOY.rglob("*.yaml") if p.name != "kustomization.yaml")
    assert files
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                create(admin, doc, namespace, dry_run="All")


def test_the_deploy_role_suffices_and_the_pvc_stays_terminating_while_used(
    control_plane: ControlPlane, admin: client.ApiClient, namespace: str
) -> None:
    (role,) = manifests("role.yaml")
    install_rbac(admin, namespace, role)
    core = client.CoreV1Api(admin)
    create(admin, pvc("pvc-123", {"app": "keruta", "task-id": TASK}), namespace)
    create(admin, pod(SOURCE_POD, "pvc-123"), namespace)
    set_phase(admin, namespace, SOURCE_POD, "Succeeded")
    create(admin, pod(OWN_POD, "pvc-123"), namespace)
    set_phase(admin, namespace, OWN_POD, "Running")

    volume, result, notices = run_cleanup_steps(control_plane, namespace)

    assert volume.problem is None, volume.problem
    assert result.state is StepState.DONE, result.message
    assert not [text for level, text in notices.lines if level is Level.WARNING]
    # pvc-protection: the scheduled pods that mount it keep it Terminating; nothing waited.
    assert pvc_state(admin, namespace, "pvc-123") == "terminating"
    events = core.list_namespaced_event(namespace).items
    assert sorted(str(e.reason) for e in events if e.involved_object.name == "pvc-123") == [
        "DeletionRequested",
        "HarvestSucceeded",
    ]
    for name in (SOURCE_POD, OWN_POD):
        core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
    wait_until(lambda: pvc_state(admin, namespace, "pvc-123") == "gone", what="the PVC to go")


RULES = sorted({(p.api_group, p.resource, p.verb) for p in PERMISSIONS})


@pytest.mark.parametrize(("group", "resource", "verb"), RULES, ids=lambda v: v or "core")
def test_each_rule_of_the_role_is_needed(
    control_plane: ControlPlane,
    admin: client.ApiClient,
    namespace: str,
    group: str,
    resource: str,
    verb: str,
) -> None:
    (role,) = manifests("role.yaml")
    narrowed = copy.deepcopy(role)
    for rule in narrowed["rules"]:
        if group in rule["apiGroups"] and resource in rule["resources"]:
            rule["verbs"] = [v for v in rule["verbs"] if v != verb]
    narrowed["rules"] = [rule for rule in narrowed["rules"] if rule["verbs"]]
    install_rbac(admin, namespace, narrowed)
    wait_until(
        lambda: (
            not can(admin, namespace, group, resource, verb)
            and can(
                admin, namespace, "", "persistentvolumeclaims", "get" if verb != "get" else "list"
            )
        ),
        what="RBAC to take the narrowed Role",
    )
    # The path that uses every permission: the source pod is gone (get pods: 404), so its Job
    # (get jobs: 404), then the PVC labelled task-id (list, get), live users (list pods), the
    # delete, the finalizer (patch), and the Events (create).
    create(admin, pvc("pvc-123", {"task-id": TASK}), namespace)

    volume, result, notices = run_cleanup_steps(control_plane, namespace, release_finalizer=True)

    said = [volume.problem or "", result.message, *(text for _level, text in notices.lines)]
    sentence = f'verb "{verb}" on "{resource}"'
    assert any(sentence in text for text in said), said
    if (resource, verb) != ("events", "create"):
        assert result.state is StepState.FAILED, result.message
    else:  # an Event that cannot be written never fails the harvest
        assert result.state is StepState.DONE, result.message


def test_the_server_enforces_the_uid_precondition(
    control_plane: ControlPlane, admin: client.ApiClient, namespace: str
) -> None:
    with Cluster(control_plane.api_client(), namespace) as cluster:
        create(admin, pvc("pvc-123", {}), namespace)
        first = cluster.read_pvc("pvc-123")
        assert first is not None
        client.CoreV1Api(admin).delete_namespaced_persistent_volume_claim("pvc-123", namespace)
        wait_until(lambda: pvc_state(admin, namespace, "pvc-123") == "gone", what="the old PVC")
        create(admin, pvc("pvc-123", {}), namespace)
        second = cluster.read_pvc("pvc-123")
        assert second is not None and second.uid != first.uid

        assert cluster.delete_pvc("pvc-123", first.uid) is DeleteResult.UID_CHANGED
    assert pvc_state(admin, namespace, "pvc-123") == "present"
