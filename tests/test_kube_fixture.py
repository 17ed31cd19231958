"""The `kube` fixture answers the official `kubernetes` client as a real API server would.

Every test talks through a client loaded from the fixture's kubeconfig by the official loader:
nothing is patched, every call crosses a loopback socket.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from tests.kube_fixture import PVC_PROTECTION, FakeCluster, label_selector_matches

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
    assert kube.requests[-1].query == {}


def test_read_pod_gives_volumes_mounts_and_phase(kube: FakeCluster, core: client.CoreV1Api) -> None:
    uid = kube.add_pod(
        "task-123-main",
        claims=["pvc-123", "shared"],
        labels={"task-id": "123"},
        phase="Succeeded",
        mount_paths={"pvc-123": "/work"},
        sub_paths={"shared": "tasks/123"},
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
    mounts = {
        volumes[m.name]: (m.mount_path, m.sub_path)
        for m in pod.spec.containers[0].volume_mounts or []
    }
    assert mounts == {"pvc-123": ("/work", None), "shared": ("/mnt/shared", "tasks/123")}


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
    assert kube.requests[-1].path == f"/apis/batch/v1/namespaces/{NS}/jobs/task-123"


def test_list_filters_by_label_selector(kube: FakeCluster, core: client.CoreV1Api) -> None:
    kube.add_pvc("pvc-123", labels={"task-id": "123", "role": "work"})
    kube.add_pvc("pvc-456", labels={"task-id": "456", "role": "work"})
    kube.add_pvc("pvc-bare", labels={})

    def names(selector: str) -> list[str]:
        answer = core.list_namespaced_persistent_volume_claim(NS, label_selector=selector)
        assert isinstance(answer, client.V1PersistentVolumeClaimList)
        return names_of(answer)

    assert names("task-id=123") == ["pvc-123"]
    assert names("task-id==123,role=work") == ["pvc-123"]
    assert names("task-id=123,role=other") == []
    assert names("task-id!=123") == ["pvc-456", "pvc-bare"]
    assert names("task-id in (123, 456)") == ["pvc-123", "pvc-456"]
    assert names("task-id notin (123),role") == ["pvc-456"]
    assert names("!task-id") == ["pvc-bare"]
    assert names("") == ["pvc-123", "pvc-456", "pvc-bare"]
    assert kube.requests[-8].query == {"labelSelector": "task-id=123"}

    with pytest.raises(ApiException) as caught:
        names("task-id in 123")
    assert caught.value.status == 400
    assert status_of(caught.value)["reason"] == "BadRequest"


def test_list_pods_with_field_selector_and_all_namespaces(
    kube: FakeCluster, core: client.CoreV1Api
) -> None:
    kube.add_pod("running", claims=["c"], labels={"app": "x"}, phase="Running")
    kube.add_pod("done", claims=["c"], labels={"app": "x"}, phase="Succeeded")
    kube.add(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "elsewhere", "namespace": "other"},
            "spec": {"containers": [{"name": "c"}]},
        }
    )
    running = core.list_namespaced_pod(NS, field_selector="status.phase=Running")
    assert names_of(running) == ["running"]
    everywhere = core.list_pod_for_all_namespaces()
    assert sorted(names_of(everywhere)) == [
        "done",
        "elsewhere",
        "running",
    ]
    with pytest.raises(ApiException) as caught:
        core.list_namespaced_pod(NS, field_selector="spec.nope=1")
    assert caught.value.status == 400
    assert status_of(caught.value)["message"] == "field label not supported: spec.nope"


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


def test_delete_removes_an_unprotected_pvc_at_once(
    kube: FakeCluster, core: client.CoreV1Api
) -> None:
    uid = kube.add_pvc("pvc-123", labels={}, finalizers=())
    options = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid))
    core.delete_namespaced_persistent_volume_claim("pvc-123", NS, body=options)
    assert kube.get("persistentvolumeclaims", "pvc-123") is None
    assert core.list_namespaced_persistent_volume_claim(NS).items == []


def test_patches_treat_finalizers_as_the_api_server_does(
    kube: FakeCluster, core: client.CoreV1Api
) -> None:
    for name in ("strategic-empty", "strategic-null", "merge-empty", "strategic-directive"):
        kube.add_pvc(name, labels={})
    # A dict body goes as a strategic merge patch, where finalizers merge: [] removes nothing.
    core.patch_namespaced_persistent_volume_claim(
        "strategic-empty", NS, {"metadata": {"finalizers": []}}
    )
    core.patch_namespaced_persistent_volume_claim(
        "strategic-null", NS, {"metadata": {"finalizers": None}}
    )
    core.patch_namespaced_persistent_volume_claim(
        "merge-empty",
        NS,
        {"metadata": {"finalizers": []}},
        _content_type="application/merge-patch+json",
    )
    core.patch_namespaced_persistent_volume_claim(
        "strategic-directive",
        NS,
        {"metadata": {"$deleteFromPrimitiveList/finalizers": [PVC_PROTECTION]}},
    )

    def finalizers(name: str) -> list[str]:
        pvc = kube.get("persistentvolumeclaims", name)
        assert pvc is not None
        return list(pvc["metadata"].get("finalizers") or [])

    assert finalizers("strategic-empty") == [PVC_PROTECTION]
    assert finalizers("strategic-null") == []
    assert finalizers("merge-empty") == []
    assert finalizers("strategic-directive") == []
    assert [r.content_type for r in kube.requests if r.verb == "patch"] == [
        "application/strategic-merge-patch+json",
        "application/strategic-merge-patch+json",
        "application/merge-patch+json",
        "application/strategic-merge-patch+json",
    ]


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


def test_a_patch_bumps_the_resource_version_and_honours_a_stale_one(
    kube: FakeCluster, core: client.CoreV1Api
) -> None:
    kube.add_pvc("pvc-123", labels={})
    first = meta(core.read_namespaced_persistent_volume_claim("pvc-123", NS)).resource_version
    patched = core.patch_namespaced_persistent_volume_claim(
        "pvc-123", NS, {"metadata": {"labels": {"a": "b"}}}
    )
    assert meta(patched).labels == {"a": "b"}
    assert int(str(meta(patched).resource_version)) > int(str(first))
    with pytest.raises(ApiException) as caught:
        core.patch_namespaced_persistent_volume_claim(
            "pvc-123", NS, {"metadata": {"resourceVersion": first, "labels": {"a": "c"}}}
        )
    assert caught.value.status == 409


def test_dry_run_writes_are_answered_and_not_stored(
    kube: FakeCluster, core: client.CoreV1Api
) -> None:
    uid = kube.add_pvc("pvc-123", labels={})
    before = kube.get("persistentvolumeclaims", "pvc-123")
    options = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid))
    preview = core.delete_namespaced_persistent_volume_claim(
        "pvc-123", NS, body=options, dry_run="All"
    )
    assert meta(preview).deletion_timestamp is not None
    core.patch_namespaced_persistent_volume_claim(
        "pvc-123", NS, {"metadata": {"finalizers": None}}, dry_run="All"
    )
    assert kube.get("persistentvolumeclaims", "pvc-123") == before
    assert [r.query for r in kube.requests] == [{"dryRun": "All"}] * 2


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


def test_out_of_band_changes_show_in_the_next_read(
    kube: FakeCluster, core: client.CoreV1Api
) -> None:
    kube.add_pod("p", claims=["pvc-123"], labels={}, phase="Running")
    kube.update("pods", "p", {"status": {"phase": "Succeeded"}})
    pod = core.read_namespaced_pod("p", NS)
    assert pod.status is not None
    assert pod.status.phase == "Succeeded"
    kube.add_pvc("pvc-123", labels={})
    core.delete_namespaced_persistent_volume_claim("pvc-123", NS)
    assert kube.get("persistentvolumeclaims", "pvc-123") is not None  # terminating
    kube.release("persistentvolumeclaims", "pvc-123")  # the pvc-protection controller's part
    assert kube.get("persistentvolumeclaims", "pvc-123") is None
    kube.remove("pods", "p")
    assert core.list_namespaced_pod(NS).items == []


def test_watches_are_kmocks_and_see_the_fixtures_writes(
    kube: FakeCluster, core: client.CoreV1Api
) -> None:
    kube.add_pod("p", claims=[], labels={}, phase="Running")
    seen: list[tuple[str, str | None]] = []
    stream = watch.Watch()  # type: ignore[no-untyped-call]
    for event in stream.stream(  # type: ignore[no-untyped-call]
        core.list_namespaced_pod, NS, _request_timeout=5
    ):
        seen.append((event["type"], event["object"].status.phase))
        if len(seen) == 1:
            kube.update("pods", "p", {"status": {"phase": "Succeeded"}})
        else:
            stream.stop()  # type: ignore[no-untyped-call]
    assert seen == [("ADDED", "Running"), ("MODIFIED", "Succeeded")]
    assert kube.requests[-1].verb == "watch"


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

    kube.clear_faults()
    core.delete_namespaced_persistent_volume_claim("pvc-123", NS, body=options)


def test_fail_answers_a_status_a_number_of_times(kube: FakeCluster, core: client.CoreV1Api) -> None:
    kube.add_pod("p", claims=[], labels={})
    kube.fail("get", "pods", "p", status=500, times=1)
    with pytest.raises(ApiException) as caught:
        core.read_namespaced_pod("p", NS)
    assert caught.value.status == 500
    assert status_of(caught.value)["reason"] == "InternalError"
    assert meta(core.read_namespaced_pod("p", NS)).name == "p"

    # urllib3 itself retries an idempotent request answered 429/503 with Retry-After.
    kube.fail("list", "*", status=429, retry_after=0, times=1)
    assert meta(core.list_namespaced_pod(NS).items[0]).name == "p"
    assert [r.status for r in kube.requests if r.verb == "list"] == [429, 200]

    kube.fail("create", "events", status=429, retry_after=3)
    event = client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name="p."),
        involved_object=client.V1ObjectReference(kind="Pod", name="p"),
    )
    with pytest.raises(ApiException) as caught:
        core.create_namespaced_event(NS, event)
    assert caught.value.status == 429
    assert caught.value.headers is not None
    assert caught.value.headers["Retry-After"] == "3"
    assert status_of(caught.value)["details"]["retryAfterSeconds"] == 3

    with pytest.raises(ValueError, match="unknown verb"):
        kube.forbid("remove", "pods")


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
    listed = core.list_namespaced_event(NS, field_selector="involvedObject.name=pvc-123")
    assert [e.reason for e in listed.items] == ["Harvested"]


def test_requests_are_logged_with_their_bodies_and_answers(
    kube: FakeCluster, core: client.CoreV1Api
) -> None:
    uid = kube.add_pvc("pvc-123", labels={"task-id": "123"})
    core.list_namespaced_persistent_volume_claim(NS, label_selector="task-id=123")
    options = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid))
    core.delete_namespaced_persistent_volume_claim("pvc-123", NS, body=options)
    listed, deleted = kube.requests
    assert (listed.method, listed.verb, listed.resource, listed.status) == (
        "GET",
        "list",
        "persistentvolumeclaims",
        200,
    )
    assert listed.query == {"labelSelector": "task-id=123"}
    assert deleted.method == "DELETE"
    assert deleted.path == f"/api/v1/namespaces/{NS}/persistentvolumeclaims/pvc-123"
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
    assert kube.requests[-1].status == 401


def test_a_stopped_cluster_is_unreachable(kube: FakeCluster, core: client.CoreV1Api) -> None:
    kube.add_pod("p", claims=[], labels={})
    core.read_namespaced_pod("p", NS)
    kube.stop()
    with pytest.raises(HTTPError):  # urllib3's MaxRetryError: connection refused
        core.read_namespaced_pod("p", NS, _request_timeout=2)
    assert [r.status for r in kube.requests] == [200]


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("task-id=123", {"task-id": "123"}, True),
        ("task-id=123", {"task-id": "1234"}, False),
        ("task-id=123,role=work", {"task-id": "123"}, False),
        ("task-id!=123", {}, True),
        ("task-id in (1,123)", {"task-id": "123"}, True),
        ("task-id notin (1,123)", {}, True),
        ("task-id", {"task-id": ""}, True),
        ("!task-id", {"task-id": ""}, False),
        ("n>3", {"n": "4"}, True),
        ("n<3", {"n": "4"}, False),
        ("", {}, True),
    ],
)
def test_label_selectors(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert label_selector_matches(selector, labels) is expected
