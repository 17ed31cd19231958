"""The `kube` fixture answers the requests the harvester makes as a real API server would, and
refuses the rest.

Every test talks through a client loaded from the fixture's kubeconfig by the official loader:
nothing is patched, every call crosses a loopback socket. What a real API server answers to the
same requests, tests/test_kube_fidelity.py compares where the control plane is built.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from tests.kube_fixture import PVC_PROTECTION, FakeCluster

NS = "keruta"


@pytest.fixture
def api(kube: FakeCluster) -> Iterator[client.ApiClient]:
    with kube.api_client() as api_client:
        yield api_client


@pytest.fixture
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


def meta(obj: Any) -> client.V1ObjectMeta:
    """An answer's metadata, which the models type as optional."""
    assert isinstance(obj.metadata, client.V1ObjectMeta)
    return obj.metadata


def names_of(answer: Any) -> list[str]:
    return [str(meta(item).name) for item in answer.items]


def status_of(exc: ApiException) -> dict[str, Any]:
    body = json.loads(exc.body or "{}")
    assert body["kind"] == "Status"
    assert body["apiVersion"] == "v1"
    assert body["status"] == "Failure"
    assert body["code"] == exc.status
    return dict(body)


def test_the_kubeconfig_loads_into_a_fresh_configuration(kube: FakeCluster) -> None:
    configuration = client.Configuration()
    config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=str(kube.kubeconfig), client_configuration=configuration, persist_config=False
    )
    _contexts, active = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
        config_file=str(kube.kubeconfig)
    )
    assert configuration.host == kube.url
    assert configuration.host.startswith("http://127.0.0.1:")
    assert active["context"]["namespace"] == NS
    uid = kube.add_pod("p", claims=["c"], labels={})
    with client.ApiClient(configuration) as api_client:
        pod = client.CoreV1Api(api_client).read_namespaced_pod("p", NS)
    assert pod.metadata is not None
    assert meta(pod).uid == uid


def test_read_pod_gives_volumes_mounts_and_phase(kube: FakeCluster, core: client.CoreV1Api) -> None:
    uid = kube.add_pod(
        "task-123-main",
        claims=["pvc-123", "shared"],
        labels={"task-id": "123"},
        phase="Succeeded",
        mount_paths={"pvc-123": "/work"},
    )
    pod = core.read_namespaced_pod("task-123-main", NS)
    assert isinstance(pod, client.V1Pod)
    assert pod.metadata is not None and pod.spec is not None and pod.status is not None
    assert meta(pod).uid == uid
    assert meta(pod).labels == {"task-id": "123"}
    assert meta(pod).resource_version
    assert meta(pod).creation_timestamp is not None
    assert pod.status.phase == "Succeeded"
    volumes = {
        v.name: v.persistent_volume_claim.claim_name
        for v in pod.spec.volumes or []
        if v.persistent_volume_claim is not None
    }
    assert sorted(volumes.values()) == ["pvc-123", "shared"]
    mounts = {volumes[m.name]: m.mount_path for m in pod.spec.containers[0].volume_mounts or []}
    assert mounts == {"pvc-123": "/work", "shared": "/mnt/shared"}


def test_read_job_gives_its_pod_template(kube: FakeCluster, api: client.ApiClient) -> None:
    uid = kube.add_job("task-123", claims=["pvc-123"], labels={"task-id": "123"})
    job = client.BatchV1Api(api).read_namespaced_job("task-123", NS)
    assert isinstance(job, client.V1Job)
    assert job.metadata is not None and job.spec is not None and job.status is not None
    assert meta(job).uid == uid
    template_spec = job.spec.template.spec
    assert template_spec is not None
    assert [
        v.persistent_volume_claim.claim_name
        for v in template_spec.volumes or []
        if v.persistent_volume_claim
    ] == ["pvc-123"]
    assert [(c.type, c.status) for c in job.status.conditions or []] == [("Complete", "True")]
    assert kube.calls[-1].group == "batch"


def test_list_filters_by_label_selector(kube: FakeCluster, core: client.CoreV1Api) -> None:
    kube.add_pvc("pvc-123", labels={"task-id": "123", "role": "work"})
    kube.add_pvc("pvc-456", labels={"task-id": "456", "role": "work"})
    kube.add_pvc("pvc-bare", labels={})

    def names(selector: str) -> list[str]:
        answer = core.list_namespaced_persistent_volume_claim(NS, label_selector=selector)
        assert isinstance(answer, client.V1PersistentVolumeClaimList)
        return names_of(answer)

    assert names("task-id=123") == ["pvc-123"]
    assert names("task-id=123,role=work") == ["pvc-123"]
    assert names("task-id=123,role=other") == []
    assert names("") == ["pvc-123", "pvc-456", "pvc-bare"]

    with pytest.raises(ApiException) as caught:
        names("task-id in (123)")  # a form the harvester never sends
    assert caught.value.status == 400
    assert status_of(caught.value)["reason"] == "BadRequest"


def test_a_missing_object_is_a_404_status(core: client.CoreV1Api, api: client.ApiClient) -> None:
    with pytest.raises(ApiException) as caught:
        core.read_namespaced_persistent_volume_claim("nope", NS)
    assert caught.value.status == 404
    assert status_of(caught.value) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'persistentvolumeclaims "nope" not found',
        "reason": "NotFound",
        "details": {"name": "nope", "kind": "persistentvolumeclaims"},
        "code": 404,
    }
    with pytest.raises(ApiException) as caught:
        client.BatchV1Api(api).read_namespaced_job("nope", NS)
    assert status_of(caught.value)["message"] == 'jobs.batch "nope" not found'


def test_delete_with_another_uid_is_a_409_and_leaves_the_pvc(
    kube: FakeCluster, core: client.CoreV1Api
) -> None:
    uid = kube.add_pvc("pvc-123", labels={"task-id": "123"})
    options = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid="not-the-uid"))
    with pytest.raises(ApiException) as caught:
        core.delete_namespaced_persistent_volume_claim("pvc-123", NS, body=options)
    assert caught.value.status == 409
    status = status_of(caught.value)
    assert status["reason"] == "Conflict"
    assert status["message"] == (
        'Operation cannot be fulfilled on PersistentVolumeClaim "pvc-123": the UID in the '
        f"precondition (not-the-uid) does not match the UID in record ({uid}). The object might "
        "have been deleted and then recreated"
    )
    pvc = kube.get("persistentvolumeclaims", "pvc-123")
    assert pvc is not None
    assert "deletionTimestamp" not in pvc["metadata"]


def test_delete_leaves_a_protected_pvc_terminating_until_its_finalizer_goes(
    kube: FakeCluster, core: client.CoreV1Api
) -> None:
    uid = kube.add_pvc("pvc-123", labels={"task-id": "123"})
    options = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid))
    deleted = core.delete_namespaced_persistent_volume_claim("pvc-123", NS, body=options)
    assert meta(deleted).deletion_timestamp is not None
    assert meta(deleted).finalizers == [PVC_PROTECTION]

    terminating = core.read_namespaced_persistent_volume_claim("pvc-123", NS)
    assert meta(terminating).deletion_timestamp is not None
    again = core.delete_namespaced_persistent_volume_claim("pvc-123", NS, body=options)
    assert meta(again).deletion_timestamp == meta(terminating).deletion_timestamp

    # What harvester/kube.py sends: a JSON patch that tests the uid, then drops the finalizer.
    patch: list[dict[str, Any]] = [
        {"op": "test", "path": "/metadata/uid", "value": uid},
        {"op": "replace", "path": "/metadata/finalizers", "value": []},
    ]
    core.patch_namespaced_persistent_volume_claim(
        "pvc-123", NS, patch, _content_type="application/json-patch+json"
    )
    with pytest.raises(ApiException) as caught:
        core.read_namespaced_persistent_volume_claim("pvc-123", NS)
    assert caught.value.status == 404
    assert kube.get("persistentvolumeclaims", "pvc-123") is None
    with pytest.raises(ApiException) as caught:
        core.delete_namespaced_persistent_volume_claim("pvc-123", NS, body=options)
    assert caught.value.status == 404


def test_a_patch_that_fails_its_uid_test_is_a_422_and_changes_nothing(
    kube: FakeCluster, core: client.CoreV1Api
) -> None:
    kube.add_pvc("pvc-123", labels={})
    before = kube.get("persistentvolumeclaims", "pvc-123")
    patch: list[dict[str, Any]] = [
        {"op": "test", "path": "/metadata/uid", "value": "old-uid"},
        {"op": "replace", "path": "/metadata/finalizers", "value": []},
    ]
    with pytest.raises(ApiException) as caught:
        core.patch_namespaced_persistent_volume_claim(
            "pvc-123", NS, patch, _content_type="application/json-patch+json"
        )
    assert caught.value.status == 422
    assert status_of(caught.value)["reason"] == "Invalid"
    assert kube.get("persistentvolumeclaims", "pvc-123") == before


def test_a_recreated_pvc_refuses_the_old_uid(kube: FakeCluster, core: client.CoreV1Api) -> None:
    old_uid = kube.add_pvc("pvc-123", labels={"task-id": "123"})
    new_uid = kube.recreate("persistentvolumeclaims", "pvc-123")
    assert new_uid != old_uid
    pvc = core.read_namespaced_persistent_volume_claim("pvc-123", NS)
    assert meta(pvc).uid == new_uid
    assert meta(pvc).labels == {"task-id": "123"}
    stale = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=old_uid))
    with pytest.raises(ApiException) as caught:
        core.delete_namespaced_persistent_volume_claim("pvc-123", NS, body=stale)
    assert caught.value.status == 409
    fresh = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=new_uid))
    core.delete_namespaced_persistent_volume_claim("pvc-123", NS, body=fresh)


def test_forbid_answers_as_rbac_does_and_changes_nothing(
    kube: FakeCluster, core: client.CoreV1Api
) -> None:
    uid = kube.add_pvc("pvc-123", labels={})
    kube.forbid("delete", "persistentvolumeclaims")
    options = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid))
    with pytest.raises(ApiException) as caught:
        core.delete_namespaced_persistent_volume_claim("pvc-123", NS, body=options)
    assert caught.value.status == 403
    status = status_of(caught.value)
    assert status["reason"] == "Forbidden"
    assert status["message"] == (
        'persistentvolumeclaims "pvc-123" is forbidden: User '
        '"system:serviceaccount:keruta:keruta-harvester" cannot delete resource '
        '"persistentvolumeclaims" in API group "" in the namespace "keruta"'
    )
    assert status["details"] == {"name": "pvc-123", "kind": "persistentvolumeclaims"}
    pvc = core.read_namespaced_persistent_volume_claim("pvc-123", NS)  # reads still allowed
    assert meta(pvc).deletion_timestamp is None

    kube.forbid("get", "jobs")
    with pytest.raises(ApiException) as caught:
        client.BatchV1Api(core.api_client).read_namespaced_job("missing-too", NS)
    assert caught.value.status == 403  # RBAC answers before existence is known
    assert 'cannot get resource "jobs" in API group "batch"' in status_of(caught.value)["message"]

    with pytest.raises(ValueError, match="never asks"):
        kube.forbid("watch", "pods")


def test_created_events_are_kept(kube: FakeCluster, core: client.CoreV1Api) -> None:
    uid = kube.add_pvc("pvc-123", labels={})
    event = client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name="pvc-123.", namespace=NS),
        involved_object=client.V1ObjectReference(
            api_version="v1", kind="PersistentVolumeClaim", name="pvc-123", namespace=NS, uid=uid
        ),
        reason="Harvested",
        message="12 documents sent",
        type="Normal",
        source=client.V1EventSource(component="keruta-harvester"),
    )
    created = core.create_namespaced_event(NS, event)
    assert str(meta(created).name).startswith("pvc-123.")
    assert meta(created).uid
    [stored] = kube.events
    assert stored["metadata"]["name"] == meta(created).name
    assert stored["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "name": "pvc-123",
        "namespace": NS,
        "uid": uid,
    }
    assert (stored["reason"], stored["message"], stored["type"]) == (
        "Harvested",
        "12 documents sent",
        "Normal",
    )


def test_calls_are_logged_with_their_bodies_and_answers(
    kube: FakeCluster, core: client.CoreV1Api
) -> None:
    uid = kube.add_pvc("pvc-123", labels={"task-id": "123"})
    core.list_namespaced_persistent_volume_claim(NS, label_selector="task-id=123")
    options = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid))
    core.delete_namespaced_persistent_volume_claim("pvc-123", NS, body=options)
    listed, deleted = kube.calls
    assert (listed.verb, listed.group, listed.resource, listed.status) == (
        "list",
        "",
        "persistentvolumeclaims",
        200,
    )
    assert (deleted.verb, deleted.name, deleted.status) == ("delete", "pvc-123", 200)
    assert deleted.body["preconditions"] == {"uid": uid}


def test_a_wrong_token_is_a_401(kube: FakeCluster, tmp_path: Path) -> None:
    kubeconfig = json.loads(kube.kubeconfig.read_text(encoding="utf-8"))
    kubeconfig["users"][0]["user"]["token"] = "someone-else"
    (tmp_path / "kubeconfig").write_text(json.dumps(kubeconfig), encoding="utf-8")
    api_client = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(tmp_path / "kubeconfig"), persist_config=False
    )
    with api_client, pytest.raises(ApiException) as caught:
        client.CoreV1Api(api_client).list_namespaced_pod(NS)
    assert caught.value.status == 401
    assert status_of(caught.value)["reason"] == "Unauthorized"
    assert kube.calls[-1].status == 401


def test_what_the_harvester_never_asks_is_refused_not_emulated(
    kube: FakeCluster, core: client.CoreV1Api, api: client.ApiClient
) -> None:
    kube.add_pvc("pvc-123")
    kube.add_pod("p")

    def a_watch() -> object:
        stream = watch.Watch().stream  # type: ignore[no-untyped-call]
        return next(stream(core.list_namespaced_pod, NS, _request_timeout=5))  # type: ignore[no-untyped-call]

    refused: dict[str, tuple[Callable[[], object], int]] = {
        "a watch": (a_watch, 405),
        "a field selector": (
            lambda: core.list_namespaced_pod(NS, field_selector="status.phase=Running"),
            400,
        ),
        "all namespaces": (core.list_pod_for_all_namespaces, 405),
        "a strategic merge patch": (
            lambda: core.patch_namespaced_persistent_volume_claim(
                "pvc-123", NS, {"metadata": {"finalizers": None}}
            ),
            415,
        ),
        "a dry run": (
            lambda: core.delete_namespaced_persistent_volume_claim("pvc-123", NS, dry_run="All"),
            400,
        ),
        "a pod deleted": (lambda: core.delete_namespaced_pod("p", NS), 405),
        "a job list": (lambda: client.BatchV1Api(api).list_namespaced_job(NS), 405),
        "a pod created": (
            lambda: core.create_namespaced_pod(
                NS, client.V1Pod(metadata=client.V1ObjectMeta(name="q"))
            ),
            405,
        ),
    }
    for what, (call, status) in refused.items():
        with pytest.raises(ApiException) as caught:
            call()
        assert caught.value.status == status, what
        assert "not emulated" in status_of(caught.value)["message"], what
    pvc = kube.get("persistentvolumeclaims", "pvc-123")
    assert pvc is not None and pvc["metadata"]["finalizers"] == [PVC_PROTECTION]
    assert kube.get("pods", "p") is not None
