"""The `rerun-ledger` scenario (issue 12): a re-run without the server's help sends nothing again.

Takes the many-small tree, a scratch folder, the number of runs and a log function; gives a
`ScenarioResult`. On a fresh real control plane (a namespace and a PVC, as the cleanup Job
finds them) and a dev-api with neither a document listing nor Idempotency-Key
(`--no-listing --no-idempotency`), `harvester cleanup` runs twice into the same task with
`--keep-pvc`, as Kubernetes' retry of a cleanup Job whose uploads all went through would:

- `first run`: uploads every file and records each acknowledged one in the ledger (ConfigMaps
  owned by the PVC);
- `second run`: reads the ledger and plans every file "already uploaded": 0 bytes sent;
- `first run, --no-ledger` and `second run, --no-ledger`: the same pair without the ledger, on
  a fresh dev-api: the first shows what the ledger's writes cost; the second, with nothing to
  tell it what the server holds, sends everything again, and the server stores it twice.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from pathlib import Path

from kubernetes import config

from bench.contenders import Measurement, harvester_cleanup
from bench.controlplane import ControlPlane, binaries_built, create
from bench.results import ContenderResult, Ratio, ScenarioResult, Target
from bench.server import DevApiProcess
from bench.tools import BenchError

__all__ = ["rerun_ledger_scenario", "unavailable"]

NAMESPACE = "bench-ledger"
PVC = "pvc-bench"
NO_SERVER_HELP = ("--no-listing", "--no-idempotency")


def unavailable() -> str | None:
    """Why the scenario cannot run here (no control plane binaries), or None."""
    return None if binaries_built() else "the control plane binaries are not built (make cluster)"


def rerun_ledger_scenario(
    root: Path,
    files: int,
    total_bytes: int,
    describe: str,
    scratch: Path,
    *,
    runs: int,
    log: Callable[[str], None],
    concurrency: int,
) -> ScenarioResult:
    first = ContenderResult("first", "first run", note="a fresh task; the ledger written")
    second = ContenderResult("second", "second run", note="same task: the ledger read")
    blind_first = ContenderResult(
        "blind-first", "first run, --no-ledger", note="a fresh task on a fresh server"
    )
    blind = ContenderResult(
        "blind", "second run, --no-ledger", note="same task: nothing tells what is held"
    )
    checks: list[str] = []
    with ControlPlane(scratch / f"plane-{uuid.uuid4().hex[:8]}") as plane:
        admin = config.new_client_from_config(str(plane.admin_kubeconfig))  # type: ignore[no-untyped-call]
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
        create(admin, namespace, NAMESPACE)
        claim = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": PVC},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
            },
        }
        create(admin, claim, NAMESPACE)
        env = {"KUBECONFIG": str(plane.admin_kubeconfig)}
        cluster = ("--pvc", PVC, "--namespace", NAMESPACE)

        def harvest(url: str, task_id: str, *more: str) -> Measurement:
            return harvester_cleanup(
                url,
                task_id,
                root,
                scratch,
                concurrency=concurrency,
                options=(*cluster, *more),
                env=env,
            )

        for number in range(1, runs + 1):
            for pair, more in (((first, second), ()), ((blind_first, blind), ("--no-ledger",))):
                task_id = f"bench-ledger-{number}-{uuid.uuid4().hex[:8]}"
                with DevApiProcess(scratch, options=NO_SERVER_HELP) as server:
                    for contender in pair:
                        server_before = server.cpu_seconds()
                        measured = harvest(server.url, task_id, *more)
                        server_after = server.cpu_seconds()
                        if server_before is not None and server_after is not None:
                            server_cpu = server_after - server_before
                            measured = dataclasses.replace(measured, server_cpu_s=server_cpu)
                        contender.runs.append(measured)
                        counts = measured.detail["counts"]
                        log(
                            f"  rerun-ledger run {number}/{runs}: {contender.label}: "
                            f"{measured.wall_s:.2f} s, "
                            f"{measured.detail['bytes_uploaded']:,} bytes sent {counts}"
                        )
            sent_again = int(second.runs[-1].detail["bytes_uploaded"])
            resent = int(blind.runs[-1].detail["counts"].get("uploaded", 0))
            if int(first.runs[-1].detail["counts"].get("uploaded", 0)) != files:
                raise BenchError(f"run {number}: the first run did not upload all {files} files")
            checks.append(
                f"run {number}: the second run sent {sent_again:,} bytes "
                f"({second.runs[-1].detail['counts']}); without the ledger it sent {resent:,} "
                f"of {files:,} documents again"
            )
        admin.close()
    result = ScenarioResult(
        "rerun-ledger",
        f"the many-small tree ({describe}) harvested twice into one task on a server without "
        "listing or Idempotency-Key, with the ledger on a real control plane",
        files,
        total_bytes,
        runs,
        [first, second, blind_first, blind],
        checks=checks,
        issue="issue 12",
    )
    result.ratios = [
        Ratio("second / first", second.wall_s(files), first.wall_s(files), "s"),
        Ratio("first / first, --no-ledger", first.wall_s(files), blind_first.wall_s(files), "s"),
        Ratio(
            "second, --no-ledger / first, --no-ledger",
            blind.wall_s(files),
            blind_first.wall_s(files),
            "s",
        ),
    ]
    most_sent = max(int(m.detail["bytes_uploaded"]) for m in second.runs)
    result.targets = [Target("bytes sent by the second run", float(most_sent), "<=", 0.0, "B")]
    result.limits = (
        "the second run still scans and hashes every file, and reads the ledger (a list of "
        "ConfigMaps); the first pays the ledger's writes (one merge patch per batch)"
    )
    return result
