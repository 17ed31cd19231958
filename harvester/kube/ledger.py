"""The ledger of accepted uploads, kept in ConfigMaps owned by the task's PVC.

Takes a `JsonApi`, the namespace, the PVC (name and uid, from `Volume.locate`) and the task id;
gives `ConfigMapLedger`, a `harvester.pipeline.ledger.LedgerStore`: `read()` every entry any
writer recorded, `append(entries)` one batch without losing another writer's.

Where and why: ConfigMaps `keruta-ledger-<pvc-uid>-<shard:03d>` in the PVC's namespace, each
with an ownerReference to the PVC, so the garbage collector removes the ledger with the volume
(no blockOwnerDeletion: that would need the right to update the PVC's finalizers). Keyed by the
PVC's uid: a new PVC of the same name starts a new ledger. keruta-api's help is not needed.

Each batch is one new data key `b-<writer>-<seq>` (a random writer id per process), its value
JSON lines `{"p": path, "s": sha256, "n": size, "id": document id}`; a path that is not valid
UTF-8 (the scan keeps such names surrogate-escaped) is `"pb"`: base64 of its bytes, since the
API server would replace the invalid characters. Appending is a JSON merge patch of the newest
shard carrying its `metadata.resourceVersion`: the server refuses a stale one (409), which tells
another writer is at work. The shard is then read again, and the batch goes in by a merge patch
without the precondition when the shard has `limit // 8` to spare beyond it, else into the next
shard. Why: a merge patch of a new key cannot lose another writer's key (the API server applies
it to the newest object), and the precondition only keeps the size exact; retried with it, the
writer that must read before it writes loses every race to one that appends back to back
(measured: 16 conflicts in a row on the real API server), while the spare room absorbs what
others add meanwhile, far below the 1 MiB the API server enforces. `CONFLICT_ATTEMPTS` 409s in a
row give up. A shard whose data would pass `SHARD_LIMIT` rolls over to the next, created with
POST (409 AlreadyExists: another writer made it; read it and go on). Past `MAX_SHARDS` the
ledger is full: `LedgerError`, and the `Ledger` turns itself off with one warning (re-runs then
rely on keruta-api's listing and Idempotency-Key). A batch appended again after a partial
failure may be read back twice; readers treat the entries as a set.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from harvester.errors import LedgerError
from harvester.kube.cluster import translate_error, unreachable_error
from harvester.kube.rest import MERGE_PATCH, JsonApi
from harvester.model import LedgerEntry
from harvester.stats import Level, Listener, NullListener
from harvester.text import plural

# A ConfigMap holds at most 1 MiB of data (keys and values), but every append rewrites the whole
# shard in etcd and sends it back whole: with 768 KiB shards the ledger doubled the upload time
# of 10,000 small files (python -m bench --scenario rerun-ledger); with 64 KiB it adds a tenth.
# At some 170 bytes an entry (a 30-character path, a 36-character id) that is about 385 entries
# a shard and 390,000 in all (MAX_SHARDS).
SHARD_LIMIT = 64 * 1024
MAX_SHARDS = 1024
CONFLICT_ATTEMPTS = 16  # stale resourceVersions in a row before an append gives up
PAGE = 64  # ConfigMaps per list request: up to 4 MiB an answer

NAME_PREFIX = "keruta-ledger-"
KEY_PREFIX = "b-"
APP_LABELS = {
    "app.kubernetes.io/name": "keruta-harvester",
    "app.kubernetes.io/component": "ledger",
}
PVC_UID_LABEL = "harvester.keruta.io/pvc-uid"
TASK_LABEL = "task-id"
PVC_ANNOTATION = "harvester.keruta.io/pvc"
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_RESOURCE = "configmaps"


@dataclass(frozen=True, slots=True)
class _Shard:
    """The newest shard as last seen: its number, resourceVersion and bytes of data."""

    index: int
    version: str
    size: int


class ConfigMapLedger:
    """A `LedgerStore` in ConfigMaps owned by a PVC; see the module docstring."""

    def __init__(
        self,
        api: JsonApi,
        namespace: str,
        pvc_name: str,
        pvc_uid: str,
        task_id: str,
        *,
        listener: Listener | None = None,
        shard_limit: int = SHARD_LIMIT,
        max_shards: int = MAX_SHARDS,
        conflict_attempts: int = CONFLICT_ATTEMPTS,
    ) -> None:
        self._api = api
        self._namespace, self._pvc_name, self._pvc_uid = namespace, pvc_name, pvc_uid
        self._task_id = task_id
        self._listener = listener or NullListener()
        self._shard_limit, self._max_shards = shard_limit, max_shards
        self._conflict_attempts = conflict_attempts
        self._writer = secrets.token_hex(4)
        self._sequence = 0
        self._newest: _Shard | None = None
        self.where = f"ConfigMaps {NAME_PREFIX}{pvc_uid}-*"

    # -- reading

    def read(self) -> list[LedgerEntry]:
        """Every entry of every shard; a malformed line is skipped and counted in one warning."""
        entries: list[LedgerEntry] = []
        malformed = 0
        newest: _Shard | None = None
        for config_map in self._list():
            index = self._index_of((config_map.get("metadata") or {}).get("name", ""))
            if index is None:
                continue
            data = _data_of(config_map)
            for key, value in data.items():
                if not key.startswith(KEY_PREFIX):
                    continue
                for line in value.splitlines():
                    entry = _decode(line)
                    if entry is None:
                        malformed += line.strip() != ""
                    else:
                        entries.append(entry)
            if newest is None or index > newest.index:
                newest = self._shard(index, config_map)
        self._newest = newest
        if malformed:
            skipped = plural(malformed, "malformed entry", "malformed entries")
            self._listener.notice(
                Level.WARNING,
                f"ledger ({self.where}): {skipped} skipped; those documents are sent again "
                "unless keruta-api already holds them",
            )
        return entries

    def _list(self) -> Iterator[dict[str, Any]]:
        query = [("labelSelector", f"{PVC_UID_LABEL}={self._pvc_uid}"), ("limit", str(PAGE))]
        next_page: str | None = None
        while True:
            page = [*query, ("continue", next_page)] if next_page else query
            answer = self._call(
                "list", "", lambda page=page: self._api.request("GET", self._path(), query=page)
            )
            yield from (item for item in answer.get("items") or [] if isinstance(item, dict))
            next_page = (answer.get("metadata") or {}).get("continue")
            if not next_page:
                return

    def _index_of(self, name: str) -> int | None:
        prefix = f"{NAME_PREFIX}{self._pvc_uid}-"
        number = name.removeprefix(prefix)
        return int(number) if name.startswith(prefix) and number.isdigit() else None

    # -- writing

    def append(self, entries: Sequence[LedgerEntry]) -> None:
        """Add `entries` as new data keys of the newest shard (rolling over when it is full)."""
        for value in self._values(entries):
            self._sequence += 1
            self._put(f"{KEY_PREFIX}{self._writer}-{self._sequence}", value)

    def _values(self, entries: Sequence[LedgerEntry]) -> Iterator[str]:
        """The entries as JSON lines, in values of at most a quarter of a shard (so one always
        fits a young shard, spare room included)."""
        room = self._shard_limit // 4 - 64  # the key: b-<writer>-<seq>
        lines: list[str] = []
        size = 0
        for entry in entries:
            line = _encode(entry)
            length = len(line.encode("utf-8")) + 1
            if lines and size + length > room:
                yield "\n".join(lines)
                lines, size = [], 0
            lines.append(line)
            size += length
        if lines:
            yield "\n".join(lines)

    def _put(self, key: str, value: str) -> None:
        added = len(key) + len(value.encode("utf-8"))
        contended = False  # a 409 showed another writer at work: leave room for it
        for _attempt in range(self._conflict_attempts):
            if self._newest is None:
                self.read()
            newest = self._newest
            spare = self._shard_limit // 8 if contended else 0
            if newest is None:
                done = self._create(0, key, value)
            elif newest.size + added + spare > self._shard_limit:
                done = self._create(newest.index + 1, key, value)
            else:
                done = self._patch(newest, key, value, precondition=not contended)
            if done:
                return
            contended = True
        raise LedgerError(
            f"{self.where}: changed by another writer {self._conflict_attempts} times in a row "
            "while a batch was appended; it was not recorded"
        )

    def _create(self, index: int, key: str, value: str) -> bool:
        """Make shard `index` holding `key`; False when another writer made it first (it is
        then read, and becomes the newest)."""
        if index >= self._max_shards:
            raise LedgerError(
                f"the ledger is full ({self._max_shards} ConfigMaps of "
                f"{self._shard_limit // 1024} KiB, {self.where})"
            )
        name = self._name(index)
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "namespace": self._namespace,
                "labels": self._labels(),
                "annotations": {PVC_ANNOTATION: self._pvc_name},
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "PersistentVolumeClaim",
                        "name": self._pvc_name,
                        "uid": self._pvc_uid,
                    }
                ],
            },
            "data": {key: value},
        }
        try:
            made = self._call(
                "create", name, lambda: self._api.request("POST", self._path(), body=body)
            )
        except _Conflict:
            self._newest = self._get(index)
            return False
        self._newest = self._shard(index, made)
        return True

    def _patch(self, shard: _Shard, key: str, value: str, *, precondition: bool) -> bool:
        """Add `key` to `shard` (with `precondition`: only if it is still at its
        resourceVersion); False, and the shard read again, on a 409."""
        name = self._name(shard.index)
        body: dict[str, Any] = {"data": {key: value}}
        if precondition:
            body["metadata"] = {"resourceVersion": shard.version}
        try:
            patched = self._call(
                "patch",
                name,
                lambda: self._api.request(
                    "PATCH", f"{self._path()}/{name}", body=body, content_type=MERGE_PATCH
                ),
            )
        except _Conflict:
            self._newest = self._get(shard.index)
            return False
        self._newest = self._shard(shard.index, patched)
        return True

    def _get(self, index: int) -> _Shard:
        name = self._name(index)
        try:
            found = self._call(
                "get", name, lambda: self._api.request("GET", f"{self._path()}/{name}")
            )
        except _Conflict as exc:  # a GET is never a conflict
            raise LedgerError(f"{self.where}: {name}: {exc}") from None
        return self._shard(index, found)

    def _shard(self, index: int, config_map: dict[str, Any]) -> _Shard:
        """A shard as the API server answered it; an answer without a resourceVersion is not
        a ConfigMap (a proxy's page, say)."""
        version = (config_map.get("metadata") or {}).get("resourceVersion")
        if not isinstance(version, str):
            raise LedgerError(f"{self.where}: {self._name(index)}: the answer is not a ConfigMap")
        return _Shard(index, version, _size(_data_of(config_map)))

    # -- the API

    def _call(self, verb: str, name: str, request: Any) -> dict[str, Any]:
        """One request; 409 is `_Conflict` (the caller reads the shard again), any other refusal
        a `LedgerError` sentence."""
        try:
            answer: dict[str, Any] = request()
        except ValueError as exc:  # not JSON: not the API server's answer
            raise LedgerError(f"{self.where}: {verb} {_RESOURCE}: the answer is not JSON") from exc
        except ApiException as exc:
            if exc.status == 409:
                raise _Conflict(str(exc.reason)) from exc
            problem = translate_error(exc, verb, _RESOURCE, name, self._namespace)
            raise LedgerError(str(problem)) from exc
        except HTTPError as exc:
            raise LedgerError(str(unreachable_error(self._api.api_client, exc))) from exc
        return answer

    def _path(self) -> str:
        return f"/api/v1/namespaces/{self._namespace}/configmaps"

    def _name(self, index: int) -> str:
        return f"{NAME_PREFIX}{self._pvc_uid}-{index:03d}"

    def _labels(self) -> dict[str, str]:
        labels = {**APP_LABELS, PVC_UID_LABEL: self._pvc_uid}
        if _LABEL_VALUE.match(self._task_id) and len(self._task_id) <= 63:
            labels[TASK_LABEL] = self._task_id
        return labels


class _Conflict(Exception):
    """409: a stale resourceVersion, or a shard another writer created first."""


def _data_of(config_map: dict[str, Any]) -> dict[str, str]:
    data = config_map.get("data") or {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}


def _size(data: dict[str, str]) -> int:
    """A ConfigMap's data as the API server counts it against its limit: keys and values."""
    return sum(len(key) + len(value.encode("utf-8")) for key, value in data.items())


def _encode(entry: LedgerEntry) -> str:
    record: dict[str, Any]
    try:
        entry.path.encode("utf-8")
        record = {"p": entry.path}
    except UnicodeEncodeError:
        raw = entry.path.encode("utf-8", "surrogateescape")
        record = {"pb": base64.b64encode(raw).decode("ascii")}
    record |= {"s": entry.sha256, "n": entry.size, "id": entry.document_id}
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def _decode(line: str) -> LedgerEntry | None:
    """The entry of one JSON line, or None when the line is not one."""
    try:
        record = json.loads(line)
        if "pb" in record:
            path = base64.b64decode(record["pb"], validate=True).decode("utf-8", "surrogateescape")
        else:
            path = record["p"]
        sha256, size, document_id = record["s"], record["n"], record.get("id")
    except (ValueError, TypeError, KeyError, binascii.Error):
        return None
    if not (
        isinstance(path, str)
        and path
        and isinstance(sha256, str)
        and isinstance(size, int)
        and not isinstance(size, bool)
        and (document_id is None or isinstance(document_id, str))
    ):
        return None
    return LedgerEntry(path, sha256, size, document_id)
