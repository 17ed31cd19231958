"""`harvester controller` as the end-to-end tests run it: the real CLI as a child process, acting
as deploy/'s controller ServiceAccount and Role in a `RealNamespace` holding the template
ConfigMap; and what they read back (cleanup Jobs, the record on a main Job, Events, the
controller's /metrics). Shared by tests/test_controller.py and tests/test_controller_relist.py.
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
from harvester.kube.cluster import CONTROLLER_PERMISSIONS
from tests.kube_backends import (
    DEPLOY,
    RealNamespace,
    can,
    manifests,
    service_account_kubeconfig,
    wait_until,
)
from tests.process import BIN, isolated_env

CONTROLLER = "keruta-harvester-controller"
TEMPLATE = "keruta-harvester-cleanup-job"
CLEANUP_SELECTOR = "app.kubernetes.io/component=cleanup"
METRICS_PREFIX = "keruta_harvester_"


class Controller:
    """`harvester controller` as a child process, its JSON log lines kept in a file."""

    def __init__(self, kubeconfig: Path, namespace: str, log: Path, *args: str) -> None:
        self._log = log
        with log.open("a") as out:
            self.process = subprocess.Popen(
                [
                    str(BIN / "harvester"),
                    "controller",
                    f"--namespace={namespace}",
                    "--log-format=json",
                    "--log-level=debug",
                    # Any free port, said in the log; a short lease for the takeover test.
                    "--metrics-bind-address=127.0.0.1:0",
                    "--lease-duration=6s",
                    *args,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=isolated_env({"KUBECONFIG": str(kubeconfig)}),
            )

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self._log.read_text().splitlines() if line]

    def tail(self, limit: int = 1500) -> str:
        """The end of its output as written (a traceback is not a JSON line)."""
        return self._log.read_text(errors="replace")[-limit:]

    def said(self, text: str) -> bool:
        return any(text in str(line.get("message", "")) for line in self.lines())

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


@contextlib.contextmanager
def controller_starter(
    real_api: RealNamespace, tmp_path: Path
) -> Iterator[Callable[..., Controller]]:
    """Arrange deploy/'s controller identity and template in the namespace; give a function
    that starts a controller (each stopped on exit)."""
    namespace, admin = real_api.namespace, real_api.admin
    for name in (
        "controller-serviceaccount.yaml",
        "controller-role.yaml",
        "controller-rolebinding.yaml",
    ):
        for doc in manifests(name):
            create(admin, doc, namespace)
    template = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": TEMPLATE},
        "data": {"cleanup-job.yaml": (DEPLOY / "cleanup-job.yaml").read_text()},
    }
    create(admin, template, namespace)
    user = f"system:serviceaccount:{namespace}:{CONTROLLER}"
    wait_until(
        lambda: all(can(admin, namespace, user, p) for p in CONTROLLER_PERMISSIONS),
        "deploy/'s controller Role to be in force",
    )
    kubeconfig = service_account_kubeconfig(
        real_api.admin_kubeconfig, namespace, CONTROLLER, tmp_path / "controller.kubeconfig"
    )
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
