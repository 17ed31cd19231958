"""The ledger in `harvester cleanup`, end to end: the real CLI as a child process, acting as
deploy/'s ServiceAccount, against the dev-api on loopback playing a keruta-api without a document
listing (and, but for one test, without Idempotency-Key), so only the ledger can tell a re-run
what keruta-api already accepted. Counts come from the server's side."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from harvester.devapi.server import DevApiServer
from harvester.kube.ledger import PVC_UID_LABEL
from harvester.pipeline.ledger import WINDOW
from tests.devapi_fixture import DevApiFactory
from tests.fstree import write_tree
from tests.kube_backends import KubeApi, RealNamespace, wait_until
from tests.process import BIN, isolated_env

TASK = "123"
PVC = "pvc-123"
FILES = 300
CONCURRENCY = 8


def documents_tree(root: Path, count: int = FILES) -> Path:
    return write_tree(
        root, {f"d{i % 7}/file-{i:04d}.txt": f"content {i}\n" * 20 for i in range(count)}
    )


def command(kube_api: KubeApi, server: DevApiServer, root: Path, *args: str) -> list[str]:
    return [
        str(BIN / "harvester"),
        "cleanup",
        "--task-id",
        TASK,
        "--api-url",
        server.url,
        "--pvc",
        PVC,
        "--keep-pvc",
        f"--root={root}",
        f"--concurrency={CONCURRENCY}",
        "--log-format=json",
        *args,
    ]


def environment(kube_api: KubeApi) -> dict[str, str]:
    return isolated_env() | {"KUBECONFIG": str(kube_api.kubeconfig)}


def cleanup(
    kube_api: KubeApi, server: DevApiServer, root: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(kube_api, server, root, *args),
        env=environment(kube_api),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def last_event(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return event


def held(server: DevApiServer) -> Counter[str]:
    """How many times the server holds each path."""
    return Counter(document.path for document in server.store.documents(TASK))


def crash_then_finish(
    kube_api: KubeApi, server: DevApiServer, root: Path
) -> tuple[int, subprocess.CompletedProcess[str]]:
    """A run SIGKILLed once half the documents were accepted, then a run to the end; returns
    the documents held at the kill and the second run."""
    first = subprocess.Popen(
        command(kube_api, server, root),
        env=environment(kube_api),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(
            lambda: len(server.store.documents(TASK)) >= FILES // 2 or first.poll() is not None,
            "half the documents to be accepted",
            timeout=60,
        )
        assert first.poll() is None, "the first run ended before it could be killed"
        os.kill(first.pid, signal.SIGKILL)
    finally:
        first.kill()
        first.wait(timeout=10)
    at_kill = len(server.store.documents(TASK))
    second = cleanup(kube_api, server, root)
    assert second.returncode == 0, second.stdout + second.stderr
    return at_kill, second


def test_a_crash_re_sends_at_most_the_window(
    real_api: RealNamespace, dev_api_factory: DevApiFactory, tmp_path: Path
) -> None:
    real_api.add_pvc(PVC, labels={"task-id": TASK})
    server = dev_api_factory(listing=False, idempotency=False, latency=0.05)
    root = documents_tree(tmp_path / "doc")

    at_kill, second = crash_then_finish(real_api, server, root)

    counts = held(server)
    assert len(counts) == FILES  # every document is held
    held_twice = sum(n - 1 for n in counts.values())
    # Without the ledger the second run would send all again: more than half held twice.
    assert held_twice <= CONCURRENCY + WINDOW, held_twice
    sent_again = len(server.store.documents(TASK)) - at_kill
    assert sent_again <= (FILES - at_kill) + CONCURRENCY + WINDOW
    summary = last_event(second)
    from_ledger = summary["already_uploaded_from"]["ledger"]
    assert from_ledger >= at_kill - CONCURRENCY - WINDOW
    assert summary["counts"]["uploaded"] + from_ledger == FILES
    assert summary["ledger"]["entries_written"] == summary["counts"]["uploaded"]


def test_with_idempotency_key_honoured_a_crash_stores_nothing_twice(
    real_api: RealNamespace, dev_api_factory: DevApiFactory, tmp_path: Path
) -> None:
    real_api.add_pvc(PVC, labels={"task-id": TASK})
    server = dev_api_factory(listing=False, idempotency=True, latency=0.05)
    root = documents_tree(tmp_path / "doc")

    crash_then_finish(real_api, server, root)

    counts = held(server)
    assert len(counts) == FILES
    assert set(counts.values()) == {1}


def ledger_config_maps(kube_api: KubeApi, uid: str) -> list[dict[str, Any]]:
    from harvester.kube.rest import JsonApi

    with kube_api.api_client() as api_client:
        answer = JsonApi(api_client).request(
            "GET",
            f"/api/v1/namespaces/{kube_api.namespace}/configmaps",
            query=[("labelSelector", f"{PVC_UID_LABEL}={uid}")],
        )
    items: list[dict[str, Any]] = answer["items"]
    return items


@pytest.fixture
def server(dev_api_factory: DevApiFactory) -> DevApiServer:
    return dev_api_factory(listing=False, idempotency=False)


def test_a_changed_file_is_uploaded_again_and_a_dry_run_names_the_ledger(
    kube_api: KubeApi, server: DevApiServer, tmp_path: Path
) -> None:
    uid = kube_api.add_pvc(PVC, labels={"task-id": TASK})
    root = write_tree(tmp_path / "doc", {"a.md": "a", "b/c.md": "c", "d.md": "d"})
    first = cleanup(kube_api, server, root)
    assert first.returncode == 0, first.stdout + first.stderr
    assert last_event(first)["ledger"]["entries_written"] == 3
    (root / "b/c.md").write_text("c, changed")

    dry = cleanup(kube_api, server, root, "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    plan = {item["path"]: item for item in last_event(dry)["items"]}
    where = f"recorded in the ledger (ConfigMaps keruta-ledger-{uid}-*)"
    assert {path: (item["action"], item["reason"]) for path, item in plan.items()} == {
        "a.md": ("already-uploaded", where),
        "b/c.md": ("upload", None),
        "d.md": ("already-uploaded", where),
    }

    again = cleanup(kube_api, server, root)
    assert again.returncode == 0, again.stdout + again.stderr
    summary = last_event(again)
    assert summary["counts"]["uploaded"] == 1
    assert summary["already_uploaded_from"] == {"ledger": 2, "server": 0}
    assert held(server) == {"a.md": 1, "b/c.md": 2, "d.md": 1}


def test_no_ledger_writes_no_config_map(
    kube_api: KubeApi, server: DevApiServer, tmp_path: Path
) -> None:
    uid = kube_api.add_pvc(PVC, labels={"task-id": TASK})
    root = write_tree(tmp_path / "doc", {"a.md": "a", "b.md": "b"})
    result = cleanup(kube_api, server, root, "--no-ledger")
    assert result.returncode == 0, result.stdout + result.stderr
    assert last_event(result)["ledger"] == {
        "where": None,
        "note": "off (--no-ledger)",
        "entries_read": 0,
        "entries_written": 0,
    }
    assert not [c for c in kube_api.calls if c.resource == "configmaps"]  # not even read
    assert ledger_config_maps(kube_api, uid) == []
    # And with it, the same run writes one.
    assert cleanup(kube_api, server, root).returncode == 0
    assert len(ledger_config_maps(kube_api, uid)) == 1


def notices(result: subprocess.CompletedProcess[str]) -> list[str]:
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return [str(line["message"]) for line in lines if line.get("event") == "notice"]


@pytest.mark.parametrize(
    ("verb", "said"),
    [("list", "not read: configmaps in namespace"), ("create", "not recorded and none will be")],
)
def test_a_ledger_that_cannot_be_used_is_one_warning_and_the_harvest_goes_on(
    kube_api: KubeApi, server: DevApiServer, tmp_path: Path, verb: str, said: str
) -> None:
    kube_api.add_pvc(PVC, labels={"task-id": TASK})
    kube_api.forbid(verb, "configmaps")
    root = write_tree(tmp_path / "doc", {"a.md": "a", "b.md": "b"})
    result = cleanup(kube_api, server, root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert last_event(result)["counts"]["uploaded"] == 2
    ledger_lines = [text for text in notices(result) if said in text]
    assert len(ledger_lines) == 1, notices(result)
    assert f'verb "{verb}" on "configmaps"' in ledger_lines[0]
    assert held(server) == {"a.md": 1, "b.md": 1}
