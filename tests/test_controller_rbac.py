"""Each rule of deploy/'s controller Role taken away in turn, end to end (issue 11): the real
`harvester controller`, as deploy/'s ServiceAccount, on the real control plane.

For every permission in `CONTROLLER_PERMISSIONS` (so a call added to or changed in the code is
covered without touching this file), a fresh namespace gets deploy/controller-role.yaml with
exactly that verb taken away, and a world in which every call the controller makes is made at
once: leader election (the default), a main Job already Complete (the list, the template, its
pods, the cleanup Job, the record, the Events) and a claim stuck Terminating (the claims check).
The controller must say, in one log line, which verb on which resource its Role lacks and where
to grant it; and it must not have acted where it could not know enough to act.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from bench.controller import complete_main_job, create_main_job
from harvester.controller.decide import DECISION_ANNOTATION
from harvester.kube.cluster import CONTROLLER_PERMISSIONS, Permission
from tests.controller_helpers import CONTROLLER_ROLE_FILE, Controller, install_controller
from tests.kube_backends import DEPLOY, RealNamespace, wait_until

TASK = "5"
CLEANUP_JOB = f"cleanup-job-for-task-{TASK}"
STUCK_CLAIM = "pvc-stuck"
ROLE_PATH = f"{DEPLOY.name}/{CONTROLLER_ROLE_FILE}"  # as a refusal names it: deploy/...
LEADS = " leads (Lease"


def permission_id(permission: Permission) -> str:
    return f"{permission.verb}-{permission.resource}"


def never_leads(missing: Permission) -> bool:
    """Whether a controller lacking `missing` can never hold the Lease: it does not exist yet,
    so it must be read and created (renewing it, `update`, comes only after)."""
    return missing.resource == "leases" and missing.verb in {"get", "create"}


def without_it_no_cleanup_job(missing: Permission) -> bool:
    """Whether a controller lacking `missing` must not create the cleanup Job: it never leads,
    cannot see the Job (list), has no template to render it from (it cannot list the template's
    ConfigMap), or cannot create it. (Without a watch, what the list gave is acted on before
    the refused watch stops the controller.)"""
    return never_leads(missing) or (missing.resource, missing.verb) in {
        ("jobs", "list"),
        ("jobs", "create"),
        ("configmaps", "list"),
    }


def refusal(controller: Controller, missing: Permission) -> dict[str, Any] | None:
    """The first warning or error line that names the missing verb, its resource and API
    group, and the Role file that must grant it."""
    group = missing.api_group or "core"
    words = [re.compile(rf"\b{re.escape(w)}\b") for w in (missing.verb, missing.resource, group)]
    for line in controller.lines():
        message = str(line.get("message", ""))
        if (
            line.get("level") in ("warning", "error")
            and ROLE_PATH in message
            and all(word.search(message) for word in words)
        ):
            return line
    return None


def arrange(real_api: RealNamespace) -> str:
    """A main Job already Complete (suspended and managed by no real controller, its status
    written as the job controller would: no pods, no waiting), and a claim labelled app=keruta
    stuck Terminating (a finished pod on a node names it, so pvc-protection keeps it). Returns
    the main Job's name."""
    batch = client.BatchV1Api(real_api.admin)
    job = create_main_job(batch, real_api.namespace, TASK)
    complete_main_job(batch, real_api.namespace, TASK)
    real_api.add_pvc(STUCK_CLAIM, labels={"app": "keruta"})
    real_api.add_pod("holder", claims=[STUCK_CLAIM], phase="Succeeded")
    client.CoreV1Api(real_api.admin).delete_namespaced_persistent_volume_claim(
        STUCK_CLAIM, real_api.namespace
    )
    return job


def jobs_in(real_api: RealNamespace) -> dict[str, dict[str, Any]]:
    """The namespace's Jobs by name, as the API serves them now."""
    batch = client.BatchV1Api(real_api.admin)
    answer: Any = batch.list_namespaced_job(real_api.namespace, _preload_content=False)
    return {job["metadata"]["name"]: job for job in json.loads(answer.data)["items"]}


def log_of(controller: Controller) -> str:
    return "\n".join(f"{line.get('level')}: {line.get('message')}" for line in controller.lines())


@pytest.mark.parametrize("missing", CONTROLLER_PERMISSIONS, ids=permission_id)
def test_each_missing_rule_is_named_in_the_log(
    real_api: RealNamespace, tmp_path: Path, missing: Permission
) -> None:
    namespace = real_api.namespace
    job = arrange(real_api)
    kubeconfig = install_controller(real_api, tmp_path / "controller.kubeconfig", without=missing)
    # The default lease (15 s): without `update` the Lease is lost 10 s after it was taken,
    # well after this test stopped the controller (a stop waits up to one watch request, 5 s).
    controller = Controller(
        kubeconfig, namespace, tmp_path / "controller.log", "--stuck-claim-after=1s", lease="15s"
    )

    def settled() -> bool:
        """It said what is missing and, if it can lead, it got to the Job; or it exited."""
        if controller.process.poll() is not None:
            return True
        if refusal(controller, missing) is None:
            return False
        return never_leads(missing) or controller.said(f"Job {namespace}/{job}: ")

    try:
        try:
            wait_until(settled, f"a line saying the Role lacks {missing.verb} {missing.resource}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the log:\n{log_of(controller)}") from None
        # A controller that gave up exits by itself, non-zero (no SIGTERM then: it could land
        # after the handler is gone, and kill it); one still running stops cleanly on SIGTERM.
        gave_up = controller.process.poll() is not None or controller.said("controller: stopped")
        code = controller.process.wait(timeout=30) if gave_up else controller.stop()
    finally:
        if controller.process.poll() is None:
            controller.process.kill()
            controller.process.wait()
    log = log_of(controller)
    assert refusal(controller, missing) is not None, f"no line names {missing}:\n{log}"
    assert (code > 0) if gave_up else (code == 0), f"exit {code}:\n{log}"
    # Each line one sentence: never the client's raw exception (status, headers and body on
    # several lines), which `kubectl logs | grep` would cut apart.
    messages = [str(line.get("message", "")) for line in controller.lines()]
    assert not [m for m in messages if "\n" in m], log

    # Nothing acted that should not have; nothing is recorded or announced that did not happen.
    jobs = jobs_in(real_api)
    cleanup = sorted(name for name in jobs if name != job)
    record = (jobs[job]["metadata"].get("annotations") or {}).get(DECISION_ANNOTATION)
    announced = [
        e
        for e in real_api.events
        if e["involvedObject"]["name"] == job and e["reason"] == "CleanupJobCreated"
    ]
    assert cleanup in ([], [CLEANUP_JOB]), cleanup
    if never_leads(missing):  # and never went past waiting for the Lease, to the Jobs
        assert not controller.said(LEADS), log
        assert controller.said("controller: stopped before leading"), log
    else:
        assert controller.said(LEADS), log
    if without_it_no_cleanup_job(missing):
        assert cleanup == [], f"a cleanup Job without {missing}:\n{log}"
    if record is not None:
        assert (record, cleanup) == (CLEANUP_JOB, [CLEANUP_JOB]), (record, cleanup)
    if announced:
        assert cleanup == [CLEANUP_JOB], announced
