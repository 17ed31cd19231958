"""The controller's template cache and its Event writer, on plain data (no cluster: the
end-to-end template tests are in tests/test_controller.py).

The template: a change is parsed once when it comes; a broken one is said once (log line and
Event) while the last good one stays in force; a deleted ConfigMap, or one a relist no longer
finds, leaves none. The Event writer: writes in order off the caller's thread, says a failed
write, drops past its backlog and says how many, and gives up waiting at stop after its drain
time, saying what it did not write.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from harvester.controller.events import EventWriter
from harvester.controller.render import TEMPLATE_KEY
from harvester.controller.templates import Templates
from harvester.kube.watch import ADDED, DELETED, MODIFIED, RESET, SYNCED, Change
from harvester.stats import Level
from tests.volume_support import Notices

GOOD = (Path(__file__).resolve().parent.parent / "deploy" / "cleanup-job.yaml").read_text()
NAME = "keruta-harvester-cleanup-job"


def config_map(namespace: str, text: str | None) -> dict[str, Any]:
    data = {} if text is None else {TEMPLATE_KEY: text}
    return {"metadata": {"name": NAME, "namespace": namespace}, "data": data}


class Recorded:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str, str]] = []

    def __call__(self, namespace: str, name: str, reason: str, message: str) -> None:
        self.events.append((namespace, name, reason, message))


def templates(scopes: int = 1) -> tuple[Templates, Notices, Recorded]:
    notices, events = Notices(), Recorded()
    return Templates(NAME, scopes, notices, events), notices, events


def image(template: dict[str, Any] | None) -> str:
    assert template is not None
    return str(template["spec"]["template"]["spec"]["containers"][0]["image"])


def test_a_good_template_is_in_force_once_listed() -> None:
    cache, _notices, events = templates()
    assert cache.lookup("ns") == (
        None,
        f"ConfigMap ns/{NAME} has no key {TEMPLATE_KEY}: apply "
        "deploy/ in this namespace or pass --template-config-map",
    )
    cache.follow([Change(RESET, "ns"), Change(ADDED, "ns", config_map("ns", GOOD))])
    assert not cache.synced.is_set()
    cache.take(Change(SYNCED, "ns"))
    assert cache.synced.is_set()
    template, why = cache.lookup("ns")
    assert template is not None and why == ""
    assert cache.lookup("elsewhere")[0] is None
    assert events.events == []


def test_a_broken_change_is_said_once_and_the_last_good_stays() -> None:
    cache, notices, events = templates()
    cache.take(Change(ADDED, "ns", config_map("ns", GOOD)))
    before = image(cache.lookup("ns")[0])
    broken = config_map("ns", "kind: [not closed")
    cache.take(Change(MODIFIED, "ns", broken))
    cache.take(Change(MODIFIED, "ns", broken))  # the same text again (a resync): said once
    assert image(cache.lookup("ns")[0]) == before
    ((namespace, name, reason, message),) = events.events
    assert (namespace, name, reason) == ("ns", NAME, "TemplateInvalid")
    assert "not valid YAML" in message and "the last good template stays in force" in message
    assert [text for level, text in notices.lines if level is Level.ERROR] == [message]

    fixed = GOOD.replace(before, "registry.example/harvester:next")
    cache.take(Change(MODIFIED, "ns", config_map("ns", fixed)))
    assert image(cache.lookup("ns")[0]) == "registry.example/harvester:next"


def test_broken_from_the_start_means_no_template_and_says_so() -> None:
    cache, _notices, events = templates()
    cache.take(Change(ADDED, "ns", config_map("ns", "apiVersion: v1\nkind: Pod\n")))
    template, why = cache.lookup("ns")
    assert template is None and "is not a usable template" in why
    (event,) = events.events
    assert "no cleanup Job can start until it is fixed" in event[3]


def test_deleted_or_gone_at_a_relist_leaves_no_template() -> None:
    cache, _notices, _events = templates(scopes=2)
    for namespace in ("a", "b"):
        cache.take(Change(ADDED, namespace, config_map(namespace, GOOD)))
    cache.take(Change(DELETED, "a", config_map("a", GOOD)))
    assert cache.lookup("a")[0] is None
    # A relist of b no longer has it (deleted while the watch was away): dropped at SYNCED.
    cache.take(Change(RESET, "b"))
    assert cache.lookup("b")[0] is not None  # still in force while the list is under way
    cache.take(Change(SYNCED, "b"))
    assert cache.lookup("b")[0] is None
    assert not cache.synced.is_set()  # a has not been listed yet
    cache.take(Change(SYNCED, "a"))
    assert cache.synced.is_set()


def test_a_key_removed_leaves_no_template() -> None:
    cache, _notices, _events = templates()
    cache.take(Change(ADDED, "ns", config_map("ns", GOOD)))
    cache.take(Change(MODIFIED, "ns", config_map("ns", None)))
    assert cache.lookup("ns")[0] is None


# -- the Event writer


def test_events_are_written_in_order_off_the_callers_thread() -> None:
    notices, written, threads = Notices(), [], set()

    def write(n: int) -> str | None:
        written.append(n)
        threads.add(threading.current_thread().name)
        return "forbidden: events" if n == 2 else None

    with EventWriter(notices) as events:
        for n in range(5):
            events.submit(lambda n=n: write(n))  # type: ignore[misc]
    assert written == [0, 1, 2, 3, 4]
    assert threads == {"events"}
    assert notices.lines == [(Level.WARNING, "Kubernetes Event not written: forbidden: events")]


def holding(taken: threading.Event, release: threading.Event, seconds: float) -> str | None:
    """An Event write that holds the writer until released (or `seconds` passed)."""
    taken.set()
    release.wait(seconds)
    return None


def test_past_the_backlog_events_are_dropped_and_counted() -> None:
    notices, taken, release = Notices(), threading.Event(), threading.Event()
    written: list[int] = []
    events = EventWriter(notices, backlog=2)
    events.submit(lambda: holding(taken, release, 10))
    assert taken.wait(10)
    for n in range(5):
        events.submit(lambda n=n: written.append(n))  # type: ignore[misc]
    release.set()
    events.close()
    assert written == [0, 1]
    said = [text for _level, text in notices.lines]
    assert said[0] == (
        "Kubernetes Events: 2 waiting to be written; dropping new ones until they are"
    )
    assert "Kubernetes Events: 3 Events dropped" in said


def test_at_stop_the_writer_waits_its_drain_time_and_says_what_is_left() -> None:
    notices, taken, release = Notices(), threading.Event(), threading.Event()
    events = EventWriter(notices, drain_seconds=0.2)
    events.submit(lambda: holding(taken, release, 0.5))
    assert taken.wait(10)
    for _ in range(3):
        events.submit(lambda: None)
    events.close()
    release.set()
    assert (Level.WARNING, "Kubernetes Events: 3 Events not written at stop") in notices.lines
