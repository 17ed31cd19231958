"""A fake Kubernetes API server on a real loopback socket, for the official `kubernetes` client.

Gives the `kube` fixture: a started `FakeCluster` whose `kubeconfig` file (server
`http://127.0.0.1:<port>`, context namespace `keruta`, a bearer token) is what the code under
test loads with `kubernetes.config.load_kube_config(config_file=...)`. Nothing in the client is
patched: every call crosses a socket and is answered with the JSON a real API server sends,
errors included (`Status` bodies with the real reasons and messages).

The server is kmock's `KubernetesEmulator` (object store with history, reads, creates, deletes,
watches, API discovery) on its own event loop in a background thread, because the code under
test is synchronous and blocks. On top of it this module scripts what kmock does not do: UIDs,
resourceVersions and timestamps, label and field selectors on lists, DELETE preconditions (409),
PATCH as the API server applies it (JSON patch, merge patch, strategic merge patch with its
finalizer-list semantics), `?dryRun=All`, `NotFound`/`AlreadyExists`/`Invalid` Status bodies,
bearer-token checks (401), and injected faults (403 as RBAC words it, any other status).

Wired into `tests/conftest.py` with `from tests.kube_fixture import kube`, and one backend of
tests/kube_backends.py; tests/test_kube_fidelity.py holds its answers against a real API server's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import itertools
import json
import re
import secrets
import string
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiohttp.web
import jsonpatch
import jsonpointer
import kmock
import pytest
from kubernetes import client, config

NAMESPACE = "keruta"
TOKEN = "kube-fixture-token"
USER = "system:serviceaccount:keruta:keruta-harvester"
PVC_PROTECTION = "kubernetes.io/pvc-protection"

#: RBAC verbs, as `forbid()`/`fail()` and `RecordedRequest.verb` name them.
VERBS = frozenset(
    {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}
)

_T = TypeVar("_T")


@dataclass(frozen=True)
class _Kind:
    group: str
    version: str
    kind: str
    # Fields a fieldSelector may name besides metadata.name/metadata.namespace (as the real API).
    field_labels: frozenset[str] = frozenset()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def qualified(self, name: str) -> str:
        """How the API server names a resource (or a Kind) in messages: `pods`, `jobs.batch`."""
        return f"{name}.{self.group}" if self.group else name


# The namespaced resources the fake serves; any other resource path answers 404 as an API
# server without that resource would.
RESOURCES: dict[str, _Kind] = {
    "pods": _Kind(
        "",
        "v1",
        "Pod",
        frozenset(
            {"spec.nodeName", "spec.restartPolicy", "spec.serviceAccountName", "status.phase"}
        ),
    ),
    "persistentvolumeclaims": _Kind("", "v1", "PersistentVolumeClaim"),
    "configmaps": _Kind("", "v1", "ConfigMap"),
    "events": _Kind(
        "",
        "v1",
        "Event",
        frozenset(
            {
                "involvedObject.apiVersion",
                "involvedObject.kind",
                "involvedObject.name",
                "involvedObject.namespace",
                "involvedObject.uid",
                "reason",
                "reportingComponent",
                "type",
            }
        ),
    ),
    "jobs": _Kind("batch", "v1", "Job", frozenset({"status.successful"})),
}

_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake API server answered, for assertions."""

    method: str
    path: str
    query: Mapping[str, str]
    body: Any  # the decoded JSON body, None when there was none
    status: int  # what the fake answered
    verb: str | None  # the RBAC verb (get, list, delete, ...); None outside the resource API
    resource: str | None  # plural, e.g. "persistentvolumeclaims"
    name: str | None
    content_type: str | None


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


@dataclass
class _Fault:
    verb: str
    resource: str
    name: str | None
    status: int
    message: str | None
    retry_after: int | None
    remaining: int | None

    def matches(self, verb: str, resource: str, name: str | None) -> bool:
        return (
            self.verb in ("*", verb)
            and self.resource in ("*", resource)
            and (self.name is None or self.name == name)
        )


class _ApiError(Exception):
    """An answer as a `Status` body; raised inside the handler, rendered in one place."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        reason: str | None = None,
        details: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or _REASONS.get(code, "Unknown")
        self.details = dict(details or {})
        self.headers = dict(headers or {})

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
        return aiohttp.web.json_response(status, status=self.code, headers=self.headers)


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


# --- selectors -----------------------------------------------------------------------------------

_REQUIREMENT = re.compile(
    r"""^\s*(?:
        !\s*(?P<absent>[^\s=!<>(),]+)
      | (?P<key>[^\s=!<>(),]+)
        (?: \s*(?P<op>==|=|!=|>|<)\s*(?P<value>[^\s=!<>(),]*)
          | \s+(?P<setop>in|notin)\s*\((?P<values>[^()]*)\)
        )?
    )\s*$""",
    re.VERBOSE,
)


def _split_top_level(selector: str) -> list[str]:
    """Split on the commas that are not inside `in (a,b)` parentheses."""
    parts, depth, current = [], 0, ""
    for char in selector:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [part for part in parts if part.strip()]


def label_selector_matches(selector: str, labels: Mapping[str, str]) -> bool:
    """Whether `labels` satisfy a Kubernetes label selector; ValueError if it does not parse.

    Supports every form the API server does: `k=v`, `k==v`, `k!=v`, `k in (a,b)`,
    `k notin (a,b)`, `k`, `!k`, `k>1`, `k<1`, joined by commas (AND).
    """
    for part in _split_top_level(selector):
        found = _REQUIREMENT.match(part)
        if found is None:
            raise ValueError(f"unable to parse requirement: {part.strip()!r}")
        if found["absent"] is not None:
            if found["absent"] in labels:
                return False
            continue
        key, op, value, setop = found["key"], found["op"], found["value"], found["setop"]
        present = key in labels
        if setop is not None:
            values = {v.strip() for v in found["values"].split(",")}
            if setop == "in" and not (present and labels[key] in values):
                return False
            if setop == "notin" and present and labels[key] in values:
                return False
        elif op in ("=", "=="):
            if not (present and labels[key] == value):
                return False
        elif op == "!=":
            if present and labels[key] == value:
                return False
        elif op in (">", "<"):
            if not value.isdigit():
                raise ValueError(f"unable to parse requirement: {part.strip()!r}")
            if not (present and labels[key].isdigit()):
                return False
            if (int(labels[key]) > int(value)) != (op == ">"):
                return False
        elif not present:  # a bare key: it exists
            return False
    return True


def _field_selector_matches(selector: str, obj: Mapping[str, Any], allowed: frozenset[str]) -> bool:
    for part in _split_top_level(selector):
        found = re.fullmatch(r"\s*([^=!\s]+)\s*(==|=|!=)\s*(\S*)\s*", part)
        if found is None:
            raise ValueError(f"invalid selector: '{selector}'; can't understand '{part}'")
        path, op, expected = found.groups()
        if path not in allowed | {"metadata.name", "metadata.namespace"}:
            raise ValueError(f"field label not supported: {path}")
        value: Any = obj
        for step in path.split("."):
            value = value.get(step) if isinstance(value, Mapping) else None
        actual = "" if value is None else str(value)
        if (actual == expected) != (op != "!="):
            return False
    return True


# --- patches -------------------------------------------------------------------------------------

# Lists whose patchStrategy is "merge" over scalars: a strategic merge patch adds to them, it
# does not replace them. This is the pvc-protection trap: `{"metadata": {"finalizers": []}}`
# removes nothing; `null`, `$deleteFromPrimitiveList/finalizers`, a merge patch or a JSON patch do.
_SCALAR_SET_LISTS = {("metadata", "finalizers")}


def _merge(target: Any, patch: Any, *, strategic: bool, path: tuple[str, ...] = ()) -> Any:
    """RFC 7386 merge patch; with `strategic`, the parts of a strategic merge patch we need.

    Strategic merge of lists of objects by merge key (containers by name, ...) is not emulated:
    such lists are replaced, as in a merge patch.
    """
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    deletions: dict[str, list[Any]] = {}
    for key, value in patch.items():
        if strategic and key.startswith("$deleteFromPrimitiveList/"):
            deletions[key.split("/", 1)[1]] = list(value or [])
        elif strategic and (key.startswith("$setElementOrder/") or key == "$retainKeys"):
            continue
        elif value is None:
            result.pop(key, None)
        elif strategic and (*path, key) in _SCALAR_SET_LISTS and isinstance(value, list):
            merged = list(result.get(key) or [])
            merged += [item for item in value if item not in merged]
            result[key] = merged
        else:
            result[key] = _merge(result.get(key), value, strategic=strategic, path=(*path, key))
    for key, unwanted in deletions.items():
        result[key] = [item for item in result.get(key) or [] if item not in unwanted]
    return result


def _apply_patch(current: dict[str, Any], body: Any, content_type: str) -> dict[str, Any]:
    if content_type == "application/json-patch+json":
        if not isinstance(body, list) or not all(isinstance(op, dict) for op in body):
            raise _ApiError(
                400, "json: cannot unmarshal object into Go value of type jsonpatch.Patch"
            )
        try:
            patched = jsonpatch.apply_patch(current, body)
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
            # The API server answers a failed `test` or a missing path as a bare 422.
            raise _ApiError(
                422, "the server rejected our request due to an error in our request"
            ) from exc
    elif content_type in (
        "application/merge-patch+json",
        "application/strategic-merge-patch+json",
    ):
        if not isinstance(body, dict):
            raise _ApiError(
                400, "json: cannot unmarshal array into Go value of type map[string]interface {}"
            )
        strategic = content_type == "application/strategic-merge-patch+json"
        patched = _merge(current, body, strategic=strategic)
    else:
        raise _ApiError(
            415,
            "the body of the request was in an unknown format - accepted media types include: "
            "application/json-patch+json, application/merge-patch+json, "
            "application/strategic-merge-patch+json (server-side apply is not emulated)",
        )
    if not isinstance(patched, dict):
        raise _ApiError(422, "the patch does not produce an object")
    return patched


# --- the server ----------------------------------------------------------------------------------


class _ApiServer(kmock.KubernetesEmulator):
    """kmock's emulator, with the API server behaviour it lacks decided before it runs.

    kmock applies creates, patches and deletes to its store in `_handle` before any reaction
    (a `kmock[...] << 403` reaction) is consulted, so a refused write would still be applied.
    Hence this subclass decides refusals (auth, faults, 404, preconditions) first, serves
    lists and patches itself, and hands reads, creates, deletes and watches on to kmock.
    """

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.token = TOKEN
        self.user = USER
        self.faults: list[_Fault] = []
        self.log: list[RecordedRequest] = []
        self.state_lock = asyncio.Lock()
        self._versions = itertools.count(1000)
        for plural, kind in RESOURCES.items():
            self.resources[kmock.resource(kind.group, kind.version, plural)] = kmock.ResourceInfo(
                kind=kind.kind,
                namespaced=True,
                verbs={"get", "list", "watch", "create", "patch", "delete"},
            )

    def next_version(self) -> str:
        return str(next(self._versions))

    # The one entry point kmock calls for every parsed request.
    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        verb = _rbac_verb(request)
        record = _recorder(request, verb, self.log)
        response: aiohttp.web.StreamResponse | None
        async with self.state_lock:
            try:
                kind = self._admit(request, verb)
                response = None if verb == "watch" else await self._answer(request, verb, kind)
            except _ApiError as error:
                response = error.response()
            except kmock.KubernetesError as error:  # kmock's own answers (unknown endpoints)
                record(error.status)
                raise
            except Exception:
                record(500)
                raise
            if response is not None:
                record(response.status)
                return response
        # A watch is a long stream, served by kmock outside the state lock; logged as it starts.
        record(200)
        return await super()._handle(request)

    def _admit(self, request: kmock.Request, verb: str | None) -> _Kind | None:
        """What the API server checks before it looks at any object: the token, the resource,
        then RBAC (here: the injected faults). None for requests outside the resource API."""
        if _header(request, "Authorization") != f"Bearer {self.token}":
            raise _ApiError(401, "Unauthorized")
        resource = request.resource
        if verb is None or resource is None or resource.plural is None:
            return None
        kind = RESOURCES.get(resource.plural)
        if kind is None or (kind.group, kind.version) != (resource.group, resource.version):
            raise _ApiError(404, "the server could not find the requested resource")
        self._raise_fault(verb, resource.plural, kind, request.name, request.namespace)
        if request.subresource is not None or verb not in {
            "get",
            "list",
            "watch",
            "create",
            "patch",
            "delete",
        }:
            raise _ApiError(
                405, f"{verb} of {resource.plural}/{request.subresource or ''} is not emulated"
            )
        if verb == "watch" and ({"labelSelector", "fieldSelector"} & set(request.params)):
            # kmock's watch streams every object of the resource; better refused than wrong.
            raise _ApiError(400, "the kube fixture does not emulate selectors on watches")
        return kind

    async def _answer(
        self, request: kmock.Request, verb: str | None, kind: _Kind | None
    ) -> aiohttp.web.StreamResponse:
        resource = request.resource
        if kind is None or resource is None or resource.plural is None:
            return await super()._handle(request)  # discovery (/api, /apis/batch/v1, ...)
        plural = resource.plural
        if verb == "list":
            return self._list(request, plural, kind)
        if verb == "create":
            return await self._create(request, plural, kind)
        assert request.name is not None
        obj = self._live(resource, request.namespace, request.name)
        if obj is None:
            raise _ApiError(
                404,
                f'{kind.qualified(plural)} "{request.name}" not found',
                details=_details(kind, plural, request.name),
            )
        if verb == "get":
            return await super()._handle(request)
        if verb == "delete":
            return await self._delete(request, plural, kind, obj)
        return await self._patch(request, plural, kind, obj)

    def _raise_fault(
        self, verb: str, plural: str, kind: _Kind, name: str | None, namespace: str | None
    ) -> None:
        for fault in self.faults:
            if not fault.matches(verb, plural, name):
                continue
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self.faults.remove(fault)
            details = _details(kind, plural, name)
            headers: dict[str, str] = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = str(fault.retry_after)
                details["retryAfterSeconds"] = fault.retry_after
            message = fault.message
            if message is None and fault.status == 403:
                subject = kind.qualified(plural) + (f' "{name}"' if name else "")
                scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
                message = (
                    f'{subject} is forbidden: User "{self.user}" cannot {verb} resource '
                    f'"{plural}" in API group "{kind.group}" {scope}'
                )
            raise _ApiError(
                fault.status,
                message or f"injected by the kube fixture: {verb} {plural}",
                details=details,
                headers=headers,
            )

    def _live(
        self, resource: kmock.resource, namespace: str | None, name: str
    ) -> kmock.Object | None:
        key = (resource, namespace, name)
        if key in self.objects and not self.objects[key].deleted:
            return self.objects[key]
        return None

    def _list(self, request: kmock.Request, plural: str, kind: _Kind) -> aiohttp.web.Response:
        labels = request.params.get("labelSelector", "")
        fields = request.params.get("fieldSelector", "")
        items: list[tuple[tuple[str, str], dict[str, Any]]] = []
        try:
            for (resource, namespace, name), obj in self.objects.items():
                if resource != request.resource or obj.deleted:
                    continue
                if request.namespace is not None and namespace != request.namespace:
                    continue
                raw = obj.raw
                if not label_selector_matches(labels, raw["metadata"].get("labels") or {}):
                    continue
                if not _field_selector_matches(fields, raw, kind.field_labels):
                    continue
                items.append(((namespace or "", name), raw))
        except ValueError as exc:
            raise _ApiError(400, str(exc)) from exc
        return aiohttp.web.json_response(
            {
                "apiVersion": kind.api_version,
                "kind": f"{kind.kind}List",
                "metadata": {"resourceVersion": self.next_version()},
                "items": [raw for _, raw in sorted(items, key=lambda item: item[0])],
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
        if not metadata.get("name"):
            if not metadata.get("generateName"):
                raise _ApiError(
                    422,
                    f'{kind.kind} "" is invalid: metadata.name: Required value: name or '
                    "generateName is required",
                )
            alphabet = string.ascii_lowercase + string.digits
            suffix = "".join(secrets.choice(alphabet) for _ in range(5))
            metadata["name"] = metadata["generateName"] + suffix
        assert request.resource is not None
        if self._live(request.resource, request.namespace, metadata["name"]) is not None:
            raise _ApiError(
                409,
                f'{kind.qualified(plural)} "{metadata["name"]}" already exists',
                reason="AlreadyExists",
                details=_details(kind, plural, metadata["name"]),
            )
        data.setdefault("apiVersion", kind.api_version)
        data.setdefault("kind", kind.kind)
        metadata.update(
            namespace=request.namespace,
            uid=str(uuid.uuid4()),
            resourceVersion=self.next_version(),
            creationTimestamp=_now(),
        )
        if _dry_run(request):
            return aiohttp.web.json_response(data, status=201)
        # kmock stores `request.data` itself, now complete, and answers with it.
        response = await super()._handle(request)
        response.set_status(201)
        return response

    async def _delete(
        self, request: kmock.Request, plural: str, kind: _Kind, obj: kmock.Object
    ) -> aiohttp.web.StreamResponse:
        metadata = obj.raw["metadata"]
        options = request.data if isinstance(request.data, dict) else {}
        preconditions = options.get("preconditions") or {}
        for field_name, label, why in (
            ("uid", "UID", "deleted and then recreated"),
            ("resourceVersion", "ResourceVersion", "modified"),
        ):
            wanted = preconditions.get(field_name)
            if wanted is not None and wanted != metadata.get(field_name):
                # Worded as the registry's delete words it (apiserver pkg/registry/rest), which
                # names the Kind, not the resource; tests/test_kube_fidelity.py compares.
                subject = f'{kind.qualified(kind.kind)} "{request.name}"'
                raise _ApiError(
                    409,
                    f"Operation cannot be fulfilled on {subject}: "
                    f"the {label} in the precondition ({wanted}) does not match the {label} in "
                    f"record ({metadata.get(field_name)}). The object might have been {why}",
                    details=_details(kind, kind.kind, request.name),
                )
        terminating = bool(metadata.get("deletionTimestamp"))
        if _dry_run(request):
            preview = copy.deepcopy(obj.raw)
            if metadata.get("finalizers") and not terminating:
                preview["metadata"].update(deletionTimestamp=_now(), deletionGracePeriodSeconds=0)
            return aiohttp.web.json_response(preview)
        if metadata.get("finalizers") and not terminating:
            # kmock would mark it too; doing it here keeps the API's timestamp format and fields.
            obj.patch(
                {
                    "metadata": {
                        "resourceVersion": self.next_version(),
                        "deletionTimestamp": _now(),
                        "deletionGracePeriodSeconds": 0,
                    }
                }
            )
            await self._notify(request.resource, "MODIFIED", obj.raw)
        elif not terminating:
            obj.patch({"metadata": {"resourceVersion": self.next_version()}})
        # kmock removes an object without finalizers and answers with its last state.
        return await super()._handle(request)

    async def _patch(
        self, request: kmock.Request, plural: str, kind: _Kind, obj: kmock.Object
    ) -> aiohttp.web.Response:
        current = copy.deepcopy(obj.raw)
        content_type = (_header(request, "Content-Type") or "").split(";")[0].strip()
        patched = _apply_patch(current, request.data, content_type)
        old_meta, new_meta = current["metadata"], patched.setdefault("metadata", {})
        subject = f'{kind.kind} "{request.name}"'
        if new_meta.get("uid", old_meta["uid"]) != old_meta["uid"]:
            raise _ApiError(
                422,
                f'{subject} is invalid: metadata.uid: Invalid value: "{new_meta["uid"]}": '
                "field is immutable",
                details=_details(kind, plural, request.name),
            )
        if (
            new_meta.get("resourceVersion", old_meta["resourceVersion"])
            != old_meta["resourceVersion"]
        ):
            raise _ApiError(
                409,
                f'Operation cannot be fulfilled on {kind.qualified(plural)} "{request.name}": '
                "the object has been modified; please apply your changes to the latest version "
                "and try again",
                details=_details(kind, plural, request.name),
            )
        added = set(new_meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
        if old_meta.get("deletionTimestamp") and added:
            raise _ApiError(
                422,
                f"{subject} is invalid: metadata.finalizers: Forbidden: no new finalizers can be "
                f"added if the object is being deleted, found new finalizers {sorted(added)}",
            )
        # The API server keeps what a patch may not change.
        for key in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp"):
            if key in old_meta:
                new_meta[key] = old_meta[key]
            else:
                new_meta.pop(key, None)
        new_meta["resourceVersion"] = self.next_version()
        patched["apiVersion"], patched["kind"] = current["apiVersion"], current["kind"]
        if not _dry_run(request):
            obj.history.append(patched)
            if new_meta.get("deletionTimestamp") and not new_meta.get("finalizers"):
                obj.delete()  # the last finalizer is gone: the object goes
                await self._notify(request.resource, "DELETED", patched)
            else:
                await self._notify(request.resource, "MODIFIED", patched)
        return aiohttp.web.json_response(patched)

    async def _notify(self, resource: kmock.resource | None, kind: str, raw: Any) -> None:
        # kmock's watch streams read from its per-resource buses; writes made here must reach
        # them as kmock's own writes do.
        if resource is not None:
            await self._buses[resource].put({"type": kind, "object": copy.deepcopy(raw)})


def _recorder(
    request: kmock.Request, verb: str | None, log: list[RecordedRequest]
) -> Callable[[int], None]:
    body = copy.deepcopy(request.data)  # before a create fills in the metadata

    def record(status: int) -> None:
        log.append(
            RecordedRequest(
                method=str(request.method.value),
                path=request.url.path,
                query=dict(request.params),
                body=body,
                status=status,
                verb=verb,
                resource=request.resource.plural if request.resource else None,
                name=request.name,
                content_type=_header(request, "Content-Type"),
            )
        )

    return record


def _dry_run(request: kmock.Request) -> bool:
    """`?dryRun=All`: the API server validates and answers, and stores nothing."""
    return request.params.get("dryRun") == "All"


def _header(request: kmock.Request, name: str) -> str | None:
    for key, value in request.headers.items():
        if key.lower() == name.lower():
            return value
    return None


def _rbac_verb(request: kmock.Request) -> str | None:
    if request.resource is None or request.resource.plural is None:
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

    Every method is synchronous and thread-safe: it runs on the server's event loop. Objects are
    preloaded schema-complete (uid, resourceVersion, creationTimestamp, required spec fields), so
    the client's models accept them. Resources are named by plural: "pods",
    "persistentvolumeclaims", "jobs", "events", "configmaps".
    """

    namespace = NAMESPACE
    token = TOKEN
    user = USER

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
            "users": [{"name": "keruta-harvester", "user": {"token": self.token}}],
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

    # -- state

    def add(self, manifest: Mapping[str, Any]) -> str:
        """Store an object as if it had been created; fills uid, resourceVersion, timestamps.

        The namespace defaults to `keruta`; an existing live object of that name is an error
        (use `recreate`). Returns the uid.
        """
        obj = copy.deepcopy(dict(manifest))
        plural, kind = _resource_of(obj)
        metadata = obj.setdefault("metadata", {})
        if not metadata.get("name"):
            raise ValueError("the manifest has no metadata.name")
        metadata.setdefault("namespace", self.namespace)
        metadata.setdefault("uid", str(uuid.uuid4()))
        metadata.setdefault("creationTimestamp", _now())
        key = (kmock.resource(kind.group, kind.version, plural), metadata["namespace"])

        async def store(server: _ApiServer) -> str:
            resource, namespace = key
            name = metadata["name"]
            if server._live(resource, namespace, name) is not None:
                raise ValueError(f"{plural}/{name} already exists in {namespace}")
            metadata["resourceVersion"] = server.next_version()
            if (resource, namespace, name) in server.objects:
                server.objects[resource, namespace, name].create(obj)  # a new life, same history
            else:
                server.objects[resource, namespace, name] = obj
            await server._notify(resource, "ADDED", obj)
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
        sub_paths: Mapping[str, str] | None = None,
        uid: str | None = None,
    ) -> str:
        """A pod whose one container mounts each claim (at `/mnt/<claim>` unless told)."""
        return self.add(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": _metadata(name, labels, uid),
                "spec": pod_spec(list(claims), mount_paths or {}, sub_paths or {}),
                "status": {"phase": phase, "startTime": _now()},
            }
        )

    def add_pvc(
        self,
        name: str,
        *,
        labels: Mapping[str, str] | None = None,
        uid: str | None = None,
        finalizers: Iterable[str] = (PVC_PROTECTION,),
        storage: str = "1Gi",
    ) -> str:
        """A bound ReadWriteOnce claim, protected by `kubernetes.io/pvc-protection` by default."""
        metadata = _metadata(name, labels, uid)
        metadata["finalizers"] = list(finalizers)
        return self.add(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": metadata,
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": storage}},
                    "storageClassName": "standard",
                    "volumeMode": "Filesystem",
                    "volumeName": f"pvc-{uuid.uuid4()}",
                },
                "status": {
                    "phase": "Bound",
                    "accessModes": ["ReadWriteOnce"],
                    "capacity": {"storage": storage},
                },
            }
        )

    def add_job(
        self,
        name: str,
        *,
        claims: Iterable[str] = (),
        labels: Mapping[str, str] | None = None,
        uid: str | None = None,
        condition: Literal["Complete", "Failed"] | None = "Complete",
        mount_paths: Mapping[str, str] | None = None,
    ) -> str:
        """A Job whose pod template mounts each claim; finished as `condition` (None: running)."""
        status: dict[str, Any] = {"startTime": _now()}
        if condition is None:
            status["active"] = 1
        else:
            status["succeeded" if condition == "Complete" else "failed"] = 1
            status["conditions"] = [
                {"type": condition, "status": "True", "lastTransitionTime": _now()}
            ]
        return self.add(
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": _metadata(name, labels, uid),
                "spec": {
                    "backoffLimit": 0,
                    "completions": 1,
                    "parallelism": 1,
                    "template": {
                        "metadata": {"labels": dict(labels or {})},
                        "spec": pod_spec(list(claims), mount_paths or {}, {}),
                    },
                },
                "status": status,
            }
        )

    def get(
        self, resource: str, name: str, *, namespace: str | None = None
    ) -> dict[str, Any] | None:
        """The object as the API would serve it now (a copy), or None when it is gone."""
        key = self._key(resource, namespace)

        async def read(server: _ApiServer) -> dict[str, Any] | None:
            obj = server._live(*key, name)
            return None if obj is None else copy.deepcopy(obj.raw)

        return self._run(read)

    def update(
        self, resource: str, name: str, changes: Mapping[str, Any], *, namespace: str | None = None
    ) -> None:
        """Merge-patch (RFC 7386) an object out of band, as another actor would; bumps its
        resourceVersion. E.g. `update("pods", "p", {"status": {"phase": "Succeeded"}})`."""
        key = self._key(resource, namespace)

        async def change(server: _ApiServer) -> None:
            obj = server._live(*key, name)
            if obj is None:
                raise KeyError(f"{resource}/{name} does not exist")
            patched = _merge(copy.deepcopy(obj.raw), changes, strategic=False)
            patched["metadata"]["resourceVersion"] = server.next_version()
            obj.history.append(patched)
            await server._notify(key[0], "MODIFIED", patched)

        self._run(change)

    def remove(self, resource: str, name: str, *, namespace: str | None = None) -> None:
        """The object is gone at once, finalizers or not (another actor deleted it)."""
        key = self._key(resource, namespace)

        async def drop(server: _ApiServer) -> None:
            obj = server._live(*key, name)
            if obj is not None:
                raw = obj.raw
                obj.delete()
                await server._notify(key[0], "DELETED", raw)

        self._run(drop)

    def release(self, resource: str, name: str, *, namespace: str | None = None) -> None:
        """Drop every finalizer, as kube-controller-manager does for an unused terminating PVC;
        a terminating object then disappears."""
        key = self._key(resource, namespace)

        async def unblock(server: _ApiServer) -> None:
            obj = server._live(*key, name)
            if obj is None:
                raise KeyError(f"{resource}/{name} does not exist")
            patched = copy.deepcopy(obj.raw)
            patched["metadata"].pop("finalizers", None)
            patched["metadata"]["resourceVersion"] = server.next_version()
            obj.history.append(patched)
            if patched["metadata"].get("deletionTimestamp"):
                obj.delete()
                await server._notify(key[0], "DELETED", patched)
            else:
                await server._notify(key[0], "MODIFIED", patched)

        self._run(unblock)

    def recreate(
        self, resource: str, name: str, *, uid: str | None = None, namespace: str | None = None
    ) -> str:
        """Delete the object and create it again under the same name with a new uid (or `uid`):
        what a UID precondition exists for. Labels, spec and finalizers are kept."""
        current = self.get(resource, name, namespace=namespace)
        if current is None:
            raise KeyError(f"{resource}/{name} does not exist")
        self.remove(resource, name, namespace=namespace)
        metadata = current["metadata"]
        for key in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp"):
            metadata.pop(key, None)
        metadata.pop("deletionGracePeriodSeconds", None)
        if uid is not None:
            metadata["uid"] = uid
        return self.add(current)

    # -- faults

    def forbid(
        self, verb: str, resource: str, name: str | None = None, *, times: int | None = None
    ) -> None:
        """Answer `verb` on `resource` (optionally only `name`) with RBAC's 403 Forbidden,
        worded as the API server words it, `times` times (None: until `clear_faults`)."""
        self.fail(verb, resource, name, status=403, times=times)

    def fail(
        self,
        verb: str,
        resource: str,
        name: str | None = None,
        *,
        status: int = 500,
        times: int | None = None,
        retry_after: int | None = None,
        message: str | None = None,
    ) -> None:
        """Answer `verb` on `resource` with `status` (a `Status` body; `Retry-After` if given),
        `times` times (None: until `clear_faults`). `verb`/`resource` may be "*". Checked after
        the token and before the object exists, as RBAC is; the object is left untouched."""
        if verb != "*" and verb not in VERBS:
            raise ValueError(f"unknown verb {verb!r}; one of {sorted(VERBS)} or '*'")
        if resource != "*" and resource not in RESOURCES:
            raise ValueError(f"unknown resource {resource!r}; one of {sorted(RESOURCES)} or '*'")
        fault = _Fault(verb, resource, name, status, message, retry_after, times)

        async def install(server: _ApiServer) -> None:
            server.faults.append(fault)

        self._run(install)

    def clear_faults(self) -> None:
        async def clear(server: _ApiServer) -> None:
            server.faults.clear()

        self._run(clear)

    # -- observations

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
    def requests(self) -> list[RecordedRequest]:
        """Every request answered so far, in order (discovery and refused ones included);
        still readable after `stop()`."""
        if self._thread is None and self._server is not None:
            return list(self._server.log)  # stopped: no other thread writes it any more

        async def read(server: _ApiServer) -> list[RecordedRequest]:
            return list(server.log)

        return self._run(read)

    @property
    def calls(self) -> list[ApiCall]:
        """The resource requests answered so far, in order (discovery left out)."""
        return [
            ApiCall(
                verb=r.verb,
                group=RESOURCES[r.resource].group,
                resource=r.resource,
                name=r.name,
                body=r.body,
                status=r.status,
            )
            for r in self.requests
            if r.verb is not None and r.resource in RESOURCES
        ]

    def _key(self, resource: str, namespace: str | None) -> tuple[kmock.resource, str]:
        kind = RESOURCES.get(resource)
        if kind is None:
            raise ValueError(f"unknown resource {resource!r}; one of {sorted(RESOURCES)}")
        return kmock.resource(kind.group, kind.version, resource), namespace or self.namespace


def _resource_of(manifest: Mapping[str, Any]) -> tuple[str, _Kind]:
    for plural, kind in RESOURCES.items():
        if (manifest.get("apiVersion"), manifest.get("kind")) == (kind.api_version, kind.kind):
            return plural, kind
    raise ValueError(f"the fake does not serve {manifest.get('apiVersion')}/{manifest.get('kind')}")


def _metadata(name: str, labels: Mapping[str, str] | None, uid: str | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "labels": dict(labels or {})}
    if uid is not None:
        metadata["uid"] = uid
    return metadata


def pod_spec(
    claims: list[str], mount_paths: Mapping[str, str], sub_paths: Mapping[str, str]
) -> dict[str, Any]:
    """A one-container pod spec mounting each claim, scheduled on `node-1` (both backends use it;
    on a real control plane only a pod with a nodeName holds a claim in pvc-protection's eyes)."""
    # Volume names differ from claim names, as in real manifests: the code must follow
    # volumeMounts -> volumes -> persistentVolumeClaim.claimName.
    volumes = [
        {"name": f"volume-{i}", "persistentVolumeClaim": {"claimName": claim}}
        for i, claim in enumerate(claims)
    ]
    mounts: list[dict[str, Any]] = []
    for i, claim in enumerate(claims):
        mount = {"name": f"volume-{i}", "mountPath": mount_paths.get(claim, f"/mnt/{claim}")}
        if claim in sub_paths:
            mount["subPath"] = sub_paths[claim]
        mounts.append(mount)
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
