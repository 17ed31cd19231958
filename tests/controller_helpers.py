"""`harvester controller` as the end-to-end tests run it: the real CLI as a child process, acting
as deploy/'s controller ServiceAccount in a `RealNamespace` holding the template ConfigMap.

`install_controller` arranges deploy/'s controller ServiceAccount, Role (whole, or with one
permission taken away) and RoleBinding, and the template, and gives a kubeconfig acting as that
ServiceAccount; `controller_starter` gives a function starting `Controller`s with it; the rest
reads back what they did (cleanup Jobs, the record on a main Job, Events, /metrics). Shared by
tests/test_controller.py, test_controller_relist.py and test_controller_rbac.py.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kubernetes import client

from bench.controlplane import create
from harvester.controller.decide import DECISION_ANNOTATION
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
CLEANUP_SELECTOR = "app.kubernetes.io/component=cleanup"
METRICS_PREFIX = "keruta_harvester_"


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

    def tail(self, limit: int = 1500) -> str:
        """The end of its output as written (a traceback is not a JSON line)."""
        return self._log.read_text(errors="replace")[-limit:]

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


@contextlib.contextmanager
def controller_starter(
    real_api: RealNamespace, tmp_path: Path
) -> Iterator[Callable[..., Controller]]:
    """Arrange deploy/'s controller identity and template in the namespace; give a function
    that starts a controller (each stopped on exit)."""
    kubeconfig = install_controller(real_api, tmp_path / "controller.kubeconfig")
    namespace = real_api.namespace
    started: list[Controller] = []

    def start(*args: str) -> Controller:
        log = tmp_path / f"controller-{len(started)}.log"
        controller = Controller(kubeconfig, namespace, log, *args)
        started.append(controller)
        return controller

    try:
        yield start
    finally:
        for controller in started:
            if controller.process.poll() is None:
                controller.stop()


def cleanup_jobs(real_api: RealNamespace) -> list[Any]:
    batch = client.BatchV1Api(real_api.admin)
    return list(
        batch.list_namespaced_job(real_api.namespace, label_selector=CLEANUP_SELECTOR).items
    )


def record(real_api: RealNamespace, job: str) -> str | None:
    found = real_api.get("jobs", job)
    assert found is not None
    value = (found["metadata"].get("annotations") or {}).get(DECISION_ANNOTATION)
    return None if value is None else str(value)


def events_on(real_api: RealNamespace, job: str) -> list[str]:
    return [
        e["reason"]
        for e in real_api.events
        if e["involvedObject"]["kind"] == "Job" and e["involvedObject"]["name"] == job
    ]


def served(controller: Controller) -> str:
    """The base URL of the controller's health server, from its log."""
    marker = "/healthz, /readyz and /metrics on "
    wait_until(lambda: controller.said(marker), "the health server to listen")
    (line,) = [str(x["message"]) for x in controller.lines() if marker in str(x["message"])]
    return "http://" + line.split(marker, 1)[1].strip()


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metrics(base: str) -> dict[str, float]:
    """The controller's own samples on its /metrics (`keruta_harvester_...`), by name."""
    code, text = get(base + "/metrics")
    assert code == 200, text
    return {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith(METRICS_PREFIX)
    }
