"""The benchmark's command line: `python -m bench [--quick] [--scenario NAME] [--json PATH]`.

Takes the flags below; gives, on stdout, one table per scenario as it finishes and a line per
target at the end (progress goes to stderr), and with `--json PATH` the same as JSON. Exits 0
whatever the verdicts (they are information), 1 when a scenario could not be measured.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.report import as_json, format_scenario, format_summary, write_json
from bench.results import ScenarioResult
from bench.scenarios import SCENARIOS, Context, run_scenario, unavailable
from bench.tools import INSTALL_HINT, BenchError, find_tool, tool_version
from harvester import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark keruta-harvester against wrk/curl and the old sequential agent.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny trees and 1 run: checks the plumbing, <1 min"
    )
    parser.add_argument("--runs", type=int, help="runs per contender (default 3; --quick: 1)")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=sorted(SCENARIOS),
        help="run only this scenario (repeatable; default: all)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    parser.add_argument(
        "--workdir",
        type=Path,
        help="keep the trees here and reuse them next time (default: a temporary folder)",
    )
    parser.add_argument(
        "--wrk-seconds", type=float, help="how long each wrk run lasts (default 10; --quick: 1)"
    )
    return parser


def _log(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _run(args: argparse.Namespace, workdir: Path) -> int:
    runs = args.runs if args.runs is not None else (1 if args.quick else 3)
    if runs < 1:
        _log("error: --runs must be at least 1")
        return 2
    wrk, wrk_missing = find_tool("wrk")
    curl, curl_missing = find_tool("curl")
    for missing in (wrk_missing, curl_missing):
        if missing:
            _log(f"note: {missing}")
    names = args.scenario or list(SCENARIOS)
    ctx = Context(
        workdir=workdir,
        runs=runs,
        quick=args.quick,
        wrk=wrk,
        curl=curl,
        wrk_seconds=args.wrk_seconds or (1.0 if args.quick else 10.0),
        log=_log,
        skip_reasons={"wrk": wrk_missing, "curl": curl_missing},
    )
    meta: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "harvester_version": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "wrk": tool_version(wrk) or None,
        "curl": tool_version(curl) or None,
        "missing_tools": [t for t, p in (("wrk", wrk), ("curl", curl)) if p is None],
        "install_hint": INSTALL_HINT,
        "runs": runs,
        "quick": args.quick,
        "scenarios": names,
    }
    print(
        f"keruta-harvester {__version__} benchmark: {os.cpu_count()} CPUs, Python "
        f"{meta['python']}, {runs} run(s) per contender{', quick sizes' if args.quick else ''}; "
        f"wrk: {meta['wrk'] or 'missing'}; curl: {meta['curl'] or 'missing'}",
        flush=True,
    )
    results: list[ScenarioResult] = []
    failed: list[str] = []
    skipped: list[str] = []
    for name in names:
        reason = unavailable(name)
        if reason is not None:
            # One line, and on with the others; asked for by name, it is a failure to measure.
            print(f"\n{name}: skipped: {reason}", flush=True)
            (failed if args.scenario else skipped).append(name)
            continue
        _log(f"{name}:")
        started = time.perf_counter()
        try:
            result = run_scenario(ctx, name)
        except BenchError as exc:
            _log(f"error: {name}: could not be measured: {exc}")
            failed.append(name)
            continue
        _log(f"{name}: done in {time.perf_counter() - started:.0f} s")
        results.append(result)
        print("\n" + "\n".join(format_scenario(result)), flush=True)
    print("\n" + "\n".join(format_summary(results)))
    if wrk is None or curl is None:
        print(f"(missing tools: {', '.join(meta['missing_tools'])}; get them: {INSTALL_HINT})")
    meta["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    meta["failed_scenarios"] = failed
    meta["skipped_scenarios"] = skipped
    if args.json is not None:
        write_json(args.json, as_json(results, meta))
        print(f"JSON: {args.json}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return _run(args, args.workdir.resolve())
    with tempfile.TemporaryDirectory(prefix="keruta-bench-") as scratch:
        return _run(args, Path(scratch))


if __name__ == "__main__":
    sys.exit(main())
