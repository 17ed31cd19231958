"""List, then watch, one kind of object: the controller's view of Jobs and of its template.

Takes a `JsonApi`, a `Resource` (which kind, where), the namespaces (None: all) and a selector;
gives `ResourceWatch`, an iterator of `Change`s: each list begins with `RESET`, gives every
object as `ADDED` and ends with `SYNCED`; then each object added, modified or deleted, as it
is now. Objects are the API's JSON (dicts), never the client's models.

Each watch request ends after `timeout_seconds` and is renewed from the last resourceVersion
seen (bookmarks advance it too). 410 Gone (that resourceVersion is no longer served) lists again
(`relists`). A connection error, a timeout, a malformed answer, 429 or 5xx waits (exponential
backoff with full jitter) and resumes from the last resourceVersion (`restarts`), telling
`on_retry`; a relist tells `on_relist`. Any other refusal (401, 403...) is raised as a
`KubeError` naming the verb and the resource the Role lacks. Setting `stop` ends the iteration
within about `timeout_seconds` (a backoff wait ends at once).
"""

from __future__ import annotations

import queue
import random
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, NoReturn

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from harvester.kube.cluster import CONTROLLER_ROLE, KubeError, translate_error
from harvester.kube.rest import REQUEST_TIMEOUT, JsonApi
from harvester.retry import full_jitter

# A watch request ends after this long (the server closes it) and is renewed from the last
# resourceVersion: short, so a stop is noticed within it even when nothing changes.
WATCH_SECONDS = 5
# The read timeout of a watch request: the server's own end plus a margin, so a connection that
# silently died is noticed too.
_WATCH_READ_MARGIN = 10.0
LIST_PAGE = 500  # objects per list page: a large list never sits in memory whole
BACKOFF_BASE = 0.5  # seconds; the first retry waits up to this, each next one up to twice more
BACKOFF_MAX = 30.0
# Answers after which the same request may succeed later: the watch backs off and resumes.
_TRANSIENT_STATUSES = frozenset({0, 408, 425, 429, 500, 502, 503, 504})
_GONE = 410

RESET, ADDED, MODIFIED, DELETED, SYNCED = "RESET", "ADDED", "MODIFIED", "DELETED", "SYNCED"


class Resource(NamedTuple):
    """A kind of object as its API path names it: `/apis/batch/v1` and `jobs`."""

    prefix: str
    plural: str

    def path(self, namespace: str | None) -> str:
        if namespace is None:
            return f"{self.prefix}/{self.plural}"
        return f"{self.prefix}/namespaces/{namespace}/{self.plural}"


JOBS = Resource("/apis/batch/v1", "jobs")
CONFIG_MAPS = Resource("/api/v1", "configmaps")
PODS = Resource("/api/v1", "pods")
CLAIMS = Resource("/api/v1", "persistentvolumeclaims")


@dataclass(frozen=True)
class Change:
    """One thing a watch tells: `kind` is RESET (a list begins in `scope`: what follows, until
    SYNCED, is everything there is), ADDED, MODIFIED, DELETED or SYNCED; `obj` the object."""

    kind: str
    scope: str | None  # the namespace watched, None for all namespaces
    obj: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Selector:
    labels: str | None = None
    fields: str | None = None

    def query(self) -> list[tuple[str, str]]:
        found = []
        if self.labels:
            found.append(("labelSelector", self.labels))
        if self.fields:
            found.append(("fieldSelector", self.fields))
        return found


class ResourceWatch:
    """List, then watch, `resource` in `namespaces` (None: all); see the module's docstring.
    Across several namespaces there is one list and watch per namespace, each on its own
    thread. `resource_version` starts by watching from there instead of listing first."""

    def __init__(
        self,
        api: JsonApi,
        resource: Resource,
        selector: Selector,
        stop: threading.Event,
        *,
        namespaces: Sequence[str] | None = None,
        timeout_seconds: int = WATCH_SECONDS,
        backoff_base: float = BACKOFF_BASE,
        backoff_max: float = BACKOFF_MAX,
        sleep: Callable[[float], object] | None = None,
        rand: Callable[[], float] = random.random,
        on_retry: Callable[[KubeError, float], None] | None = None,
        on_relist: Callable[[], None] | None = None,
        resource_version: str | None = None,
        unreachable: Callable[[Exception], KubeError],
    ) -> None:
        self._stop = stop
        self._halt = threading.Event() if namespaces is not None and len(namespaces) > 1 else stop
        scopes: list[str | None] = list(namespaces) if namespaces is not None else [None]
        self._scopes = [
            _ScopeWatch(
                api,
                resource,
                selector,
                scope,
                self._halt,
                timeout_seconds=timeout_seconds,
                backoff=(backoff_base, backoff_max),
                sleep=sleep,
                rand=rand,
                on_retry=on_retry,
                on_relist=on_relist,
                resource_version=resource_version,
                unreachable=unreachable,
            )
            for scope in scopes
        ]

    @property
    def restarts(self) -> int:
        """Watches resumed after a connection error, a timeout, 429 or 5xx."""
        return sum(scope.restarts for scope in self._scopes)

    @property
    def relists(self) -> int:
        """Lists made again after 410 Gone (the first list of each namespace not counted)."""
        return sum(scope.relists for scope in self._scopes)

    def __iter__(self) -> Iterator[Change]:
        if len(self._scopes) == 1:
            yield from self._scopes[0].changes()
            return
        yield from self._merged()

    def _merged(self) -> Iterator[Change]:
        # Bounded: a namespace whose changes are not consumed waits instead of filling memory.
        found: queue.Queue[Change | KubeError] = queue.Queue(maxsize=LIST_PAGE)
        halt = self._halt

        def pump(scope: _ScopeWatch) -> None:
            try:
                for item in scope.changes():
                    _put(found, item, halt)
            except KubeError as exc:
                _put(found, exc, halt)

        threads = [
            threading.Thread(target=pump, args=(scope,), name=f"watch-{scope.where}", daemon=True)
            for scope in self._scopes
        ]
        for thread in threads:
            thread.start()
        try:
            while not self._stop.is_set():
                try:
                    item = found.get(timeout=0.2)
                except queue.Empty:
                    continue
                if isinstance(item, KubeError):
                    raise item
                yield item
        finally:
            halt.set()  # the namespaces' watches end with this iteration, however it ends


def _put(
    found: queue.Queue[Change | KubeError], item: Change | KubeError, halt: threading.Event
) -> None:
    while not halt.is_set():
        try:
            found.put(item, timeout=0.2)
            return
        except queue.Full:
            continue


class _Expired(Exception):
    """410 Gone: the resourceVersion (or a list's continue token) is no longer served."""


class _Transient(Exception):
    """The same request may succeed later."""

    def __init__(self, error: KubeError) -> None:
        super().__init__(str(error))
        self.error = error


class _ScopeWatch:
    """List and watch in one namespace (or all of them, `namespace` None)."""

    def __init__(
        self,
        api: JsonApi,
        resource: Resource,
        selector: Selector,
        namespace: str | None,
        halt: threading.Event,
        *,
        timeout_seconds: int,
        backoff: tuple[float, float],
        sleep: Callable[[float], object] | None,
        rand: Callable[[], float],
        on_retry: Callable[[KubeError, float], None] | None,
        on_relist: Callable[[], None] | None,
        resource_version: str | None,
        unreachable: Callable[[Exception], KubeError],
    ) -> None:
        self.namespace = namespace
        self.where = namespace if namespace is not None else "all-namespaces"
        self.restarts = 0
        self.relists = 0
        self.resource_version = resource_version
        self._api = api
        self._resource = resource
        self._path = resource.path(namespace)
        self._selector = selector.query()
        self._halt = halt
        self._timeout_seconds = timeout_seconds
        self._backoff = backoff
        self._sleep = sleep if sleep is not None else halt.wait
        self._rand = rand
        self._on_retry = on_retry
        self._on_relist = on_relist
        self._unreachable = unreachable

    def changes(self) -> Iterator[Change]:
        failures = 0
        while not self._halt.is_set():
            try:
                if self.resource_version is None:
                    yield from self._list()
                yield from self._watch_once()
                failures = 0
            except _Expired:
                self.relists += 1
                self.resource_version = None
                if self._on_relist is not None:
                    self._on_relist()
            except _Transient as transient:
                failures += 1
                self.restarts += 1
                delay = full_jitter(failures, *self._backoff, self._rand)
                if self._on_retry is not None:
                    self._on_retry(transient.error, delay)
                self._sleep(delay)

    def _list(self) -> Iterator[Change]:
        """Every matching object, page by page, between RESET and SYNCED; leaves the list's
        resourceVersion to watch from."""
        yield Change(RESET, self.namespace)
        token: str | None = None
        while True:
            query = [*self._selector, ("limit", str(LIST_PAGE))]
            if token:
                query.append(("continue", token))
            answer = self._request("list", self._api.request, "GET", self._path, query=query)
            for obj in answer.get("items") or []:
                yield Change(ADDED, self.namespace, obj)
            meta = answer.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                self.resource_version = str(meta.get("resourceVersion", ""))
                yield Change(SYNCED, self.namespace)
                return

    def _watch_once(self) -> Iterator[Change]:
        """One watch request, until the server ends it after `timeout_seconds` (or a stop)."""
        query = [
            *self._selector,
            ("resourceVersion", self.resource_version or ""),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(self._timeout_seconds)),
        ]
        timeout = (REQUEST_TIMEOUT[0], self._timeout_seconds + _WATCH_READ_MARGIN)
        watching = self._request("watch", self._api.watch, self._path, query=query, timeout=timeout)
        try:
            events = iter(watching)
            while (event := self._request("watch", next, events, None)) is not None:
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    self._refused_in_stream(obj)
                version = (obj.get("metadata") or {}).get("resourceVersion")
                if version:
                    # Bookmarks too (their object is only metadata): a resumed watch starts
                    # after the newest version seen.
                    self.resource_version = str(version)
                if kind in (ADDED, MODIFIED, DELETED):
                    yield Change(kind, self.namespace, obj)
                if self._halt.is_set():
                    return
        finally:
            watching.close()

    def _refused_in_stream(self, status: dict[str, Any]) -> NoReturn:
        """An ERROR event carries a Status: 410 when the resourceVersion was compacted away
        while watching; anything else is read as the same answer to a request would be."""
        code = int(status.get("code") or 0)
        if code == _GONE:
            raise _Expired
        exc = ApiException(status=code, reason=str(status.get("reason") or ""))
        exc.body = str(status.get("message") or "")
        self._raise_refusal("watch", exc)

    def _request(self, verb: str, method: Any, *args: Any, **kwargs: Any) -> Any:
        """Call `method`, translating failures: 410 `_Expired`, transient `_Transient`, any
        other refusal a `KubeError`."""
        try:
            return method(*args, **kwargs)
        except ApiException as exc:
            self._raise_refusal(verb, exc)
        except (HTTPError, OSError) as exc:
            raise _Transient(self._unreachable(exc)) from exc
        except ValueError as exc:  # not the JSON the API server sends: a proxy's page, a cut
            error = KubeError(f"the answer to {verb} {self._resource.plural} was not JSON ({exc})")
            raise _Transient(error) from exc

    def _raise_refusal(self, verb: str, exc: ApiException) -> NoReturn:
        if exc.status == _GONE:
            raise _Expired from exc
        error = translate_error(
            exc, verb, self._resource.plural, "", self.namespace, role=CONTROLLER_ROLE
        )
        if exc.status in _TRANSIENT_STATUSES:
            raise _Transient(error) from exc
        raise error from exc
