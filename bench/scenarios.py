"""The five scenarios of issue 4 with issue 13's servers and targets, and its `plan-1m`, each
running its contenders interleaved (A B C A B C ...); issue 11's `controller`
(bench/controller.py) and issue 12's `rerun-ledger` (bench/rerun_ledger.py) and `watch`
(bench/watch.py).

Takes a `Context` (work folder, number of runs, quick or full sizes, the tools found); gives a
`ScenarioResult` per scenario. Every measured run gets a fresh server process (dev-api or the
fast server, as the contender says) and a new task id, so no run sees another's documents;
interleaving spreads slow drifts of the machine (page cache, thermal, a neighbour) over every
contender alike instead of charging them to one.
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
from bench.results import MB, ContenderResult, Figure, Ratio, ScenarioResult, Target
from bench.server import DevApiProcess, FastServerProcess, ServerProcess
from bench.tools import BenchError
from bench.watch import watch_scenario

__all__ = ["SCENARIOS", "Context", "check_all_uploaded", "run_scenario", "unavailable"]

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
        "plan-1m": TreeSpec("plan-1m", 1_000_000, 128, 1_000),
    }
    quick = {
        "many-small": TreeSpec("quick-many-small", 400, 4 * KIB, 4),
        "remote-api": TreeSpec("quick-remote-api", 160, 4 * KIB, 4),
        "large": TreeSpec("quick-large", 2, 16 * MIB, 1, suffix=".bin"),
        "plan-100k": TreeSpec("quick-plan", 2_000, 128, 20),
        "plan-1m": TreeSpec("quick-plan-1m", 20_000, 128, 200),
    }
    return (quick if ctx.quick else full)[name]


def _tree(ctx: Context, spec: TreeSpec) -> Path:
    ctx.log(f"  data: {spec.name}: {spec.describe()}")

    def progress(written: int) -> None:
        ctx.log(f"  data: {spec.name}: {written:,} of {spec.files:,} files written")

    return make_tree(spec, ctx.trees, progress=progress)


Run = Callable[[str, str], Measurement]  # (server URL, task id) -> one measurement
Server = type[ServerProcess]  # DevApiProcess or FastServerProcess


@dataclass(frozen=True, slots=True)
class _Entry:
    result: ContenderResult
    run: Run | None
    server: Server = DevApiProcess
    # A harvest of this many files: after each run the server must hold each file once.
    files: int | None = None


def _with_server_cpu(server: ServerProcess, run: Run, task_id: str) -> Measurement:
    """`run` against `server`, with the CPU time the server spent meanwhile."""
    before = server.cpu_seconds()
    measured = run(server.url, task_id)
    after = server.cpu_seconds()
    if before is None or after is None:
        return measured
    return dataclasses.replace(measured, server_cpu_s=after - before)


def _with_server_documents(
    server: ServerProcess, task_id: str, measured: Measurement
) -> Measurement:
    """`measured` with what the server holds for the task: documents and distinct paths."""
    paths = [str(document.get("path")) for document in server.documents(task_id)]
    held = {"server_documents": len(paths), "server_paths": len(set(paths))}
    return dataclasses.replace(measured, detail={**measured.detail, **held})


def _skipped(key: str, label: str, reason: str) -> _Entry:
    return _Entry(ContenderResult(key, label, skipped=reason), None)


def _interleave(
    ctx: Context, scenario: str, entries: list[_Entry], *, latency: float = 0.0
) -> None:
    """Run every entry `ctx.runs` times, A B C A B C ..., each against a fresh server."""
    for number in range(1, ctx.runs + 1):
        for entry in entries:
            if entry.run is None:
                continue
            task_id = f"bench-{scenario}-{entry.result.key}-{number}-{uuid.uuid4().hex[:8]}"
            with entry.server(ctx.scratch, latency=latency) as server:
                measured = _with_server_cpu(server, entry.run, task_id)
                if entry.files is not None:
                    measured = _with_server_documents(server, task_id, measured)
            entry.result.runs.append(measured)
            rate = measured.files / measured.wall_s
            cpu = ""
            if measured.client_cpu_s is not None and measured.files:
                cpu = f", client CPU {measured.client_cpu_s / measured.files * 1000:.2f} ms/file"
            ctx.log(
                f"  {scenario} run {number}/{ctx.runs}: {entry.result.label}: "
                f"{measured.wall_s:.2f} s, {rate:,.0f} files/s, "
                f"{measured.bytes / measured.wall_s / MB:,.1f} MB/s{cpu}"
            )


# The two servers of issue 13, and the suffix of their contenders' keys.
_SERVERS: tuple[tuple[Server, str], ...] = ((DevApiProcess, ""), (FastServerProcess, "-fast"))


def _wrk_entries(ctx: Context, *, with_same_body: bool, file_size: int) -> list[_Entry]:
    """wrk against each server (keys `wrk`, `wrk-fast`), and with one body replayed against
    dev-api (`wrk-same`) when `with_same_body`."""
    if ctx.wrk is None:
        reason = ctx.skip_reasons["wrk"]
        entries = [
            _skipped(f"wrk{key}", f"ceiling: wrk, {server.name}", reason)
            for server, key in _SERVERS
        ]
        if with_same_body:
            entries.append(_skipped("wrk-same", "wrk, dev-api, one body", reason))
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
                f"wrk{key}",
                f"ceiling: wrk, {server.name}",
                note=f"{note}, a new body each request",
                rate_only=True,
            ),
            distinct,
            server,
        )
        for server, key in _SERVERS
    ]
    if with_same_body:
        entries.append(
            _Entry(
                ContenderResult(
                    "wrk-same",
                    "wrk, dev-api, one body",
                    note=f"{note}, one body replayed; dev-api dedupes the blob: cheaper",
                    rate_only=True,
                ),
                same,
            )
        )
    return entries


def _harvester_entries(ctx: Context, root: Path, files: int) -> list[_Entry]:
    """The harvester against each server (keys `harvester`, `harvester-fast`)."""

    def run(url: str, task_id: str) -> Measurement:
        return harvester_cleanup(url, task_id, root, ctx.scratch, concurrency=CONCURRENCY)

    note = f"harvester cleanup --concurrency {CONCURRENCY}"
    return [
        _Entry(
            ContenderResult(f"harvester{key}", f"harvester, {server.name}", note=note),
            run,
            server,
            files,
        )
        for server, key in _SERVERS
    ]


def _sequential_entry(ctx: Context, root: Path) -> _Entry:
    def run(url: str, task_id: str) -> Measurement:
        return sequential(url, task_id, root, ctx.scratch)

    note = "one at a time, whole file in memory, new connection; dev-api"
    return _Entry(ContenderResult("sequential", "sequential (old agent)", note=note), run)


def check_all_uploaded(result: ContenderResult, files: int) -> None:
    """Every run uploaded all `files`, by the harvester's count and by the server's (each path
    held once), whichever server it ran against."""
    for measured in result.runs:
        uploaded = int(measured.detail.get("counts", {}).get("uploaded", 0))
        if uploaded != files:
            raise BenchError(f"{result.label} uploaded {uploaded} of {files} files")
        held = measured.detail.get("server_documents")
        paths = measured.detail.get("server_paths")
        if held is not None and not held == paths == files:
            raise BenchError(
                f"{result.label}: the server holds {held} documents with {paths} distinct paths "
                f"for {files} files"
            )


def many_small(ctx: Context) -> ScenarioResult:
    spec = _spec(ctx, "many-small")
    root = _tree(ctx, spec)
    harvesters = _harvester_entries(ctx, root, spec.files)
    wrks = _wrk_entries(ctx, with_same_body=True, file_size=spec.file_size)
    entries = [*harvesters, *wrks, _sequential_entry(ctx, root)]
    _interleave(ctx, "many-small", entries)
    for entry in harvesters:
        check_all_uploaded(entry.result, spec.files)
    result = _result(ctx, "many-small", spec, entries)
    result.issue = "issue 13"
    on_dev_api, on_fast = _against_wrk(result, spec.files)
    fast = result.contender("harvester-fast")
    result.ratios = [
        on_dev_api,
        on_fast,
        Ratio(
            "harvester / wrk, dev-api, one body",
            result.contender("harvester").files_per_s(spec.files),
            result.contender("wrk-same").files_per_s(spec.files),
            "files/s",
        ),
        # The upload stage alone leaves out start-up, scan and hash: the transport's share.
        Ratio(
            "upload stage only / wrk, fast server",
            fast.stage_rate("upload", spec.files),
            result.contender("wrk-fast").files_per_s(spec.files),
            "files/s",
        ),
        _speedup(result, spec.files),
    ]
    result.targets = [
        Target("harvester / wrk, fast server", on_fast.value, ">=", 0.6),
        Target("client CPU per file, fast server", fast.client_cpu_ms(), "<=", 0.4, "ms"),
    ]
    result.limits = (
        "per-request cost on both sides of the loopback, on 2 cores shared by client and server"
    )
    return result


def _against_wrk(result: ScenarioResult, files: int) -> tuple[Ratio, Ratio]:
    """harvester / wrk on dev-api, then on the fast server (the same server on both sides)."""
    dev_api, fast = (
        Ratio(
            f"harvester / wrk, {server.name}",
            result.contender(f"harvester{key}").files_per_s(files),
            result.contender(f"wrk{key}").files_per_s(files),
            "files/s",
        )
        for server, key in _SERVERS
    )
    return dev_api, fast


def remote_api(ctx: Context) -> ScenarioResult:
    spec = _spec(ctx, "remote-api")
    root = _tree(ctx, spec)
    harvesters = _harvester_entries(ctx, root, spec.files)
    wrks = _wrk_entries(ctx, with_same_body=False, file_size=spec.file_size)
    entries = [*harvesters, *wrks, _sequential_entry(ctx, root)]
    _interleave(ctx, "remote-api", entries, latency=REMOTE_LATENCY)
    for entry in harvesters:
        check_all_uploaded(entry.result, spec.files)
    ideal_s = spec.files * REMOTE_LATENCY / CONCURRENCY
    ideal = ContenderResult(
        "ideal",
        "ideal",
        note=f"files × {REMOTE_LATENCY * 1000:.0f} ms / {CONCURRENCY}",
        ideal_wall_s=ideal_s,
    )
    result = _result(ctx, "remote-api", spec, entries)
    result.issue = "issue 13"
    result.description += f"; both servers add {REMOTE_LATENCY * 1000:.0f} ms to every answer"
    result.contenders.append(ideal)
    speedup = _speedup(result, spec.files)
    over_ideal = [
        Ratio(
            f"harvester, {server.name} / ideal",
            result.contender(f"harvester{key}").wall_s(spec.files),
            ideal_s,
            "s",
            unit="x",
        )
        for server, key in _SERVERS
    ]
    result.ratios = [*_against_wrk(result, spec.files), speedup, *over_ideal]
    result.targets = [
        Target("harvester, fast server / ideal wall", over_ideal[-1].value, "<=", 1.15, "x"),
        Target("sequential / harvester (issue 4)", speedup.value, ">=", 6.0, "x"),
    ]
    result.limits = "the 20 ms per answer; 8 in flight at best (the ideal)"
    return result


def large(ctx: Context) -> ScenarioResult:
    spec = _spec(ctx, "large")
    root = _tree(ctx, spec)
    files = sorted(p for p in root.rglob("*") if p.is_file())

    def harvest(url: str, task_id: str) -> Measurement:
        return harvester_cleanup(url, task_id, root, ctx.scratch, concurrency=CONCURRENCY)

    note = f"harvester cleanup --concurrency {CONCURRENCY}"
    harvester = _Entry(
        ContenderResult("harvester", "harvester", note=note), harvest, files=spec.files
    )
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
    entries.append(_sequential_entry(ctx, root))
    _interleave(ctx, "large", entries)
    check_all_uploaded(harvester.result, spec.files)
    result = _result(ctx, "large", spec, entries)
    result.issue = "issue 13"
    result.description += "; dev-api (the fast server would hold each file in memory)"
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
        Target("harvester / curl MB/s (with hashing)", vs_curl.value, ">=", 0.9),
        Target("harvester peak RSS", harvester.result.peak_rss_mb(), "<", 100.0, "MB"),
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


def _plan(ctx: Context, name: str, *, seconds: float, megabytes: float) -> ScenarioResult:
    """`harvester cleanup --dry-run` over the tree `name`, with its targets (issue 13) and
    figures per file: memory (peak RSS / files) and CPU (user + system / files)."""
    spec = _spec(ctx, name)
    root = _tree(ctx, spec)
    contender = ContenderResult("harvester", "harvester --dry-run", note="no server")
    for number in range(1, ctx.runs + 1):
        measured = harvester_plan(root, ctx.scratch)
        if measured.files != spec.files:
            raise BenchError(f"the plan lists {measured.files} of {spec.files} files")
        contender.runs.append(measured)
        ctx.log(
            f"  {name} run {number}/{ctx.runs}: {measured.wall_s:.2f} s, "
            f"peak RSS {(measured.peak_rss or 0) / MB:.0f} MB"
        )
    result = ScenarioResult(
        name,
        f"harvester cleanup --dry-run over {spec.describe()}",
        spec.files,
        spec.total_bytes,
        ctx.runs,
        [contender],
        issue="issue 13",
    )
    rss_mb, cpu_s = contender.peak_rss_mb(), contender.client_cpu_s()
    result.figures = [
        Figure(
            "memory (peak RSS / files)",
            None if rss_mb is None else rss_mb * MB / spec.files,
            "B",
            f"{_num(rss_mb, 0)} MB / {spec.files:,} files",
        ),
        Figure(
            "CPU (user + system / files)",
            None if cpu_s is None else cpu_s / spec.files * 1e6,
            "µs",
            f"{_num(cpu_s, 2)} s / {spec.files:,} files",
        ),
    ]
    # The targets are for the full tree; a --quick run's verdicts only show the plumbing works.
    result.targets = [
        Target("wall time", contender.wall_s(spec.files), "<", seconds, "s"),
        Target("peak RSS", rss_mb, "<", megabytes, "MB"),
    ]
    result.limits = "per-file system calls (open, fstat, read) and Python work per plan entry"
    return result


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def plan_100k(ctx: Context) -> ScenarioResult:
    return _plan(ctx, "plan-100k", seconds=3.0, megabytes=120.0)


def plan_1m(ctx: Context) -> ScenarioResult:
    return _plan(ctx, "plan-1m", seconds=40.0, megabytes=700.0)


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
    "plan-1m": plan_1m,
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
