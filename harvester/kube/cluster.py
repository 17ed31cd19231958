"""What a cleanup asks of Kubernetes, and what the whole `kube` package shares.

Takes cluster access (in-cluster config in a pod, else a kubeconfig) and a namespace; gives a
`Cluster` whose methods answer in plain dataclasses (`PodInfo`, `JobInfo`, `PvcInfo`) and whose
failures are `KubeError`s with a sentence naming the object, the API's answer and what to do.
No bytes of any document ever go through this module: it only finds, deletes and annotates.

Near 500 lines because the package's shared parts live here beside the cleanup's calls: the
connection (`api_client_for`), every RBAC permission table (`PERMISSIONS`, `LEDGER_`,
`WATCH_`, `CONTROLLER_PERMISSIONS`), the one translation of a refusal into a sentence, and the
Events every command writes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from urllib3.exceptions import HTTPError

from harvester.errors import ConfigError, HarvesterError
from harvester.kube.rest import REQUEST_TIMEOUT, JsonApi
from harvester.model import ClaimMount
from harvester.settings import KUBECONFIG_FIX, ClusterAccess
from harvester.text import cut

# An Event's message is capped by the API server at 1 KiB; a refusal's text is quoted from its
# status at most this long, enough for the server's sentence.
_EVENT_MESSAGE_BYTES = 1024
_STATUS_CHARS = 300


class Permission(NamedTuple):
    """One RBAC permission as a Role rule names it: API group, resource, verb."""

    api_group: str
    resource: str
    verb: str


# Every call the ledger of accepted uploads makes (kube/ledger.py): ConfigMaps owned by the PVC.
LEDGER_PERMISSIONS: tuple[Permission, ...] = (
    Permission("", "configmaps", "list"),  # read it: its shards, by the PVC-uid label
    Permission("", "configmaps", "get"),  # a shard again, after a conflict
    Permission("", "configmaps", "create"),  # a new shard
    Permission("", "configmaps", "patch"),  # append a batch (merge patch with resourceVersion)
)

# Every call `harvester watch` makes, as RBAC sees it: its PVC by --pvc (the ledger's owner),
# then the ledger. deploy/examples/main-job-with-watch.yaml's Role grants exactly these.
WATCH_PERMISSIONS: tuple[Permission, ...] = (
    Permission("", "persistentvolumeclaims", "get"),
    *LEDGER_PERMISSIONS,
)

# Every call a cleanup makes (this module and the ledger's), as RBAC sees it. deploy/'s Role
# must grant exactly these, and tests/test_deploy.py checks that it does: a new call here needs
# a new rule there.
PERMISSIONS: tuple[Permission, ...] = (
    Permission("", "pods", "get"),  # the source pod: which claim it mounts
    Permission("", "pods", "list"),  # live pods still using the claim before deleting it
    Permission("batch", "jobs", "get"),  # the main Job, when its pod is gone
    Permission("", "persistentvolumeclaims", "get"),  # the claim's UID and task-id label
    Permission("", "persistentvolumeclaims", "list"),  # by task-id label, when nothing else says
    Permission("", "persistentvolumeclaims", "delete"),  # the release itself
    Permission("", "persistentvolumeclaims", "patch"),  # --release-pvc-finalizer
    Permission("", "events", "create"),  # the story `kubectl describe pvc` tells
    *LEDGER_PERMISSIONS,
)

# Every call `harvester controller` makes (kube/jobs.py, kube/lease.py); deploy/'s controller
# Role grants exactly these.
CONTROLLER_ROLE = "deploy/controller-role.yaml"
CONTROLLER_PERMISSIONS: tuple[Permission, ...] = (
    Permission("batch", "jobs", "list"),  # the initial list
    Permission("batch", "jobs", "watch"),  # then the watch, resumed from its resourceVersion
    Permission("batch", "jobs", "create"),  # the cleanup Job
    Permission("batch", "jobs", "patch"),  # the record of the decision on the main Job
    Permission("", "pods", "list"),  # the Jobs' succeeded pods (KERUTA_SOURCE_POD), listed
    Permission("", "pods", "watch"),  # then watched
    Permission("", "configmaps", "list"),  # the cleanup Job template, listed by name
    Permission("", "configmaps", "watch"),  # then watched: a change applies to the next Job
    Permission("", "events", "create"),  # decisions, as Events on the main Job
    Permission("", "persistentvolumeclaims", "list"),  # claims stuck Terminating, reported
    Permission("coordination.k8s.io", "leases", "get"),  # leader election: who holds it
    Permission("coordination.k8s.io", "leases", "create"),  # the first replica makes it
    Permission("coordination.k8s.io", "leases", "update"),  # renew it, or take it over
)

PVC_PROTECTION = "kubernetes.io/pvc-protection"
IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
EVENT_SOURCE = "keruta-harvester"


class ObjectRef(NamedTuple):
    """The object an Event is about."""

    api_version: str
    kind: str
    namespace: str
    name: str
    uid: str | None


class KubeError(HarvesterError):
    """A Kubernetes request failed; the message says which object, why, and what to do."""


@dataclass(frozen=True, slots=True)
class PodInfo:
    name: str
    phase: str
    claims: tuple[ClaimMount, ...]


@dataclass(frozen=True, slots=True)
class JobInfo:
    name: str
    claims: tuple[ClaimMount, ...]


@dataclass(frozen=True, slots=True)
class PvcInfo:
    name: str
    uid: str
    labels: Mapping[str, str]
    finalizers: tuple[str, ...]


class DeleteResult(StrEnum):
    DELETED = "deleted"
    ALREADY_GONE = "already gone"
    UID_CHANGED = "uid changed"


def connect(access: ClusterAccess, *, namespace: str | None = None) -> Cluster:
    """Cluster access: in-cluster when running in a pod, else the kubeconfig.

    The namespace is, in order: `namespace` (--namespace / POD_NAMESPACE), the pod's own
    namespace file, the kubeconfig context's namespace, then "default". `access` must be
    `available`: without a cluster there is nothing to connect to, and the caller says so.
    """
    return Cluster(*api_client_for(access, namespace=namespace))


def api_client_for(
    access: ClusterAccess, *, namespace: str | None = None
) -> tuple[client.ApiClient, str]:
    """The official client's ApiClient for `access`, and the namespace `connect` would use."""
    configuration = client.Configuration()
    context_namespace: str | None = None
    try:
        if access.in_cluster:
            config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
            if namespace is None and IN_CLUSTER_NAMESPACE.is_file():
                namespace = IN_CLUSTER_NAMESPACE.read_text(encoding="utf-8").strip() or None
        else:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=access.kubeconfig,
                client_configuration=configuration,
                persist_config=False,
            )
            _contexts, active = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
                config_file=access.kubeconfig
            )
            context_namespace = (active or {}).get("context", {}).get("namespace")
    except ConfigException as exc:
        raise _unloadable(access, str(exc)) from exc
    except Exception as exc:
        # The client's loader parses any YAML and fails with whatever a malformed file makes it
        # hit (a YAML error, TypeError, KeyError...); its messages can quote the file, so only
        # the kind of problem is said.
        raise _unloadable(access, _load_problem(exc)) from exc
    configuration.retries = 2
    return client.ApiClient(configuration), namespace or context_namespace or "default"


def _unloadable(access: ClusterAccess, problem: str) -> ConfigError:
    if access.in_cluster:
        return ConfigError(
            f"in-cluster configuration: cannot be loaded ({problem}); check the pod's "
            "ServiceAccount token mount (automountServiceAccountToken)"
        )
    return ConfigError(
        f"KUBECONFIG {access.kubeconfig}: cannot be loaded ({problem}); {KUBECONFIG_FIX}"
    )


def _load_problem(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8"
    mark = getattr(exc, "problem_mark", None)  # PyYAML's parse errors carry where they are
    if mark is not None:
        return f"not valid YAML at line {mark.line + 1}"
    return "its content is not a kubeconfig"


class Cluster:
    """The namespaced Kubernetes calls a harvest makes, translated into plain data."""

    def __init__(self, api_client: client.ApiClient, namespace: str) -> None:
        self.namespace = namespace
        self._api_client = api_client
        self._core = client.CoreV1Api(api_client)
        self._batch = client.BatchV1Api(api_client)
        self._json = JsonApi(api_client)

    @property
    def rest(self) -> JsonApi:
        """Plain-JSON requests over the same connection (the ledger's, `kube.ledger`)."""
        return self._json

    def close(self) -> None:
        self._api_client.close()  # type: ignore[no-untyped-call]

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def read_pod(self, name: str) -> PodInfo | None:
        """The pod, or None when it does not exist (any more)."""
        pod = self._call("get", "pods", name, self._core.read_namespaced_pod, name, self.namespace)
        return None if pod is None else _pod_info(self._api_client, pod)

    def read_job(self, name: str) -> JobInfo | None:
        job = self._call("get", "jobs", name, self._batch.read_namespaced_job, name, self.namespace)
        if job is None:
            return None
        template = job.spec.template if job.spec else None
        return JobInfo(
            name=job.metadata.name,
            claims=_model_claims(self._api_client, template.spec if template else None),
        )

    def read_pvc(self, name: str) -> PvcInfo | None:
        pvc = self._call(
            "get",
            "persistentvolumeclaims",
            name,
            self._core.read_namespaced_persistent_volume_claim,
            name,
            self.namespace,
        )
        return None if pvc is None else _pvc_info(pvc)

    def list_pvcs(self, label_selector: str) -> list[PvcInfo]:
        answer = self._call(
            "list",
            "persistentvolumeclaims",
            label_selector,
            self._core.list_namespaced_persistent_volume_claim,
            self.namespace,
            label_selector=label_selector,
        )
        return [_pvc_info(item) for item in (answer.items if answer else [])]

    def pods_using_claim(self, claim: str) -> list[PodInfo]:
        """Every pod of the namespace that mounts `claim` (the API cannot filter by volume)."""
        answer = self._call("list", "pods", claim, self._core.list_namespaced_pod, self.namespace)
        pods = [_pod_info(self._api_client, item) for item in (answer.items if answer else [])]
        return [pod for pod in pods if any(mount.claim == claim for mount in pod.claims)]

    def delete_pvc(self, name: str, uid: str) -> DeleteResult:
        """Delete the claim only if it is still the object with `uid` (a UID precondition)."""
        options = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid))
        try:
            self._core.delete_namespaced_persistent_volume_claim(
                name, self.namespace, body=options, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as exc:
            if exc.status == 404:
                return DeleteResult.ALREADY_GONE
            if exc.status == 409:
                return DeleteResult.UID_CHANGED
            raise self._translate(exc, "delete", "persistentvolumeclaims", name) from exc
        except HTTPError as exc:
            raise self._unreachable(exc) from exc
        return DeleteResult.DELETED

    def remove_pvc_protection(self, name: str, uid: str) -> bool:
        """Drop `kubernetes.io/pvc-protection` from the claim; False when it is already gone.

        A JSON patch that first tests the UID, so a claim recreated under the same name is
        never touched, then rewrites the finalizers without the protection.
        """
        pvc = self.read_pvc(name)
        if pvc is None or pvc.uid != uid:
            return False
        remaining = [f for f in pvc.finalizers if f != PVC_PROTECTION]
        patch: list[dict[str, Any]] = [
            {"op": "test", "path": "/metadata/uid", "value": uid},
            {"op": "replace", "path": "/metadata/finalizers", "value": remaining},
        ]
        try:
            self._core.patch_namespaced_persistent_volume_claim(
                name,
                self.namespace,
                patch,
                _content_type="application/json-patch+json",
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as exc:
            if exc.status in (404, 409, 422):
                return False
            raise self._translate(exc, "patch", "persistentvolumeclaims", name) from exc
        except HTTPError as exc:
            raise self._unreachable(exc) from exc
        return True

    def record_event(
        self,
        kind: str,
        name: str,
        uid: str | None,
        reason: str,
        message: str,
        *,
        warning: bool = False,
        reporting_instance: str | None = None,
    ) -> str | None:
        """Write a core/v1 Event about an object. Returns None, or why it could not be written:
        an Event is a courtesy to the operator and must never fail a harvest."""
        reference = ObjectRef("v1", kind, self.namespace, name, uid)
        return write_event(
            self._json,
            reference,
            reason,
            message,
            warning=warning,
            reporting_instance=reporting_instance,
        )

    def _call(
        self, verb: str, resource: str, name: str, method: Any, *args: Any, **kwargs: Any
    ) -> Any:
        """One read; None for 404, a `KubeError` sentence for anything else."""
        try:
            return method(*args, _request_timeout=REQUEST_TIMEOUT, **kwargs)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise self._translate(exc, verb, resource, name) from exc
        except HTTPError as exc:
            raise self._unreachable(exc) from exc

    def _translate(self, exc: ApiException, verb: str, resource: str, name: str) -> KubeError:
        return translate_error(exc, verb, resource, name, self.namespace)

    def _unreachable(self, exc: Exception) -> KubeError:
        return unreachable_error(self._api_client, exc)


def translate_error(
    exc: ApiException,
    verb: str,
    resource: str,
    name: str,
    namespace: str | None,
    *,
    role: str = "deploy/role.yaml",
) -> KubeError:
    """A refused request as a sentence: the object, the answer, and for 401/403 what to fix.
    `namespace` None is a request across all namespaces; `role` is the file granting the rules."""
    where = f"in namespace {namespace}" if namespace is not None else "in all namespaces"
    what = f"{resource}/{name} {where}" if name else f"{resource} {where}"
    if exc.status == 403:
        group = _api_group(resource)
        return KubeError(
            f"{what}: {verb} forbidden by RBAC; the ServiceAccount's Role must grant verb "
            f'"{verb}" on "{resource}" in API group {group} (see {role})'
        )
    if exc.status == 401:
        return KubeError(
            f"{what}: the Kubernetes API rejected the credentials (401); check the "
            "ServiceAccount token or kubeconfig"
        )
    return KubeError(f"{what}: {verb} failed: {exc.status} {exc.reason}: {_status_message(exc)}")


def _api_group(resource: str) -> str:
    """The API group of `resource` as a Role rule names it, from the permissions declared above
    (so a lease is "coordination.k8s.io", not the core group)."""
    for permission in (*PERMISSIONS, *CONTROLLER_PERMISSIONS):
        if permission.resource == resource:
            return permission.api_group or '"" (core)'
    return '"" (core)'


def unreachable_error(api_client: client.ApiClient, exc: Exception) -> KubeError:
    host = api_client.configuration.host
    return KubeError(
        f"the Kubernetes API at {host} cannot be reached ({type(exc).__name__}); check the "
        "NetworkPolicy allows the API server"
    )


def write_event(
    api: JsonApi,
    involved: ObjectRef,
    reason: str,
    message: str,
    *,
    warning: bool = False,
    reporting_instance: str | None = None,
    role: str = "deploy/role.yaml",
) -> str | None:
    """Create a core/v1 Event about `involved` (in its namespace). Returns None, or why it
    could not be written: an Event is a courtesy to the operator and never fails its caller."""
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    event = {
        "metadata": {"generateName": f"{involved.name}.", "namespace": involved.namespace},
        "involvedObject": {
            "apiVersion": involved.api_version,
            "kind": involved.kind,
            "name": involved.name,
            "namespace": involved.namespace,
            **({"uid": involved.uid} if involved.uid else {}),
        },
        "reason": reason,
        "message": cut(message, _EVENT_MESSAGE_BYTES, in_bytes=True),
        "type": "Warning" if warning else "Normal",
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "source": {"component": EVENT_SOURCE},
        "reportingComponent": EVENT_SOURCE,
        "reportingInstance": reporting_instance or EVENT_SOURCE,
    }
    try:
        api.request("POST", f"/api/v1/namespaces/{involved.namespace}/events", body=event)
    except ApiException as exc:
        return str(
            translate_error(exc, "create", "events", involved.name, involved.namespace, role=role)
        )
    except HTTPError as exc:
        return str(unreachable_error(api.api_client, exc))
    return None


def _status_message(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or "")
    except (TypeError, ValueError):
        return cut(str(exc.body or "") or "no details", _STATUS_CHARS)
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return cut(str(body["message"]), _STATUS_CHARS)
    return cut(str(body), _STATUS_CHARS)


def claims_of(pod_spec: Mapping[str, Any] | None) -> tuple[ClaimMount, ...]:
    """The claims a pod spec (its JSON form) mounts, each with the mount paths of every
    container using it."""
    if not pod_spec:
        return ()
    volume_claims: dict[str, str] = {}
    for volume in pod_spec.get("volumes") or []:
        claim = volume.get("persistentVolumeClaim") or {}
        if claim.get("claimName"):
            volume_claims[volume["name"]] = claim["claimName"]
    paths: dict[str, list[str]] = {claim: [] for claim in volume_claims.values()}
    containers = [*(pod_spec.get("initContainers") or []), *(pod_spec.get("containers") or [])]
    for container in containers:
        for mount in container.get("volumeMounts") or []:
            if mount.get("name") in volume_claims:
                paths[volume_claims[mount["name"]]].append(mount["mountPath"])
    return tuple(ClaimMount(claim, tuple(sorted(set(p)))) for claim, p in paths.items())


def _model_claims(api_client: client.ApiClient, pod_spec: Any) -> tuple[ClaimMount, ...]:
    """`claims_of` a pod spec in the client's model."""
    return claims_of(api_client.sanitize_for_serialization(pod_spec) if pod_spec else None)  # type: ignore[no-untyped-call]


def _pod_info(api_client: client.ApiClient, pod: Any) -> PodInfo:
    return PodInfo(
        name=pod.metadata.name,
        phase=(pod.status.phase if pod.status else None) or "Unknown",
        claims=_model_claims(api_client, pod.spec),
    )


def _pvc_info(pvc: Any) -> PvcInfo:
    return PvcInfo(
        name=pvc.metadata.name,
        uid=pvc.metadata.uid,
        labels=dict(pvc.metadata.labels or {}),
        finalizers=tuple(pvc.metadata.finalizers or ()),
    )
