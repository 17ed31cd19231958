"""The controller's decisions and the cleanup Job it renders, on plain data and the real
template from deploy/ (no cluster: the end-to-end tests are in tests/test_controller.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from harvester.controller.decide import DECISION_ANNOTATION, Verdict, decide
from harvester.controller.render import TemplateError, parse_template, render
from harvester.model import ClaimMount, MainJob

TEMPLATE = Path(__file__).resolve().parent.parent / "deploy" / "cleanup-job.yaml"

RUNNING = MainJob(
    namespace="keruta",
    name="keruta-job-42",
    uid="uid-42",
    labels={"app": "keruta", "task-id": "42"},
    annotations={},
    complete=False,
    failed=False,
    completed_at=None,
    claims=(ClaimMount("pvc-42", ("/.keruta",)),),
)


@pytest.mark.parametrize(
    ("job", "verdict"),
    [
        (RUNNING, Verdict.RUNNING),
        (replace(RUNNING, complete=True), Verdict.START_CLEANUP),
        (replace(RUNNING, failed=True), Verdict.FAILED),
        (
            replace(RUNNING, complete=True, annotations={DECISION_ANNOTATION: "x"}),
            Verdict.DECIDED,
        ),
        (
            replace(RUNNING, failed=True, annotations={DECISION_ANNOTATION: "none: failed"}),
            Verdict.DECIDED,
        ),
        (replace(RUNNING, complete=True, labels={"app": "keruta"}), Verdict.IGNORE),
        (
            replace(
                RUNNING,
                complete=True,
                labels={"task-id": "42", "app.kubernetes.io/component": "cleanup"},
            ),
            Verdict.IGNORE,
        ),
    ],
    ids=["running", "complete", "failed", "recorded", "recorded-failure", "no-task", "ours"],
)
def test_the_decision_comes_from_the_jobs_current_state(job: MainJob, verdict: Verdict) -> None:
    assert decide(job).verdict is verdict


def test_the_cleanup_job_is_the_template_with_the_tasks_fields() -> None:
    template = parse_template(TEMPLATE.read_text(), source="deploy/cleanup-job.yaml")
    decision = decide(replace(RUNNING, complete=True))
    job = render(template, decision, claim="pvc-42", source_pod="keruta-job-42-abcde", source="t")

    assert job["metadata"]["name"] == "cleanup-job-for-task-42"
    assert job["metadata"]["labels"]["task-id"] == "42"
    assert job["metadata"]["annotations"]["harvester.keruta.io/main-job"] == "keruta-job-42"
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["KERUTA_TASK_ID"]["value"] == "42"
    assert env["KERUTA_SOURCE_POD"]["value"] == "keruta-job-42-abcde"
    assert env["KERUTA_PVC"]["value"] == "pvc-42"
    assert env["KERUTA_API_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "keruta-api-token"
    assert [e["name"] for e in container["env"]].count("KERUTA_TASK_ID") == 1
    (claim,) = [v["persistentVolumeClaim"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claim == {"claimName": "pvc-42", "readOnly": True}
    # The template itself is untouched: the next task starts from the same text.
    assert template["metadata"]["name"] == "cleanup-job-for-task-123"


def test_without_a_succeeded_pod_the_source_pod_is_empty_not_missing() -> None:
    template = parse_template(TEMPLATE.read_text(), source="t")
    job = render(
        template, decide(replace(RUNNING, complete=True)), claim="c", source_pod=None, source="t"
    )
    env = {
        e["name"]: e["value"]
        for e in job["spec"]["template"]["spec"]["containers"][0]["env"]
        if "value" in e
    }
    # The seed's command line names $(KERUTA_SOURCE_POD): unset, it would be passed literally.
    assert env["KERUTA_SOURCE_POD"] == ""


def test_a_task_id_that_cannot_name_a_job_is_refused_with_a_sentence() -> None:
    template = parse_template(TEMPLATE.read_text(), source="t")
    odd = replace(RUNNING, complete=True, labels={"task-id": "Task_42"})
    with pytest.raises(TemplateError, match="not a valid Kubernetes name"):
        render(template, decide(odd), claim="c", source_pod=None, source="t")


def _template_with(**changes: Any) -> str:
    import yaml  # type: ignore[import-untyped]

    manifest = yaml.safe_load(TEMPLATE.read_text())
    manifest.update(changes)
    return str(yaml.safe_dump(manifest))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("kind: [", "not valid YAML"),
        ("- a list", "not a Kubernetes object"),
        (_template_with(kind="Pod"), "not a batch/v1 Job"),
        (_template_with(spec={"template": {"spec": {"containers": []}}}), "needs one container"),
        (
            _template_with(spec={"template": {"spec": {"containers": [{"name": "x"}]}}}),
            "exactly one persistentVolumeClaim",
        ),
    ],
    ids=["yaml", "not-a-mapping", "kind", "no-container", "no-claim"],
)
def test_a_broken_template_says_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(TemplateError, match=problem):
        parse_template(text, source="ConfigMap keruta/keruta-harvester-cleanup-job")
