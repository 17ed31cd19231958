"""deploy/: the kustomize base and its examples, checked against the schemas and the code.

- every Kubernetes object under deploy/ validates (kubernetes-validate, strict) for every minor
  version from 1.29 to the newest the installed kubernetes-validate ships;
- the Role grants exactly `harvester.kube.cluster.PERMISSIONS`, bound to the cleanup Job's
  ServiceAccount; the controller's Role, and the ClusterRole of the opt-in cluster-wide/
  component, grant exactly `CONTROLLER_PERMISSIONS`, bound to the controller's ServiceAccount;
- the controller's Deployment runs `harvester controller --namespace=$(POD_NAMESPACE)` in a pod
  that meets the restricted Pod Security Standard (so does the cleanup Job's), and the
  cluster-wide/ component turns that into `--all-namespaces`;
- the cleanup Job runs the seed's command line, mounts the main Job's volume read-only where the
  harvester looks, takes the token from the Secret, and is locked down (non-root, read-only root
  filesystem, no capabilities, bounded in time and memory);
- the NetworkPolicy selects the cleanup pods and lets them reach DNS, keruta-api and the
  Kubernetes API on their ports only; the controller's lets it reach the Kubernetes API only;
- the kustomization lists every manifest, and applying it starts no Job; the cluster-wide/
  component lists its own, and the base never includes it; `kubectl kustomize` (the kubectl
  tests/cluster/build.sh built) builds the base namespaced and the overlay cluster-wide.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml  # type: ignore[import-untyped]
from kubernetes_validate import utils as kv_utils

from harvester import cli
from harvester.exitcodes import ExitCode
from harvester.kube.cluster import (
    CONTROLLER_PERMISSIONS,
    PERMISSIONS,
    WATCH_PERMISSIONS,
    Permission,
)
from harvester.report import TERMINATION_LOG
from harvester.settings import (
    DEFAULT_ROOT,
    TOKEN_ENV,
    TOKEN_FILE,
    ControllerSettings,
    Reporting,
    Settings,
    default_of,
    flags_of,
    parse_duration,
)

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUSTOMIZATION = DEPLOY / "kustomization.yaml"
CLEANUP_JOB = DEPLOY / "cleanup-job.yaml"
MAIN_JOB = DEPLOY / "examples" / "main-job.yaml"
EXAMPLE_PVC = DEPLOY / "examples" / "pvc.yaml"
CONTROLLER_DEPLOYMENT = DEPLOY / "controller-deployment.yaml"
CLUSTER_WIDE = DEPLOY / "cluster-wide"

CLEANUP = "keruta-harvester"  # the cleanup pods' ServiceAccount, Role and RoleBinding
CONTROLLER = "keruta-harvester-controller"  # the controller's objects, every kind
CONTROLLER_COMMAND = ["harvester", "controller", "--namespace=$(POD_NAMESPACE)"]

OLDEST_SUPPORTED = (1, 29)

# The seed's sample (seed-cleanup-job-spec.md): it must run unchanged.
SEED_COMMAND = [
    "keruta-agent",
    "cleanup",
    "--task-id",
    "$(KERUTA_TASK_ID)",
    "--api-url",
    "$(KERUTA_API_URL)",
    "--source-pod",
    "$(KERUTA_SOURCE_POD)",
]
CLEANUP_POD_LABELS = {
    "app.kubernetes.io/name": "keruta-harvester",
    "app.kubernetes.io/component": "cleanup",
}
CONTROLLER_POD_LABELS = {
    "app.kubernetes.io/name": "keruta-harvester",
    "app.kubernetes.io/component": "controller",
}

Doc = dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Loading


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def kubernetes_versions() -> list[str]:
    """Every minor version kubernetes-validate ships schemas for, from OLDEST_SUPPORTED up."""
    minors = {kv_utils.major_minor(version) for version in kv_utils.all_versions()}
    return sorted((v for v in minors if _version_key(v) >= OLDEST_SUPPORTED), key=_version_key)


def manifest_files() -> list[Path]:
    """Every YAML file under deploy/ (examples included) but the kustomization."""
    files = [p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()]
    return sorted(p for p in files if p.name != KUSTOMIZATION.name)


@cache
def load(path: Path) -> tuple[Doc, ...]:
    """The non-empty YAML documents of a file."""
    docs = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    assert all(isinstance(doc, dict) for doc in docs), f"{path}: a document is not a mapping"
    return tuple(docs)


def only(path: Path, kind: str) -> Doc:
    """The one object of `kind` in `path`."""
    found = [doc for doc in load(path) if doc.get("kind") == kind]
    assert len(found) == 1, f"{path.relative_to(ROOT)}: expected one {kind}, found {len(found)}"
    return found[0]


def objects(kind: str) -> list[Doc]:
    """Every object of `kind` in the base and its components (examples excluded)."""
    return [
        doc
        for path in manifest_files()
        if "examples" not in path.relative_to(DEPLOY).parts
        for doc in load(path)
        if doc.get("kind") == kind
    ]


def named(kind: str, name: str) -> Doc:
    """The one object of `kind` called `name` in the base and its components."""
    found = [doc for doc in objects(kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"deploy/: expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_spec(job: Doc) -> Doc:
    spec: Doc = job["spec"]["template"]["spec"]
    return spec


def container(job: Doc, name: str) -> Doc:
    found: list[Doc] = [c for c in pod_spec(job)["containers"] if c["name"] == name]
    assert len(found) == 1, f"{job['metadata']['name']}: expected one container {name!r}"
    return found[0]


def cleanup_job() -> Doc:
    return only(CLEANUP_JOB, "Job")


def cleanup_container() -> Doc:
    return container(cleanup_job(), "cleanup-container")


def controller_deployment() -> Doc:
    return only(CONTROLLER_DEPLOYMENT, "Deployment")


def controller_container() -> Doc:
    return container(controller_deployment(), "controller")


def env_of(c: Doc) -> dict[str, Doc]:
    names = [entry["name"] for entry in c.get("env", [])]
    assert len(names) == len(set(names)), f"{c['name']}: an environment variable is set twice"
    return {entry["name"]: entry for entry in c.get("env", [])}


def env_value(c: Doc, name: str) -> str:
    value = env_of(c)[name].get("value")
    assert isinstance(value, str), f"{c['name']}: {name} has no literal value"
    return value


def volume_path(job: Doc, c: Doc, path: str) -> tuple[str, str] | None:
    """(claim, path inside the claim's volume) that `path` in container `c` lands on, if any."""
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod_spec(job).get("volumes", [])
        if "persistentVolumeClaim" in v
    }
    best: tuple[int, str, str] | None = None
    target = PurePosixPath(path)
    for mount in c.get("volumeMounts", []):
        mount_path = PurePosixPath(mount["mountPath"])
        if mount["name"] not in claims or not target.is_relative_to(mount_path):
            continue
        inside = PurePosixPath(mount.get("subPath", "")) / target.relative_to(mount_path)
        depth = len(mount_path.parts)
        if best is None or depth > best[0]:  # the deepest mount hides the others
            best = (depth, claims[mount["name"]], inside.as_posix())
    return None if best is None else (best[1], best[2])


_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|k|M|G)?$")
_FACTORS = {None: 1.0, "m": 0.001, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 1024.0}
_FACTORS |= {"Mi": 1024.0**2, "Gi": 1024.0**3}


def quantity(value: object) -> float:
    """A Kubernetes resource quantity (the forms used here) as a number."""
    match = _QUANTITY.match(str(value))
    assert match, f"unexpected quantity {value!r}"
    return float(match.group(1)) * _FACTORS[match.group(2)]


# ---------------------------------------------------------------------------------------------
# Schemas


def test_versions_cover_the_supported_range() -> None:
    """If kubernetes-validate dropped 1.29, the parametrisation below would shrink silently."""
    versions = kubernetes_versions()
    assert versions[0] == "1.29"
    expected = [f"1.{minor}" for minor in range(29, _version_key(versions[-1])[1] + 1)]
    assert versions == expected


def test_manifests_found() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in manifest_files()}
    assert {"cleanup-job.yaml", "role.yaml", "examples/main-job.yaml"} <= names


@pytest.mark.parametrize("version", kubernetes_versions(), ids=lambda v: f"v{v}")
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_manifest_validates_strictly(path: Path, version: str) -> None:
    docs = load(path)
    assert docs, f"{path.relative_to(ROOT)}: no YAML documents"
    for doc in docs:
        what = f"{path.relative_to(ROOT)}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            validated = kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(part) for part in exc.path) or "(top)"
            pytest.fail(f"{what}: invalid for Kubernetes {version} at {where}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(f"{what}: {exc.message}")
        # The schema used is the version asked for, not an older fallback.
        assert validated == version, f"{what}: validated against {validated}, not {version}"


# ---------------------------------------------------------------------------------------------
# RBAC


def granted(role: Doc) -> set[Permission]:
    """Every (group, resource, verb) a Role grants; rules that restrict by name fail."""
    grants: set[Permission] = set()
    for rule in role["rules"]:
        extra = set(rule) - {"apiGroups", "resources", "verbs"}
        assert not extra, f"Role rule {rule} uses {sorted(extra)}: not needed by the harvester"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    grants.add(Permission(group, resource, verb))
    return grants


def assert_grants_exactly(role: Doc, wanted: tuple[Permission, ...], where: str) -> None:
    grants = granted(role)
    what = f"{role['kind']} {role['metadata']['name']}"
    assert not set(wanted) - grants, f"{what} misses {sorted(set(wanted) - grants)} ({where})"
    assert not grants - set(wanted), (
        f"{what} grants more than the code needs: {grants - set(wanted)}"
    )
    for permission in grants:
        assert "*" not in permission, f"wildcard in {what}: {permission}"


def test_role_grants_exactly_what_the_code_calls() -> None:
    assert_grants_exactly(named("Role", CLEANUP), PERMISSIONS, "harvester/kube/cluster.py")


@pytest.mark.parametrize("kind", ["Role", "ClusterRole"])
def test_controller_role_grants_exactly_what_the_controller_calls(kind: str) -> None:
    role = named(kind, CONTROLLER)
    assert_grants_exactly(role, CONTROLLER_PERMISSIONS, "CONTROLLER_PERMISSIONS")


def test_rbac_stays_namespaced_unless_the_cluster_wide_component_is_added() -> None:
    """The base grants nothing outside its namespace; every cluster-scoped grant is in
    cluster-wide/, which the base does not include."""
    for name in kustomization()["resources"]:
        kinds = {doc["kind"] for doc in load(DEPLOY / name)}
        assert not kinds & {"ClusterRole", "ClusterRoleBinding"}, f"{name} is cluster-wide"
    for kind in ("ClusterRole", "ClusterRoleBinding"):
        (found,) = objects(kind)
        assert found["metadata"]["name"] == CONTROLLER
    cluster_scoped = {
        path.name
        for path in manifest_files()
        for doc in load(path)
        if doc["kind"] in ("ClusterRole", "ClusterRoleBinding")
    }
    assert cluster_scoped == set(component()["resources"])
    assert all((CLUSTER_WIDE / name).is_file() for name in cluster_scoped)


def test_role_binding_binds_the_role_to_the_jobs_service_account() -> None:
    role, binding = named("Role", CLEANUP), named("RoleBinding", CLEANUP)
    account = named("ServiceAccount", CLEANUP)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    # No namespace: in a RoleBinding that means the binding's own, wherever the base is applied.
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"]}]
    spec = pod_spec(cleanup_job())
    assert spec["serviceAccountName"] == account["metadata"]["name"] == "keruta-harvester"
    # The harvester calls the Kubernetes API: the token must be mounted.
    assert account.get("automountServiceAccountToken") is True
    assert spec.get("automountServiceAccountToken", True) is True


def test_controller_bindings_bind_its_roles_to_the_deployments_service_account() -> None:
    account = named("ServiceAccount", CONTROLLER)
    binding = named("RoleBinding", CONTROLLER)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": named("Role", CONTROLLER)["metadata"]["name"],
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": CONTROLLER}]
    cluster_binding = named("ClusterRoleBinding", CONTROLLER)
    assert cluster_binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": named("ClusterRole", CONTROLLER)["metadata"]["name"],
    }
    # A ClusterRoleBinding must name the subject's namespace; "default" is what kustomize's
    # namespace transformer replaces with the overlay's namespace (deploy/README.md).
    assert cluster_binding["subjects"] == [
        {"kind": "ServiceAccount", "name": CONTROLLER, "namespace": "default"}
    ]
    spec = pod_spec(controller_deployment())
    assert spec["serviceAccountName"] == account["metadata"]["name"] == CONTROLLER
    # The controller lists, watches and creates through the API: the token must be mounted.
    assert account.get("automountServiceAccountToken") is True
    assert spec["automountServiceAccountToken"] is True


# ---------------------------------------------------------------------------------------------
# The cleanup Job


def test_cleanup_job_runs_the_seeds_command_line() -> None:
    job, c = cleanup_job(), cleanup_container()
    assert c["command"] == SEED_COMMAND
    assert "args" not in c, "args would be appended to the seed's command line"
    assert c["image"] == "keruta-harvester:latest"
    # Kubernetes leaves $(NAME) as it is when NAME is not in the container's environment.
    env = env_of(c)
    for reference in re.findall(r"\$\((\w+)\)", " ".join(c["command"])):
        assert reference in env, f"command references $({reference}), which env does not set"
    task = env_value(c, "KERUTA_TASK_ID")
    assert job["metadata"]["name"] == f"cleanup-job-for-task-{task}"
    assert job["metadata"]["labels"]["app"] == "keruta"
    assert job["metadata"]["labels"]["task-id"] == task


def test_cleanup_job_environment() -> None:
    c = cleanup_container()
    env = env_of(c)
    assert env["KERUTA_API_TOKEN"] == {
        "name": "KERUTA_API_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "keruta-api-token", "key": "token"}},
    }
    for name, field in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")):
        assert env[name]["valueFrom"]["fieldRef"]["fieldPath"] == field
        assert "value" not in env[name]
    assert env_value(c, "KERUTA_API_URL") == "http://keruta-api:8080"
    assert env_value(c, "KERUTA_LOG_FORMAT") == "text"
    assert env_value(c, "KERUTA_SOURCE_POD").startswith("keruta-job-")
    # Every variable is one the harvester reads (a typo would be ignored silently).
    flags = [flag for _name, flag in (*flags_of(Settings), *flags_of(Reporting))]
    known = {flag.envvar for flag in (*flags, TOKEN_FILE) if flag.envvar}
    known.add(TOKEN_ENV)  # read from the environment only, never from a flag
    assert set(env) <= known, f"variables the harvester does not read: {set(env) - known}"


def test_cleanup_job_mounts_the_task_volume_read_only_where_the_harvester_looks() -> None:
    job, c = cleanup_job(), cleanup_container()
    volumes = {v["name"]: v for v in pod_spec(job)["volumes"]}
    claim_volumes = {n for n, v in volumes.items() if "persistentVolumeClaim" in v}
    assert claim_volumes == {"task-volume"}
    assert volumes["task-volume"]["persistentVolumeClaim"] == {
        "claimName": "pvc-123",
        "readOnly": True,
    }
    mounts = [m for m in c["volumeMounts"] if m["name"] == "task-volume"]
    assert mounts == [
        {"name": "task-volume", "mountPath": "/.keruta", "subPath": ".keruta", "readOnly": True}
    ]
    root = env_of(c).get("KERUTA_ARTIFACTS_DIR", {}).get("value", DEFAULT_ROOT)
    assert root == DEFAULT_ROOT == "/.keruta/doc"
    assert volume_path(job, c, root) == ("pvc-123", ".keruta/doc")
    # The claim mounted is the claim released.
    assert env_value(c, "KERUTA_PVC") == "pvc-123"


def test_cleanup_job_writes_only_to_an_empty_dir_at_tmp() -> None:
    job, c = cleanup_job(), cleanup_container()
    volumes = {v["name"]: v for v in pod_spec(job)["volumes"]}
    writable = [m for m in c["volumeMounts"] if not m.get("readOnly", False)]
    assert [m["mountPath"] for m in writable] == ["/tmp"]
    assert "emptyDir" in volumes[writable[0]["name"]]


def test_cleanup_job_security_context() -> None:
    spec, c = pod_spec(cleanup_job()), cleanup_container()
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == pod["runAsGroup"] == 10001
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    # fsGroup would only be needed to write, and makes the kubelet chown the volume.
    assert "fsGroup" not in pod
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    for key in ("runAsUser", "runAsGroup", "runAsNonRoot"):
        assert key not in sc or sc[key] == pod[key], f"container {key} overrides the pod's"
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")


def test_cleanup_job_lifecycle_and_resources() -> None:
    job, c = cleanup_job(), cleanup_container()
    spec = job["spec"]
    assert pod_spec(job)["restartPolicy"] == "Never"
    assert spec["backoffLimit"] == 2
    assert spec["ttlSecondsAfterFinished"] == 3600
    # The harvester's own --deadline must run out first, so it reports its own timeout.
    default_deadline = inspect.signature(cli.cleanup).parameters["deadline"].default
    deadline = parse_duration(default_deadline, what="--deadline")
    assert deadline < spec["activeDeadlineSeconds"] <= deadline + 600
    resources = c["resources"]
    for kind in ("cpu", "memory"):
        request, limit = resources["requests"][kind], resources["limits"][kind]
        assert 0 < quantity(request) <= quantity(limit), f"{kind}: {request} > {limit}"
    # Measured peak RSS for a 1 GiB file: ~49 MiB. Leave room for rich, httpx and kubernetes.
    assert quantity(resources["limits"]["memory"]) >= 128 * 1024**2
    assert c["terminationMessagePolicy"] == "File"
    assert c.get("terminationMessagePath", "/dev/termination-log") == str(TERMINATION_LOG)


def test_cleanup_job_fails_at_once_when_a_retry_cannot_help() -> None:
    rules = cleanup_job()["spec"]["podFailurePolicy"]["rules"]
    fail_job = [r for r in rules if r["action"] == "FailJob"]
    assert len(fail_job) == 1
    on_codes = fail_job[0]["onExitCodes"]
    assert on_codes["containerName"] == "cleanup-container"
    assert on_codes["operator"] == "In"
    assert set(on_codes["values"]) == {ExitCode.USAGE, ExitCode.AUTH_REJECTED}


def test_cleanup_pods_are_told_apart_from_the_main_jobs() -> None:
    template_labels = cleanup_job()["spec"]["template"]["metadata"]["labels"]
    assert CLEANUP_POD_LABELS.items() <= template_labels.items()
    # Whatever finds a task's pods by app=keruta/task-id must find only the main Job's.
    assert "app" not in template_labels
    assert "task-id" not in template_labels


# ---------------------------------------------------------------------------------------------
# Pod security: both pods the base runs meet the restricted Pod Security Standard
# (https://kubernetes.io/docs/concepts/security/pod-security-standards/, "latest"); the server
# enforces it in tests/test_real_cluster.py, this says which field is wrong without a cluster.

RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_violations(pod: Doc) -> list[str]:
    """What in a pod spec the restricted Pod Security Standard forbids (empty: it complies)."""
    found: list[str] = []
    pod_sc: Doc = pod.get("securityContext", {})
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            found.append(f"{key} is set")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            found.append(f"volume {volume['name']} is {sorted(kinds)}")
    if pod.get("securityContext", {}).get("sysctls"):
        found.append("sysctls are set")
    every = [*pod.get("initContainers", []), *pod["containers"]]
    for c in every:
        sc: Doc = c.get("securityContext", {})
        name = c["name"]
        if sc.get("privileged"):
            found.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation is not false")
        capabilities = sc.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            found.append(f"{name}: capabilities do not drop ALL")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: adds capabilities {capabilities['add']}")
        if any(port.get("hostPort") for port in c.get("ports", [])):
            found.append(f"{name}: uses a hostPort")
        if sc.get("procMount", "Default") != "Default":
            found.append(f"{name}: procMount")
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            found.append(f"{name}: runAsNonRoot is not true")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            found.append(f"{name}: runs as uid 0")
        profile: Doc = sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}
        seccomp = profile.get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: seccompProfile is {seccomp}")
        selinux: Doc = sc.get("seLinuxOptions") or pod_sc.get("seLinuxOptions") or {}
        if selinux.get("user") or selinux.get("role"):
            found.append(f"{name}: seLinuxOptions user or role")
    return found


def test_the_restricted_checker_finds_a_violation() -> None:
    """Without this, a checker that finds nothing would pass every pod."""
    pod = pod_spec(controller_deployment())
    broken = pod | {"securityContext": {}, "volumes": [{"name": "h", "hostPath": {"path": "/"}}]}
    said = restricted_violations(broken)
    assert "controller: runAsNonRoot is not true" in said
    assert "controller: seccompProfile is None" in said
    assert "volume h is ['hostPath']" in said


@pytest.mark.parametrize("pod", ["cleanup Job", "controller Deployment"])
def test_pods_meet_the_restricted_pod_security_standard(pod: str) -> None:
    workload = cleanup_job() if pod == "cleanup Job" else controller_deployment()
    assert restricted_violations(pod_spec(workload)) == []


# ---------------------------------------------------------------------------------------------
# The controller


def test_controller_runs_harvester_controller_on_its_own_namespace() -> None:
    c = controller_container()
    assert c["command"] == CONTROLLER_COMMAND
    assert "args" not in c, "args would be appended to the command"
    # The same image as the cleanup Jobs: one image, one program.
    assert c["image"] == cleanup_container()["image"]
    # $(POD_NAMESPACE) expands only when the container's environment sets it.
    env = env_of(c)
    for reference in re.findall(r"\$\((\w+)\)", " ".join(c["command"])):
        assert reference in env, f"command references $({reference}), which env does not set"
    for name, field in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")):
        assert env[name] == {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field}}}
    assert set(env) == {"POD_NAME", "POD_NAMESPACE"}
    # No token: the controller talks to the Kubernetes API only (no --report-failed yet).
    assert "KERUTA_API_TOKEN" not in env


def test_controller_deployment_is_two_replicas_rolled_without_a_gap() -> None:
    """Leader election lets two replicas run: one acts, the other stands by; a rollout starts
    the new pod before stopping an old one."""
    deployment = controller_deployment()
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    assert spec["selector"] == {"matchLabels": CONTROLLER_POD_LABELS}
    template_labels = spec["template"]["metadata"]["labels"]
    assert CONTROLLER_POD_LABELS.items() <= template_labels.items()
    assert "app" not in template_labels and "task-id" not in template_labels
    assert deployment["metadata"]["name"] == CONTROLLER


def test_controller_probes_use_the_endpoints_it_serves() -> None:
    c = controller_container()
    assert c["ports"] == [{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    # The port the flag's default listens on: the probes and the process agree.
    assert default_of(ControllerSettings, "metrics_bind_address") == ":8080"


def test_controller_pod_is_locked_down_like_the_cleanup_pod() -> None:
    spec, c = pod_spec(controller_deployment()), controller_container()
    assert spec["securityContext"] == pod_spec(cleanup_job())["securityContext"]
    assert spec["securityContext"]["runAsUser"] == 10001
    assert c["securityContext"] == cleanup_container()["securityContext"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert spec["enableServiceLinks"] is False
    volumes = {v["name"]: v for v in spec["volumes"]}
    writable = [m for m in c["volumeMounts"] if not m.get("readOnly", False)]
    assert [m["mountPath"] for m in writable] == ["/tmp"]
    assert "emptyDir" in volumes[writable[0]["name"]]
    assert not [v for v in volumes.values() if "persistentVolumeClaim" in v]


def test_controller_resources() -> None:
    resources = controller_container()["resources"]
    for kind in ("cpu", "memory"):
        request, limit = resources["requests"][kind], resources["limits"][kind]
        assert 0 < quantity(request) <= quantity(limit), f"{kind}: {request} > {limit}"
    # The interpreter with the kubernetes client is ~54 MiB; the target with 5,000 Jobs cached
    # is a peak under 150 MB: the limit must leave room above it.
    assert quantity(resources["limits"]["memory"]) >= 200 * 1024**2


# ---------------------------------------------------------------------------------------------
# The examples: the main Job writes where the cleanup Job reads


def test_main_job_example_writes_where_the_cleanup_job_reads() -> None:
    main, cleanup = only(MAIN_JOB, "Job"), cleanup_job()
    task = env_value(cleanup_container(), "KERUTA_TASK_ID")
    assert main["metadata"]["name"] == f"keruta-job-{task}"
    for labels in (main["metadata"]["labels"], main["spec"]["template"]["metadata"]["labels"]):
        assert labels == {"app": "keruta", "task-id": task}
    assert pod_spec(main)["restartPolicy"] == "Never"
    assert main["spec"]["backoffLimit"] == 4
    assert "ttlSecondsAfterFinished" not in main["spec"]
    assert env_value(cleanup_container(), "KERUTA_SOURCE_POD").startswith(
        main["metadata"]["name"] + "-"
    )
    main_container = pod_spec(main)["containers"][0]
    written = volume_path(main, main_container, DEFAULT_ROOT)
    assert written is not None, f"the main Job's {DEFAULT_ROOT} is not on its volume"
    assert written == volume_path(cleanup, cleanup_container(), DEFAULT_ROOT)
    assert DEFAULT_ROOT in " ".join(main_container["command"])


def test_example_pvc_is_the_one_both_jobs_mount() -> None:
    pvc = only(EXAMPLE_PVC, "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == "pvc-123"
    assert pvc["metadata"]["labels"] == {"app": "keruta", "task-id": "123"}
    for job in (only(MAIN_JOB, "Job"), cleanup_job()):
        volumes = pod_spec(job)["volumes"]
        claims = [
            v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v
        ]
        assert pvc["metadata"]["name"] in claims


# ---------------------------------------------------------------------------------------------
# NetworkPolicy


def ports_of(rule: Doc) -> set[tuple[str, int]]:
    ports = rule.get("ports")
    assert ports, f"egress rule {rule} has no ports: it would allow every port"
    for port in ports:
        assert "endPort" not in port, f"egress rule opens a port range: {port}"
    return {(port.get("protocol", "TCP"), port["port"]) for port in ports}


def test_network_policy_selects_the_cleanup_pods_only() -> None:
    policy = named("NetworkPolicy", "keruta-harvester-cleanup")
    selector = policy["spec"]["podSelector"]
    assert set(selector) == {"matchLabels"}, "only matchLabels: easy to compare with the Job"
    assert selector["matchLabels"] == CLEANUP_POD_LABELS
    cleanup_labels = cleanup_job()["spec"]["template"]["metadata"]["labels"]
    assert selector["matchLabels"].items() <= cleanup_labels.items()
    main_labels = only(MAIN_JOB, "Job")["spec"]["template"]["metadata"]["labels"]
    assert not selector["matchLabels"].items() <= main_labels.items()


def test_network_policy_denies_ingress_and_allows_only_the_needed_egress() -> None:
    spec = named("NetworkPolicy", "keruta-harvester-cleanup")["spec"]
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    assert not spec.get("ingress")
    api_port = urlsplit(env_value(cleanup_container(), "KERUTA_API_URL")).port
    assert api_port == 8080
    expected = {
        "dns": {("UDP", 53), ("TCP", 53)},
        "keruta-api": {("TCP", api_port)},
        "kubernetes-api": {("TCP", 443), ("TCP", 6443)},
    }
    found: dict[str, set[tuple[str, int]]] = {}
    for rule in spec["egress"]:
        peers = rule.get("to")
        assert peers, f"egress rule {rule} has no destination: it would allow every address"
        if peers == [
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                },
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
            }
        ]:
            name = "dns"
        elif peers == [{"podSelector": {"matchLabels": {"app": "keruta-api"}}}]:
            name = "keruta-api"
        elif peers == [{"ipBlock": {"cidr": "0.0.0.0/0"}}, {"ipBlock": {"cidr": "::/0"}}]:
            name = "kubernetes-api"
        else:
            pytest.fail(f"unexpected egress destination: {peers}")
        assert name not in found, f"two egress rules for {name}"
        found[name] = ports_of(rule)
    assert found == expected


def test_controller_network_policy_selects_the_controller_only() -> None:
    policy = named("NetworkPolicy", CONTROLLER)
    selector = policy["spec"]["podSelector"]
    assert selector == {"matchLabels": CONTROLLER_POD_LABELS}
    controller_labels = controller_deployment()["spec"]["template"]["metadata"]["labels"]
    assert selector["matchLabels"].items() <= controller_labels.items()
    for other in (cleanup_job(), only(MAIN_JOB, "Job")):
        assert (
            not selector["matchLabels"].items()
            <= other["spec"]["template"]["metadata"]["labels"].items()
        )
    # And the cleanup pods' policy does not select the controller: it opens keruta-api and DNS.
    cleanup_selector = named("NetworkPolicy", "keruta-harvester-cleanup")["spec"]["podSelector"]
    assert not cleanup_selector["matchLabels"].items() <= controller_labels.items()


def test_controller_network_policy_allows_the_api_out_and_the_metrics_port_in() -> None:
    spec = named("NetworkPolicy", CONTROLLER)["spec"]
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    (ingress,) = spec["ingress"]
    assert ingress == {"ports": [{"protocol": "TCP", "port": 8080}]}  # the metrics port only
    (rule,) = spec["egress"]
    assert rule["to"] == [{"ipBlock": {"cidr": "0.0.0.0/0"}}, {"ipBlock": {"cidr": "::/0"}}]
    assert ports_of(rule) == {("TCP", 443), ("TCP", 6443)}


# ---------------------------------------------------------------------------------------------
# The kustomization


def kustomization() -> Doc:
    docs = load(KUSTOMIZATION)
    assert len(docs) == 1
    return docs[0]


def component() -> Doc:
    """cluster-wide/: the opt-in kustomize Component for --all-namespaces."""
    docs = load(CLUSTER_WIDE / KUSTOMIZATION.name)
    assert len(docs) == 1
    return docs[0]


def listed_files(k: Doc) -> list[str]:
    files = list(k.get("resources", []))
    for generator in k.get("configMapGenerator", []) + k.get("secretGenerator", []):
        files += [entry.split("=", 1)[-1] for entry in generator.get("files", [])]
    for patch in k.get("patches", []):
        files += [patch["path"]] if "path" in patch else []
    return files


def test_kustomization_lists_every_manifest() -> None:
    k = kustomization()
    assert k["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert k["kind"] == "Kustomization"
    listed = listed_files(k)
    assert len(listed) == len(set(listed)), f"a file is listed twice: {listed}"
    on_disk = {
        p.name
        for p in DEPLOY.iterdir()
        if p.is_file() and p.suffix in (".yaml", ".yml") and p != KUSTOMIZATION
    }
    assert set(listed) == on_disk


def test_kustomization_leaves_the_namespace_and_selectors_alone() -> None:
    k = kustomization()
    assert "namespace" not in k, "the namespace is the overlay's (or kubectl -n's) choice"
    assert "commonLabels" not in k, "commonLabels rewrites selectors; use labels:"
    for entry in k.get("labels", []):
        assert entry.get("includeSelectors") is False


def test_applying_the_base_starts_no_job() -> None:
    """The cleanup Job is a template for task "123": applied, it would harvest and delete
    pvc-123. It is published in a ConfigMap, under a fixed name, instead."""
    k = kustomization()
    for name in k["resources"]:
        kinds = {doc["kind"] for doc in load(DEPLOY / name)}
        assert not kinds & {"Job", "CronJob", "Pod"}, f"{name}: applying it would run something"
    generators = {g["name"]: g for g in k["configMapGenerator"]}
    template = generators["keruta-harvester-cleanup-job"]
    assert template["files"] == [CLEANUP_JOB.name]
    assert template["options"]["disableNameSuffixHash"] is True


# ---------------------------------------------------------------------------------------------
# The cluster-wide component


def pointer(doc: Doc, path: str) -> tuple[Any, str | int]:
    """The container and key a JSON pointer (RFC 6901) names, for the ops the component uses."""
    *parents, last = [part.replace("~1", "/").replace("~0", "~") for part in path.split("/")[1:]]
    node: Any = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node, int(last) if isinstance(node, list) else last


def apply_json_patch(doc: Doc, ops: list[Doc]) -> Doc:
    """RFC 6902 `test` and `replace`, as kustomize applies them (the only ops used here)."""
    result: Doc = json.loads(json.dumps(doc))
    for op in ops:
        node, key = pointer(result, op["path"])
        if op["op"] == "test":
            assert node[key] == op["value"], f"patch test fails: {node[key]!r} at {op['path']}"
        elif op["op"] == "replace":
            node[key] = op["value"]
        else:
            pytest.fail(f"op {op['op']!r} is not handled here")
    return result


def test_cluster_wide_component_lists_its_files_and_the_base_leaves_it_out() -> None:
    c = component()
    assert c["apiVersion"] == "kustomize.config.k8s.io/v1alpha1"
    assert c["kind"] == "Component", "a Component cannot be applied by itself"
    assert "namespace" not in c
    listed = listed_files(c)
    on_disk = {p.name for p in CLUSTER_WIDE.glob("*.yaml") if p.name != KUSTOMIZATION.name}
    assert sorted(listed) == sorted(on_disk)
    base = kustomization()
    referenced = [*base.get("resources", []), *base.get("components", [])]
    assert not [r for r in referenced if CLUSTER_WIDE.name in r], "the base applies cluster-wide/"


def test_cluster_wide_component_turns_the_controller_to_all_namespaces() -> None:
    (patch,) = component()["patches"]
    deployment = controller_deployment()
    assert patch["target"] == {
        "group": "apps",
        "version": "v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    patched = apply_json_patch(deployment, yaml.safe_load(patch["patch"]))
    (c,) = pod_spec(patched)["containers"]
    assert c["command"] == ["harvester", "controller", "--all-namespaces"]
    # Everything else is the base's.
    assert pod_spec(patched)["containers"][0] | {"command": CONTROLLER_COMMAND} == (
        controller_container()
    )


def kustomize(kubectl: Path, directory: Path) -> list[Doc]:
    """What `kubectl kustomize` builds from `directory` (kubectl: the fixture's, the one
    tests/cluster/build.sh built from the control plane's release)."""
    built = subprocess.run(
        [str(kubectl), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    return [doc for doc in yaml.safe_load_all(built.stdout) if doc]


def test_kustomize_builds_the_base_namespaced_and_the_overlay_cluster_wide(
    kubectl: Path, tmp_path: Path
) -> None:
    base = {(d["kind"], d["metadata"]["name"]): d for d in kustomize(kubectl, DEPLOY)}
    assert not {kind for kind, _name in base} & {"ClusterRole", "ClusterRoleBinding", "Job"}
    assert ("Deployment", CONTROLLER) in base
    assert ("ConfigMap", "keruta-harvester-cleanup-job") in base

    # The overlay deploy/README.md tells a user to write (kustomize wants relative paths).
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    deploy = os.path.relpath(DEPLOY, overlay)
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        "namespace: keruta-tests\n"
        f"resources: [{deploy}]\n"
        f"components: [{deploy}/cluster-wide]\n"
    )
    built = {(d["kind"], d["metadata"]["name"]): d for d in kustomize(kubectl, overlay)}
    assert set(built) == set(base) | {
        ("ClusterRole", CONTROLLER),
        ("ClusterRoleBinding", CONTROLLER),
    }
    subjects = built[("ClusterRoleBinding", CONTROLLER)]["subjects"]
    assert subjects == [{"kind": "ServiceAccount", "name": CONTROLLER, "namespace": "keruta-tests"}]
    (c,) = pod_spec(built[("Deployment", CONTROLLER)])["containers"]
    assert c["command"] == ["harvester", "controller", "--all-namespaces"]


# ---------------------------------------------------------------------------------------------
# The watch sidecar example

WATCH_EXAMPLE = DEPLOY / "examples" / "main-job-with-watch.yaml"


def test_the_watch_example_runs_harvester_watch_as_a_native_sidecar() -> None:
    docs = {doc["kind"]: doc for doc in load(WATCH_EXAMPLE)}
    pod = docs["Job"]["spec"]["template"]["spec"]
    (sidecar,) = pod["initContainers"]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["command"] == ["harvester", "watch"]
    env = {item["name"] for item in sidecar["env"]}
    assert {"KERUTA_TASK_ID", "KERUTA_API_URL", "KERUTA_API_TOKEN", "KERUTA_PVC"} <= env
    # The same volume, at the same place as the task's, read-only for the sidecar.
    (task,) = pod["containers"]
    document_mount = {"name": "task-volume", "mountPath": "/.keruta", "subPath": ".keruta"}
    assert document_mount in task["volumeMounts"]
    assert {**document_mount, "readOnly": True} in sidecar["volumeMounts"]
    # Only the sidecar holds a token, for its own minimal ServiceAccount.
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]
    assert not any("token" in mount["name"] for mount in task["volumeMounts"])
    binding = docs["RoleBinding"]
    assert binding["roleRef"]["name"] == docs["Role"]["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": pod["serviceAccountName"]}]


def test_the_watch_role_reads_its_claim_and_writes_the_ledger_only() -> None:
    role = next(doc for doc in load(WATCH_EXAMPLE) if doc["kind"] == "Role")
    assert_grants_exactly(role, WATCH_PERMISSIONS, "WATCH_PERMISSIONS")
