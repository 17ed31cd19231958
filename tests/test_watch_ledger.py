"""`harvester watch`, then `harvester cleanup`, sharing the ledger on the real control plane:
both real CLIs as child processes, the watch as the ServiceAccount and Role of
deploy/examples/main-job-with-watch.yaml (exactly `WATCH_PERMISSIONS`), the cleanup as deploy/'s,
against a dev-api without a listing or Idempotency-Key, so only the ledger can tell the cleanup
what the watch sent. A name that is not UTF-8 is among the documents: both must record and read
it alike."""

from __future__ import annotations

import signal
from pathlib import Path

import yaml  # type: ignore[import-untyped]

from bench.controlplane import create
from harvester.kube.cluster import WATCH_PERMISSIONS
from tests.devapi_fixture import DevApiFactory
from tests.fstree import write_bytes_name, write_tree
from tests.kube_backends import (
    DEPLOY,
    RealNamespace,
    can,
    service_account_kubeconfig,
    wait_until,
)
from tests.test_ledger_harvest import PVC, TASK, cleanup, held, last_event
from tests.test_watch import Watch

EXAMPLE = DEPLOY / "examples" / "main-job-with-watch.yaml"


def watch_identity(real_api: RealNamespace, tmp_path: Path) -> dict[str, str]:
    """The example's watch ServiceAccount, Role and RoleBinding in the namespace; the
    environment that acts as it."""
    docs = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    for doc in docs:
        if doc["kind"] in ("ServiceAccount", "Role", "RoleBinding"):
            create(real_api.admin, doc, real_api.namespace)
    (account,) = [d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"]
    user = f"system:serviceaccount:{real_api.namespace}:{account}"
    wait_until(
        lambda: all(can(real_api.admin, real_api.namespace, user, p) for p in WATCH_PERMISSIONS),
        "the watch's Role to be in force",
    )
    kubeconfig = service_account_kubeconfig(
        real_api.admin_kubeconfig, real_api.namespace, account, tmp_path / "watch.kubeconfig"
    )
    return {"KUBECONFIG": str(kubeconfig)}


def test_the_cleanup_after_a_watch_uploads_nothing_when_nothing_changed(
    real_api: RealNamespace, dev_api_factory: DevApiFactory, tmp_path: Path
) -> None:
    real_api.add_pvc(PVC, labels={"task-id": TASK})
    server = dev_api_factory(listing=False, idempotency=False)
    root = write_tree(tmp_path / "doc", {"a.md": "a", "b/c.md": "c"})
    write_bytes_name(root, b"odd\xffname.md", b"odd")
    kube = watch_identity(real_api, tmp_path)
    watch = Watch(
        tmp_path, server, root, f"--pvc={PVC}", f"--task-id={TASK}", "--settle=0.3s", env=kube
    )
    wait_until(lambda: len(held(server)) == 3, "the watch's start pass")
    (root / "b" / "late.md").write_text("written while the task runs")
    wait_until(lambda: len(held(server)) == 4, "the watch to send the new document")
    assert watch.stop() == 0, watch.log()
    assert "ledger: off" not in watch.log()

    after = cleanup(real_api, server, root)

    assert after.returncode == 0, after.stdout + after.stderr
    summary = last_event(after)
    assert summary["counts"]["uploaded"] == 0, summary["counts"]
    assert summary["already_uploaded_from"] == {"ledger": 4, "server": 0}
    assert sorted(held(server).values()) == [1, 1, 1, 1]  # each document held once


def test_a_watch_without_the_ledger_rights_warns_once_and_goes_on(
    real_api: RealNamespace, dev_api_factory: DevApiFactory, tmp_path: Path
) -> None:
    """No PVC to own a ledger: the watch says so and sends by the listing, as without one."""
    server = dev_api_factory()
    root = write_tree(tmp_path / "doc", {"a.md": "a"})
    kube = {"KUBECONFIG": str(real_api.kubeconfig)}
    watch = Watch(tmp_path, server, root, "--pvc=no-such-pvc", f"--task-id={TASK}", env=kube)
    wait_until(lambda: len(held(server)) == 1, "the watch's start pass")
    watch.process.send_signal(signal.SIGTERM)
    assert watch.process.wait(timeout=60) == 0, watch.log()
    assert watch.log().count("ledger: off") == 1, watch.log()
