"""The Kubernetes side of `harvester controller`: watching main Jobs and the controller's actions.

Takes cluster access (as `cluster.connect` does); gives a `JobsApi` whose `watch()` is a
`JobWatch`, an iterator of `MainJob`s (each listed Job, then each Job added or changed), whose
`template_watch()` and `succeeded_pods_watch()` follow the template ConfigMap and the Jobs'
succeeded pods, and whose actions are each one request: `create_job`, `record_on_job`,
`set_job_ttl`, the Events. Every request is one of `CONTROLLER_PERMISSIONS`, made as plain JSON
(`kube.rest`); a refusal is a `KubeError` naming the object, the API's answer and what to do (a
403 names the verb and the resource the controller's Role lacks). Nothing here decides
anything: the controller does, from the current state of each Job it is given.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from functools import partial
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from harvester.kube.cluster import (
    CONTROLLER_ROLE,
    ObjectRef,
    api_client_for,
    claims_of,
    translate_error,
    unreachable_error,
    write_event,
)
from harvester.kube.rest import MERGE_PATCH, JsonApi
from harvester.kube.watch import (
    ADDED,
    CLAIMS,
    CONFIG_MAPS,
    JOBS,
    MODIFIED,
    PODS,
    ResourceWatch,
    Selector,
)
from harvester.model import MainJob, TerminatingClaim
from harvester.settings import ClusterAccess

# Set by the job controller on every pod it makes since Kubernetes 1.27 (with the older
# `job-name`, which it still sets); every supported minor (1.29 up) has it.
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"


def connect(access: ClusterAccess, *, namespace: str | None = None) -> JobsApi:
    """The controller's API access: in-cluster in a pod, else the kubeconfig (as `cleanup`).
    `default_namespace` is what `cluster.connect` would use: `namespace`, the pod's own, the
    kubeconfig context's, then "default"."""
    api_client, default_namespace = api_client_for(access, namespace=namespace)
    return JobsApi(api_client, default_namespace=default_namespace)


def parse_time(value: object) -> datetime | None:
    """An API timestamp (RFC 3339, "2026-11-29T20:00:00Z") as an aware datetime."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def main_job(job: Mapping[str, Any]) -> MainJob:
    """A batch/v1 Job (its JSON) as the controller sees it."""
    meta, status = job.get("metadata") or {}, job.get("status") or {}
    conditions = status.get("conditions") or []

    def holds(kind: str) -> bool:
        return any(c.get("type") == kind and c.get("status") == "True" for c in conditions)

    template = (job.get("spec") or {}).get("template") or {}
    return MainJob(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        labels=dict(meta.get("labels") or {}),
        annotations=dict(meta.get("annotations") or {}),
        complete=holds("Complete"),
        failed=holds("Failed"),
        completed_at=parse_time(status.get("completionTime")),
        claims=claims_of(template.get("spec")),
    )


class JobsApi:
    """The requests `harvester controller` makes, across namespaces, in plain data."""

    def __init__(self, api_client: client.ApiClient, *, default_namespace: str = "default") -> None:
        self.default_namespace = default_namespace
        self._api_client = api_client
        self._api = JsonApi(api_client)

    @property
    def api_client(self) -> client.ApiClient:
        """The connection, for the other users of this identity (leader election)."""
        return self._api_client

    def close(self) -> None:
        self._api_client.close()  # type: ignore[no-untyped-call]

    def __enter__(self) -> JobsApi:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def watch(
        self,
        selector: str,
        stop: threading.Event,
        *,
        namespaces: Sequence[str] | None = None,
        **options: Any,
    ) -> JobWatch:
        """Jobs matching `selector` in `namespaces` (None: all namespaces); see `JobWatch`."""
        return JobWatch(
            self._resource_watch(JOBS, Selector(labels=selector), stop, namespaces, options)
        )

    def template_watch(
        self,
        name: str,
        stop: threading.Event,
        *,
        namespaces: Sequence[str] | None = None,
        **options: Any,
    ) -> ResourceWatch:
        """The ConfigMap `name` in each of `namespaces` (None: in every namespace): listed,
        then each change to it, as `Change`s."""
        by_name = Selector(fields=f"metadata.name={name}")
        return self._resource_watch(CONFIG_MAPS, by_name, stop, namespaces, options)

    def succeeded_pods_watch(
        self,
        stop: threading.Event,
        *,
        namespaces: Sequence[str] | None = None,
        **options: Any,
    ) -> ResourceWatch:
        """The pods of Jobs (label `batch.kubernetes.io/job-name`) in phase Succeeded, in
        `namespaces` (None: all), as `Change`s: a pod that succeeds comes as ADDED."""
        succeeded = Selector(labels=JOB_NAME_LABEL, fields="status.phase=Succeeded")
        return self._resource_watch(PODS, succeeded, stop, namespaces, options)

    def _resource_watch(
        self,
        resource: Any,
        selector: Selector,
        stop: threading.Event,
        namespaces: Sequence[str] | None,
        options: dict[str, Any],
    ) -> ResourceWatch:
        return ResourceWatch(
            self._api,
            resource,
            selector,
            stop,
            namespaces=namespaces,
            unreachable=lambda exc: unreachable_error(self._api_client, exc),
            **options,
        )

    def create_job(self, namespace: str, manifest: Mapping[str, Any]) -> bool:
        """Create the Job: True when created, False when one of that name already exists (a
        409 AlreadyExists: someone, maybe this controller before a restart, made it)."""
        name = str(manifest.get("metadata", {}).get("name", ""))
        created = self._send(
            "create",
            "jobs",
            name,
            namespace,
            lambda: self._api.request("POST", JOBS.path(namespace), body=manifest),
            absent=lambda exc: exc.status == 409,
        )
        return created is not None

    def record_on_job(
        self, namespace: str, name: str, uid: str, annotations: Mapping[str, str | None]
    ) -> bool:
        """Merge `annotations` into the Job's (a None value removes that key), only if the Job
        is still the object with `uid`. True when recorded; False when the Job is gone or is
        another object under the same name now.

        A JSON merge patch carrying `metadata.uid`: the uid is immutable, so the server refuses
        (422) a patch whose uid is not the object's; the annotations map is merged key by key,
        so other writers' annotations stay, and it works on a Job that has none yet (a JSON
        patch `add` below a missing /metadata/annotations would fail)."""
        patch = {"metadata": {"uid": uid, "annotations": dict(annotations)}}
        return self._patch_job(
            namespace,
            name,
            patch,
            gone=lambda exc: exc.status == 422 and "metadata.uid" in str(exc.body),
        )

    def set_job_ttl(self, namespace: str, name: str, seconds: int) -> bool:
        """Give a finished Job a `ttlSecondsAfterFinished` (mutable once it finished), so the
        ttl-after-finished controller removes it and, through the garbage collector, its pods.
        True when set; False when the Job is gone."""
        return self._patch_job(namespace, name, {"spec": {"ttlSecondsAfterFinished": seconds}})

    def _patch_job(
        self,
        namespace: str,
        name: str,
        patch: dict[str, Any],
        *,
        gone: Callable[[ApiException], bool] = lambda _exc: False,
    ) -> bool:
        """A JSON merge patch of the Job: True when applied; False when the Job is not there
        (404), or not the one meant (`gone`)."""
        path = f"{JOBS.path(namespace)}/{name}"
        patched = self._send(
            "patch",
            "jobs",
            name,
            namespace,
            lambda: self._api.request("PATCH", path, body=patch, content_type=MERGE_PATCH),
            absent=lambda exc: exc.status == 404 or gone(exc),
        )
        return patched is not None

    def job_event(
        self, job: MainJob, reason: str, message: str, *, warning: bool = False
    ) -> str | None:
        """A core/v1 Event on the Job (`kubectl describe job` shows it). Returns None, or why it
        could not be written; it never fails the caller."""
        involved = ObjectRef("batch/v1", "Job", job.namespace, job.name, job.uid)
        return self._event(involved, reason, message, warning=warning)

    def terminating_claims(
        self, namespaces: Sequence[str] | None, selector: str
    ) -> list[TerminatingClaim]:
        """The claims matching `selector` (in `namespaces`, None: all) whose deletion was
        requested: pvc-protection keeps them while a pod object that used them exists."""
        scopes: list[str | None] = list(namespaces) if namespaces is not None else [None]
        found: list[TerminatingClaim] = []
        query = [("labelSelector", selector)]
        for namespace in scopes:
            listing = partial(self._api.request, "GET", CLAIMS.path(namespace), query=query)
            answer = self._send("list", CLAIMS.plural, selector, namespace, listing)
            for claim in (answer or {}).get("items") or []:
                meta = claim.get("metadata") or {}
                deleted = parse_time(meta.get("deletionTimestamp"))
                if deleted is not None:
                    found.append(
                        TerminatingClaim(
                            str(meta.get("namespace", "")),
                            str(meta.get("name", "")),
                            str(meta.get("uid", "")),
                            deleted,
                        )
                    )
        return found

    def claim_event(self, claim: TerminatingClaim, reason: str, message: str) -> str | None:
        """A Warning Event on the claim, like `job_event`."""
        involved = ObjectRef("v1", "PersistentVolumeClaim", claim.namespace, claim.name, claim.uid)
        return self._event(involved, reason, message, warning=True)

    def config_map_event(
        self, namespace: str, name: str, reason: str, message: str, *, warning: bool = True
    ) -> str | None:
        """A core/v1 Event on a ConfigMap (the template), like `job_event`."""
        involved = ObjectRef("v1", "ConfigMap", namespace, name, None)
        return self._event(involved, reason, message, warning=warning)

    def _event(
        self, involved: ObjectRef, reason: str, message: str, *, warning: bool
    ) -> str | None:
        return write_event(
            self._api, involved, reason, message, warning=warning, role=CONTROLLER_ROLE
        )

    def _send(
        self,
        verb: str,
        resource: str,
        name: str,
        namespace: str | None,
        request: Callable[[], dict[str, Any]],
        *,
        absent: Callable[[ApiException], bool] = lambda _exc: False,
    ) -> dict[str, Any] | None:
        """One request's answer; None when the API refused it in a way `absent` accepts (the
        object exists already, is gone...). Any other refusal is a `KubeError` naming the verb
        and resource; an unreachable API server, one saying so."""
        try:
            return request()
        except ApiException as exc:
            if absent(exc):
                return None
            raise translate_error(
                exc, verb, resource, name, namespace, role=CONTROLLER_ROLE
            ) from exc
        except HTTPError as exc:
            raise unreachable_error(self._api_client, exc) from exc


class JobWatch:
    """List, then watch, the Jobs matching a label selector; iterating gives `MainJob`s.

    First each listed Job (a sync), then each Job added or modified, each as it is now; a
    deleted Job gives nothing (a Job that is gone needs nothing done, and every decision comes
    from a Job's current state). A Job can come more than once: after a relist, or unchanged
    after a reconnect. How the list and watch resume, relist and back off: `kube.watch`.
    """

    def __init__(self, changes: ResourceWatch) -> None:
        self._changes = changes

    @property
    def restarts(self) -> int:
        """Watches resumed after a connection error, a timeout, 429 or 5xx."""
        return self._changes.restarts

    @property
    def relists(self) -> int:
        """Lists made again after 410 Gone (the first list of each namespace not counted)."""
        return self._changes.relists

    def __iter__(self) -> Iterator[MainJob]:
        for change in self._changes:
            if change.kind in (ADDED, MODIFIED):
                yield main_job(change.obj)
