"""The `watch` scenario (issue 12): `harvester watch` as a sidecar sees it, against a dev-api.

Takes a scratch folder, the sizes (quick or full), the number of runs and a log function; gives
a `ScenarioResult`. Each run, for inotify and for `--poll` (1 s interval), on a fresh tree of
10,000 small files (`--quick` 1,000) and a fresh dev-api process:

1. the start pass: the real CLI starts, uploads the 10,000 files already there, and follows;
   its wall time and CPU are the row's (until the last of them is accepted and the watch is in
   place);
2. idle: nothing changes for 30 s (`--quick` 5 s); the sidecar's CPU over that time, as a share
   of one core (from /proc);
3. steady writes: one 1 KB file every 0.2 s, 60 of them (`--quick` 20), each written at once;
   the delay from its write to dev-api accepting it (the document's `createdAt`), of which
   `--settle` (2 s) is the rule's own wait: the targets read median <= settle + 0.5 s.

Then SIGTERM: it must exit 0 with every document uploaded.
"""

from __future__ import annotations

import dataclasses
import signal
import statistics
import subprocess
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from bench.contenders import Measurement
from bench.results import ContenderResult, ScenarioResult, Target
from bench.server import DevApiProcess
from bench.tools import HARVESTER, BenchError, PeakRss, isolated_env, proc_cpu_seconds

__all__ = ["watch_scenario"]

SETTLE = 2.0
WRITE_EVERY = 0.2
TASK = "bench-watch"
_SIZES = {False: (10_000, 30.0, 60), True: (1_000, 5.0, 20)}  # files, idle seconds, writes


def _tree(root: Path, files: int) -> None:
    for number in range(files):
        folder = root / f"old-{number // 1000:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{number:05d}.md").write_text(f"document {number}\n" * 8)


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    # Twice a second: each look lists every document, which costs the shared cores.
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise BenchError(f"watch: timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


def _accepted_at(server: DevApiProcess) -> dict[str, float]:
    """Each document's path and when dev-api accepted it (epoch seconds)."""
    return {
        str(d["path"]): datetime.fromisoformat(str(d["createdAt"])).timestamp()
        for d in server.documents(TASK)
    }


def _run_once(
    scratch: Path, mode: tuple[str, ...], files: int, idle_s: float, writes: int
) -> tuple[Measurement, float, list[float]]:
    """One run; its measurement, the idle CPU share and each written file's delay."""
    work = scratch / f"watch-{time.monotonic_ns()}"
    root = work / "doc"
    _tree(root, files)
    log = work / "watch.log"
    with DevApiProcess(work) as server, log.open("wb") as out:
        argv = [str(HARVESTER), "watch", f"--task-id={TASK}", f"--api-url={server.url}"]
        argv += [f"--root={root}", f"--settle={SETTLE:g}s", "--concurrency=8", *mode]
        server_before = server.cpu_seconds()
        started = time.perf_counter()
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=isolated_env()
        )
        peak = PeakRss(process.pid)
        try:
            _wait(
                lambda: (
                    b"following changes" in log.read_bytes()
                    and len(server.documents(TASK)) >= files
                ),
                120 + files / 50,
                "the start pass",
            )
            start_pass = time.perf_counter() - started
            server_after = server.cpu_seconds()
            cpu_before, idle_from = proc_cpu_seconds(process.pid), time.monotonic()
            time.sleep(idle_s)
            cpu_after, idle_to = proc_cpu_seconds(process.pid), time.monotonic()
            if cpu_before is None or cpu_after is None:
                raise BenchError("watch: its CPU time cannot be read from /proc")
            idle_share = (cpu_after - cpu_before) / (idle_to - idle_from)
            written: dict[str, float] = {}
            for number in range(writes):
                name = f"new-{number:03d}.md"
                (root / name).write_text(f"{number}:" + "x" * 1000)
                written[name] = time.time()
                time.sleep(WRITE_EVERY)
            _wait(
                lambda: all(name in _accepted_at(server) for name in written),
                30 + SETTLE,
                "the written files",
            )
            accepted = _accepted_at(server)
            delays = [accepted[name] - at for name, at in written.items()]
            process.send_signal(signal.SIGTERM)
            code = process.wait(60)
        finally:
            peak.stop()
            if process.poll() is None:
                process.kill()
                process.wait()
    if code != 0:
        raise BenchError(f"watch exited {code}:\n{log.read_text(errors='replace')[-1500:]}")
    if len(accepted) != files + writes:
        raise BenchError(f"watch: dev-api holds {len(accepted)} documents, not {files + writes}")
    measured = Measurement(
        start_pass,
        files,
        0,
        peak.value,
        {"idle_cpu_share": idle_share, "delays": delays},
        cpu_before,  # the start pass's CPU, interpreter start-up included
        None if server_before is None or server_after is None else server_after - server_before,
    )
    return measured, idle_share, delays


def watch_scenario(
    scratch: Path, *, quick: bool, runs: int, log: Callable[[str], None]
) -> ScenarioResult:
    """The scenario; see the module docstring."""
    files, idle_s, writes = _SIZES[quick]
    modes = {
        "inotify": ("watch, inotify", ()),
        "poll": ("watch, --poll (1s)", ("--poll", "--poll-interval=1s")),
    }
    contenders = {
        key: ContenderResult(key, label, note="start pass of the tree's files; then idle, writes")
        for key, (label, _mode) in modes.items()
    }
    idle: dict[str, list[float]] = {key: [] for key in modes}
    delays: dict[str, list[float]] = {key: [] for key in modes}
    for number in range(1, runs + 1):
        for key, (label, mode) in modes.items():
            measured, share, waited = _run_once(scratch, mode, files, idle_s, writes)
            contenders[key].runs.append(dataclasses.replace(measured, detail={}))
            idle[key].append(share)
            delays[key] += waited
            log(
                f"  watch run {number}/{runs}: {label}: start pass {measured.wall_s:.2f} s, idle "
                f"{100 * share:.2f}% of a core, delay median {statistics.median(waited):.2f} s"
            )
    checks = []
    for key, (label, _mode) in modes.items():
        ordered = sorted(delays[key])
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        checks.append(
            f"{label}: from a file's write to dev-api accepting it (--settle {SETTLE:g}s): median "
            f"{statistics.median(ordered):.2f} s, p99 {p99:.2f} s, max {ordered[-1]:.2f} s over "
            f"{len(ordered)} files; idle with {files:,} files: "
            f"{100 * statistics.median(idle[key]):.2f}% of a core"
        )
    result = ScenarioResult(
        "watch",
        f"harvester watch on a tree of {files:,} small files: the start pass, {idle_s:g} s idle, "
        f"then a 1 KB file every {WRITE_EVERY:g} s ({writes})",
        files,
        0,
        runs,
        list(contenders.values()),
        checks=checks,
        issue="issue 12",
    )
    result.targets = [
        Target(
            "write to accepted, median (inotify)",
            statistics.median(delays["inotify"]),
            "<=",
            SETTLE + 0.5,
            " s",
        ),
        Target(
            "idle CPU, % of a core (inotify)",
            100 * statistics.median(idle["inotify"]),
            "<",
            1.0,
            "%",
        ),
    ]
    result.limits = (
        "the settle rule's own wait (--settle) is most of the delay; polling stats every file "
        "each interval, so its idle CPU grows with the tree, where inotify's stays flat"
    )
    return result
