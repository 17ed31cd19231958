"""`kube.watch` and `kube.rest` against a scripted API server on a real loopback socket: what a
real control plane will not do on demand (tests/test_jobs.py has the real one).

An event split across chunks is read whole; a 410 sent inside the watch stream (not as the
answer's status) lists again; a line that is not JSON, or a 500, backs off and resumes from the
last resourceVersion seen, without a relist; a 403 ends the watch with the sentence naming the
verb, the resource and the Role.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import pytest
from kubernetes import client

from harvester.kube.cluster import KubeError, unreachable_error
from harvester.kube.rest import JsonApi
from harvester.kube.watch import ADDED, JOBS, MODIFIED, SYNCED, ResourceWatch, Selector
from tests.servers import Answer, ScriptedServer, Seen, json_answer


def chunked(*parts: bytes) -> Answer:
    """A 200 whose body is sent in `parts`, one HTTP chunk each, a little apart."""
    body = [b"%x\r\n%s\r\n" % (len(part), part) for part in parts] + [b"0\r\n\r\n"]
    headers = (("Content-Type", "application/json"), ("Transfer-Encoding", "chunked"))
    return Answer(200, headers, body, interval=0.02)


def job(name: str, version: str) -> dict[str, object]:
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": version}}


def event(kind: str, obj: dict[str, object]) -> bytes:
    return json.dumps({"type": kind, "object": obj}).encode() + b"\n"


def listing(version: str, *names: str) -> Answer:
    items = [job(name, version) for name in names]
    return json_answer(200, {"items": items, "metadata": {"resourceVersion": version}})


def query(seen: Seen) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(seen.path).query).items()}


def run(
    script: Callable[[int, Seen], Answer], requests: int
) -> tuple[list[str], ResourceWatch, ScriptedServer]:
    """Watch the scripted server's Jobs until it answered `requests` requests; the changes
    seen (kind and name), the watch and the server."""
    stop = threading.Event()
    count = iter(range(1_000))

    def answer(seen: Seen) -> Answer:
        n = next(count)
        if n + 1 >= requests:
            stop.set()
        return script(n, seen)

    with ScriptedServer(answer) as server:
        configuration = client.Configuration()
        configuration.host = server.url
        api_client = client.ApiClient(configuration)
        watch = ResourceWatch(
            JsonApi(api_client),
            JOBS,
            Selector(labels="app=keruta"),
            stop,
            namespaces=["ns"],
            sleep=lambda _seconds: None,
            unreachable=lambda exc: unreachable_error(api_client, exc),
        )
        seen = [f"{c.kind} {c.obj.get('metadata', {}).get('name', '')}".strip() for c in watch]
    return seen, watch, server


def test_an_event_split_across_chunks_and_a_410_in_the_stream() -> None:
    def script(n: int, seen: Seen) -> Answer:
        if n == 0:
            return listing("10", "a")
        if n == 1:
            modified = event(MODIFIED, job("a", "11"))
            gone = event("ERROR", {"kind": "Status", "code": 410, "reason": "Expired"})
            return chunked(modified[:20], modified[20:] + gone[:5], gone[5:])
        if n == 2:
            return listing("12", "a", "b")
        return chunked(event(ADDED, job("c", "13")))

    seen, watch, server = run(script, requests=4)
    assert seen == [
        "RESET", "ADDED a", SYNCED,
        "MODIFIED a",
        "RESET", "ADDED a", "ADDED b", SYNCED,
        "ADDED c",
    ]  # fmt: skip
    assert (watch.relists, watch.restarts) == (1, 0)
    first_watch, last_watch = (query(s) for s in server.seen[1::2])
    assert first_watch["resourceVersion"] == "10" and first_watch["watch"] == "1"
    assert last_watch["resourceVersion"] == "12"
    assert first_watch["labelSelector"] == "app=keruta"


def test_a_line_that_is_not_json_or_a_500_resumes_without_a_relist() -> None:
    def script(n: int, seen: Seen) -> Answer:
        if n == 0:
            return listing("10", "a")
        if n == 1:
            return chunked(event(MODIFIED, job("a", "11")), b"<html>a proxy's page</html>\n")
        if n == 2:
            return json_answer(500, {"kind": "Status", "code": 500, "message": "etcd timeout"})
        return chunked(event(MODIFIED, job("a", "12")))

    seen, watch, server = run(script, requests=4)
    assert seen == ["RESET", "ADDED a", SYNCED, "MODIFIED a", "MODIFIED a"]
    assert (watch.relists, watch.restarts) == (0, 2)
    assert [query(s)["resourceVersion"] for s in server.seen[1:]] == ["10", "11", "11"]


def test_a_refused_watch_ends_with_the_missing_rule() -> None:
    def script(n: int, seen: Seen) -> Answer:
        if n == 0:
            return listing("10")
        forbidden = 'jobs.batch is forbidden: User "x" cannot watch resource "jobs"'
        return json_answer(403, {"kind": "Status", "code": 403, "message": forbidden})

    with pytest.raises(KubeError) as refused:
        run(script, requests=2)
    said = str(refused.value)
    assert 'verb "watch" on "jobs"' in said and "deploy/controller-role.yaml" in said
