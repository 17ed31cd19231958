"""What a watch has shown, kept in memory: the controller's informer.

Takes the `Change`s of a `ResourceWatch` (`harvester.kube.watch`), a projection of each object
to what the controller needs of it, and how many scopes (namespaces, or 1 for all) the watch
covers; gives `WatchedObjects`: `get(namespace, name)`, `group(namespace, key)` (the objects
sharing a key the `group` function gives, such as the Job a pod belongs to), and `synced`, set
once every scope was listed. A relist replaces what a scope held: an object deleted while the
watch was away is dropped at the list's end. `on_change(namespace, name, value)` is told every
change of an object's value (None: gone), on the watch's thread; the same value again, as a
relist or a resync gives it, is not a change.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from harvester.kube.watch import ADDED, DELETED, MODIFIED, RESET, SYNCED, Change

V = TypeVar("V")
Key = tuple[str, str]  # namespace, name


class WatchedObjects(Generic[V]):
    def __init__(
        self,
        project: Callable[[dict[str, Any]], V],
        scopes: int,
        *,
        group: Callable[[V], str] = lambda _value: "",
        on_change: Callable[[str, str, V | None], None] | None = None,
    ) -> None:
        self.synced = threading.Event()
        self._project, self._group, self._on_change = project, group, on_change
        self._scopes = scopes
        self._lock = threading.Lock()
        self._objects: dict[Key, V] = {}
        self._groups: dict[tuple[str, str], set[str]] = {}
        self._listing: dict[str | None, set[Key]] = {}  # scope -> keys seen in its current list
        self._synced_scopes: set[str | None] = set()

    def follow(self, changes: Iterable[Change]) -> None:
        """Take every change until the watch ends (on stop); raises what the watch raises."""
        for change in changes:
            self.take(change)

    def take(self, change: Change) -> None:
        if change.kind == RESET:
            self._listing[change.scope] = set()
        elif change.kind == SYNCED:
            self._drop_unlisted(change.scope)
            self._synced_scopes.add(change.scope)
            if len(self._synced_scopes) >= self._scopes:
                self.synced.set()
        elif change.kind in (ADDED, MODIFIED, DELETED):
            meta = change.obj.get("metadata") or {}
            key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
            if change.kind == DELETED:
                self._set(key, None)
                return
            listing = self._listing.get(change.scope)
            if listing is not None:
                listing.add(key)
            self._set(key, self._project(change.obj))

    def get(self, namespace: str, name: str) -> V | None:
        with self._lock:
            return self._objects.get((namespace, name))

    def group(self, namespace: str, key: str) -> list[V]:
        with self._lock:
            names = self._groups.get((namespace, key), set())
            return [self._objects[(namespace, name)] for name in names]

    def _drop_unlisted(self, scope: str | None) -> None:
        listed = self._listing.pop(scope, set())
        with self._lock:
            gone = [
                k for k in self._objects if (scope is None or k[0] == scope) and k not in listed
            ]
        for key in gone:
            self._set(key, None)

    def _set(self, key: Key, value: V | None) -> None:
        namespace, name = key
        with self._lock:
            old = self._objects.pop(key, None)
            if old is not None:
                members = self._groups.get((namespace, self._group(old)))
                if members is not None:
                    members.discard(name)
                    if not members:
                        del self._groups[(namespace, self._group(old))]
            if value is not None:
                self._objects[key] = value
                self._groups.setdefault((namespace, self._group(value)), set()).add(name)
        if self._on_change is not None and old != value:
            self._on_change(namespace, name, value)
