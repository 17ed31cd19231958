"""The five scenarios of issue 4, each running its contenders interleaved (A B C A B C ...),
issue 11's `controller` (bench/controller.py) and issue 12's `rerun-ledger`
(bench/rerun_ledger.py) and `watch` (bench/watch.py).

Takes a `Context` (work folder, number of runs, quick or full sizes, the tools found); gives a
`ScenarioResult` per scenario. Every measured run gets a fresh dev-api process and a new task id,
so no run sees another's documents; interleaving spreads slow drifts of the machine (page cache,
thermal, a neighbour) over every contender alike instead of charging them to one.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.contenders import (
    Measurement,
    curl_uploads,
    harvester_cleanup,
    harvester_plan,
    sequential,
    wrk_ceiling,
)
from bench.controller import controller_scenario
from bench.controller import unavailable as controller_unavailable
from bench.data import KIB, MIB, TreeSpec, make_tree
from bench.rerun_ledger import rerun_ledger_scenario
from bench.rerun_ledger import unavailable as rerun_ledger_unavailable
from bench.results import MB, ContenderResult, Ratio, ScenarioResult, Target
from bench.server import DevApiProcess
from bench.tools import BenchError
from bench.watch import watch_scenario

__all__ = ["SCENARIOS", "Context", "run_scenario", "unavailable"]

CONCURRENCY = 8
REMOTE_LATENCY = 0.020


@dataclass(frozen=True, slots=True)
class Context:
    """What every scenario needs to know about this benchmark run."""

    workdir: Path
    runs: int
    quick: bool
    wrk: str | None
    curl: str | None
    wrk_seconds: float
    log: Callable[[str], None]
    skip_reasons: dict[str, str]

    @property
    def trees(self) -> Path:
        return self.workdir / "trees"

    @property
    def scratch(self) -> Path:
        path = self.workdir / "scratch"
        path.mkdir(parents=True, exist_ok=True)
        return path


def _spec(ctx: Context, name: str) -> TreeSpec:
    full = {
        "many-small": TreeSpec("many-small", 10_000, 4 * KIB, 100),
        "remote-api": TreeSpec("remote-api", 2_000, 4 * KIB, 20),
        "large": TreeSpec("large", 4, 512 * MIB, 1, suffix=".bin"),
        "plan-100k": TreeSpec("plan-100k", 100_000, 128, 1_000),
    }
    quick = {
        "many-small": TreeSpec("quick-many-small", 400, 4 * KIB, 4),
        "remote-api": TreeSpec("quick-remote-api", 160, 4 * KIB, 4),
        "large": TreeSpec("quick-large", 2, 16 * MIB, 1, suffix=".bin"),
        "plan-100k": TreeSpec("quick-plan", 2_000, 128, 20),
    }
    return (quick if ctx.quick else full)[name]


def _tree(ctx: Context, spec: TreeSpec) -> Path:
    ctx.log(f"  data: {spec.name}: {spec.describe()}")
    return make_tree(spec, ctx.trees)


Run = Callable[[str, str], Measurement]  # (server URL, task id) -> one measurement


@dataclass(frozen=True, slots=True)
class _Entry:
    result: ContenderResult
    run: Run | None


def _with_server_cpu(server: DevApiProcess, run: Run, task_id: str) -> Measurement:
    """`run` against `server`, with the CPU time the server spent meanwhile."""
    before = server.cpu_seconds()
    measured = run(server.url, task_id)
    after = server.cpu_seconds()
    if before is None or after is None:
        return measured
    return dataclasses.replace(measured, server_cpu_s=after - before)


def _skipped(key: str, label: str, reason: str) -> _Entry:
    return _Entry(ContenderResult(key, label, skipped=reason), None)


def _interleave(
    ctx: Context, scenario: str, entries: list[_Entry], *, latency: float = 0.0
) -> None:
    """Run every entry `ctx.runs` times, A B C A B C ..., each against a fresh dev-api."""
    for number in range(1, ctx.runs + 1):
        for entry in entries:
            if entry.run is None:
                continue
            task_id = f"bench-{scenario}-{entry.result.key}-{number}-{uuid.uuid4().hex[:8]}"
            with DevApiProcess(ctx.scratch, latency=latency) as server:
                measured = _with_server_cpu(server, entry.run, task_id)
            entry.result.runs.append(measured)
            rate = measured.files / measured.wall_s
            ctx.log(
                f"  {scenario} run {number}/{ctx.runs}: {entry.result.label}: "
                f"{measured.wall_s:.2f} s, {rate:,.0f} files/s, "
                f"{measured.bytes / measured.wall_s / MB:,.1f} MB/s"
            )


def _wrk_entries(ctx: Context, *, with_same_body: bool, file_size: int) -> list[_Entry]:
    if ctx.wrk is None:
        reason = ctx.skip_reasons["wrk"]
        entries = [_skipped("wrk", "ceiling: wrk", reason)]
        if with_same_body:
            entries.append(_skipped("wrk-same", "wrk, one body replayed", reason))
        return entries
    wrk = ctx.wrk

    def distinct(url: str, task_id: str) -> Measurement:
        return wrk_ceiling(
            wrk, url, task_id, ctx.scratch, duration_s=ctx.wrk_seconds, file_size=file_size
        )

    def same(url: str, task_id: str) -> Measurement:
        return wrk_ceiling(
            wrk,
            url,
            task_id,
            ctx.scratch,
            duration_s=ctx.wrk_seconds,
            file_size=file_size,
            distinct=False,
        )

    note = f"wrk -t2 -c{CONCURRENCY} -d{max(1, round(ctx.wrk_seconds))}s"
    entries = [
        _Entry(
            ContenderResult(
                "wrk", "ceiling: wrk", note=f"{note}, a new body each request", rate_only=True
            ),
            distinct,
        )
    ]
    if with_same_body:
        entries.append(
            _Entry(
                ContenderResult(
                    "wrk-same",
                    "wrk, one body replayed",
                    note=f"{note}; server dedupes the blob: cheaper",
                    rate_only=True,
                ),
                same,
            )
        )
    return entries


def _harvester_entry(ctx: Context, root: Path) -> _Entry:
    def run(url: str, task_id: str) -> Measurement:
        measured = harvester_cleanup(url, task_id, root, ctx.scratch, concurrency=CONCURRENCY)
        return measured

    note = f"harvester cleanup --concurrency {CONCURRENCY}"
    return _Entry(ContenderResult("harvester", "harvester", note=note), run)


def _sequential_entry(ctx: Context, root: Path) -> _Entry:
    def run(url: str, task_id: str) -> Measurement:
        return sequential(url, task_id, root, ctx.scratch)

    note = "one at a time, whole file in memory, new connection"
    return _Entry(ContenderResult("sequential", "sequential (old agent)", note=note), run)


def _check_all_uploaded(result: ContenderResult, files: int) -> None:
    for measured in result.runs:
        uploaded = int(measured.detail.get("counts", {}).get("uploaded", 0))
        if uploaded != files:
            raise BenchError(f"{result.label} uploaded {uploaded} of {files} files")


def many_small(ctx: Context) -> ScenarioResult:
    spec = _spec(ctx, "many-small")
    root = _tree(ctx, spec)
    harvester, seq = _harvester_entry(ctx, root), _sequential_entry(ctx, root)
    wrk_entries = _wrk_entries(ctx, with_same_body=True, file_size=spec.file_size)
    entries = [harvester, *wrk_entries, seq]
    _interleave(ctx, "many-small", entries)
    _check_all_uploaded(harvester.result, spec.files)
    result = _result(ctx, "many-small", spec, entries)
    h = harvester.result.files_per_s(spec.files)
    ceiling = wrk_entries[0].result.files_per_s(spec.files)
    same = wrk_entries[1].result.files_per_s(spec.files)
    vs_ceiling = Ratio("harvester / ceiling (wrk)", h, ceiling, "files/s")
    upload_only = harvester.result.stage_rate("upload", spec.files)
    result.ratios = [
        vs_ceiling,
        Ratio("harvester / wrk, one body replayed", h, same, "files/s"),
        Ratio("harvester upload stage only / ceiling", upload_only, ceiling, "files/s"),
        _speedup(result, spec.files),
    ]
    result.targets = [Target("harvester / ceiling (wrk) files/s", vs_ceiling.value, ">=", 0.40)]
    result.limits = (
        "per-request cost on both sides of the loopback, on 2 cores shared by client and server"
    )
    return result


def remote_api(ctx: Context) -> ScenarioResult:
    spec = _spec(ctx, "remote-api")
    root = _tree(ctx, spec)
    harvester, seq = _harvester_entry(ctx, root), _sequential_entry(ctx, root)
    wrk_entries = _wrk_entries(ctx, with_same_body=False, file_size=spec.file_size)
    entries = [harvester, *wrk_entries, seq]
    _interleave(ctx, "remote-api", entries, latency=REMOTE_LATENCY)
    _check_all_uploaded(harvester.result, spec.files)
    ideal_s = spec.files * REMOTE_LATENCY / CONCURRENCY
    ideal = ContenderResult(
        "ideal",
        "ideal",
        note=f"files × {REMOTE_LATENCY * 1000:.0f} ms / {CONCURRENCY}",
        ideal_wall_s=ideal_s,
    )
    result = _result(ctx, "remote-api", spec, entries)
    result.description += f"; the server adds {REMOTE_LATENCY * 1000:.0f} ms to every answer"
    result.contenders.append(ideal)
    speedup = _speedup(result, spec.files)
    over_ideal = Ratio(
        "harvester / ideal", harvester.result.wall_s(spec.files), ideal_s, "s", unit="x"
    )
    result.ratios = [
        Ratio(
            "harvester / ceiling (wrk)",
            harvester.result.files_per_s(spec.files),
            wrk_entries[0].result.files_per_s(spec.files),
            "files/s",
        ),
        speedup,
        over_ideal,
    ]
    result.targets = [
        Target("sequential / harvester wall", speedup.value, ">=", 6.0, "x"),
        Target("harvester / ideal wall", over_ideal.value, "<=", 1.25, "x"),
    ]
    result.limits = "the 20 ms per answer; 8 in flight at best (the ideal)"
    return result


def large(ctx: Context) -> ScenarioResult:
    spec = _spec(ctx, "large")
    root = _tree(ctx, spec)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    harvester, seq = _harvester_entry(ctx, root), _sequential_entry(ctx, root)
    entries = [harvester]
    if ctx.curl is None:
        entries += [
            _skipped("curl-seq", "curl, 1 by 1", ctx.skip_reasons["curl"]),
            _skipped("curl-par", f"curl, {len(files)} at once", ctx.skip_reasons["curl"]),
        ]
    else:
        curl = ctx.curl

        def one_by_one(url: str, task_id: str) -> Measurement:
            return curl_uploads(curl, url, task_id, files, ctx.scratch, parallel=False)

        def all_at_once(url: str, task_id: str) -> Measurement:
            return curl_uploads(curl, url, task_id, files, ctx.scratch, parallel=True)

        note = "curl -sS -o /dev/null -F file=@PATH"
        entries += [
            _Entry(ContenderResult("curl-seq", "curl, 1 by 1", note=note), one_by_one),
            _Entry(
                ContenderResult("curl-par", f"curl, {len(files)} at once", note=note), all_at_once
            ),
        ]
    entries.append(seq)
    _interleave(ctx, "large", entries)
    _check_all_uploaded(harvester.result, spec.files)
    result = _result(ctx, "large", spec, entries)
    curls = [e.result for e in entries if e.result.key.startswith("curl") and e.result.measured]
    best = max(curls, key=lambda c: c.mb_per_s(spec.total_bytes) or 0.0, default=None)
    h_mbps = harvester.result.mb_per_s(spec.total_bytes)
    ceiling = None if best is None else best.mb_per_s(spec.total_bytes)
    if best is not None:
        best.note += " (the ceiling)"
    vs_curl = Ratio(
        f"harvester / ceiling ({best.label if best else 'curl'})", h_mbps, ceiling, "MB/s"
    )
    upload_only = harvester.result.stage_rate("upload", spec.total_bytes / MB)
    result.ratios = [
        vs_curl,
        Ratio("harvester upload stage only / ceiling", upload_only, ceiling, "MB/s"),
        _speedup(result, spec.files),
    ]
    result.targets = [
        Target("harvester / curl MB/s", vs_curl.value, ">=", 0.8),
        Target("harvester peak RSS", harvester.result.peak_rss_mb(), "<", 150.0, "MB"),
    ]
    result.limits = (
        "hashing and the disk: the harvester reads every byte twice (hash, then send), the "
        "server hashes it and writes it out once more; curl only sends"
    )
    return result


def rerun(ctx: Context) -> ScenarioResult:
    spec = _spec(ctx, "many-small")
    root = _tree(ctx, spec)
    first = ContenderResult("first", "harvester, first run", note="a fresh task")
    second = ContenderResult("second", "harvester, second run", note="same task, same server")
    checks: list[str] = []
    twice = 0

    def harvest(url: str, task_id: str) -> Measurement:
        return harvester_cleanup(url, task_id, root, ctx.scratch, concurrency=CONCURRENCY)

    for number in range(1, ctx.runs + 1):
        task_id = f"bench-rerun-{number}-{uuid.uuid4().hex[:8]}"
        with DevApiProcess(ctx.scratch) as server:
            for contender in (first, second):
                measured = _with_server_cpu(server, harvest, task_id)
                contender.runs.append(measured)
                ctx.log(
                    f"  rerun run {number}/{ctx.runs}: {contender.label}: {measured.wall_s:.2f} s "
                    f"{measured.detail['counts']}"
                )
            documents = server.documents(task_id)
        paths = [str(d.get("path")) for d in documents]
        distinct = len(set(paths))
        counts = second.runs[-1].detail["counts"]
        ok = distinct == len(paths) == spec.files and counts.get("uploaded", 0) == 0
        twice += len(paths) - distinct
        if distinct != spec.files:
            raise BenchError(f"the server holds {distinct} distinct paths for {spec.files} files")
        checks.append(
            f"run {number}: the server holds {len(paths):,} documents, {distinct:,} distinct "
            f"paths ({spec.files:,} files); the second harvest uploaded "
            f"{counts.get('uploaded', 0)}, skipped {counts.get('already-uploaded', 0)} as "
            f"already there: {'no document stored twice' if ok else 'DUPLICATES'}"
        )
    result = ScenarioResult(
        "rerun",
        f"the many-small tree ({spec.describe()}) harvested twice into the same task",
        spec.files,
        spec.total_bytes,
        ctx.runs,
        [first, second],
        checks=checks,
    )
    result.ratios = [
        Ratio("second / first", second.wall_s(spec.files), first.wall_s(spec.files), "s")
    ]
    result.targets = [
        Target("documents stored twice", float(twice), "<=", 0.0),
    ]
    result.limits = "the second run still hashes every file; it asks the server once for its list"
    return result


def plan_100k(ctx: Context) -> ScenarioResult:
    spec = _spec(ctx, "plan-100k")
    root = _tree(ctx, spec)
    contender = ContenderResult("harvester", "harvester --dry-run", note="no server")
    for number in range(1, ctx.runs + 1):
        measured = harvester_plan(root, ctx.scratch)
        if measured.files != spec.files:
            raise BenchError(f"the plan lists {measured.files} of {spec.files} files")
        contender.runs.append(measured)
        ctx.log(
            f"  plan-100k run {number}/{ctx.runs}: {measured.wall_s:.2f} s, "
            f"peak RSS {(measured.peak_rss or 0) / MB:.0f} MB"
        )
    result = ScenarioResult(
        "plan-100k",
        f"harvester cleanup --dry-run over {spec.describe()}",
        spec.files,
        spec.total_bytes,
        ctx.runs,
        [contender],
    )
    # The targets are for 100,000 files; a --quick run's verdicts only show the plumbing works.
    result.targets = [
        Target("wall time", contender.wall_s(spec.files), "<", 10.0, "s"),
        Target("peak RSS", contender.peak_rss_mb(), "<", 250.0, "MB"),
    ]
    result.limits = "per-file system calls (open, fstat, read) and Python work per plan entry"
    return result


def _speedup(result: ScenarioResult, files: int) -> Ratio:
    seq = result.contender("sequential").wall_s(files)
    harvester = result.contender("harvester").wall_s(files)
    return Ratio("sequential / harvester", seq, harvester, "s", unit="x")


def _result(ctx: Context, name: str, spec: TreeSpec, entries: list[_Entry]) -> ScenarioResult:
    return ScenarioResult(
        name,
        spec.describe(),
        spec.files,
        spec.total_bytes,
        ctx.runs,
        [entry.result for entry in entries],
    )


def rerun_ledger(ctx: Context) -> ScenarioResult:
    """The rerun without the server's help, the ledger on a real control plane (issue 12)."""
    spec = _spec(ctx, "many-small")
    root = _tree(ctx, spec)
    return rerun_ledger_scenario(
        root,
        spec.files,
        spec.total_bytes,
        spec.describe(),
        ctx.scratch,
        runs=ctx.runs,
        log=ctx.log,
        concurrency=CONCURRENCY,
    )


def watch(ctx: Context) -> ScenarioResult:
    """`harvester watch`: start pass, idle CPU, delay from a write to its upload (issue 12)."""
    return watch_scenario(ctx.scratch, quick=ctx.quick, runs=ctx.runs, log=ctx.log)


def controller(ctx: Context) -> ScenarioResult:
    """`harvester controller` against a bare create loop on the real control plane (issue 11)."""
    return controller_scenario(ctx.scratch, quick=ctx.quick, runs=ctx.runs, log=ctx.log)


SCENARIOS: dict[str, Callable[[Context], ScenarioResult]] = {
    "many-small": many_small,
    "remote-api": remote_api,
    "large": large,
    "rerun": rerun,
    "rerun-ledger": rerun_ledger,
    "watch": watch,
    "plan-100k": plan_100k,
    "controller": controller,
}

# Why a scenario cannot run on this machine (None: it can), asked before it starts.
_UNAVAILABLE: dict[str, Callable[[], str | None]] = {
    "controller": controller_unavailable,
    "rerun-ledger": rerun_ledger_unavailable,
}


def unavailable(name: str) -> str | None:
    """Why the scenario `name` cannot run here (a tool it needs is missing), or None."""
    check = _UNAVAILABLE.get(name)
    return None if check is None else check()


def run_scenario(ctx: Context, name: str) -> ScenarioResult:
    """Run the scenario `name` (a key of `SCENARIOS`)."""
    return SCENARIOS[name](ctx)
