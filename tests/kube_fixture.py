"""A fake Kubernetes API server on a real loopback socket, serving what the harvester calls.

Gives the `kube` fixture: a started `FakeCluster` whose `kubeconfig` file (server
`http://127.0.0.1:<port>`, context namespace `keruta`, a bearer token) is what the code under
test loads with `kubernetes.config.load_kube_config(config_file=...)`. Nothing in the client is
patched: every call crosses a socket and is answered with the JSON a real API server sends,
errors included (`Status` bodies with the real reasons and messages).

It serves exactly the requests `harvester.kube.cluster.PERMISSIONS` names, as that module makes
them: get pods, jobs and claims; list pods, and claims by a `key=value` label selector; delete a
claim with a UID precondition (409 when it does not match; a claim with finalizers stays
Terminating); patch a claim with a JSON patch (a failed `test` is a 422; the claim goes once it
is terminating without finalizers); create an Event (`generateName`). For the ledger
(kube/ledger.py): ConfigMaps created by name (409 AlreadyExists), read, listed by label in pages
(`limit`, `continue`) and merge-patched with a `metadata.resourceVersion` precondition (409
Conflict when stale; `inject_conflicts(n)` makes the next n patches stale, as a busy second
writer would). Besides: the bearer token (401), and RBAC's 403 for a verb taken away
(`forbid`). Anything else (watches, other verbs or resources, field selectors, dry runs) is
refused as not emulated rather than answered wrongly: the real control plane of
bench/controlplane.py covers real behaviour, and tests/test_kube_fidelity.py holds these answers
against its answers.

The server is kmock's `KubernetesEmulator` (object store, reads, creates, deletes) on its own
event loop in a background thread, because the code under test is synchronous and blocks. This
module decides refusals (token, RBAC, 404, preconditions) before kmock applies a write, serves
lists and patches itself, and fills in what kmock leaves out (UIDs, resourceVersions,
timestamps, `Status` bodies).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import itertools
import json
import secrets
import string
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp.web
import jsonpatch
import jsonpointer
import kmock
import pytest
from kubernetes import client, config

from harvester.kube.cluster import PERMISSIONS

NAMESPACE = "keruta"
TOKEN = "kube-fixture-token"
USER = "system:serviceaccount:keruta:keruta-harvester"
PVC_PROTECTION = "kubernetes.io/pvc-protection"

_T = TypeVar("_T")


@dataclass(frozen=True)
class _Kind:
    group: str
    version: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def qualified(self, name: str) -> str:
        """How the API server names a resource (or a Kind) in messages: `pods`, `jobs.batch`."""
        return f"{name}.{self.group}" if self.group else name


# The resources the harvester calls; any other resource path answers 404 as an API server
# without that resource would.
RESOURCES: dict[str, _Kind] = {
    "pods": _Kind("", "v1", "Pod"),
    "persistentvolumeclaims": _Kind("", "v1", "PersistentVolumeClaim"),
    "events": _Kind("", "v1", "Event"),
    "jobs": _Kind("batch", "v1", "Job"),
    "configmaps": _Kind("", "v1", "ConfigMap"),
}
# What the fake serves: the verbs the Role grants, nothing more.
SERVED = frozenset((p.resource, p.verb) for p in PERMISSIONS)
assert {resource for resource, _verb in SERVED} == set(RESOURCES), "RESOURCES is out of date"

# The `Status` reasons of the answers the fake gives (metav1.StatusReason, not HTTP phrases).
_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    415: "UnsupportedMediaType",
    422: "Invalid",
}


@dataclass(frozen=True)
class ApiCall:
    """One resource request, as every test backend can report it: kmock from its own log, a
    real API server from its audit log (tests/kube_backends.py)."""

    verb: str  # the RBAC verb: get, list, create, patch, delete, ...
    group: str  # "" for the core group
    resource: str  # plural, e.g. "persistentvolumeclaims"
    name: str | None
    body: Any  # the decoded request body, None when there was none
    status: int  # the answer's status code


class _ApiError(Exception):
    """An answer as a `Status` body; raised inside the handler, rendered in one place."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        reason: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or _REASONS[code]
        self.details = dict(details or {})

    def response(self) -> aiohttp.web.Response:
        status = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        }
        return aiohttp.web.json_response(status, status=self.code)


def _not_emulated(what: str) -> _ApiError:
    return _ApiError(405, f"{what}: not emulated by the kube fixture (the harvester never asks)")


def _details(kind: _Kind, plural: str, name: str | None) -> dict[str, Any]:
    # "kind" holds whatever the error names: the resource for most, the Kind for a Conflict.
    details: dict[str, Any] = {"kind": plural}
    if name is not None:
        details["name"] = name
    if kind.group:
        details["group"] = kind.group
    return details


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _label_selector(selector: str) -> dict[str, str]:
    """`task-id=123,role=work` as {key: value}: the only selector form the harvester sends."""
    wanted: dict[str, str] = {}
    for part in filter(None, (part.strip() for part in selector.split(","))):
        key, equals, value = part.partition("=")
        if not equals or not key or any(c in key + value for c in "!=<>() "):
            raise _ApiError(400, f"label selector {part!r}: only key=value is emulated")
        wanted[key] = value
    return wanted


# --- the server ----------------------------------------------------------------------------------


class _ApiServer(kmock.KubernetesEmulator):
    """kmock's emulator, with the API server behaviour it lacks decided before it runs.

    kmock applies creates and deletes to its store in `_handle` before any reaction is
    consulted, so a refused write would still be applied. Hence this subclass decides refusals
    (auth, RBAC, 404, preconditions) first, serves lists and patches itself, and hands reads,
    creates and deletes on to kmock.
    """

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.forbidden: set[tuple[str, str]] = set()  # (verb, resource) RBAC refuses
        self.conflicts = 0  # merge patches still to answer 409, as if another writer came first
        self.log: list[ApiCall] = []
        self.state_lock = asyncio.Lock()
        self._versions = itertools.count(1000)
        for plural, kind in RESOURCES.items():
            self.resources[kmock.resource(kind.group, kind.version, plural)] = kmock.ResourceInfo(
                kind=kind.kind,
                namespaced=True,
                verbs={verb for resource, verb in SERVED if resource == plural},
            )

    def next_version(self) -> str:
        return str(next(self._versions))

    # The one entry point kmock calls for every parsed request.
    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        body = copy.deepcopy(request.data)  # as sent, before a create fills in the metadata
        verb, plural = _rbac_verb(request), _plural(request)
        async with self.state_lock:
            try:
                response = await self._answer(request, *self._admit(request))
            except _ApiError as error:
                response = error.response()
            if verb is not None and plural in RESOURCES:
                group = RESOURCES[plural].group
                self.log.append(ApiCall(verb, group, plural, request.name, body, response.status))
            return response

    def _admit(self, request: kmock.Request) -> tuple[str, str, _Kind]:
        """What the API server checks before it looks at any object: the token, the resource,
        then RBAC; and here, whether the fake emulates the request at all."""
        if _header(request, "Authorization") != f"Bearer {TOKEN}":
            raise _ApiError(401, "Unauthorized")
        verb, plural = _rbac_verb(request), _plural(request)
        resource = request.resource
        kind = RESOURCES.get(plural or "")
        if resource is None or plural is None or verb is None or kind is None:
            raise _ApiError(404, "the server could not find the requested resource")
        if (kind.group, kind.version) != (resource.group, resource.version):
            raise _ApiError(404, "the server could not find the requested resource")
        if (verb, plural) in self.forbidden:
            name = request.name
            subject = kind.qualified(plural) + (f' "{name}"' if name else "")
            raise _ApiError(
                403,
                f'{subject} is forbidden: User "{USER}" cannot {verb} resource "{plural}" in API '
                f'group "{kind.group}" in the namespace "{request.namespace}"',
                details=_details(kind, plural, name),
            )
        if (plural, verb) not in SERVED or request.subresource or request.namespace is None:
            raise _not_emulated(f"{verb} {plural}")
        unknown = set(request.params) - {"labelSelector", "limit", "continue"}
        if unknown:
            raise _ApiError(400, f"{', '.join(sorted(unknown))}: not emulated by the kube fixture")
        return verb, plural, kind

    async def _answer(
        self, request: kmock.Request, verb: str, plural: str, kind: _Kind
    ) -> aiohttp.web.StreamResponse:
        if verb == "list":
            return self._list(request, kind)
        if verb == "create":
            return await self._create(request, plural, kind)
        assert request.name is not None and request.resource is not None
        obj = self._live(request.resource, request.namespace, request.name)
        if obj is None:
            raise _ApiError(
                404,
                f'{kind.qualified(plural)} "{request.name}" not found',
                details=_details(kind, plural, request.name),
            )
        if verb == "get":
            return await super()._handle(request)
        if verb == "delete":
            return await self._delete(request, kind, obj)
        return self._patch(request, plural, kind, obj)

    def _live(
        self, resource: kmock.resource, namespace: str | None, name: str
    ) -> kmock.Object | None:
        key = (resource, namespace, name)
        if key in self.objects and not self.objects[key].deleted:
            return self.objects[key]
        return None

    def _list(self, request: kmock.Request, kind: _Kind) -> aiohttp.web.Response:
        wanted = _label_selector(request.params.get("labelSelector", ""))
        items = [
            obj.raw
            for (resource, namespace, _name), obj in sorted(
                self.objects.items(), key=lambda item: item[0][2]
            )
            if resource == request.resource
            and namespace == request.namespace
            and not obj.deleted
            and wanted.items() <= (obj.raw["metadata"].get("labels") or {}).items()
        ]
        metadata = {"resourceVersion": self.next_version()}
        if "limit" in request.params:  # pages, the continue token the offset of the next one
            start = int(request.params.get("continue") or 0)
            end = start + int(request.params["limit"])
            if end < len(items):
                metadata["continue"] = str(end)
            items = items[start:end]
        return aiohttp.web.json_response(
            {
                "apiVersion": kind.api_version,
                "kind": f"{kind.kind}List",
                "metadata": metadata,
                "items": items,
            }
        )

    async def _create(
        self, request: kmock.Request, plural: str, kind: _Kind
    ) -> aiohttp.web.StreamResponse:
        data = request.data
        if not isinstance(data, dict):
            raise _ApiError(400, "the body of the request is not a JSON object")
        metadata = data.setdefault("metadata", {})
        if metadata.get("namespace", request.namespace) != request.namespace:
            raise _ApiError(
                400,
                "the namespace of the provided object does not match the namespace sent on "
                "the request",
            )
        if metadata.get("name") and plural == "configmaps":
            name = metadata["name"]
            assert request.resource is not None
            if self._live(request.resource, request.namespace, name) is not None:
                raise _ApiError(
                    409,
                    f'{kind.qualified(plural)} "{name}" already exists',
                    reason="AlreadyExists",
                    details=_details(kind, plural, name),
                )
        elif not metadata.get("generateName") or metadata.get("name"):
            raise _not_emulated(f"create {plural} without generateName")
        else:
            alphabet = string.ascii_lowercase + string.digits
            metadata["name"] = metadata["generateName"] + "".join(
                secrets.choice(alphabet) for _ in range(5)
            )
        data.setdefault("apiVersion", kind.api_version)
        data.setdefault("kind", kind.kind)
        metadata.update(
            namespace=request.namespace,
            uid=str(uuid.uuid4()),
            resourceVersion=self.next_version(),
            creationTimestamp=_now(),
        )
        # kmock stores `request.data` itself, now complete, and answers with it.
        response = await super()._handle(request)
        response.set_status(201)
        return response

    async def _delete(
        self, request: kmock.Request, kind: _Kind, obj: kmock.Object
    ) -> aiohttp.web.StreamResponse:
        metadata = obj.raw["metadata"]
        options = request.data if isinstance(request.data, dict) else {}
        wanted = (options.get("preconditions") or {}).get("uid")
        if wanted is not None and wanted != metadata["uid"]:
            # Worded as the registry's delete words it (apiserver pkg/registry/rest), which
            # names the Kind, not the resource; tests/test_kube_fidelity.py compares.
            raise _ApiError(
                409,
                f'Operation cannot be fulfilled on {kind.qualified(kind.kind)} "{request.name}": '
                f"the UID in the precondition ({wanted}) does not match the UID in record "
                f"({metadata['uid']}). The object might have been deleted and then recreated",
                details=_details(kind, kind.kind, request.name),
            )
        if not metadata.get("deletionTimestamp"):
            changes: dict[str, Any] = {"resourceVersion": self.next_version()}
            if metadata.get("finalizers"):
                # kmock would mark it too; doing it here keeps the API's timestamp format.
                changes |= {"deletionTimestamp": _now(), "deletionGracePeriodSeconds": 0}
            obj.patch({"metadata": changes})
        # kmock removes an object without finalizers and answers with its last state.
        return await super()._handle(request)

    def _patch(
        self, request: kmock.Request, plural: str, kind: _Kind, obj: kmock.Object
    ) -> aiohttp.web.Response:
        content_type = (_header(request, "Content-Type") or "").split(";")[0].strip()
        current = copy.deepcopy(obj.raw)
        if content_type == "application/merge-patch+json" and plural == "configmaps":
            patched = self._merge_patch(request, plural, kind, current)
        elif content_type != "application/json-patch+json":
            raise _ApiError(
                415, f"{content_type}: not emulated by the kube fixture (JSON patch is)"
            )
        else:
            try:
                patched = jsonpatch.apply_patch(current, request.data)
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
                # The API server answers a failed `test` or a missing path as a bare 422.
                raise _ApiError(
                    422, "the server rejected our request due to an error in our request"
                ) from exc
        # The API server keeps what a patch may not change.
        old_meta, new_meta = current["metadata"], patched.setdefault("metadata", {})
        for key in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp"):
            if key in old_meta:
                new_meta[key] = old_meta[key]
            else:
                new_meta.pop(key, None)
        new_meta["resourceVersion"] = self.next_version()
        patched["apiVersion"], patched["kind"] = current["apiVersion"], current["kind"]
        obj.history.append(patched)
        if new_meta.get("deletionTimestamp") and not new_meta.get("finalizers"):
            obj.delete()  # the last finalizer is gone: the object goes
        return aiohttp.web.json_response(patched)

    def _merge_patch(
        self, request: kmock.Request, plural: str, kind: _Kind, current: dict[str, Any]
    ) -> dict[str, Any]:
        """A JSON merge patch (RFC 7386) of a ConfigMap's data, with the resourceVersion
        precondition the ledger sends; 409 as the API server words it when that is stale."""
        patch = request.data
        if not isinstance(patch, dict) or set(patch) - {"metadata", "data"}:
            raise _not_emulated("a merge patch of anything but a ConfigMap's data")
        wanted = (patch.get("metadata") or {}).get("resourceVersion")
        stale = wanted is not None and wanted != current["metadata"]["resourceVersion"]
        if self.conflicts > 0:
            self.conflicts -= 1
            stale = True
        if stale:
            raise _ApiError(
                409,
                f'Operation cannot be fulfilled on {kind.qualified(plural)} "{request.name}": '
                "the object has been modified; please apply your changes to the latest version "
                "and try again",
                details=_details(kind, plural, request.name),
            )
        data = dict(current.get("data") or {})
        for key, value in (patch.get("data") or {}).items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        return current | {"data": data}


def _header(request: kmock.Request, name: str) -> str | None:
    for key, value in request.headers.items():
        if key.lower() == name.lower():
            return value
    return None


def _plural(request: kmock.Request) -> str | None:
    return None if request.resource is None else request.resource.plural


def _rbac_verb(request: kmock.Request) -> str | None:
    if _plural(request) is None:
        return None
    method = str(request.method.value)
    if method == "GET":
        if request.params.get("watch") in ("true", "1", "True"):
            return "watch"
        return "get" if request.name else "list"
    if method == "DELETE":
        return "delete" if request.name else "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method)


# --- the facade the tests use --------------------------------------------------------------------


class FakeCluster:
    """A fake Kubernetes API on 127.0.0.1, reached through `kubeconfig`; see the module docstring.

    A `tests.kube_backends.KubeApi`. Every method is synchronous and thread-safe: it runs on the
    server's event loop. Objects are stored schema-complete (uid, resourceVersion,
    creationTimestamp, required spec fields), so the client's models accept them. Resources are
    named by plural: "pods", "persistentvolumeclaims", "jobs", "events", "configmaps".
    """

    namespace = NAMESPACE

    def __init__(self, directory: Path) -> None:
        self.kubeconfig = directory / "kubeconfig"
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._server: _ApiServer | None = None
        self._crashes: list[Exception] = []
        self.url = ""

    # -- lifecycle

    def start(self) -> FakeCluster:
        """Start the server on a free loopback port and write the kubeconfig for it."""
        started: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._serve(started),), name="kube-fixture", daemon=True
        )
        self._thread.start()
        port = started.result(timeout=10)
        self.url = f"http://127.0.0.1:{port}"
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
            "users": [{"name": "keruta-harvester", "user": {"token": TOKEN}}],
            "contexts": [
                {
                    "name": "kmock",
                    "context": {
                        "cluster": "kmock",
                        "user": "keruta-harvester",
                        "namespace": self.namespace,
                    },
                }
            ],
            "current-context": "kmock",
        }
        self.kubeconfig.write_text(json.dumps(kubeconfig, indent=2), encoding="utf-8")
        return self

    def stop(self) -> None:
        """Stop the server (later calls cannot connect); raise if the fake itself crashed."""
        if self._thread is None or self._loop is None or self._stopping is None:
            return
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout=10)
        self._thread = None
        if self._crashes:
            raise RuntimeError(
                f"the fake Kubernetes API server failed {len(self._crashes)} request(s)"
            ) from self._crashes[0]

    def __enter__(self) -> FakeCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def _serve(self, started: concurrent.futures.Future[int]) -> None:
        try:
            self._loop = asyncio.get_running_loop()
            self._stopping = asyncio.Event()
            self._server = _ApiServer()
            async with self._server, kmock.Server(self._server) as server:
                started.set_result(server.port)
                await self._stopping.wait()
                # kmock turns exceptions into 500 answers and keeps them; ours are bugs here.
                self._crashes = [
                    exc for exc in self._server.errors if not isinstance(exc, kmock.KubernetesError)
                ]
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
                return
            raise

    def _run(self, action: Callable[[_ApiServer], Awaitable[_T]]) -> _T:
        if self._loop is None or self._server is None or self._thread is None:
            raise RuntimeError("the fake Kubernetes API server is not running")
        server = self._server

        async def locked() -> _T:
            async with server.state_lock:
                return await action(server)

        return asyncio.run_coroutine_threadsafe(locked(), self._loop).result(timeout=10)

    @contextlib.contextmanager
    def api_client(self) -> Iterator[client.ApiClient]:
        """An `ApiClient` loaded from `kubeconfig` by the official loader, closed afterwards."""
        api_client = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(self.kubeconfig), persist_config=False
        )
        try:
            yield api_client
        finally:
            api_client.close()

    # -- the world, as other actors make it

    def _add(self, manifest: Mapping[str, Any]) -> str:
        """Store an object as if it had been created; fills uid, resourceVersion, timestamps.
        Returns the uid."""
        obj = copy.deepcopy(dict(manifest))
        plural, kind = _resource_of(obj)
        metadata = obj["metadata"]
        metadata.setdefault("namespace", self.namespace)
        metadata.setdefault("uid", str(uuid.uuid4()))
        metadata.setdefault("creationTimestamp", _now())
        resource = kmock.resource(kind.group, kind.version, plural)

        async def store(server: _ApiServer) -> str:
            key = (resource, metadata["namespace"], metadata["name"])
            if server._live(*key) is not None:
                raise ValueError(f"{plural}/{metadata['name']} already exists")
            metadata["resourceVersion"] = server.next_version()
            if key in server.objects:
                server.objects[key].create(obj)  # a new life, same history
            else:
                server.objects[key] = obj
            return str(metadata["uid"])

        return self._run(store)

    def add_pod(
        self,
        name: str,
        *,
        claims: Iterable[str] = (),
        labels: Mapping[str, str] | None = None,
        phase: str = "Running",
        mount_paths: Mapping[str, str] | None = None,
    ) -> str:
        """A pod whose one container mounts each claim (at `/mnt/<claim>` unless told)."""
        return self._add(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "labels": dict(labels or {})},
                "spec": pod_spec(list(claims), mount_paths or {}),
                "status": {"phase": phase, "startTime": _now()},
            }
        )

    def add_pvc(self, name: str, *, labels: Mapping[str, str] | None = None) -> str:
        """A bound ReadWriteOnce claim, protected by `kubernetes.io/pvc-protection`."""
        return self._add(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {
                    "name": name,
                    "labels": dict(labels or {}),
                    "finalizers": [PVC_PROTECTION],
                },
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}},
                    "storageClassName": "standard",
                    "volumeMode": "Filesystem",
                    "volumeName": f"pvc-{uuid.uuid4()}",
                },
                "status": {
                    "phase": "Bound",
                    "accessModes": ["ReadWriteOnce"],
                    "capacity": {"storage": "1Gi"},
                },
            }
        )

    def add_job(
        self,
        name: str,
        *,
        claims: Iterable[str] = (),
        labels: Mapping[str, str] | None = None,
        mount_paths: Mapping[str, str] | None = None,
    ) -> str:
        """A finished (Complete) Job whose pod template mounts each claim."""
        return self._add(
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {"name": name, "labels": dict(labels or {})},
                "spec": {
                    "backoffLimit": 0,
                    "completions": 1,
                    "parallelism": 1,
                    "template": {
                        "metadata": {"labels": dict(labels or {})},
                        "spec": pod_spec(list(claims), mount_paths or {}),
                    },
                },
                "status": {
                    "startTime": _now(),
                    "succeeded": 1,
                    "conditions": [
                        {"type": "Complete", "status": "True", "lastTransitionTime": _now()}
                    ],
                },
            }
        )

    def get(self, resource: str, name: str) -> dict[str, Any] | None:
        """The object as the API would serve it now (a copy), or None when it is gone."""
        key = self._key(resource)

        async def read(server: _ApiServer) -> dict[str, Any] | None:
            obj = server._live(*key, name)
            return None if obj is None else copy.deepcopy(obj.raw)

        return self._run(read)

    def remove(self, resource: str, name: str) -> None:
        """The object is gone at once, finalizers or not (another actor deleted it)."""
        key = self._key(resource)

        async def drop(server: _ApiServer) -> None:
            obj = server._live(*key, name)
            if obj is not None:
                obj.delete()

        self._run(drop)

    def recreate(self, resource: str, name: str) -> str:
        """Delete the object and create it again under the same name with a new uid: what a
        UID precondition exists for. Labels, spec and finalizers are kept."""
        current = self.get(resource, name)
        if current is None:
            raise KeyError(f"{resource}/{name} does not exist")
        self.remove(resource, name)
        metadata = current["metadata"]
        for key in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp"):
            metadata.pop(key, None)
        metadata.pop("deletionGracePeriodSeconds", None)
        return self._add(current)

    def inject_conflicts(self, count: int) -> None:
        """Answer the next `count` merge patches 409 Conflict, as if another writer had changed
        the object since it was read."""

        async def install(server: _ApiServer) -> None:
            server.conflicts = count

        self._run(install)

    def forbid(self, verb: str, resource: str) -> None:
        """From now on answer `verb` on `resource` with RBAC's 403 Forbidden, worded as the API
        server words it; checked after the token and before the object exists, as RBAC is."""
        if (resource, verb) not in SERVED:
            raise ValueError(f"{verb} {resource}: the harvester never asks (see PERMISSIONS)")

        async def install(server: _ApiServer) -> None:
            server.forbidden.add((verb, resource))

        self._run(install)

    # -- what happened

    @property
    def events(self) -> list[dict[str, Any]]:
        """The core/v1 Events that exist now, oldest first."""

        async def read(server: _ApiServer) -> list[dict[str, Any]]:
            return [
                copy.deepcopy(obj.raw)
                for (resource, _, _), obj in server.objects.items()
                if resource.plural == "events" and not obj.deleted
            ]

        return self._run(read)

    @property
    def calls(self) -> list[ApiCall]:
        """The resource requests answered so far, in order (refused ones included); still
        readable after `stop()`."""
        if self._thread is None and self._server is not None:
            return list(self._server.log)  # stopped: no other thread writes it any more

        async def read(server: _ApiServer) -> list[ApiCall]:
            return list(server.log)

        return self._run(read)

    def _key(self, resource: str) -> tuple[kmock.resource, str]:
        kind = RESOURCES.get(resource)
        if kind is None:
            raise ValueError(f"unknown resource {resource!r}; one of {sorted(RESOURCES)}")
        return kmock.resource(kind.group, kind.version, resource), self.namespace


def _resource_of(manifest: Mapping[str, Any]) -> tuple[str, _Kind]:
    for plural, kind in RESOURCES.items():
        if (manifest.get("apiVersion"), manifest.get("kind")) == (kind.api_version, kind.kind):
            return plural, kind
    raise ValueError(f"the fake does not serve {manifest.get('apiVersion')}/{manifest.get('kind')}")


def pod_spec(claims: list[str], mount_paths: Mapping[str, str]) -> dict[str, Any]:
    """A one-container pod spec mounting each claim, scheduled on `node-1` (both backends use it;
    on a real control plane only a pod with a nodeName holds a claim in pvc-protection's eyes)."""
    # Volume names differ from claim names, as in real manifests: the code must follow
    # volumeMounts -> volumes -> persistentVolumeClaim.claimName.
    volumes = [
        {"name": f"volume-{i}", "persistentVolumeClaim": {"claimName": claim}}
        for i, claim in enumerate(claims)
    ]
    mounts = [
        {"name": f"volume-{i}", "mountPath": mount_paths.get(claim, f"/mnt/{claim}")}
        for i, claim in enumerate(claims)
    ]
    return {
        "restartPolicy": "Never",
        "serviceAccountName": "default",
        "nodeName": "node-1",
        "containers": [{"name": "main", "image": "busybox:1.36", "volumeMounts": mounts}],
        "volumes": volumes,
    }


@pytest.fixture
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeCluster]:
    """A started `FakeCluster`; its kubeconfig lives outside the test's own `tmp_path`."""
    with FakeCluster(tmp_path_factory.mktemp("kube")) as cluster:
        yield cluster
