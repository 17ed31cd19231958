"""The task's volume: which PVC it is, and releasing it only when that is safe.

Takes cluster access (`kube.Cluster`), what the Job knows (task id, source pod, an explicit PVC
name) and the run's `Gate`; gives a `Volume` whose `locate()` runs before the harvest (recording
the PVC's UID), whose `release()` is the harvest's PVC step, and whose `record_outcome()` tells
the story as Kubernetes Events on the PVC (or the source pod). Every act (the delete, the
finalizer patch, the Events) asks the gate first and raises `GateClosed` before any request when
it is closed; only reads go to the cluster without it.

The PVC's name is never derived from the task id (`pvc-{taskId}` and `git-repo-pvc-{taskId}`
both exist, and child tasks reuse their parent's): it is taken from `--pvc`, the source pod's
volumes, the main Job's pod template, or the one PVC labelled `task-id=<taskId>`, in that order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from harvester.gate import Act, Gate
from harvester.kube.cluster import (
    PVC_PROTECTION,
    Cluster,
    DeleteResult,
    KubeError,
    PodInfo,
)
from harvester.model import ClaimMount, HarvestReport, StepResult, StepState
from harvester.stats import Level, Listener
from harvester.text import counts_sentence, plural

LIVE_PHASES = frozenset({"Pending", "Running"})


@dataclass(frozen=True, slots=True)
class VolumeOptions:
    task_id: str
    root: str
    source_pod: str | None = None
    pvc: str | None = None
    own_pod: str | None = None
    force_delete: bool = False
    release_finalizer: bool = False


@dataclass(frozen=True, slots=True)
class PvcTarget:
    """The PVC as it was before the harvest: its UID is what the delete must match."""

    name: str
    uid: str
    found_by: str


class VolumeNotFound(KubeError):
    """No PVC could be named for the task; the message says where it looked."""


class Volume:
    """Locates the task's PVC before the harvest and releases it after a complete one."""

    def __init__(
        self, cluster: Cluster, options: VolumeOptions, listener: Listener, *, gate: Gate
    ) -> None:
        self._cluster = cluster
        self._gate = gate
        self._options = options
        self._listener = listener
        self.target: PvcTarget | None = None
        self.problem: str | None = None

    def locate(self) -> PvcTarget | None:
        """Find the PVC and record its UID; a failure is kept for `release()` to report."""
        try:
            self.target = self._find()
        except KubeError as exc:
            self.problem = str(exc)
            self._listener.notice(Level.ERROR, f"PVC: {exc}")
            return None
        kept = self._gate.why_closed(Act.DELETE_PVC)
        fate = (
            "it is released only after a complete harvest"
            if kept is None
            else f"not released: {kept}"
        )
        self._listener.notice(
            Level.INFO,
            f"PVC {self.target.name} (uid {self.target.uid}) found by {self.target.found_by}; "
            + fate,
        )
        return self.target

    def release(self) -> StepResult:
        """Delete the PVC if it is still the one harvested, ours, and unused.

        Raises `GateClosed`, before any request, when the gate refuses the delete (or the
        finalizer's removal, when --release-pvc-finalizer asks for it): a release is never begun
        that could not be finished.
        """
        self._gate.check(Act.DELETE_PVC)
        if self._options.release_finalizer:
            self._gate.check(Act.RELEASE_FINALIZER)
        if self.problem is not None or self.target is None:
            return StepResult(StepState.FAILED, f"not deleted: {self.problem or 'not located'}")
        target, options = self.target, self._options
        name = f"PVC {target.name}"
        try:
            current = self._cluster.read_pvc(target.name)
            if current is None:
                return StepResult(StepState.DONE, f"{name} was already deleted")
            if current.uid != target.uid:
                return StepResult(
                    StepState.REFUSED,
                    f"{name} was recreated since the harvest began (uid {target.uid} became "
                    f"{current.uid}); the new claim was not deleted",
                )
            owner = current.labels.get("task-id")
            if owner is not None and owner != options.task_id and not options.force_delete:
                return StepResult(
                    StepState.REFUSED,
                    f"{name} belongs to task {owner} (label task-id={owner}), not to task "
                    f"{options.task_id}: a parent task's shared volume is not deleted "
                    "(--force-delete-pvc overrides)",
                )
            mounting = self._cluster.pods_using_claim(target.name)
            users = [
                pod for pod in mounting if pod.name != options.own_pod and pod.phase in LIVE_PHASES
            ]
            if users:
                listed = ", ".join(f"{pod.name} ({pod.phase})" for pod in users)
                return StepResult(
                    StepState.REFUSED,
                    f"{name} is still used by {listed}; not deleted while a live pod may write "
                    "to it (run the cleanup again once they have finished)",
                )
            deleted = self._cluster.delete_pvc(target.name, target.uid)
            if deleted is DeleteResult.ALREADY_GONE:
                return StepResult(StepState.DONE, f"{name} was already deleted")
            if deleted is DeleteResult.UID_CHANGED:
                return StepResult(
                    StepState.REFUSED,
                    f"{name} was replaced just before the delete (UID precondition failed); "
                    "the new claim was not deleted",
                )
            if options.release_finalizer and self._cluster.remove_pvc_protection(
                target.name, target.uid
            ):
                return StepResult(
                    StepState.DONE,
                    f"{name} deleted; {PVC_PROTECTION} removed (--release-pvc-finalizer)",
                )
            return StepResult(StepState.DONE, _deletion_requested(name, mounting, options.own_pod))
        except KubeError as exc:
            return StepResult(StepState.FAILED, f"{name} not deleted: {exc}")

    def record_outcome(self, report: HarvestReport) -> None:
        """Kubernetes Events that let `kubectl describe pvc` tell what happened. Failing to
        write one is a warning, never a failure of the harvest; a closed gate (a dry run) raises
        `GateClosed` before any request."""
        self._gate.check(Act.RECORD_EVENT)
        kind, name, uid = "PersistentVolumeClaim", None, None
        if self.target is not None:
            name, uid = self.target.name, self.target.uid
        elif self._options.source_pod:
            kind, name = "Pod", self._options.source_pod
        if name is None:
            return
        events: list[tuple[str, str, bool]] = []
        task = self._options.task_id
        if report.failures or report.auth_rejected or report.interrupted:
            events.append(
                (
                    "HarvestFailed",
                    f"task {task}: {plural(len(report.failures), 'document')} could not be "
                    "harvested; the volume is kept",
                    True,
                )
            )
        else:
            events.append(
                (
                    "HarvestSucceeded",
                    f"task {task}: {counts_sentence(report)}",
                    False,
                )
            )
        pvc = report.pvc
        if pvc.state is StepState.DONE:
            events.append(("DeletionRequested", pvc.message, False))
        elif pvc.state is StepState.REFUSED:
            events.append(("DeletionRefused", pvc.message, True))
        elif pvc.state is StepState.FAILED:
            events.append(("DeletionFailed", pvc.message, True))
        for reason, message, warning in events:
            problem = self._cluster.record_event(
                kind,
                name,
                uid,
                reason,
                message,
                warning=warning,
                reporting_instance=self._options.own_pod,
            )
            if problem is not None:
                self._listener.notice(Level.WARNING, f"Kubernetes Event not written: {problem}")
                return

    def _find(self) -> PvcTarget:
        options, cluster = self._options, self._cluster
        if options.pvc:
            pvc = cluster.read_pvc(options.pvc)
            if pvc is None:
                raise VolumeNotFound(
                    f"PVC {options.pvc} (--pvc) does not exist in namespace {cluster.namespace}"
                )
            return PvcTarget(pvc.name, pvc.uid, "--pvc")

        job_names = [f"keruta-job-{options.task_id}"]
        if options.source_pod:
            pod = cluster.read_pod(options.source_pod)
            if pod is not None:
                return self._claim_of(pod.claims, f"source pod {pod.name}")
            self._listener.notice(
                Level.WARNING,
                f"source pod {options.source_pod} no longer exists (removed by a TTL or "
                "evicted); looking for its Job instead",
            )
            job_of_pod = options.source_pod.rsplit("-", 1)[0]
            job_names = list(dict.fromkeys([job_of_pod, *job_names]))

        for job_name in job_names:
            job = cluster.read_job(job_name)
            if job is not None:
                return self._claim_of(job.claims, f"Job {job.name}")

        selector = f"task-id={options.task_id}"
        labelled = cluster.list_pvcs(selector)
        if len(labelled) == 1:
            return PvcTarget(labelled[0].name, labelled[0].uid, f"its label {selector}")
        looked = f"no Job {' or '.join(job_names)}"
        if options.source_pod:
            looked = f"source pod {options.source_pod} gone, " + looked
        if not labelled:
            raise VolumeNotFound(
                f"no PVC found for task {options.task_id} ({looked}, no PVC labelled "
                f"{selector}); pass --pvc NAME"
            )
        names = ", ".join(pvc.name for pvc in labelled)
        raise VolumeNotFound(
            f"several PVCs are labelled {selector} ({names}); pass --pvc NAME to choose"
        )

    def _claim_of(self, claims: Sequence[ClaimMount], where: str) -> PvcTarget:
        if not claims:
            raise VolumeNotFound(f"{where} mounts no PersistentVolumeClaim; pass --pvc NAME")
        chosen = claims[0] if len(claims) == 1 else claim_holding(claims, self._options.root)
        if chosen is None:
            listed = ", ".join(
                f"{c.claim} at {', '.join(c.mount_paths) or '(not mounted)'}" for c in claims
            )
            raise VolumeNotFound(
                f"{where} mounts several PVCs ({listed}) and none of them holds "
                f"{self._options.root}; pass --pvc NAME to choose"
            )
        pvc = self._cluster.read_pvc(chosen.claim)
        if pvc is None:
            raise VolumeNotFound(
                f"PVC {chosen.claim}, mounted by {where}, does not exist in namespace "
                f"{self._cluster.namespace}"
            )
        return PvcTarget(pvc.name, pvc.uid, where)


def claim_holding(claims: Sequence[ClaimMount], root: str) -> ClaimMount | None:
    """The claim whose mount path is the longest prefix of `root`, if exactly one is."""
    best: list[tuple[int, ClaimMount]] = []
    for claim in claims:
        for path in claim.mount_paths:
            trimmed = path.rstrip("/")
            if root == path or root.startswith(trimmed + "/"):
                best.append((len(trimmed), claim))
    if not best:
        return None
    best.sort(key=lambda pair: pair[0], reverse=True)
    if len(best) > 1 and best[0][0] == best[1][0] and best[0][1] != best[1][1]:
        return None
    return best[0][1]


def _deletion_requested(name: str, mounting: list[PodInfo], own_pod: str | None) -> str:
    # pvc-protection counts every scheduled pod that names the claim, finished ones included
    # (the main Job's Succeeded pods: keruta gives main Jobs no TTL), until the pod object is
    # deleted. Naming them tells the operator what keeps the volume allocated.
    if not mounting:
        return f"{name} deletion requested; no pod mounts it any more"
    holders = ", ".join(
        f"{pod.name} (this cleanup pod)" if pod.name == own_pod else f"{pod.name} ({pod.phase})"
        for pod in mounting
    )
    message = f"{name} deletion requested; it stays Terminating until these pods are deleted: "
    message += holders
    if any(pod.phase not in LIVE_PHASES for pod in mounting if pod.name != own_pod):
        message += (
            "; finished pods count too (delete them or their Job, or use --release-pvc-finalizer)"
        )
    return message
