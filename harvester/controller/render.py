"""The cleanup Job of one task, rendered from the template deploy/ publishes.

Takes the template's text (ConfigMap `keruta-harvester-cleanup-job`, key `cleanup-job.yaml`: a
batch/v1 Job for an example task), the controller's `Decision` for a completed main Job, the
claim that Job's pod template mounts and one of its succeeded pods; gives the manifest of
`cleanup-job-for-task-<task>` to create. What is set per task: the name, the `task-id` label,
`KERUTA_TASK_ID`, `KERUTA_SOURCE_POD`, `KERUTA_PVC` and the claim the template's volume names
(read-only). Everything else (image, resources, service account, backoffLimit, TTL, API URL,
extra flags) is the template's, so an operator changes it there. A template that cannot be
used raises `TemplateError` with a sentence saying what is wrong in it.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import yaml  # type: ignore[import-untyped]

from harvester.controller.decide import (
    MAIN_JOB_ANNOTATION,
    MAIN_JOB_UID_ANNOTATION,
    TASK_LABEL,
    Decision,
)
from harvester.errors import HarvesterError

TEMPLATE_KEY = "cleanup-job.yaml"
CONTAINER = "cleanup-container"
# libyaml's safe loader parses the template ten times faster than the pure-Python one.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# A Job's name becomes its pods' `job-name` label value: a DNS-1123 label, at most 63 characters.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class TemplateError(HarvesterError):
    """The cleanup Job template (or what it would make for a task) cannot be used."""


def parse_template(text: str, *, source: str) -> dict[str, Any]:
    """The template as a manifest, checked to be a usable batch/v1 Job (see `render`)."""
    try:
        manifest = yaml.load(text, Loader=_SAFE_LOADER)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        raise TemplateError(f"{source}: not valid YAML ({exc})") from None
    if not isinstance(manifest, dict):
        raise TemplateError(f"{source}: not a Kubernetes object (a YAML mapping)")
    if (manifest.get("apiVersion"), manifest.get("kind")) != ("batch/v1", "Job"):
        raise TemplateError(
            f"{source}: is {manifest.get('apiVersion')}/{manifest.get('kind')}, not a batch/v1 Job"
        )
    _container(manifest, source)
    _claim_volume(manifest, source)
    return manifest


def render(
    template: dict[str, Any],
    decision: Decision,
    *,
    claim: str,
    source_pod: str | None,
    source: str,
) -> dict[str, Any]:
    """The cleanup Job for `decision`'s task: `template` with the per-task fields set."""
    name = decision.cleanup_job_name
    if not _DNS_LABEL.match(name):
        raise TemplateError(
            f"task {decision.task_id!r}: the cleanup Job's name {name!r} is not a valid "
            "Kubernetes name (lower-case letters, digits and '-', at most 63 characters)"
        )
    manifest = copy.deepcopy(template)
    metadata = manifest.setdefault("metadata", {})
    metadata["name"] = name
    metadata.pop("namespace", None)
    metadata.pop("generateName", None)
    metadata.setdefault("labels", {})[TASK_LABEL] = decision.task_id
    annotations = metadata.setdefault("annotations", {})
    annotations[MAIN_JOB_ANNOTATION] = decision.job.name
    annotations[MAIN_JOB_UID_ANNOTATION] = decision.job.uid
    container = _container(manifest, source)
    env = [e for e in container.get("env") or [] if e.get("name") not in _PER_TASK]
    env[:0] = [
        {"name": "KERUTA_TASK_ID", "value": decision.task_id},
        # Empty when no succeeded pod is left: the harvester then finds the claim by KERUTA_PVC.
        # Always set, since the seed's command line names $(KERUTA_SOURCE_POD).
        {"name": "KERUTA_SOURCE_POD", "value": source_pod or ""},
        {"name": "KERUTA_PVC", "value": claim},
    ]
    container["env"] = env
    volume_claim = _claim_volume(manifest, source)
    volume_claim["claimName"] = claim
    volume_claim["readOnly"] = True
    return manifest


_PER_TASK = frozenset({"KERUTA_TASK_ID", "KERUTA_SOURCE_POD", "KERUTA_PVC"})


def _pod_spec(manifest: dict[str, Any], source: str) -> dict[str, Any]:
    spec = (((manifest.get("spec") or {}).get("template") or {}).get("spec")) or None
    if not isinstance(spec, dict):
        raise TemplateError(f"{source}: has no spec.template.spec")
    return spec


def _container(manifest: dict[str, Any], source: str) -> dict[str, Any]:
    containers = _pod_spec(manifest, source).get("containers") or []
    named = [c for c in containers if isinstance(c, dict) and c.get("name") == CONTAINER]
    if named:
        return named[0]
    if len(containers) == 1 and isinstance(containers[0], dict):
        return containers[0]
    raise TemplateError(
        f"{source}: needs one container, or one named {CONTAINER!r}, to run the harvester"
    )


def _claim_volume(manifest: dict[str, Any], source: str) -> dict[str, Any]:
    volumes = _pod_spec(manifest, source).get("volumes") or []
    claims = [
        v["persistentVolumeClaim"]
        for v in volumes
        if isinstance(v, dict) and isinstance(v.get("persistentVolumeClaim"), dict)
    ]
    if len(claims) != 1:
        raise TemplateError(
            f"{source}: needs exactly one persistentVolumeClaim volume (the task's volume, "
            f"mounted read-only), not {len(claims)}"
        )
    claim: dict[str, Any] = claims[0]
    return claim
