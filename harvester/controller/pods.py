"""The main Jobs' succeeded pods, from a watch: `KERUTA_SOURCE_POD` without a request per Job.

Takes the `Change`s of the watch on pods labelled `batch.kubernetes.io/job-name` in phase
Succeeded (`JobsApi.succeeded_pods_watch`); gives `SucceededPods.newest(namespace, job)`, the
newest succeeded pod of that Job, or None. The Job is Complete only after its pods ended, and
the pod's change is written before the Job's, so the watch has almost always shown the pod by
the time the Job's completion arrives; when it has not, KERUTA_SOURCE_POD stays empty and the
harvest finds the claim by KERUTA_PVC, which the controller always sets.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from harvester.controller.cache import WatchedObjects
from harvester.kube.jobs import JOB_NAME_LABEL
from harvester.kube.watch import Change


@dataclass(frozen=True, slots=True)
class _Pod:
    job: str
    created: str  # RFC 3339: sorts as it reads
    name: str


class SucceededPods:
    def __init__(self, scopes: int) -> None:
        self._pods = WatchedObjects(_pod_of, scopes, group=lambda pod: pod.job)

    @property
    def synced(self) -> threading.Event:
        return self._pods.synced

    def follow(self, changes: Iterable[Change]) -> None:
        self._pods.follow(changes)

    def take(self, change: Change) -> None:
        self._pods.take(change)

    def newest(self, namespace: str, job: str) -> str | None:
        pods = self._pods.group(namespace, job)
        return max(pods, key=lambda pod: (pod.created, pod.name)).name if pods else None


def _pod_of(pod: dict[str, Any]) -> _Pod:
    meta = pod.get("metadata") or {}
    return _Pod(
        job=str((meta.get("labels") or {}).get(JOB_NAME_LABEL, "")),
        created=str(meta.get("creationTimestamp", "")),
        name=str(meta.get("name", "")),
    )
