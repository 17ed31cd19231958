"""The path a user takes: `kubectl apply -k deploy/` on the real control plane, then reads.

Takes the kubectl tests/cluster/build.sh built from the control plane's own release (the
`kubectl` fixture) and the control plane (bench/controlplane.py), as its admin; gives what a
person following the README would see: the base applied into a fresh namespace (kubectl's
built-in kustomize, its ConfigMap generator, a real client-side apply, then a second one that
changes nothing), `kubectl get -o json` of every object it made, the template read back the way
deploy/README.md tells a person to, and `kubectl auth can-i` of what the Roles grant. Then the
overlay that adds the cluster-wide/ component, built and applied the same way.

There is no scheduler and no kubelet: the controller's Deployment gets no pods (no Deployment
controller runs either), so nothing here looks at pods or logs.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from bench.controlplane import ControlPlane
from harvester.kube.cluster import CONTROLLER_PERMISSIONS, PERMISSIONS, Permission
from tests.kube_backends import DEPLOY, wait_until

CLUSTER_WIDE = DEPLOY / "cluster-wide"
CLEANUP = "keruta-harvester"
CONTROLLER = "keruta-harvester-controller"
TEMPLATE = "keruta-harvester-cleanup-job"
PART_OF = "app.kubernetes.io/part-of=keruta"  # on every object deploy/ makes
# What `kubectl get` is asked for: every kind the base makes.
KINDS = "serviceaccounts,roles,rolebindings,networkpolicies,deployments,configmaps"

Doc = dict[str, Any]
Key = tuple[str, str]  # (kind, name)


class Kubectl:
    """kubectl as the control plane's admin, with its own discovery cache."""

    def __init__(self, binary: Path, plane: ControlPlane, workdir: Path) -> None:
        self.binary = binary
        self.base = [f"--kubeconfig={plane.admin_kubeconfig}", f"--cache-dir={workdir / 'cache'}"]
        self.env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"} | {
            "HOME": str(workdir)  # nothing written to the real ~/.kube
        }

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(self.binary), *self.base, *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=self.env,
            check=False,
        )
        if check:
            assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
        return done

    def json(self, *args: str) -> Doc:
        answer: Doc = json.loads(self.run(*args, "-o", "json").stdout)
        return answer

    def can(self, who: str, permission: Permission, *where: str) -> bool:
        """`kubectl auth can-i VERB RESOURCE[.GROUP] --as=who` (exit 0: yes, 1: no)."""
        resource = permission.resource
        if permission.api_group:
            resource = f"{resource}.{permission.api_group}"
        done = self.run(
            "auth", "can-i", permission.verb, resource, f"--as={who}", *where, check=False
        )
        assert done.returncode in (0, 1), done.stderr
        return done.returncode == 0

    def wait_can(self, who: str, permission: Permission, *where: str) -> None:
        """Until the authorizer grants it: RBAC reaches it through an informer."""
        wait_until(lambda: self.can(who, permission, *where), f"{who} to be granted {permission}")


@pytest.fixture
def kubectl_admin(kubectl: Path, control_plane: ControlPlane, tmp_path: Path) -> Kubectl:
    return Kubectl(kubectl, control_plane, tmp_path)


@pytest.fixture
def namespace(kubectl_admin: Kubectl) -> Iterator[str]:
    """A fresh namespace, made and removed with kubectl as a user would."""
    name = f"keruta-kubectl-{uuid.uuid4().hex[:8]}"
    kubectl_admin.run("create", "namespace", name)
    yield name
    kubectl_admin.run("delete", "namespace", name, "--wait=false", check=False)


def docs(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def declared(kustomization_dir: Path) -> dict[Key, Doc]:
    """The objects a kustomization's `resources` list, by (kind, name), as written."""
    k = docs(kustomization_dir / "kustomization.yaml")[0]
    return {
        (doc["kind"], doc["metadata"]["name"]): doc
        for name in k["resources"]
        for doc in docs(kustomization_dir / name)
    }


def applied_line(key: Key, doc: Doc, outcome: str) -> str:
    """What `kubectl apply` prints for one object: `role.rbac.authorization.k8s.io/x created`."""
    kind, name = key
    group = doc["apiVersion"].rpartition("/")[0]
    return f"{kind.lower()}{'.' + group if group else ''}/{name} {outcome}"


def contained(declared_value: Any, stored: Any, where: str = "") -> None:
    """Every field written in the manifest is stored with the same value; the server may only
    add (defaults, metadata), never change or drop what was asked for."""
    if isinstance(declared_value, dict):
        assert isinstance(stored, dict), f"{where}: {stored!r} is not a mapping"
        for key, value in declared_value.items():
            assert key in stored, f"{where}.{key}: not stored"
            contained(value, stored[key], f"{where}.{key}")
    elif isinstance(declared_value, list):
        assert isinstance(stored, list) and len(stored) == len(declared_value), (
            f"{where}: stored {stored!r}"
        )
        for index, (value, kept) in enumerate(zip(declared_value, stored, strict=True)):
            contained(value, kept, f"{where}[{index}]")
    else:
        assert stored == declared_value, f"{where}: stored {stored!r}, declared {declared_value!r}"


def test_apply_k_deploy_makes_the_base_in_a_fresh_namespace(
    kubectl_admin: Kubectl, namespace: str
) -> None:
    base = declared(DEPLOY)
    generator = {"apiVersion": "v1", "kind": "ConfigMap"}
    expected = {**base, ("ConfigMap", TEMPLATE): generator}

    applied = kubectl_admin.run("apply", "-k", str(DEPLOY), "-n", namespace).stdout
    assert sorted(applied.splitlines()) == sorted(
        applied_line(key, doc, "created") for key, doc in expected.items()
    )
    # Applied again, nothing changes: the server's defaults do not fight the manifests.
    again = kubectl_admin.run("apply", "-k", str(DEPLOY), "-n", namespace).stdout
    assert sorted(again.splitlines()) == sorted(
        applied_line(key, doc, "unchanged") for key, doc in expected.items()
    )

    listed = kubectl_admin.json("get", KINDS, "-n", namespace, "-l", PART_OF)
    stored = {(obj["kind"], obj["metadata"]["name"]): obj for obj in listed["items"]}
    assert set(stored) == set(expected)
    for key, obj in stored.items():
        assert obj["metadata"]["namespace"] == namespace, key
        # Applied, not created: a later `kubectl apply` knows what it set.
        assert "kubectl.kubernetes.io/last-applied-configuration" in obj["metadata"]["annotations"]
    for key, doc in base.items():
        contained({k: v for k, v in doc.items() if k != "apiVersion"}, stored[key], "/".join(key))

    # The template: the cleanup Job's manifest, byte for byte, under the fixed name and key.
    template = stored[("ConfigMap", TEMPLATE)]
    assert template["data"] == {"cleanup-job.yaml": (DEPLOY / "cleanup-job.yaml").read_text()}
    assert template["metadata"]["labels"] == {
        "app.kubernetes.io/name": "keruta-harvester",
        "app.kubernetes.io/component": "cleanup",
        "app.kubernetes.io/part-of": "keruta",
    }
    # ... and read back the way deploy/README.md tells a person to.
    read = kubectl_admin.run(
        "get", "configmap", TEMPLATE, "-n", namespace, "-o", r"jsonpath={.data.cleanup-job\.yaml}"
    ).stdout
    assert read == (DEPLOY / "cleanup-job.yaml").read_text()

    deployment = stored[("Deployment", CONTROLLER)]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["harvester", "controller", "--namespace=$(POD_NAMESPACE)"]
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == CONTROLLER
    # No namespace in the manifests' subjects: the server keeps none, meaning the binding's own.
    for binding in (CLEANUP, CONTROLLER):
        subjects = stored[("RoleBinding", binding)]["subjects"]
        assert subjects == [{"kind": "ServiceAccount", "name": binding}]

    # What the bindings grant, as the authorizer answers: each ServiceAccount its code's
    # permissions in this namespace, and the controller nothing beyond it.
    here = ("-n", namespace)
    for account, permissions in ((CLEANUP, PERMISSIONS), (CONTROLLER, CONTROLLER_PERMISSIONS)):
        who = f"system:serviceaccount:{namespace}:{account}"
        for permission in permissions:
            kubectl_admin.wait_can(who, permission, *here)
    controller = f"system:serviceaccount:{namespace}:{CONTROLLER}"
    list_jobs = Permission("batch", "jobs", "list")
    assert not kubectl_admin.can(controller, list_jobs, "--all-namespaces")
    assert not kubectl_admin.can(
        controller, Permission("", "persistentvolumeclaims", "delete"), *here
    )


def test_apply_k_an_overlay_with_cluster_wide_runs_the_controller_in_every_namespace(
    kubectl_admin: Kubectl, namespace: str, tmp_path: Path
) -> None:
    # The overlay deploy/README.md tells a user to write (kustomize wants relative paths).
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    deploy = os.path.relpath(DEPLOY, overlay)
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        f"namespace: {namespace}\n"
        f"resources: [{deploy}]\n"
        f"components: [{deploy}/cluster-wide]\n"
    )
    built = {
        (doc["kind"], doc["metadata"]["name"]): doc
        for doc in yaml.safe_load_all(kubectl_admin.run("kustomize", str(overlay)).stdout)
    }
    component = declared(CLUSTER_WIDE)
    assert set(component) == {("ClusterRole", CONTROLLER), ("ClusterRoleBinding", CONTROLLER)}
    assert set(component) <= set(built)
    (container,) = built[("Deployment", CONTROLLER)]["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["harvester", "controller", "--all-namespaces"]

    try:
        applied = kubectl_admin.run("apply", "-k", str(overlay)).stdout.splitlines()
        for key, doc in component.items():
            assert applied_line(key, doc, "created") in applied
        role = kubectl_admin.json("get", "clusterrole", CONTROLLER)
        contained(component[("ClusterRole", CONTROLLER)]["rules"], role["rules"], "rules")
        binding = kubectl_admin.json("get", "clusterrolebinding", CONTROLLER)
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": CONTROLLER, "namespace": namespace}
        ]
        deployment = kubectl_admin.json("get", "deployment", CONTROLLER, "-n", namespace)
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["command"] == ["harvester", "controller", "--all-namespaces"]
        who = f"system:serviceaccount:{namespace}:{CONTROLLER}"
        for permission in CONTROLLER_PERMISSIONS:
            kubectl_admin.wait_can(who, permission, "--all-namespaces")
    finally:
        # The ClusterRole and its binding outlive the namespace: remove them with it.
        kubectl_admin.run("delete", "-k", str(overlay), "--wait=false", check=False)
