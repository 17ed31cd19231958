"""The controller scenario's ceiling: `python -m bench.kube_ceiling`, Jobs created as fast as
one sequential client can.

Takes a kubeconfig, a namespace, a count and the cleanup Job template (deploy/cleanup-job.yaml);
creates `count` Jobs, one request after another, through the very call `harvester controller`
makes (`JobsApi.create_job`: the official client's connection, plain JSON in and out). Each is the
template with the name, task-id label and task env changed, so the API server validates and
stores, and the job controller acts on, the same objects the controller creates. The manifests
are made before the loop: only the requests are timed. Prints one JSON line (`{"created": n,
"loop_s": s}`) and exits non-zero on the first refused request.

A separate process, as the controller is, so that it pays the same interpreter start-up and
shares no GIL with the benchmark's watch.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

from harvester.kube.cluster import KubeError
from harvester.kube.jobs import connect
from harvester.settings import ClusterAccess

__all__ = ["main", "manifests"]


def manifests(template_text: str, count: int) -> list[dict[str, Any]]:
    """`count` cleanup Jobs from the template, for tasks ceiling-00000, ceiling-00001, ..."""
    template = yaml.safe_load(template_text)
    jobs = []
    for number in range(count):
        task = f"ceiling-{number:05d}"
        job = copy.deepcopy(template)
        job["metadata"]["name"] = f"cleanup-job-for-task-{task}"
        job["metadata"]["labels"]["task-id"] = task
        (container,) = job["spec"]["template"]["spec"]["containers"]
        for env in container["env"]:
            if env["name"] == "KERUTA_TASK_ID":
                env["value"] = task
        jobs.append(job)
    return jobs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.kube_ceiling", description=__doc__)
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--template", type=Path, required=True)
    args = parser.parse_args(argv)
    jobs = manifests(args.template.read_text(), args.count)
    with connect(ClusterAccess(kubeconfig=str(args.kubeconfig))) as api:
        started = time.perf_counter()
        for job in jobs:
            try:
                if not api.create_job(args.namespace, job):
                    raise KubeError("it exists already")
            except KubeError as exc:
                sys.stderr.write(f"{job['metadata']['name']}: create refused: {exc}\n")
                return 1
        loop = time.perf_counter() - started
    print(json.dumps({"created": len(jobs), "loop_s": loop}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
