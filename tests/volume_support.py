"""What the PVC tests on every Kubernetes backend share: the usual main Job's volume, a listener
that keeps the notices, the report of a complete harvest for `Volume.record_outcome`, and the
cleanup's Kubernetes steps run as a kubeconfig's identity."""

from __future__ import annotations

from pathlib import Path

from harvester.gate import Gate
from harvester.kube.cluster import connect
from harvester.kube.volume import Volume, VolumeOptions
from harvester.model import HarvestReport, StepResult, StepState
from harvester.settings import ClusterAccess
from harvester.stats import Level, NullListener
from tests.kube_backends import KubeApi

TASK = "123"
SOURCE_POD = "keruta-job-123-abcde"
OWN_POD = "cleanup-job-for-task-123-xyz"
# The gate of a cleanup that may act (no --dry-run, no --keep-pvc).
OPEN = Gate()


def main_job_volume(kube_api: KubeApi, *, pvc_labels: dict[str, str] | None = None) -> str:
    """The claim `pvc-123` of task 123, mounted at /.keruta by the main Job's finished pod and
    by this cleanup pod (running); returns the claim's uid."""
    uid = kube_api.add_pvc(
        "pvc-123", labels={"app": "keruta", "task-id": TASK} | (pvc_labels or {})
    )
    kube_api.add_pod(
        SOURCE_POD,
        claims=["pvc-123"],
        labels={"job-name": "keruta-job-123"},
        phase="Succeeded",
        mount_paths={"pvc-123": "/.keruta"},
    )
    kube_api.add_pod(OWN_POD, claims=["pvc-123"], phase="Running")
    return uid


class Notices(NullListener):
    """A listener that keeps every notice, for assertions."""

    def __init__(self) -> None:
        self.lines: list[tuple[Level, str]] = []

    def notice(self, level: Level, message: str) -> None:
        self.lines.append((level, message))


def complete_harvest(pvc: StepResult) -> HarvestReport:
    """The report of a harvest whose uploads and status update succeeded, with `pvc` as its
    PVC step."""
    return HarvestReport(
        task_id=TASK,
        root="/.keruta/doc",
        dry_run=False,
        files=(),
        elapsed_seconds=0.1,
        bytes_uploaded=0,
        status=StepResult(StepState.DONE, "set to COMPLETED"),
        pvc=pvc,
    )


def run_cleanup_steps(
    kubeconfig: Path, *, source_pod: str = SOURCE_POD, release_finalizer: bool = False
) -> tuple[Volume, StepResult, Notices]:
    """Locate, release and record, as the kubeconfig's identity."""
    notices = Notices()
    with connect(ClusterAccess(kubeconfig=str(kubeconfig))) as cluster:
        volume = Volume(
            cluster,
            VolumeOptions(
                task_id=TASK,
                root="/.keruta/doc",
                source_pod=source_pod,
                own_pod=OWN_POD,
                release_finalizer=release_finalizer,
            ),
            notices,
            gate=OPEN,
        )
        volume.locate()
        result = volume.release()
        volume.record_outcome(complete_harvest(result))
    return volume, result, notices
