"""The ledger's store, `ConfigMapLedger`, against the real control plane as deploy/'s
ServiceAccount (the `real_api` fixture): what it writes reads back exactly, the garbage
collector takes it with the PVC, it shards, two writers lose nothing, and each of the Role's
configmaps rules is needed. On kmock, what only an emulation does on demand: 409 conflicts."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from kubernetes import client

from harvester.errors import LedgerError
from harvester.kube.cluster import LEDGER_PERMISSIONS
from harvester.kube.ledger import PVC_UID_LABEL, ConfigMapLedger
from harvester.kube.rest import JsonApi
from harvester.model import LedgerEntry
from harvester.stats import Level
from tests.kube_backends import KubeApi, RealNamespace, wait_until
from tests.kube_fixture import FakeCluster
from tests.volume_support import TASK, Notices

PVC = "pvc-123"
SHA = "ab" * 32

# Names the API server would mangle or a line format would break: not UTF-8 (as the scan keeps
# it, surrogate-escaped), a newline, quotes, a backslash, non-ASCII; and no id from the server.
ODD = [
    LedgerEntry("reports/a.md", SHA, 10, "doc-1"),
    LedgerEntry("bad\udcffname\udc80.txt", "cd" * 32, 11, "doc-2"),
    LedgerEntry("line\nbreak \"double\" 'single' back\\slash.md", "ef" * 32, 12, "doc-3"),
    LedgerEntry("文書/ünïcödé.txt", "01" * 32, 0, None),
]


def entries(writer: str, count: int) -> list[LedgerEntry]:
    return [
        LedgerEntry(f"{writer}/file-{i:05d}.txt", f"{i:064x}", i, f"{writer}-{i}")
        for i in range(count)
    ]


@contextmanager
def ledger_store(
    api: KubeApi, uid: str, notices: Notices | None = None, **options: Any
) -> Iterator[ConfigMapLedger]:
    """A store as the cleanup opens it, acting as the backend's ServiceAccount."""
    with api.api_client() as api_client:
        yield ConfigMapLedger(
            JsonApi(api_client), api.namespace, PVC, uid, TASK, listener=notices, **options
        )


def config_maps(real_api: RealNamespace, uid: str) -> list[dict[str, Any]]:
    """The ledger's ConfigMaps, read as the admin."""
    answer: Any = client.CoreV1Api(real_api.admin).list_namespaced_config_map(
        real_api.namespace, label_selector=f"{PVC_UID_LABEL}={uid}", _preload_content=False
    )
    items: list[dict[str, Any]] = json.loads(answer.data)["items"]
    return sorted(items, key=lambda item: item["metadata"]["name"])


def test_entries_read_back_exactly_and_go_with_the_pvc(real_api: RealNamespace) -> None:
    uid = real_api.add_pvc(PVC, labels={"task-id": TASK})
    with ledger_store(real_api, uid) as first:
        first.append(ODD[:2])
        first.append(ODD[2:])
    notices = Notices()
    with ledger_store(real_api, uid, notices) as second:  # a new process: a new writer
        assert Counter(second.read()) == Counter(ODD)
        second.append([LedgerEntry("later.txt", SHA, 1, "doc-5")])
    assert notices.lines == []

    (shard,) = config_maps(real_api, uid)
    metadata = shard["metadata"]
    assert metadata["name"] == f"keruta-ledger-{uid}-000"
    assert metadata["labels"] == {
        "app.kubernetes.io/name": "keruta-harvester",
        "app.kubernetes.io/component": "ledger",
        PVC_UID_LABEL: uid,
        "task-id": TASK,
    }
    assert metadata["annotations"] == {"harvester.keruta.io/pvc": PVC}
    assert metadata["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": PVC, "uid": uid}
    ]
    assert len(shard["data"]) == 3  # one key per batch

    # The real garbage collector: the claim goes, and so does its ledger.
    real_api.remove("persistentvolumeclaims", PVC)
    wait_until(lambda: not config_maps(real_api, uid), "the garbage collector", timeout=60)
    # A new claim of the same name has a new uid, so a new, empty ledger.
    new_uid = real_api.add_pvc(PVC, labels={"task-id": TASK})
    with ledger_store(real_api, new_uid) as fresh:
        assert fresh.read() == []


def test_a_full_shard_rolls_over_and_a_full_ledger_says_so(real_api: RealNamespace) -> None:
    uid = real_api.add_pvc(PVC)
    written = entries("w", 300)
    batches = [written[start : start + 3] for start in range(0, len(written), 3)]
    accepted: list[LedgerEntry] = []
    with ledger_store(real_api, uid, shard_limit=2048, max_shards=8) as store:
        with pytest.raises(LedgerError, match=r"the ledger is full \(8 ConfigMaps of 2 KiB"):
            for batch in batches:
                store.append(batch)
                accepted += batch
        assert 8 * 3 < len(accepted) < len(written)  # several batches a shard, not all of them
        assert Counter(store.read()) == Counter(accepted)
    shards = config_maps(real_api, uid)
    assert [s["metadata"]["name"] for s in shards] == [
        f"keruta-ledger-{uid}-{i:03d}" for i in range(8)
    ]
    for shard in shards:
        assert sum(len(k) + len(v.encode()) for k, v in shard["data"].items()) <= 2048


def test_two_concurrent_writers_lose_nothing(real_api: RealNamespace) -> None:
    uid = real_api.add_pvc(PVC)
    batches = 150  # each: 300 in all, racing for the same shard's resourceVersion
    failures: list[BaseException] = []

    def writer(name: str) -> Callable[[], None]:
        def run() -> None:
            try:
                # A small shard, so the writers also race to create the next one.
                with ledger_store(real_api, uid, shard_limit=32 * 1024) as store:
                    mine = entries(name, 2 * batches)
                    for i in range(batches):
                        store.append(mine[2 * i : 2 * i + 2])
            except BaseException as exc:  # noqa: BLE001 - reported by the test's thread
                failures.append(exc)

        return run

    threads = [threading.Thread(target=writer(name)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    with ledger_store(real_api, uid) as reader:
        read = Counter(reader.read())
    assert read == Counter(entries("a", 2 * batches) + entries("b", 2 * batches))
    assert set(read.values()) == {1}
    assert len(config_maps(real_api, uid)) > 1


def ledger_path(api: KubeApi, uid: str) -> None:
    """Every call the ledger makes: a first shard (create), a read (list), appends (patch), one
    of them with a resourceVersion another writer made stale (409, then get, then patch)."""
    with ledger_store(api, uid) as late, ledger_store(api, uid) as early:
        early.append(ODD[:1])
        late.read()
        early.append(ODD[1:2])
        late.append(ODD[2:3])


def test_the_ledger_calls_are_exactly_its_rules(real_api: RealNamespace) -> None:
    uid = real_api.add_pvc(PVC)
    ledger_path(real_api, uid)
    calls = [c for c in real_api.calls if c.resource == "configmaps"]
    assert {(c.group, c.resource, c.verb) for c in calls} == {tuple(p) for p in LEDGER_PERMISSIONS}
    assert [(c.verb, c.status) for c in calls] == [
        ("list", 200),  # the early writer finds no shard
        ("create", 201),
        ("list", 200),
        ("patch", 200),
        ("patch", 409),
        ("get", 200),
        ("patch", 200),
    ]
    with ledger_store(real_api, uid) as reader:
        assert Counter(reader.read()) == Counter(ODD[:3])


@pytest.mark.parametrize("verb", [p.verb for p in LEDGER_PERMISSIONS])
def test_each_configmaps_rule_of_the_role_is_needed(real_api: RealNamespace, verb: str) -> None:
    uid = real_api.add_pvc(PVC)
    real_api.forbid(verb, "configmaps")
    with pytest.raises(LedgerError) as refused:
        ledger_path(real_api, uid)
    assert f'verb "{verb}" on "configmaps"' in str(refused.value)
    assert "deploy/role.yaml" in str(refused.value)


# -- kmock: conflicts on demand


def test_a_few_conflicts_are_retried_without_loss(kube: FakeCluster) -> None:
    uid = kube.add_pvc(PVC)
    with ledger_store(kube, uid) as store:
        store.append(ODD[:1])  # the shard exists: later batches are patches
        kube.inject_conflicts(3)
        store.append(ODD[1:])
        assert Counter(store.read()) == Counter(ODD)
    patches = [c.status for c in kube.calls if c.resource == "configmaps" and c.verb == "patch"]
    assert patches == [409, 409, 409, 200]


def test_conflicts_forever_are_a_ledger_error(kube: FakeCluster) -> None:
    uid = kube.add_pvc(PVC)
    with ledger_store(kube, uid, conflict_attempts=5) as store:
        store.append(ODD[:1])
        kube.inject_conflicts(1000)
        with pytest.raises(LedgerError) as gave_up:
            store.append(ODD[1:])
    assert str(gave_up.value) == (
        f"ConfigMaps keruta-ledger-{uid}-*: changed by another writer 5 times in a row while a "
        "batch was appended; it was not recorded"
    )


def test_a_malformed_line_is_skipped_and_counted_once(kube: FakeCluster) -> None:
    uid = kube.add_pvc(PVC)
    notices = Notices()
    with ledger_store(kube, uid) as store:
        store.append(ODD[:1])
        name = f"keruta-ledger-{uid}-000"
        with kube.api_client() as api_client:
            JsonApi(api_client).request(
                "PATCH",
                f"/api/v1/namespaces/{kube.namespace}/configmaps/{name}",
                body={"data": {"b-someone-1": 'not json\n{"p": "x"}\n' + "{}"}},
                content_type="application/merge-patch+json",
            )
    with ledger_store(kube, uid, notices) as reader:
        assert reader.read() == ODD[:1]
    assert notices.lines == [
        (
            Level.WARNING,
            f"ledger (ConfigMaps keruta-ledger-{uid}-*): 3 malformed entries skipped; those "
            "documents are sent again unless keruta-api already holds them",
        )
    ]
