"""The Kubernetes side of `harvester controller`: watching main Jobs and the controller's actions.

Takes cluster access (as `cluster.connect` does); gives a `JobsApi` whose `watch()` is a
`JobWatch`, an iterator of `MainJob`s (each listed Job, then each Job added or changed), and
whose actions are each one request: `create_job`, `record_on_job`, `succeeded_pod`,
`read_template`, `job_event`. Every request is one of `CONTROLLER_PERMISSIONS`; a refusal is a
`KubeError` naming the object, the API's answer and what to do (a 403 names the verb and the
resource the controller's Role lacks). Nothing here decides anything: the controller does, from
the current state of each Job it is given.
"""

from __future__ import annotations

import queue
import random
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from harvester.kube.cluster import (
    REQUEST_TIMEOUT,
    KubeError,
    ObjectRef,
    _claims,
    api_client_for,
    translate_error,
    unreachable_error,
    write_event,
)
from harvester.model import MainJob, TerminatingClaim
from harvester.retry import full_jitter
from harvester.settings import ClusterAccess

CONTROLLER_ROLE = "deploy/controller-role.yaml"
# Set by the job controller on every pod it makes since Kubernetes 1.27 (with the older
# `job-name`, which it still sets); every supported minor (1.29 up) has it.
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
# A watch request ends after this long (the server closes it) and is renewed from the last
# resourceVersion: short, so a stop is noticed within it even when no Job changes.
WATCH_SECONDS = 5
# The read timeout of a watch request: the server's own end plus a margin, so a connection that
# silently died is noticed too.
_WATCH_READ_MARGIN = 10.0
LIST_PAGE = 500  # Jobs per list page: a large list never sits in memory whole
BACKOFF_BASE = 0.5  # seconds; the first retry waits up to this, each next one up to twice more
BACKOFF_MAX = 30.0
# Answers after which the same request may succeed later: the watch backs off and resumes.
_TRANSIENT_STATUSES = frozenset({0, 408, 425, 429, 500, 502, 503, 504})
_GONE = 410


def connect(access: ClusterAccess, *, namespace: str | None = None) -> JobsApi:
    """The controller's API access: in-cluster in a pod, else the kubeconfig (as `cleanup`).
    `default_namespace` is what `cluster.connect` would use: `namespace`, the pod's own, the
    kubeconfig context's, then "default"."""
    api_client, default_namespace = api_client_for(access, namespace=namespace)
    return JobsApi(api_client, default_namespace=default_namespace)


def main_job(job: Any) -> MainJob:
    """A batch/v1 Job (the client's model) as the controller sees it."""
    meta, status = job.metadata, job.status
    conditions = (status.conditions if status else None) or []

    def holds(kind: str) -> bool:
        return any(c.type == kind and c.status == "True" for c in conditions)

    template = job.spec.template if job.spec else None
    return MainJob(
        namespace=meta.namespace,
        name=meta.name,
        uid=meta.uid,
        labels=dict(meta.labels or {}),
        annotations=dict(meta.annotations or {}),
        complete=holds("Complete"),
        failed=holds("Failed"),
        completed_at=status.completion_time if status else None,
        claims=_claims(template.spec if template else None),
    )


class JobsApi:
    """The requests `harvester controller` makes, across namespaces, in plain data."""

    def __init__(self, api_client: client.ApiClient, *, default_namespace: str = "default") -> None:
        self.default_namespace = default_namespace
        self._api_client = api_client
        self._core = client.CoreV1Api(api_client)
        self._batch = client.BatchV1Api(api_client)

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
        return JobWatch(self._api_client, selector, stop, namespaces=namespaces, **options)

    def create_job(self, namespace: str, manifest: Mapping[str, Any]) -> bool:
        """Create the Job: True when created, False when one of that name already exists (a
        409 AlreadyExists: someone, maybe this controller before a restart, made it)."""
        name = str(manifest.get("metadata", {}).get("name", ""))
        body: Any = dict(manifest)  # the client turns the manifest into its V1Job model
        try:
            self._batch.create_namespaced_job(namespace, body, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise self._refused(exc, "create", "jobs", name, namespace) from exc
        except HTTPError as exc:
            raise unreachable_error(self._api_client, exc) from exc
        return True

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
        try:
            self._batch.patch_namespaced_job(
                name,
                namespace,
                patch,
                _content_type="application/merge-patch+json",
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as exc:
            if exc.status == 404 or gone(exc):
                return False
            raise self._refused(exc, "patch", "jobs", name, namespace) from exc
        except HTTPError as exc:
            raise unreachable_error(self._api_client, exc) from exc
        return True

    def succeeded_pod(self, namespace: str, job_name: str) -> str | None:
        """The name of a pod of the Job in phase Succeeded (the newest, when several), or None.
        Found by the job controller's `batch.kubernetes.io/job-name` label; the phase is
        filtered by the server."""
        try:
            # From the API server's watch cache (resourceVersion 0): a consistent read waits
            # for that cache to catch up after every write, ~100 ms a Job. The Job is Complete
            # only after its pods ended, so the cache is current enough; a miss means
            # KERUTA_SOURCE_POD stays empty and the harvest finds the claim by KERUTA_PVC.
            answer = self._core.list_namespaced_pod(
                namespace,
                label_selector=f"{JOB_NAME_LABEL}={job_name}",
                field_selector="status.phase=Succeeded",
                resource_version="0",
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as exc:
            raise self._refused(
                exc, "list", "pods", f"{JOB_NAME_LABEL}={job_name}", namespace
            ) from exc
        except HTTPError as exc:
            raise unreachable_error(self._api_client, exc) from exc
        pods: list[Any] = [
            pod for pod in answer.items or [] if pod.status and pod.status.phase == "Succeeded"
        ]
        if not pods:
            return None
        newest = max(pods, key=lambda pod: (pod.metadata.creation_timestamp, pod.metadata.name))
        return str(newest.metadata.name)

    def read_template(self, namespace: str, name: str, key: str) -> str | None:
        """The text under `key` in ConfigMap `name`; None when the ConfigMap or the key is
        missing."""
        try:
            config_map = self._core.read_namespaced_config_map(
                name, namespace, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise self._refused(exc, "get", "configmaps", name, namespace) from exc
        except HTTPError as exc:
            raise unreachable_error(self._api_client, exc) from exc
        value = (config_map.data or {}).get(key)
        return None if value is None else str(value)

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
        for namespace in scopes:
            try:
                answer = (
                    self._core.list_namespaced_persistent_volume_claim(
                        namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT
                    )
                    if namespace is not None
                    else self._core.list_persistent_volume_claim_for_all_namespaces(
                        label_selector=selector, _request_timeout=REQUEST_TIMEOUT
                    )
                )
            except ApiException as exc:
                raise self._refused(
                    exc, "list", "persistentvolumeclaims", selector, namespace
                ) from exc
            except HTTPError as exc:
                raise unreachable_error(self._api_client, exc) from exc
            for claim in answer.items or []:
                meta: Any = claim.metadata
                if meta is not None and meta.deletion_timestamp is not None:
                    found.append(
                        TerminatingClaim(
                            str(meta.namespace),
                            str(meta.name),
                            str(meta.uid),
                            meta.deletion_timestamp,
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
            self._core, involved, reason, message, warning=warning, role=CONTROLLER_ROLE
        )

    @staticmethod
    def _refused(
        exc: ApiException, verb: str, resource: str, name: str, namespace: str | None
    ) -> KubeError:
        return translate_error(exc, verb, resource, name, namespace, role=CONTROLLER_ROLE)


class JobWatch:
    """List, then watch, the Jobs matching a label selector; iterating gives `MainJob`s.

    First each listed Job (a sync), then each Job added or modified, each as it is now; a
    DELETED event gives nothing (a Job that is gone needs nothing done, and every decision comes
    from a Job's current state). A Job can come more than once: after a relist, or unchanged
    after a reconnect. Across several namespaces there is one list and watch per namespace, each
    on its own thread; with `namespaces` None, one across all namespaces.

    Each watch request ends after `timeout_seconds` and is renewed from the last
    resourceVersion seen (bookmarks advance it too). 410 Gone (that resourceVersion is no
    longer served) lists again (`relists`). A connection error, a timeout, 429 or 5xx waits
    (exponential backoff with full jitter, `backoff_base` up to `backoff_max` seconds) and
    resumes from the last resourceVersion (`restarts`), telling `on_retry`. Any other refusal
    (401, 403...) is raised as a `KubeError`. Setting `stop` ends the iteration within about
    `timeout_seconds` (a backoff wait ends at once).

    `resource_version` starts by watching from there instead of listing first.
    """

    def __init__(
        self,
        api_client: client.ApiClient,
        selector: str,
        stop: threading.Event,
        *,
        namespaces: Sequence[str] | None = None,
        timeout_seconds: int = WATCH_SECONDS,
        backoff_base: float = BACKOFF_BASE,
        backoff_max: float = BACKOFF_MAX,
        sleep: Callable[[float], object] | None = None,
        rand: Callable[[], float] = random.random,
        on_retry: Callable[[KubeError, float], None] | None = None,
        resource_version: str | None = None,
    ) -> None:
        self._api_client = api_client
        self._stop = stop
        self._halt = threading.Event() if namespaces is not None and len(namespaces) > 1 else stop
        batch = client.BatchV1Api(api_client)
        scopes: list[str | None] = list(namespaces) if namespaces is not None else [None]
        self._scopes = [
            _ScopeWatch(
                batch,
                scope,
                selector,
                self._halt,
                timeout_seconds=timeout_seconds,
                backoff=(backoff_base, backoff_max),
                sleep=sleep,
                rand=rand,
                on_retry=on_retry,
                resource_version=resource_version,
                unreachable=lambda exc: unreachable_error(api_client, exc),
            )
            for scope in scopes
        ]

    @property
    def restarts(self) -> int:
        """Watches resumed after a connection error, a timeout, 429 or 5xx."""
        return sum(scope.restarts for scope in self._scopes)

    @property
    def relists(self) -> int:
        """Lists made again after 410 Gone (the first list of each namespace not counted)."""
        return sum(scope.relists for scope in self._scopes)

    def __iter__(self) -> Iterator[MainJob]:
        if len(self._scopes) == 1:
            yield from self._scopes[0].jobs()
            return
        yield from self._merged()

    def _merged(self) -> Iterator[MainJob]:
        # Bounded: a namespace whose Jobs are not consumed waits instead of filling memory.
        found: queue.Queue[MainJob | KubeError] = queue.Queue(maxsize=LIST_PAGE)
        halt = self._halt

        def pump(scope: _ScopeWatch) -> None:
            try:
                for item in scope.jobs():
                    _put(found, item, halt)
            except KubeError as exc:
                _put(found, exc, halt)

        threads = [
            threading.Thread(target=pump, args=(scope,), name=f"watch-{scope.where}", daemon=True)
            for scope in self._scopes
        ]
        for thread in threads:
            thread.start()
        try:
            while not self._stop.is_set():
                try:
                    item = found.get(timeout=0.2)
                except queue.Empty:
                    continue
                if isinstance(item, KubeError):
                    raise item
                yield item
        finally:
            halt.set()  # the namespaces' watches end with this iteration, however it ends


def _put(
    found: queue.Queue[MainJob | KubeError], item: MainJob | KubeError, halt: threading.Event
) -> None:
    while not halt.is_set():
        try:
            found.put(item, timeout=0.2)
            return
        except queue.Full:
            continue


class _Expired(Exception):
    """410 Gone: the resourceVersion (or a list's continue token) is no longer served."""


class _Transient(Exception):
    """The same request may succeed later."""

    def __init__(self, error: KubeError) -> None:
        super().__init__(str(error))
        self.error = error


class _ScopeWatch:
    """List and watch in one namespace (or all of them, `namespace` None)."""

    def __init__(
        self,
        batch: client.BatchV1Api,
        namespace: str | None,
        selector: str,
        halt: threading.Event,
        *,
        timeout_seconds: int,
        backoff: tuple[float, float],
        sleep: Callable[[float], object] | None,
        rand: Callable[[], float],
        on_retry: Callable[[KubeError, float], None] | None,
        resource_version: str | None,
        unreachable: Callable[[Exception], KubeError],
    ) -> None:
        self.namespace = namespace
        self.where = namespace if namespace is not None else "all-namespaces"
        self.restarts = 0
        self.relists = 0
        self.resource_version = resource_version
        self._batch = batch
        self._selector = selector
        self._halt = halt
        self._timeout_seconds = timeout_seconds
        self._backoff = backoff
        self._sleep = sleep if sleep is not None else halt.wait
        self._rand = rand
        self._on_retry = on_retry
        self._unreachable = unreachable
        self._watch = watch.Watch()  # type: ignore[no-untyped-call]

    def jobs(self) -> Iterator[MainJob]:
        failures = 0
        while not self._halt.is_set():
            try:
                if self.resource_version is None:
                    yield from self._list()
                yield from self._watch_once()
                failures = 0
            except _Expired:
                self.relists += 1
                self.resource_version = None
            except _Transient as transient:
                failures += 1
                self.restarts += 1
                delay = full_jitter(failures, *self._backoff, self._rand)
                if self._on_retry is not None:
                    self._on_retry(transient.error, delay)
                self._sleep(delay)

    def _list(self) -> Iterator[MainJob]:
        """Every matching Job, page by page; leaves the list's resourceVersion to watch from."""
        token: str | None = None
        while True:
            answer = self._request(
                "list",
                self._list_method,
                *self._args,
                label_selector=self._selector,
                limit=LIST_PAGE,
                _continue=token,
                _request_timeout=REQUEST_TIMEOUT,
            )
            for job in answer.items or []:
                yield main_job(job)
            token = answer.metadata._continue if answer.metadata else None
            if not token:
                self.resource_version = answer.metadata.resource_version
                return

    def _watch_once(self) -> Iterator[MainJob]:
        """One watch request, until the server ends it after `timeout_seconds` (or a stop)."""
        # A generator: the request is made, and can fail, at the first `next`.
        stream = self._watch.stream(  # type: ignore[no-untyped-call]
            self._list_method,
            *self._args,
            label_selector=self._selector,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=self._timeout_seconds,
            _request_timeout=(REQUEST_TIMEOUT[0], self._timeout_seconds + _WATCH_READ_MARGIN),
        )
        events = iter(stream)
        try:
            while True:
                event = self._request("watch", next, events, None)
                if event is None:
                    return
                # The Watch keeps the newest resourceVersion of every event, bookmarks too
                # (their object is only metadata); a resumed watch starts after it.
                self.resource_version = self._watch.resource_version or self.resource_version
                if event["type"] in ("ADDED", "MODIFIED"):
                    yield main_job(event["object"])
                if self._halt.is_set():
                    return
        finally:
            self._watch.stop()  # type: ignore[no-untyped-call]
            stream.close()

    @property
    def _list_method(self) -> Any:
        if self.namespace is None:
            return self._batch.list_job_for_all_namespaces
        return self._batch.list_namespaced_job

    @property
    def _args(self) -> tuple[str, ...]:
        return () if self.namespace is None else (self.namespace,)

    def _request(self, verb: str, method: Any, *args: Any, **kwargs: Any) -> Any:
        """Call `method`, translating failures: 410 `_Expired`, transient `_Transient`, any
        other refusal a `KubeError`."""
        try:
            return method(*args, **kwargs)
        except ApiException as exc:
            if exc.status == _GONE:
                raise _Expired from exc
            error = translate_error(exc, verb, "jobs", "", self.namespace, role=CONTROLLER_ROLE)
            if exc.status in _TRANSIENT_STATUSES:
                raise _Transient(error) from exc
            raise error from exc
        except (HTTPError, OSError) as exc:
            raise _Transient(self._unreachable(exc)) from exc
