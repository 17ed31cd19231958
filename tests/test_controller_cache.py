"""The controller's informer (harvester/controller/cache.py) on plain data: objects kept by
namespace and name, grouped (pods by their Job), moved between groups when they change,
forgotten when deleted or when a relist no longer has them; `synced` once every scope listed."""

from __future__ import annotations

from typing import Any

from harvester.controller.cache import WatchedObjects
from harvester.kube.watch import ADDED, DELETED, MODIFIED, RESET, SYNCED, Change


def pod(namespace: str, name: str, job: str) -> dict[str, Any]:
    return {"metadata": {"namespace": namespace, "name": name, "labels": {"job": job}}}


def cache(scopes: int = 1) -> tuple[WatchedObjects[str], list[tuple[str, str, str | None]]]:
    told: list[tuple[str, str, str | None]] = []
    objects = WatchedObjects(
        lambda obj: str(obj["metadata"]["labels"]["job"]),
        scopes,
        group=lambda job: job,
        on_change=lambda namespace, name, value: told.append((namespace, name, value)),
    )
    return objects, told


def test_objects_are_grouped_moved_and_forgotten() -> None:
    objects, told = cache()
    objects.follow(
        [
            Change(RESET, "ns"),
            Change(ADDED, "ns", pod("ns", "p1", "job-a")),
            Change(ADDED, "ns", pod("ns", "p2", "job-a")),
            Change(SYNCED, "ns"),
        ]
    )
    assert objects.synced.is_set()
    assert sorted(objects.group("ns", "job-a")) == ["job-a", "job-a"]
    objects.take(Change(MODIFIED, "ns", pod("ns", "p2", "job-b")))
    assert objects.group("ns", "job-a") == ["job-a"] and objects.group("ns", "job-b") == ["job-b"]
    objects.take(Change(DELETED, "ns", pod("ns", "p1", "job-a")))
    assert objects.group("ns", "job-a") == [] and objects.get("ns", "p1") is None
    assert told[-1] == ("ns", "p1", None)


def test_a_relist_drops_what_it_no_longer_has_in_its_own_scope_only() -> None:
    objects, _told = cache(scopes=2)
    for namespace in ("a", "b"):
        objects.take(Change(ADDED, namespace, pod(namespace, "p", "job")))
    objects.take(Change(RESET, "a"))
    assert objects.get("a", "p") == "job"  # kept while the list is under way
    objects.take(Change(ADDED, "a", pod("a", "q", "job")))
    objects.take(Change(SYNCED, "a"))
    assert objects.get("a", "p") is None and objects.get("a", "q") == "job"
    assert objects.get("b", "p") == "job"  # another scope's list says nothing about b
    assert not objects.synced.is_set()  # b was never listed
