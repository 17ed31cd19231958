"""`harvester controller` as a child process, acting as deploy/'s controller ServiceAccount.

Takes a `RealNamespace` (tests/kube_backends.py); gives `install_controller`, which arranges in
it deploy/'s controller ServiceAccount, Role (whole, or with one permission taken away) and
RoleBinding, and the cleanup Job template ConfigMap, and returns a kubeconfig acting as that
ServiceAccount; and `Controller`, the real CLI started with it, its JSON log lines kept in a file.
Shared by tests/test_controller.py and tests/test_controller_rbac.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

from bench.controlplane import create
from harvester.kube.cluster import CONTROLLER_PERMISSIONS, Permission
from tests.kube_backends import (
    DEPLOY,
    RealNamespace,
    can,
    manifests,
    rules_without,
    service_account_kubeconfig,
    wait_until,
)
from tests.process import BIN, isolated_env

(CONTROLLER,) = (doc["metadata"]["name"] for doc in manifests("controller-serviceaccount.yaml"))
CONTROLLER_ROLE_FILE = "controller-role.yaml"
TEMPLATE = "keruta-harvester-cleanup-job"


class Controller:
    """`harvester controller` as a child process, its JSON log lines kept in a file."""

    def __init__(
        self, kubeconfig: Path, namespace: str, log: Path, *args: str, lease: str = "6s"
    ) -> None:
        """`lease`: --lease-duration; short by default, for the takeover test."""
        self._log = log
        with log.open("a") as out:
            self.process = subprocess.Popen(
                [
                    str(BIN / "harvester"),
                    "controller",
                    f"--namespace={namespace}",
                    "--log-format=json",
                    "--log-level=debug",
                    "--metrics-bind-address=127.0.0.1:0",  # any free port, said in the log
                    f"--lease-duration={lease}",
                    *args,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=isolated_env({"KUBECONFIG": str(kubeconfig)}),
            )

    def lines(self) -> list[dict[str, Any]]:
        """Every line of the log so far, parsed; a line that is not JSON (a traceback, a stray
        print) fails the test, naming it: `--log-format json` promises JSON lines only."""
        parsed = []
        for line in self._log.read_text().splitlines():
            if not line:
                continue
            try:
                parsed.append(json.loads(line))
            except ValueError:
                raise AssertionError(f"not a JSON line in the controller's log: {line!r}") from None
        return parsed

    def said(self, text: str) -> bool:
        return any(text in str(line.get("message", "")) for line in self.lines())

    def stop(self) -> int:
        """SIGTERM (nothing, if it already exited); its exit code once it has exited."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


def install_controller(
    real_api: RealNamespace, kubeconfig: Path, *, without: Permission | None = None
) -> Path:
    """Create deploy/'s controller ServiceAccount, Role and RoleBinding, and the template
    ConfigMap from deploy/cleanup-job.yaml, in the namespace; wait until RBAC grants the Role;
    write to `kubeconfig` one that acts as the ServiceAccount, and return it.

    `without`: the Role from deploy/controller-role.yaml with exactly that permission taken
    away (every other rule as the file has it)."""
    namespace, admin = real_api.namespace, real_api.admin
    for name in ("controller-serviceaccount.yaml", CONTROLLER_ROLE_FILE):
        for doc in manifests(name):
            if doc["kind"] == "Role" and without is not None:
                doc = doc | {"rules": rules_without(doc["rules"], without)}
            create(admin, doc, namespace)
    for doc in manifests("controller-rolebinding.yaml"):
        create(admin, doc, namespace)
    template = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": TEMPLATE},
        "data": {"cleanup-job.yaml": (DEPLOY / "cleanup-job.yaml").read_text()},
    }
    create(admin, template, namespace)
    user = f"system:serviceaccount:{namespace}:{CONTROLLER}"
    granted = [p for p in CONTROLLER_PERMISSIONS if p != without]
    wait_until(
        lambda: all(can(admin, namespace, user, p) for p in granted),
        f"deploy/{CONTROLLER_ROLE_FILE} to be in force",
    )
    if without is not None:
        assert not can(admin, namespace, user, without), f"{without} still granted"
    return service_account_kubeconfig(real_api.admin_kubeconfig, namespace, CONTROLLER, kubeconfig)
