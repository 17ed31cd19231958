"""A relist after 410 Gone, end to end: `harvester controller` (the real CLI, as deploy/'s
controller ServiceAccount and Role) still starts exactly one cleanup Job for a main Job that
completed while its watch's resourceVersion was compacted away, and none more when it lists that
Job again after a second such relist.

It runs on `cacheless_plane` (tests/kube_backends.py), whose Jobs are watched from etcd, so a
watch from a compacted resourceVersion is 410 (the shared control plane's watch cache would
serve it). The relist is forced as it happens on a cluster, with nothing of the controller
patched: the controller is stopped (SIGSTOP) while it waits in a watch; the API server ends that
watch after its `timeoutSeconds` (`WATCH_SECONDS`) while the client is frozen, so nothing written
afterwards can reach it through a watch it already had; the main Job is made Complete, something
more is written, and etcd is compacted to that newest revision; on SIGCONT its next watch, from
the old resourceVersion, is 410, and only a list can show it the Job. The API server's audit log
says when the frozen controller's watch ended and that it listed Jobs again; /metrics counts the
relist (`keruta_harvester_watch_relists_total` and a log line), as an operator sees it.

The main Job is made as bench/controller.py makes it (suspended, `spec.managedBy` naming no real
controller, its status written as the admin), so it turns Complete with one write, while the
controller is frozen.
"""

from __future__ import annotations

import contextlib
import json
import signal
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from bench.controller import complete_main_job, create_main_job
from bench.controlplane import ControlPlane
from harvester.kube.watch import WATCH_SECONDS
from tests.controller_helpers import (
    CONTROLLER,
    Controller,
    cleanup_jobs,
    controller_starter,
    events_on,
    metrics,
    record,
    served,
)
from tests.kube_backends import RealNamespace, wait_until

TASK = "51"
MAIN_JOB = f"keruta-job-{TASK}"
CLEANUP_JOB = f"cleanup-job-for-task-{TASK}"
RELISTS = "keruta_harvester_watch_relists_total"
RELISTED = "the Jobs watch's resourceVersion expired (410 Gone); listing again"
CREATED = "keruta_harvester_cleanup_jobs_created_total"
# Freeze only in a watch younger than this: the API server ends it WATCH_SECONDS after it began,
# so the controller is surely still waiting in it when the SIGSTOP lands.
FRESH = timedelta(seconds=WATCH_SECONDS / 3)
# How long after its end the API server may take to end a watch, and to write that down.
WATCH_END_MARGIN = 10.0


@dataclass(frozen=True)
class _Watch:
    began: datetime
    ended: datetime | None


class AuditedJobRequests:
    """The requests about Jobs one user made, as the API server's audit log has them: its
    lists, and its watches (when each began; when the server ended it)."""

    def __init__(self, audit_log: Path, user: str) -> None:
        self._audit_log = audit_log
        self._user = user

    def _events(self) -> Iterator[dict[str, Any]]:
        for line in self._audit_log.read_text().splitlines():
            event = json.loads(line)
            target = event.get("objectRef") or {}
            if event["user"]["username"] == self._user and target.get("resource") == "jobs":
                yield event

    def lists(self) -> int:
        return sum(
            1 for e in self._events() if e["verb"] == "list" and e["stage"] == "ResponseComplete"
        )

    def watches(self) -> dict[str, _Watch]:
        began: dict[str, datetime] = {}
        ended: dict[str, datetime] = {}
        for event in self._events():
            if event["verb"] != "watch":
                continue
            began[event["auditID"]] = datetime.fromisoformat(event["requestReceivedTimestamp"])
            if event["stage"] == "ResponseComplete":
                ended[event["auditID"]] = datetime.fromisoformat(event["stageTimestamp"])
        return {key: _Watch(when, ended.get(key)) for key, when in began.items()}

    def open_watches(self) -> list[str]:
        return [key for key, watch in self.watches().items() if watch.ended is None]


@contextlib.contextmanager
def frozen_past_its_watch(controller: Controller, jobs: AuditedJobRequests) -> Iterator[None]:
    """Stop the controller (SIGSTOP) while it waits in a fresh watch on Jobs; enter once the API
    server has ended that watch, so nothing written inside can reach the controller but through
    a new request. Continue it (SIGCONT) on exit."""

    def fresh_watch() -> str | None:
        now = datetime.now(UTC)
        for key in jobs.open_watches():
            if now - jobs.watches()[key].began < FRESH:
                return key
        return None

    wait_until(
        lambda: fresh_watch() is not None,
        "the controller to be in a fresh watch on Jobs",
        timeout=WATCH_SECONDS + WATCH_END_MARGIN,
    )
    watching = fresh_watch()
    assert watching is not None
    frozen_at = datetime.now(UTC)
    controller.process.send_signal(signal.SIGSTOP)
    try:
        wait_until(
            lambda: not jobs.open_watches(),
            "the API server to end the frozen controller's watch",
            timeout=WATCH_SECONDS + WATCH_END_MARGIN,
        )
        ended = jobs.watches()[watching].ended
        assert ended is not None and ended > frozen_at, (
            f"the watch ended at {ended}, before the freeze at {frozen_at}: the controller may "
            "have had another request on its way"
        )
        yield
    finally:
        controller.process.send_signal(signal.SIGCONT)


def running(controller: Controller) -> bool:
    """True while the controller runs; once it exited, fails with the end of its output."""
    code = controller.process.poll()
    if code is None:
        return True
    raise AssertionError(f"the controller exited {code}; its output ends:\n{controller.tail()}")


def write_more(real_api: RealNamespace) -> str:
    """Write something unrelated to the Jobs (a new ConfigMap); its resourceVersion, the newest
    revision this test knows of."""
    body: Any = {"metadata": {"generateName": "relist-marker-"}}
    answer: Any = client.CoreV1Api(real_api.admin).create_namespaced_config_map(
        real_api.namespace, body, _preload_content=False
    )
    return str(json.loads(answer.data)["metadata"]["resourceVersion"])


def compact(plane: ControlPlane, revision: str) -> None:
    """etcd forgets every revision before `revision`: a watch from an older one is 410 Gone."""
    body = json.dumps({"revision": revision}).encode()
    with urllib.request.urlopen(f"{plane.etcd_url}/v3/kv/compaction", body, timeout=10):
        pass


@pytest.fixture
def cacheless_api(
    cacheless_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RealNamespace]:
    """A fresh namespace on `cacheless_plane`, holding deploy/'s ServiceAccount and Role."""
    with RealNamespace(
        cacheless_plane.admin_kubeconfig,
        tmp_path_factory.mktemp("kube"),
        cacheless_plane.audit_log,
        runs_pods=False,
    ) as api:
        yield api


def test_a_relist_after_410_gives_one_cleanup_job_and_a_second_relist_none_more(
    cacheless_plane: ControlPlane, cacheless_api: RealNamespace, tmp_path: Path
) -> None:
    api, namespace = cacheless_api, cacheless_api.namespace
    jobs = AuditedJobRequests(
        cacheless_plane.audit_log, f"system:serviceaccount:{namespace}:{CONTROLLER}"
    )
    batch = client.BatchV1Api(api.admin)
    create_main_job(batch, namespace, TASK)
    subject = f"Job {namespace}/{MAIN_JOB}"

    def about_the_job() -> list[str]:
        """What the controller said about the main Job, in order."""
        messages = [str(line.get("message", "")) for line in controller.lines()]
        return [m for m in messages if m.startswith(f"{subject}: ")]

    with controller_starter(api, tmp_path) as start:
        # No lease: one frozen past its duration would stop acting and exit when it resumes.
        controller = start("--no-leader-elect")
        base = served(controller)
        # 1. Running, idle and caught up: it listed the main Job (not finished) and watches.
        wait_until(
            lambda: controller.said(f"{subject}: the main Job has not finished"),
            "the controller to list the main Job",
        )
        assert jobs.lists() == 1
        relists = metrics(base)[RELISTS]

        # 2.-3. Frozen past its watch; meanwhile the Job completes and etcd forgets the past.
        with frozen_past_its_watch(controller, jobs):
            complete_main_job(batch, namespace, TASK)
            compact(cacheless_plane, write_more(api))
        # 4. Resumed: its watch from the old resourceVersion is 410; it lists, finds the Job.
        wait_until(
            lambda: running(controller) and record(api, MAIN_JOB) is not None,
            "the decision, after the relist",
        )
        assert record(api, MAIN_JOB) == CLEANUP_JOB
        assert [job.metadata.name for job in cleanup_jobs(api)] == [CLEANUP_JOB]
        assert controller.said(f"cleanup Job {CLEANUP_JOB} created")
        assert jobs.lists() == 2  # the server saw it list again
        assert metrics(base)[RELISTS] == relists + 1  # and so does an operator
        assert sum(RELISTED in str(line.get("message")) for line in controller.lines()) == 1

        # The same Job, seen again after a second forced relist: nothing more.
        decided = f"{subject}: decided before: {CLEANUP_JOB}"
        wait_until(
            lambda: any(m.startswith(decided) for m in about_the_job()),
            "the controller to see its record",
        )
        relists = metrics(base)[RELISTS]
        with frozen_past_its_watch(controller, jobs):
            seen = len(about_the_job())
            compact(cacheless_plane, write_more(api))
        wait_until(
            lambda: running(controller) and jobs.lists() == 3 and len(about_the_job()) > seen,
            "the controller to list again and see the main Job",
        )
        assert all(m.startswith(decided) for m in about_the_job()[seen:]), about_the_job()[seen:]
        assert metrics(base)[RELISTS] == relists + 1
        assert [job.metadata.name for job in cleanup_jobs(api)] == [CLEANUP_JOB]
        assert record(api, MAIN_JOB) == CLEANUP_JOB
        assert metrics(base)[CREATED] == 1
        assert not controller.said(f"cleanup Job {CLEANUP_JOB} already existed")
        assert events_on(api, MAIN_JOB) == ["CleanupJobCreated"]
        assert controller.stop() == 0
