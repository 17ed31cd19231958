"""One Kubernetes contract suite, every backend there is.

Takes nothing for kmock (always there), the binaries tests/cluster/build.sh built for a real
control plane, and `KERUTA_E2E_KUBECONFIG` for an existing cluster. Gives the `kube_api` fixture,
run once per backend, whose value is a `KubeApi`: a namespace to work in, a kubeconfig that acts
as the cleanup pods do, ways to arrange the world as other actors would (claims, pods, Jobs, a
claim recreated under the same name, a Role rule taken away) and what happened (objects, Events,
the calls the harvester made). And the `kubectl` fixture: the kubectl build.sh built beside the
control plane, for the path a user takes.

- `kmock`: `tests/kube_fixture.FakeCluster`, an emulation: fast, scripted 403s.
- `apiserver`: a fresh namespace on the control plane of bench/controlplane.py, holding
  deploy/'s ServiceAccount, Role and RoleBinding; the kubeconfig is that ServiceAccount's, so
  every call passes real RBAC, admission and pvc-protection; `calls` come from the API server's
  audit log.
- `cluster`: the same on the cluster `KERUTA_E2E_KUBECONFIG` names (it needs rights to create
  namespaces, RBAC objects and tokens; every object goes in a namespace deleted afterwards). Its
  audit log is out of reach, so the ServiceAccount's kubeconfig goes through a recording proxy
  on loopback (tests/kube_recorder.py) and `calls` come from there.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import pytest
import yaml  # type: ignore[import-untyped]
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from bench.controlplane import NOT_BUILT, ControlPlane, binaries_built, create, kubectl
from harvester.kube.cluster import PERMISSIONS, Permission
from tests.kube_fixture import ApiCall, FakeCluster, pod_spec
from tests.kube_recorder import ApiRecorder

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
E2E_KUBECONFIG = "KERUTA_E2E_KUBECONFIG"
# "cluster" only when asked for: the suite creates and deletes namespaces there.
REAL_BACKENDS = ("apiserver", "cluster") if os.environ.get(E2E_KUBECONFIG) else ("apiserver",)
BACKENDS = ("kmock", *REAL_BACKENDS)


class KubeApi(Protocol):
    """What a Kubernetes test may ask of its backend. Resources are named by plural."""

    @property
    def namespace(self) -> str: ...

    @property
    def kubeconfig(self) -> Path:
        """A kubeconfig acting as the cleanup pods do, its context set to `namespace`."""
        ...

    def api_client(self) -> AbstractContextManager[client.ApiClient]: ...

    def add_pvc(self, name: str, *, labels: Mapping[str, str] | None = None) -> str:
        """A claim, protected by kubernetes.io/pvc-protection; returns its uid."""
        ...

    def add_pod(
        self,
        name: str,
        *,
        claims: Iterable[str] = (),
        labels: Mapping[str, str] | None = None,
        phase: str = "Running",
        mount_paths: Mapping[str, str] | None = None,
    ) -> str:
        """A scheduled pod mounting each claim, in `phase`; returns its uid."""
        ...

    def add_job(
        self,
        name: str,
        *,
        claims: Iterable[str] = (),
        labels: Mapping[str, str] | None = None,
        mount_paths: Mapping[str, str] | None = None,
    ) -> str:
        """A Job whose pod template mounts each claim (no pods of its own); returns its uid."""
        ...

    def get(self, resource: str, name: str) -> dict[str, Any] | None:
        """The object as the API serves it now, or None when it is gone."""
        ...

    def remove(self, resource: str, name: str) -> None:
        """The object is gone, finalizers or not (another actor deleted it)."""
        ...

    def recreate(self, resource: str, name: str) -> str:
        """Delete the object and create it again under the same name; returns the new uid."""
        ...

    def forbid(self, verb: str, resource: str) -> None:
        """From now on the harvester's identity may not `verb` `resource` (RBAC's 403)."""
        ...

    @property
    def events(self) -> list[dict[str, Any]]:
        """The namespace's core/v1 Events, oldest first."""
        ...

    @property
    def calls(self) -> list[ApiCall]:
        """The resource requests the harvester's identity made, in order."""
        ...


def manifests(name: str) -> list[dict[str, Any]]:
    """The objects of deploy/`name`."""
    return [doc for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc]


(SERVICE_ACCOUNT,) = (doc["metadata"]["name"] for doc in manifests("serviceaccount.yaml"))
(ROLE,) = manifests("role.yaml")


def rules_without(rules: Iterable[dict[str, Any]], permission: Permission) -> list[dict[str, Any]]:
    """A Role's `rules` with `permission` taken away and every other grant kept: a rule that
    names it among other resources or verbs is split, and a rule left with no verb dropped."""
    kept = []
    for rule in rules:
        if (
            permission.api_group in rule.get("apiGroups", [])
            and permission.resource in rule["resources"]
            and permission.verb in rule["verbs"]
        ):
            others = [r for r in rule["resources"] if r != permission.resource]
            if others:  # the rule's other resources keep every verb
                kept.append(rule | {"resources": others})
            rule = rule | {
                "resources": [permission.resource],
                "verbs": [v for v in rule["verbs"] if v != permission.verb],
            }
        if rule["verbs"]:
            kept.append(rule)
    return kept


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def current_cluster(kubeconfig: Path) -> dict[str, Any]:
    """The cluster entry of the kubeconfig's current context (`server`, certificate authority),
    with a relative certificate-authority path made absolute."""
    document = yaml.safe_load(kubeconfig.read_text())
    context = next(c for c in document["contexts"] if c["name"] == document["current-context"])
    entry = next(c for c in document["clusters"] if c["name"] == context["context"]["cluster"])
    cluster: dict[str, Any] = copy.deepcopy(entry["cluster"])
    if cluster.get("certificate-authority"):
        cluster["certificate-authority"] = str(kubeconfig.parent / cluster["certificate-authority"])
    return cluster


def service_account_kubeconfig(
    admin_kubeconfig: Path, namespace: str, name: str, path: Path, *, server: str | None = None
) -> Path:
    """Write to `path` a kubeconfig that reaches the admin's cluster (or `server`, a plain-HTTP
    stand-in for it) as ServiceAccount `namespace/name`, with a fresh bound token (TokenRequest,
    an hour) and `namespace` as its context's namespace."""
    cluster = {"server": server} if server else current_cluster(admin_kubeconfig)
    with _client(admin_kubeconfig) as api_client:
        answer = client.CoreV1Api(api_client).create_namespaced_service_account_token(
            name,
            namespace,
            client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
            ),
        )
    assert answer.status is not None and answer.status.token
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": cluster}],
        "users": [{"name": name, "user": {"token": answer.status.token}}],
        "contexts": [
            {
                "name": name,
                "context": {"cluster": "cluster", "user": name, "namespace": namespace},
            }
        ],
        "current-context": name,
    }
    path.write_text(yaml.safe_dump(document))
    return path


def can(admin: client.ApiClient, namespace: str, user: str, permission: Permission) -> bool:
    """Whether the API server's authorizer lets ServiceAccount `user` of `namespace` do it, now."""
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=user,
            groups=["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
            resource_attributes=client.V1ResourceAttributes(
                namespace=namespace,
                group=permission.api_group,
                resource=permission.resource,
                verb=permission.verb,
            ),
        )
    )
    answer = client.AuthorizationV1Api(admin).create_subject_access_review(review)
    return bool(answer.status and answer.status.allowed)


def audited_calls(audit_log: Path, user: str) -> list[ApiCall]:
    """The resource requests `user` made, from an API server's audit log (JSON lines)."""
    calls = []
    for line in audit_log.read_text().splitlines():
        event = json.loads(line)
        target = event.get("objectRef") or {}
        if event["user"]["username"] != user or "resource" not in target:
            continue
        resource = target["resource"]
        if target.get("subresource"):
            resource = f"{resource}/{target['subresource']}"
        calls.append(
            ApiCall(
                verb=event["verb"],
                group=target.get("apiGroup", ""),
                resource=resource,
                name=target.get("name"),
                body=event.get("requestObject"),
                status=event.get("responseStatus", {}).get("code", 0),
            )
        )
    return calls


def _client(kubeconfig: Path) -> client.ApiClient:
    api_client: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig), persist_config=False
    )
    return api_client


class RealNamespace:
    """A fresh namespace on a real API server holding deploy/'s ServiceAccount, Role and
    RoleBinding. `kubeconfig` acts as that ServiceAccount; the arranging is done as the admin.
    What the ServiceAccount asked comes from `audit_log`, the API server's (JSON lines), when
    this process can read it; else `kubeconfig` goes through a recording proxy on loopback
    (tests/kube_recorder.py)."""

    def __init__(
        self, admin_kubeconfig: Path, workdir: Path, audit_log: Path | None, *, runs_pods: bool
    ) -> None:
        self.runs_pods = runs_pods  # False: no scheduler or kubelet; phases are ours to set
        self.admin_kubeconfig = admin_kubeconfig
        self._audit_log = audit_log
        self.admin = _client(admin_kubeconfig)
        self._core = client.CoreV1Api(self.admin)
        self._batch = client.BatchV1Api(self.admin)
        self._rbac = client.RbacAuthorizationV1Api(self.admin)
        self.namespace = f"keruta-test-{uuid.uuid4().hex[:8]}"
        self.user = f"system:serviceaccount:{self.namespace}:{SERVICE_ACCOUNT}"
        self.kubeconfig = workdir / f"{self.namespace}.kubeconfig"
        self._recorder = None if audit_log else ApiRecorder(current_cluster(admin_kubeconfig))

    def __enter__(self) -> RealNamespace:
        try:
            self._set_up()
        except BaseException:
            self.__exit__(None, None, None)  # nothing left behind by a half-made namespace
            raise
        return self

    def _set_up(self) -> None:
        namespace = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": self.namespace, "labels": {"app.kubernetes.io/part-of": "keruta"}},
        }
        create(self.admin, namespace, "")
        for name in ("serviceaccount.yaml", "role.yaml", "rolebinding.yaml"):
            for doc in manifests(name):
                create(self.admin, doc, self.namespace)
        # RBAC reaches the authorizer through an informer: wait until it grants the Role; and
        # for the namespace's default ServiceAccount, without which no pod is admitted.
        wait_until(
            lambda: all(self.can(p.api_group, p.resource, p.verb) for p in PERMISSIONS),
            "RBAC to grant deploy/role.yaml",
        )
        wait_until(
            lambda: self._exists(self._core.read_namespaced_service_account, "default"),
            "the default ServiceAccount",
        )
        if self._recorder is not None:
            self._recorder.__enter__()
        service_account_kubeconfig(
            self.admin_kubeconfig,
            self.namespace,
            SERVICE_ACCOUNT,
            self.kubeconfig,
            server=self._recorder.url if self._recorder else None,
        )

    def __exit__(self, *exc_info: object) -> None:
        with contextlib.suppress(ApiException):
            self._core.delete_namespace(self.namespace)  # the namespace controller does the rest
        if self._recorder is not None:
            self._recorder.__exit__()
        self.admin.close()  # type: ignore[no-untyped-call]

    @contextlib.contextmanager
    def api_client(self) -> Iterator[client.ApiClient]:
        api_client = _client(self.kubeconfig)
        try:
            yield api_client
        finally:
            api_client.close()  # type: ignore[no-untyped-call]

    # -- arranging, as the admin

    def add_pvc(self, name: str, *, labels: Mapping[str, str] | None = None) -> str:
        return self._create(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": name, "labels": dict(labels or {})},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            }
        )

    def add_pod(
        self,
        name: str,
        *,
        claims: Iterable[str] = (),
        labels: Mapping[str, str] | None = None,
        phase: str = "Running",
        mount_paths: Mapping[str, str] | None = None,
    ) -> str:
        uid = self._create(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "labels": dict(labels or {})},
                "spec": pod_spec(list(claims), mount_paths or {}),
            }
        )
        if phase != "Pending":  # no kubelet here: say what it would have reported
            self._core.patch_namespaced_pod_status(
                name, self.namespace, {"status": {"phase": phase}}
            )
        return uid

    def add_job(
        self,
        name: str,
        *,
        claims: Iterable[str] = (),
        labels: Mapping[str, str] | None = None,
        mount_paths: Mapping[str, str] | None = None,
        suspended: bool = True,
    ) -> str:
        # Suspended unless asked: the job controller then makes no pods mounting the claim too.
        return self._create(
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {"name": name, "labels": dict(labels or {})},
                "spec": {
                    "suspend": suspended,
                    "backoffLimit": 0,
                    "template": {
                        "metadata": {"labels": dict(labels or {})},
                        "spec": pod_spec(list(claims), mount_paths or {}),
                    },
                },
            }
        )

    def get(self, resource: str, name: str) -> dict[str, Any] | None:
        read = self._methods(resource)["read"]
        try:
            answer = read(name, self.namespace, _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        obj: dict[str, Any] = json.loads(answer.data)
        return obj

    def remove(self, resource: str, name: str) -> None:
        methods = self._methods(resource)
        with contextlib.suppress(ApiException):
            methods["delete"](name, self.namespace, grace_period_seconds=0)
        obj = self.get(resource, name)
        if obj is not None and obj["metadata"].get("finalizers"):
            with contextlib.suppress(ApiException):  # gone meanwhile
                methods["patch"](name, self.namespace, {"metadata": {"finalizers": None}})
        wait_until(lambda: self.get(resource, name) is None, f"{resource}/{name} to go")

    def recreate(self, resource: str, name: str) -> str:
        current = self.get(resource, name)
        if current is None:
            raise KeyError(f"{resource}/{name} does not exist")
        self.remove(resource, name)
        kept = {"name", "labels", "annotations"}
        current["metadata"] = {k: v for k, v in current["metadata"].items() if k in kept}
        current.pop("status", None)
        return self._create(current)

    def forbid(self, verb: str, resource: str) -> None:
        name = ROLE["metadata"]["name"]
        answer: Any = self._rbac.read_namespaced_role(name, self.namespace, _preload_content=False)
        role = json.loads(answer.data)
        group = next(p.api_group for p in PERMISSIONS if p.resource == resource)
        rules = rules_without(role["rules"], Permission(group, resource, verb))
        self._rbac.replace_namespaced_role(name, self.namespace, role | {"rules": rules})
        wait_until(lambda: not self.can(group, resource, verb), f"RBAC to forbid {verb} {resource}")

    # -- observing

    @property
    def events(self) -> list[dict[str, Any]]:
        answer: Any = self._core.list_namespaced_event(self.namespace, _preload_content=False)
        items: list[dict[str, Any]] = json.loads(answer.data)["items"]
        # resourceVersion is etcd's revision here: it orders creations where timestamps tie.
        return sorted(items, key=lambda event: int(event["metadata"]["resourceVersion"]))

    @property
    def calls(self) -> list[ApiCall]:
        if self._recorder is not None:
            return self._recorder.calls
        assert self._audit_log is not None
        # The log is written before the answer leaves the server, so it is complete here.
        return audited_calls(self._audit_log, self.user)

    def can(self, group: str, resource: str, verb: str) -> bool:
        """Whether the API server's authorizer lets the ServiceAccount do it, now."""
        review = client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=self.user,
                groups=["system:serviceaccounts", f"system:serviceaccounts:{self.namespace}"],
                resource_attributes=client.V1ResourceAttributes(
                    namespace=self.namespace, group=group, resource=resource, verb=verb
                ),
            )
        )
        answer = client.AuthorizationV1Api(self.admin).create_subject_access_review(review)
        return bool(answer.status and answer.status.allowed)

    def _create(self, manifest: dict[str, Any]) -> str:
        plural = {"Pod": "pods", "PersistentVolumeClaim": "persistentvolumeclaims", "Job": "jobs"}
        answer = self._methods(plural[manifest["kind"]])["create"](
            self.namespace, manifest, _preload_content=False
        )
        return str(json.loads(answer.data)["metadata"]["uid"])

    def _exists(self, read: Callable[..., Any], name: str) -> bool:
        try:
            read(name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def _methods(self, resource: str) -> dict[str, Callable[..., Any]]:
        api, kind = {
            "pods": (self._core, "pod"),
            "persistentvolumeclaims": (self._core, "persistent_volume_claim"),
            "jobs": (self._batch, "job"),
        }[resource]
        return {
            action: getattr(api, f"{action}_namespaced_{kind}")
            for action in ("create", "read", "patch", "delete")
        }


def needs_control_plane(item: pytest.Item) -> bool:
    """Whether a collected test runs on the control plane of bench/controlplane.py."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    on_apiserver = "apiserver" in (params.get("kube_api"), params.get("real_api"))
    return on_apiserver or "control_plane" in getattr(item, "fixturenames", ())


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """One real control plane for the whole session (about 5 s to start)."""
    if os.environ.get("KERUTA_SKIP_CLUSTER"):
        pytest.skip("make test-fast: kmock only")
    if not binaries_built():
        pytest.skip(NOT_BUILT)
    with ControlPlane(tmp_path_factory.mktemp("control-plane")) as plane:
        yield plane


@pytest.fixture(scope="session")
def cacheless_plane(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ControlPlane]:
    """A second control plane, whose Jobs are watched from etcd, not from the watch cache
    (`--watch-cache-sizes=jobs.batch#0`): there a watch from a compacted resourceVersion is 410
    Gone, as on any cluster once the cache's window has passed, while the shared one serves every
    resourceVersion since it started. One per test run, for the tests that force a relist. (It
    asks for `control_plane` only to be skipped, or left out by `make test-fast`, with it.)"""
    plane = ControlPlane(
        tmp_path_factory.mktemp("cacheless"), apiserver_args=("--watch-cache-sizes=jobs.batch#0",)
    )
    with plane:
        yield plane


@pytest.fixture(scope="session", name="kubectl")
def kubectl_fixture() -> Path:
    """The kubectl tests/cluster/build.sh built (or `$KERUTA_KUBECTL`)."""
    found = kubectl()
    if found is None:
        pytest.skip(NOT_BUILT)
    return found


def _backend(
    name: str, request: pytest.FixtureRequest, workdir: Path
) -> AbstractContextManager[KubeApi]:
    if name == "kmock":
        return FakeCluster(workdir)
    if name == "apiserver":
        plane: ControlPlane = request.getfixturevalue("control_plane")
        return RealNamespace(plane.admin_kubeconfig, workdir, plane.audit_log, runs_pods=False)
    return RealNamespace(Path(os.environ[E2E_KUBECONFIG]), workdir, None, runs_pods=True)


@pytest.fixture(params=BACKENDS)
def kube_api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KubeApi]:
    """The Kubernetes API of each backend (see the module docstring), fresh for every test."""
    with _backend(request.param, request, tmp_path_factory.mktemp("kube")) as api:
        yield api


@pytest.fixture(params=REAL_BACKENDS)
def real_api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RealNamespace]:
    """A fresh namespace on each real backend, for what an emulation cannot answer."""
    backend = _backend(request.param, request, tmp_path_factory.mktemp("kube"))
    assert isinstance(backend, RealNamespace)
    with backend as api:
        yield api
