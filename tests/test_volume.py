"""Finding and releasing the task's PVC, through the official client, on every Kubernetes
backend (tests/kube_backends.py: kmock, the real control plane, an existing cluster). Each rule of
the design's PVC safety has a test here; on the real backends the harvester acts as deploy/'s
ServiceAccount, so each test also shows that its Role is enough for that path."""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

from harvester.devapi.server import DevApiServer
from harvester.gate import Gate, GateClosed
from harvester.kube.cluster import (
    LEDGER_PERMISSIONS,
    PERMISSIONS,
    PVC_PROTECTION,
    Cluster,
    DeleteResult,
    connect,
)
from harvester.kube.volume import Volume, VolumeOptions
from harvester.model import StepResult, StepState
from harvester.pipeline.mounts import holding_mount, mount_points, nearest_existing
from harvester.settings import ClusterAccess
from tests.fstree import write_tree
from tests.kube_backends import KubeApi
from tests.process import BIN, isolated_env
from tests.volume_support import (
    OPEN,
    OWN_POD,
    SOURCE_POD,
    TASK,
    Notices,
    complete_harvest,
    main_job_volume,
)

SHARED_MEMORY = "/dev/shm"
READS = frozenset({"get", "list"})


@pytest.fixture
def cluster(kube_api: KubeApi) -> Iterator[Cluster]:
    with kube_api.api_client() as api_client:
        yield Cluster(api_client, kube_api.namespace)


def volume(
    cluster: Cluster, notices: Notices | None = None, *, gate: Gate = OPEN, **options: object
) -> Volume:
    """A Volume with the cleanup Job's usual options, telling `notices` what it says."""
    values: dict[str, object] = {
        "task_id": TASK,
        "root": "/.keruta/doc",
        "source_pod": SOURCE_POD,
        "own_pod": OWN_POD,
    }
    values.update(options)
    return Volume(
        cluster,
        VolumeOptions(**values),  # type: ignore[arg-type]
        notices or Notices(),
        gate=gate,
    )


def deletes(kube_api: KubeApi) -> list[object]:
    return [call.body for call in kube_api.calls if call.verb == "delete"]


def writes(kube_api: KubeApi) -> list[str]:
    """Every request that changed something, as "verb resource"."""
    return [f"{call.verb} {call.resource}" for call in kube_api.calls if call.verb not in READS]


def test_the_pvc_is_found_from_the_source_pod_and_deleted_with_its_uid(
    kube_api: KubeApi, cluster: Cluster
) -> None:
    uid = main_job_volume(kube_api)
    vol = volume(cluster)
    target = vol.locate()
    assert target is not None
    assert (target.name, target.uid) == ("pvc-123", uid)
    assert target.found_by == f"source pod {SOURCE_POD}"

    result = vol.release()
    assert result.state is StepState.DONE, result.message
    # Not waited for: the message names what keeps it Terminating, the finished pod included.
    assert "Terminating until these pods are deleted" in result.message
    assert f"{SOURCE_POD} (Succeeded)" in result.message
    assert f"{OWN_POD} (this cleanup pod)" in result.message
    assert "finished pods count too" in result.message
    (body,) = deletes(kube_api)
    assert isinstance(body, dict)
    assert body["preconditions"] == {"uid": uid}
    # pvc-protection keeps it (our own pod still mounts it): deletion requested, not waited for.
    pvc = kube_api.get("persistentvolumeclaims", "pvc-123")
    assert pvc is not None and pvc["metadata"].get("deletionTimestamp")


def test_with_only_this_pod_on_the_claim_the_release_names_just_it(
    kube_api: KubeApi, cluster: Cluster
) -> None:
    kube_api.add_pvc("pvc-123", labels={"task-id": TASK})
    kube_api.add_pod(OWN_POD, claims=["pvc-123"])
    vol = volume(cluster, source_pod=None)
    vol.locate()
    result = vol.release()
    assert result.state is StepState.DONE, result.message
    assert result.message.endswith(f"until these pods are deleted: {OWN_POD} (this cleanup pod)")


def test_with_several_claims_the_one_holding_the_root_is_chosen(
    kube_api: KubeApi, cluster: Cluster
) -> None:
    kube_api.add_pvc("cache-123")
    uid = kube_api.add_pvc("pvc-123")
    kube_api.add_pod(
        SOURCE_POD,
        claims=["cache-123", "pvc-123"],
        mount_paths={"cache-123": "/cache", "pvc-123": "/.keruta"},
    )
    target = volume(cluster).locate()
    assert target is not None and (target.name, target.uid) == ("pvc-123", uid)


def test_several_claims_none_holding_the_root_is_a_clear_error(
    kube_api: KubeApi, cluster: Cluster
) -> None:
    kube_api.add_pvc("a")
    kube_api.add_pvc("b")
    kube_api.add_pod(SOURCE_POD, claims=["a", "b"], mount_paths={"a": "/a", "b": "/b"})
    vol = volume(cluster)
    assert vol.locate() is None
    assert vol.problem is not None
    assert "several PVCs (a at /a, b at /b)" in vol.problem
    assert "--pvc" in vol.problem
    failed = vol.release()
    assert failed.state is StepState.FAILED
    assert deletes(kube_api) == []


def test_source_pod_gone_falls_back_to_its_job(kube_api: KubeApi, cluster: Cluster) -> None:
    uid = kube_api.add_pvc("git-repo-pvc-123")
    kube_api.add_job(
        "keruta-job-123", claims=["git-repo-pvc-123"], mount_paths={"git-repo-pvc-123": "/"}
    )
    notices = Notices()
    target = volume(cluster, notices).locate()
    assert target is not None and (target.name, target.uid) == ("git-repo-pvc-123", uid)
    assert target.found_by == "Job keruta-job-123"
    assert any("no longer exists" in text for _level, text in notices.lines)


def test_pod_and_job_gone_falls_back_to_the_one_labelled_pvc(
    kube_api: KubeApi, cluster: Cluster
) -> None:
    uid = kube_api.add_pvc("pvc-123", labels={"task-id": TASK})
    kube_api.add_pvc("pvc-999", labels={"task-id": "999"})
    target = volume(cluster).locate()
    assert target is not None and (target.name, target.uid) == ("pvc-123", uid)


def test_nothing_to_go_on_names_where_it_looked(kube_api: KubeApi, cluster: Cluster) -> None:
    kube_api.add_pvc("x-1", labels={"task-id": TASK})
    kube_api.add_pvc("x-2", labels={"task-id": TASK})
    vol = volume(cluster)
    assert vol.locate() is None
    assert vol.problem is not None and "several PVCs are labelled task-id=123" in vol.problem
    vol = volume(cluster, task_id="777", source_pod=None)
    assert vol.locate() is None
    assert vol.problem is not None
    assert "no PVC found for task 777" in vol.problem and "--pvc" in vol.problem


def test_explicit_pvc_flag_wins(kube_api: KubeApi, cluster: Cluster) -> None:
    main_job_volume(kube_api)
    uid = kube_api.add_pvc("chosen")
    target = volume(cluster, pvc="chosen").locate()
    assert target is not None and (target.name, target.uid, target.found_by) == (
        "chosen",
        uid,
        "--pvc",
    )
    vol = volume(cluster, pvc="missing")
    assert vol.locate() is None
    assert vol.problem == f"PVC missing (--pvc) does not exist in namespace {kube_api.namespace}"


def test_a_pvc_recreated_between_locate_and_release_is_not_deleted(
    kube_api: KubeApi, cluster: Cluster
) -> None:
    main_job_volume(kube_api)
    vol = volume(cluster)
    vol.locate()
    new_uid = kube_api.recreate("persistentvolumeclaims", "pvc-123")
    result = vol.release()
    assert result.state is StepState.REFUSED
    assert new_uid in result.message
    assert deletes(kube_api) == []
    assert kube_api.get("persistentvolumeclaims", "pvc-123") is not None


def test_the_uid_precondition_itself_protects_a_replaced_pvc(
    kube_api: KubeApi, cluster: Cluster
) -> None:
    uid = main_job_volume(kube_api)
    # The server, not our re-read, must refuse: delete by the old UID after a recreate.
    kube_api.recreate("persistentvolumeclaims", "pvc-123")
    assert cluster.delete_pvc("pvc-123", uid) is DeleteResult.UID_CHANGED
    assert kube_api.get("persistentvolumeclaims", "pvc-123") is not None


def test_another_tasks_pvc_is_refused_unless_forced(kube_api: KubeApi, cluster: Cluster) -> None:
    kube_api.add_pvc("pvc-parent", labels={"task-id": "100"})
    kube_api.add_pod(SOURCE_POD, claims=["pvc-parent"], phase="Succeeded")
    vol = volume(cluster)
    vol.locate()
    refused = vol.release()
    assert refused.state is StepState.REFUSED
    assert "belongs to task 100" in refused.message
    assert "--force-delete-pvc" in refused.message
    assert deletes(kube_api) == []

    forced = volume(cluster, force_delete=True)
    forced.locate()
    assert forced.release().state is StepState.DONE
    assert len(deletes(kube_api)) == 1


@pytest.mark.parametrize("phase", ["Running", "Pending"])
def test_a_live_pod_using_the_pvc_blocks_the_delete(
    kube_api: KubeApi, cluster: Cluster, phase: str
) -> None:
    main_job_volume(kube_api)
    kube_api.add_pod("debug-shell", claims=["pvc-123"], phase=phase)
    kube_api.add_pod("keruta-job-123-older", claims=["pvc-123"], phase="Failed")
    vol = volume(cluster)
    vol.locate()
    result = vol.release()
    assert result.state is StepState.REFUSED
    assert f"debug-shell ({phase})" in result.message
    assert "keruta-job-123-older" not in result.message  # finished pods do not count
    assert OWN_POD not in result.message  # nor does this cleanup pod
    assert deletes(kube_api) == []


def test_404_on_delete_counts_as_already_deleted(kube_api: KubeApi, cluster: Cluster) -> None:
    main_job_volume(kube_api)
    vol = volume(cluster)
    vol.locate()
    kube_api.remove("persistentvolumeclaims", "pvc-123")
    result = vol.release()
    assert result.state is StepState.DONE
    assert "already deleted" in result.message


def test_403_names_the_missing_rbac_verb(kube_api: KubeApi, cluster: Cluster) -> None:
    main_job_volume(kube_api)
    kube_api.forbid("delete", "persistentvolumeclaims")
    vol = volume(cluster)
    vol.locate()
    result = vol.release()
    assert result.state is StepState.FAILED
    assert 'verb "delete" on "persistentvolumeclaims"' in result.message
    assert "deploy/role.yaml" in result.message


def test_403_while_locating_fails_the_pvc_step_not_the_harvest(
    kube_api: KubeApi, cluster: Cluster
) -> None:
    main_job_volume(kube_api)
    kube_api.forbid("get", "pods")
    vol = volume(cluster)
    assert vol.locate() is None
    assert vol.problem is not None and 'verb "get" on "pods"' in vol.problem
    assert vol.release().state is StepState.FAILED


def test_release_finalizer_drops_pvc_protection_after_the_delete(
    kube_api: KubeApi, cluster: Cluster
) -> None:
    main_job_volume(kube_api)
    vol = volume(cluster, release_finalizer=True)
    vol.locate()
    result = vol.release()
    assert result.state is StepState.DONE
    assert PVC_PROTECTION in result.message
    # With its only finalizer gone, the terminating claim disappears.
    assert kube_api.get("persistentvolumeclaims", "pvc-123") is None


def test_events_tell_the_story_on_the_pvc(kube_api: KubeApi, cluster: Cluster) -> None:
    uid = main_job_volume(kube_api)
    vol = volume(cluster)
    vol.locate()
    report = complete_harvest(pvc=vol.release())
    vol.record_outcome(report)
    reasons = [(e["reason"], e["type"], e["involvedObject"]["uid"]) for e in kube_api.events]
    assert reasons == [
        ("HarvestSucceeded", "Normal", uid),
        ("DeletionRequested", "Normal", uid),
    ]
    assert all(e["involvedObject"]["kind"] == "PersistentVolumeClaim" for e in kube_api.events)


def test_failing_to_write_an_event_never_fails_the_harvest(
    kube_api: KubeApi, cluster: Cluster
) -> None:
    main_job_volume(kube_api)
    kube_api.forbid("create", "events")
    notices = Notices()
    vol = volume(cluster, notices)
    vol.locate()
    vol.record_outcome(complete_harvest(pvc=StepResult(StepState.REFUSED, "in use")))
    assert any("Event not written" in text for _level, text in notices.lines)


# ---------------------------------------------------------------- the gate: nothing acts past it


def test_a_dry_run_volume_refuses_every_act_before_any_request(
    kube_api: KubeApi, cluster: Cluster
) -> None:
    """A dry run changes nothing, Events included: the delete, the finalizer patch and the
    Events each raise `GateClosed`, whatever code path would call them."""
    uid = main_job_volume(kube_api)
    vol = volume(cluster, gate=Gate(dry_run=True), release_finalizer=True)
    assert vol.locate() is not None  # reads change nothing: they do not pass the gate
    with pytest.raises(GateClosed, match="delete the PVC: dry run"):
        vol.release()
    with pytest.raises(GateClosed, match="record a Kubernetes Event: dry run"):
        vol.record_outcome(complete_harvest(pvc=StepResult(StepState.DONE, "deleted")))
    assert writes(kube_api) == []
    assert kube_api.events == []
    pvc = kube_api.get("persistentvolumeclaims", "pvc-123")
    assert pvc is not None and pvc["metadata"]["uid"] == uid
    assert PVC_PROTECTION in pvc["metadata"]["finalizers"]


@pytest.mark.parametrize("release_finalizer", [False, True])
def test_a_kept_pvc_is_neither_deleted_nor_unprotected_yet_the_events_are_written(
    kube_api: KubeApi, cluster: Cluster, release_finalizer: bool
) -> None:
    """--keep-pvc closes the delete and the finalizer patch; Events stay open (they are records
    for `kubectl describe pvc` and change nothing about the volume)."""
    uid = main_job_volume(kube_api)
    vol = volume(cluster, gate=Gate(keep_pvc=True), release_finalizer=release_finalizer)
    vol.locate()
    with pytest.raises(GateClosed, match=r"kept \(--keep-pvc\)"):
        vol.release()
    assert writes(kube_api) == []
    pvc = kube_api.get("persistentvolumeclaims", "pvc-123")
    assert pvc is not None and pvc["metadata"]["uid"] == uid
    assert PVC_PROTECTION in pvc["metadata"]["finalizers"]

    vol.record_outcome(complete_harvest(pvc=StepResult(StepState.SKIPPED, "kept (--keep-pvc)")))
    assert [e["reason"] for e in kube_api.events] == ["HarvestSucceeded"]
    assert writes(kube_api) == ["create events"]


def test_namespace_comes_from_the_kubeconfig_context(kube_api: KubeApi) -> None:
    access = ClusterAccess(kubeconfig=str(kube_api.kubeconfig))
    with connect(access) as found:
        assert found.namespace == kube_api.namespace
    with connect(access, namespace="other") as chosen:
        assert chosen.namespace == "other"


# ---------------------------------------------------------------- the whole cleanup, end to end


def cleanup(
    kube_api: KubeApi, dev_api: DevApiServer, root: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    env = isolated_env() | {"KUBECONFIG": str(kube_api.kubeconfig), "POD_NAME": OWN_POD}
    return subprocess.run(
        [
            str(BIN / "keruta-agent"),
            "cleanup",
            "--task-id",
            TASK,
            "--api-url",
            dev_api.url,
            "--source-pod",
            SOURCE_POD,
            f"--root={root}",
            "--log-format=json",
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def summary_of(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    last = json.loads(result.stdout.splitlines()[-1])
    assert last["event"] == "summary"
    return dict(last)


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "doc", {"a.md": "a", "b/c.md": "c"})


def test_a_complete_cleanup_deletes_the_pvc(
    kube_api: KubeApi, dev_api: DevApiServer, docs: Path
) -> None:
    uid = main_job_volume(kube_api)
    result = cleanup(kube_api, dev_api, docs)
    assert result.returncode == 0, result.stdout + result.stderr
    pvc = summary_of(result)["pvc"]
    assert isinstance(pvc, dict) and pvc["state"] == "done"
    (body,) = deletes(kube_api)
    assert isinstance(body, dict) and body["preconditions"] == {"uid": uid}
    assert [e["reason"] for e in kube_api.events] == ["HarvestSucceeded", "DeletionRequested"]


def test_keep_pvc_deletes_nothing(kube_api: KubeApi, dev_api: DevApiServer, docs: Path) -> None:
    main_job_volume(kube_api)
    result = cleanup(kube_api, dev_api, docs, "--keep-pvc")
    assert result.returncode == 0, result.stderr
    assert deletes(kube_api) == []
    assert len(dev_api.store.documents(TASK)) == 2
    assert [e["reason"] for e in kube_api.events] == ["HarvestSucceeded"]


def test_a_dry_run_only_reads_the_ledger_and_with_no_ledger_asks_nothing(
    kube_api: KubeApi, dev_api: DevApiServer, docs: Path
) -> None:
    main_job_volume(kube_api)
    result = cleanup(kube_api, dev_api, docs, "--dry-run", "--no-ledger")
    assert result.returncode == 0, result.stderr
    assert kube_api.calls == []
    # The ledger is read (a read is not an act): the claim is located to know which ledger.
    result = cleanup(kube_api, dev_api, docs, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert [(c.verb, c.resource) for c in kube_api.calls] == [
        ("get", "pods"),
        ("get", "persistentvolumeclaims"),
        ("list", "configmaps"),
    ]
    assert kube_api.events == []
    assert dev_api.store.task(TASK) is None


def test_a_failed_upload_deletes_nothing(kube_api: KubeApi, docs: Path, tmp_path: Path) -> None:
    main_job_volume(kube_api)
    # An API that accepts nothing: every upload is rejected with 400.
    with HTTPServer() as server:
        server.expect_request("/api/tasks/123/documents", method="POST").respond_with_data(
            "no", status=400
        )
        server.expect_request("/api/v1/tasks/123/status").respond_with_json({})
        env = isolated_env() | {"KUBECONFIG": str(kube_api.kubeconfig), "POD_NAME": OWN_POD}
        result = subprocess.run(
            [
                str(BIN / "harvester"),
                "cleanup",
                "--task-id=123",
                f"--api-url={server.url_for('/')}",
                f"--source-pod={SOURCE_POD}",
                f"--root={docs}",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 3, result.stderr
    assert deletes(kube_api) == []
    assert [e["reason"] for e in kube_api.events] == ["HarvestFailed"]


def test_a_failed_status_update_deletes_nothing(
    kube_api: KubeApi, dev_api: DevApiServer, docs: Path
) -> None:
    main_job_volume(kube_api)
    result = cleanup(kube_api, dev_api, docs, "--status-path=/nope/{taskId}", "--retries=0")
    assert result.returncode == 4, result.stderr
    assert deletes(kube_api) == []


def test_a_refused_delete_exits_5_after_the_harvest_is_done(
    kube_api: KubeApi, dev_api: DevApiServer, docs: Path
) -> None:
    main_job_volume(kube_api, pvc_labels={"task-id": "100"})
    result = cleanup(kube_api, dev_api, docs)
    assert result.returncode == 5, result.stderr
    assert len(dev_api.store.documents(TASK)) == 2
    task = dev_api.store.task(TASK)
    assert task is not None and task.status == "COMPLETED"
    assert [e["reason"] for e in kube_api.events] == ["HarvestSucceeded", "DeletionRefused"]


def test_a_missing_root_off_any_volume_keeps_the_status_and_the_volume(
    kube_api: KubeApi, dev_api: DevApiServer, tmp_path: Path
) -> None:
    """A mistyped --root, or a template without the volumeMount: the root is missing and no
    volume is mounted where it should be, so "no documents" must not release the volume."""
    main_job_volume(kube_api)
    root = tmp_path / "mistyped" / "doc"
    if holding_mount(nearest_existing(str(root)), mount_points()) != "/":
        pytest.skip("this machine's temporary folder is itself a mounted volume")
    result = cleanup(kube_api, dev_api, root)
    assert result.returncode == 2, result.stdout + result.stderr
    *_progress, last = (json.loads(line) for line in result.stdout.splitlines())
    assert last["event"] == "error"
    assert "does not exist, and no volume is mounted there" in last["message"]
    assert "Traceback" not in result.stderr
    assert deletes(kube_api) == []
    assert dev_api.store.task(TASK) is None


def test_a_missing_root_on_a_mounted_volume_means_no_documents(
    kube_api: KubeApi, dev_api: DevApiServer
) -> None:
    """The task wrote no documents: its volume is mounted (here /dev/shm, a tmpfs mount point
    standing in for the PVC), only the documents folder is absent."""
    if holding_mount(SHARED_MEMORY, mount_points()) != SHARED_MEMORY:
        pytest.skip(f"{SHARED_MEMORY} is not a mount point on this machine")
    main_job_volume(kube_api)
    with tempfile.TemporaryDirectory(dir=SHARED_MEMORY) as volume:
        result = cleanup(kube_api, dev_api, Path(volume) / "doc")
    assert result.returncode == 0, result.stdout + result.stderr
    task = dev_api.store.task(TASK)
    assert task is not None and task.status == "COMPLETED"
    assert "does not exist" in (task.message or "")
    assert len(deletes(kube_api)) == 1


def test_the_calls_made_are_exactly_the_declared_permissions(
    kube_api: KubeApi, cluster: Cluster
) -> None:
    """PERMISSIONS is what deploy/role.yaml grants (tests/test_deploy.py checks that side);
    this side checks that the code's real requests, over every path, are exactly those."""
    # The fallback path: source pod gone, Job gone, the labelled PVC; then a full release.
    kube_api.add_pvc("pvc-123", labels={"task-id": TASK})
    kube_api.add_pod(OWN_POD, claims=["pvc-123"])
    vol = volume(cluster, release_finalizer=True)
    vol.locate()
    vol.record_outcome(complete_harvest(pvc=vol.release()))
    used = {(call.group, call.resource, call.verb) for call in kube_api.calls}
    # The ledger's own calls are proven in tests/test_ledger.py.
    assert used == {tuple(p) for p in PERMISSIONS if p not in LEDGER_PERMISSIONS}
