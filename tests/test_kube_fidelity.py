"""Do the test backends tell the truth about the real API server? Skipped where no control plane
is built.

- kmock: the same requests go to it and to the control plane of bench/controlplane.py (as
  deploy/'s ServiceAccount), and the answers must match, names and UIDs aside: the status code,
  the `Status` reason, message and details that harvester/kube.py turns into sentences, and what
  a delete does to a protected claim.
- the recording proxy an existing cluster's tests go through (tests/kube_recorder.py): it must
  record what the API server's own audit log records."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from bench.controlplane import ControlPlane
from harvester.kube.cluster import LEDGER_PERMISSIONS, PERMISSIONS, PVC_PROTECTION
from tests.kube_backends import KubeApi, RealNamespace, audited_calls
from tests.kube_fixture import ApiCall, FakeCluster
from tests.volume_support import OWN_POD, TASK, run_cleanup_steps

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
STALE_UID = "00000000-0000-0000-0000-000000000000"

Answer = tuple[int, Any]
Case = Callable[[KubeApi, client.CoreV1Api], Answer]


def answer_of(call: Callable[[], Any]) -> Answer:
    """The status code and the decoded body of one request, error or not."""
    try:
        response = call()
    except ApiException as exc:
        return exc.status, json.loads(exc.body or "null")
    return response.status, json.loads(response.data)


def read_a_missing_claim(api: KubeApi, core: client.CoreV1Api) -> Answer:
    return answer_of(
        lambda: core.read_namespaced_persistent_volume_claim(
            "missing", api.namespace, _preload_content=False
        )
    )


def read_a_missing_job(api: KubeApi, core: client.CoreV1Api) -> Answer:
    batch = client.BatchV1Api(core.api_client)
    return answer_of(
        lambda: batch.read_namespaced_job("missing", api.namespace, _preload_content=False)
    )


def delete_with_a_stale_uid(api: KubeApi, core: client.CoreV1Api) -> Answer:
    api.add_pvc("pvc-123")
    options = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=STALE_UID))
    return answer_of(
        lambda: core.delete_namespaced_persistent_volume_claim(
            "pvc-123", api.namespace, body=options, _preload_content=False
        )
    )


def patch_failing_its_uid_test(api: KubeApi, core: client.CoreV1Api) -> Answer:
    api.add_pvc("pvc-123")
    patch = [{"op": "test", "path": "/metadata/uid", "value": STALE_UID}]
    return answer_of(
        lambda: core.patch_namespaced_persistent_volume_claim(
            "pvc-123",
            api.namespace,
            patch,
            _content_type="application/json-patch+json",
            _preload_content=False,
        )
    )


def delete_without_the_verb(api: KubeApi, core: client.CoreV1Api) -> Answer:
    api.add_pvc("pvc-123")
    api.forbid("delete", "persistentvolumeclaims")
    return answer_of(
        lambda: core.delete_namespaced_persistent_volume_claim(
            "pvc-123", api.namespace, _preload_content=False
        )
    )


def list_without_the_verb(api: KubeApi, core: client.CoreV1Api) -> Answer:
    api.forbid("list", "pods")
    return answer_of(lambda: core.list_namespaced_pod(api.namespace, _preload_content=False))


def create_an_event_without_the_verb(api: KubeApi, core: client.CoreV1Api) -> Answer:
    api.forbid("create", "events")
    event = client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name="pvc-123."),
        involved_object=client.V1ObjectReference(kind="PersistentVolumeClaim", name="pvc-123"),
    )
    return answer_of(
        lambda: core.create_namespaced_event(api.namespace, event, _preload_content=False)
    )


def delete_a_protected_claim(api: KubeApi, core: client.CoreV1Api) -> Answer:
    """Only what the harvester relies on: the answer, and a claim left Terminating."""
    api.add_pvc("pvc-123")
    code, body = answer_of(
        lambda: core.delete_namespaced_persistent_volume_claim(
            "pvc-123", api.namespace, _preload_content=False
        )
    )
    after = api.get("persistentvolumeclaims", "pvc-123")
    assert after is not None, "the protection should have kept the claim"
    assert after["metadata"]["finalizers"] == [PVC_PROTECTION]
    return code, {"answered": body["kind"], "terminating": "deletionTimestamp" in after["metadata"]}


CASES: list[Case] = [
    read_a_missing_claim,
    read_a_missing_job,
    delete_with_a_stale_uid,
    patch_failing_its_uid_test,
    delete_without_the_verb,
    list_without_the_verb,
    create_an_event_without_the_verb,
    delete_a_protected_claim,
]


def normalized(api: KubeApi, answer: Answer) -> Answer:
    code, body = answer
    text = json.dumps(body, sort_keys=True)
    text = re.sub(rf"(?<![\w-]){re.escape(api.namespace)}(?![\w-])", "<namespace>", text)
    return code, json.loads(UUID.sub("<uid>", text))


@pytest.fixture
def kmock_and_real(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[FakeCluster, RealNamespace]]:
    workdir = tmp_path_factory.mktemp("fidelity")
    real = RealNamespace(
        control_plane.admin_kubeconfig, workdir, control_plane.audit_log, runs_pods=False
    )
    with FakeCluster(Path(workdir)) as fake, real:
        yield fake, real


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.__name__)
def test_kmock_answers_as_the_api_server_does(
    kmock_and_real: tuple[FakeCluster, RealNamespace], case: Case
) -> None:
    answers = []
    for api in kmock_and_real:
        with api.api_client() as api_client:
            answers.append(normalized(api, case(api, client.CoreV1Api(api_client))))
    emulated, real = answers
    assert emulated == real


def test_the_recording_proxy_records_what_the_audit_log_does(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    # No audit log given: the namespace's kubeconfig goes through the proxy, as on `cluster`.
    with RealNamespace(control_plane.admin_kubeconfig, tmp_path, None, runs_pods=False) as real:
        # The path that makes every call there is (as in test_volume.py's permissions test):
        # the source pod and its Job are gone, the claim is found by its label.
        real.add_pvc("pvc-123", labels={"task-id": TASK})
        real.add_pod(OWN_POD, claims=["pvc-123"])
        run_cleanup_steps(real.kubeconfig, release_finalizer=True)
        proxied = real.calls
    audited = audited_calls(control_plane.audit_log, real.user)

    def shape(call: ApiCall) -> tuple[str, str, str, str | None, int]:
        return call.verb, call.group, call.resource, call.name, call.status

    assert [shape(c) for c in proxied] == [shape(c) for c in audited]
    assert {(c.group, c.resource, c.verb) for c in proxied} == {
        tuple(p) for p in PERMISSIONS if p not in LEDGER_PERMISSIONS
    }
    (proxied_delete,) = (c.body for c in proxied if c.verb == "delete")
    (audited_delete,) = (c.body for c in audited if c.verb == "delete")
    assert proxied_delete["preconditions"] == audited_delete["preconditions"]
