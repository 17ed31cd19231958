"""The benchmark's arithmetic on figures made up here, and `python -m bench --quick` end to end.

The verdicts and ratios are checked on constructed data (PASS at or above a `>=` target, MISS
below, n/a without a figure), and so is the check that a harvest reached the server whole. The
quick run is a child process (the dev-api and the fast server it starts are separate processes
too), with or without wrk and curl: its figures must be positive and agree with each other and
with the trees it made (files counted = files made = files each server lists, rates = amount /
time, figures per file = figure / files, the verdict = the target's comparison of its own
value). No speed is asserted: figures on a
shared CI machine say nothing, so whether a target is met is information, not a test outcome.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.contenders import Measurement
from bench.data import KIB, TreeSpec, make_tree
from bench.report import as_json, format_summary
from bench.results import MB, ContenderResult, Ratio, ScenarioResult, Target
from bench.scenarios import SCENARIOS, check_all_uploaded
from bench.tools import BenchError
from tests.process import isolated_env

REPO = Path(__file__).resolve().parent.parent


# The trees `--quick` writes for the scenarios the tests run, by scenario.
QUICK_TREES = {"many-small": "quick-many-small", "plan-1m": "quick-plan-1m"}


def run_bench(
    tmp_path: Path, env: dict[str, str], scenarios: tuple[str, ...] = ("many-small",)
) -> tuple[str, dict[str, Any]]:
    out = tmp_path / "bench.json"
    chosen = [arg for name in scenarios for arg in ("--scenario", name)]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            *chosen,
            "--runs",
            "1",
            "--workdir",
            str(tmp_path / "work"),
            "--json",
            str(out),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout, json.loads(out.read_text())


HARVESTS = ("harvester", "harvester-fast")  # the harvester against dev-api, the fast server


def check_shape(stdout: str, document: dict[str, Any]) -> dict[str, Any]:
    assert "many-small:" in stdout
    assert "contender" in stdout
    assert "harvester / wrk, fast server" in stdout
    assert "targets:" in stdout
    assert set(document) == {"meta", "scenarios"}
    assert document["meta"]["runs"] == 1
    assert document["meta"]["quick"] is True
    scenario: dict[str, Any] = document["scenarios"]["many-small"]
    assert {"description", "files", "bytes", "contenders", "ratios", "targets"} <= set(scenario)
    assert set(scenario["contenders"]) == {*HARVESTS, "wrk", "wrk-fast", "wrk-same", "sequential"}
    for key in (*HARVESTS, "sequential"):
        contender = scenario["contenders"][key]
        assert contender["skipped"] is None
        assert len(contender["runs"]) == 1
        assert contender["median_wall_s"] > 0
        assert contender["files_per_s"] > 0
        assert contender["mb_per_s"] > 0
        assert contender["peak_rss_mb"] > 0
        assert contender["client_cpu_ms_per_file"] > 0
    for key in HARVESTS:
        # Uploaded by the harvester's count and by each server's own listing.
        [run] = scenario["contenders"][key]["runs"]
        assert run["files"] == scenario["files"]
        assert run["detail"]["counts"]["uploaded"] == scenario["files"]
        assert run["detail"]["server_documents"] == scenario["files"]
        assert run["detail"]["server_paths"] == scenario["files"]
        assert run["server_cpu_s"] > 0
    assert scenario["ratios"]["sequential / harvester"]["value"] > 0
    check_consistent(scenario)
    return scenario


def check_consistent(scenario: dict[str, Any]) -> None:
    """Every figure is derived from the runs, and the verdict from the target's own ratio."""
    files, size = scenario["files"], scenario["bytes"]
    for key in (*HARVESTS, "sequential"):
        contender = scenario["contenders"][key]
        [run] = contender["runs"]
        assert (run["files"], run["bytes"]) == (files, size)
        assert contender["median_wall_s"] == run["wall_s"] > 0
        assert contender["files_per_s"] == pytest.approx(files / run["wall_s"])
        assert contender["mb_per_s"] == pytest.approx(size / run["wall_s"] / MB)
        assert contender["client_cpu_ms_per_file"] == pytest.approx(
            run["client_cpu_s"] / files * 1000
        )
    for ratio in scenario["ratios"].values():
        if ratio["numerator"] is None or ratio["denominator"] is None:
            assert ratio["value"] is None
        else:
            assert ratio["value"] == pytest.approx(ratio["numerator"] / ratio["denominator"])
    speedup = scenario["ratios"]["sequential / harvester"]
    assert speedup["value"] > 0
    # Each harvester against the wrk that ran against the same server.
    for key, server in (("", "dev-api"), ("-fast", "fast server")):
        ratio = scenario["ratios"][f"harvester / wrk, {server}"]
        assert ratio["numerator"] == scenario["contenders"][f"harvester{key}"]["files_per_s"]
        assert ratio["denominator"] == scenario["contenders"][f"wrk{key}"]["files_per_s"]
    share, cpu = scenario["targets"]
    assert (share["op"], share["limit"], share["value"]) == (
        ">=",
        0.6,
        scenario["ratios"]["harvester / wrk, fast server"]["value"],
    )
    fast = scenario["contenders"]["harvester-fast"]
    assert (cpu["op"], cpu["limit"], cpu["value"]) == ("<=", 0.4, fast["client_cpu_ms_per_file"])
    check_verdicts(scenario)


def check_verdicts(scenario: dict[str, Any]) -> None:
    for target in scenario["targets"]:
        if target["value"] is None:
            assert target["verdict"] == "n/a"
            continue
        ok = {
            ">=": target["value"] >= target["limit"],
            "<=": target["value"] <= target["limit"],
            "<": target["value"] < target["limit"],
        }[target["op"]]
        assert target["verdict"] == ("PASS" if ok else "MISS")


def check_tree(tmp_path: Path, name: str, scenario: dict[str, Any]) -> None:
    """The files the benchmark counted are the files it made."""
    tree = tmp_path / "work" / "trees" / QUICK_TREES[name]
    made = [path for path in tree.rglob("*") if path.is_file()]
    assert len(made) == scenario["files"] > 0
    assert sum(path.stat().st_size for path in made) == scenario["bytes"]


def check_plan(scenario: dict[str, Any]) -> None:
    """The plan lists every file; memory and CPU per file are the run's figures / files."""
    files = scenario["files"]
    contender = scenario["contenders"]["harvester"]
    [run] = contender["runs"]
    assert run["files"] == files == run["detail"]["counts"]["upload"]
    figures = scenario["figures"]
    memory = figures["memory (peak RSS / files)"]
    assert memory["unit"] == "B"
    assert memory["value"] == pytest.approx(contender["peak_rss_mb"] * MB / files)
    cpu = figures["CPU (user + system / files)"]
    assert cpu["unit"] == "µs"
    assert cpu["value"] == pytest.approx(run["client_cpu_s"] / files * 1e6)
    wall, rss = scenario["targets"]
    assert (wall["op"], wall["limit"], wall["value"]) == ("<", 40.0, run["wall_s"])
    assert (rss["op"], rss["limit"], rss["value"]) == ("<", 700.0, contender["peak_rss_mb"])
    check_verdicts(scenario)


@pytest.mark.parametrize(
    ("value", "op", "limit", "verdict"),
    [
        (0.41, ">=", 0.40, "PASS"),
        (0.40, ">=", 0.40, "PASS"),
        (0.39, ">=", 0.40, "MISS"),
        (1.9, "<=", 2.0, "PASS"),
        (2.1, "<=", 2.0, "MISS"),
        (99.0, "<", 100.0, "PASS"),
        (100.0, "<", 100.0, "MISS"),
        (None, ">=", 0.40, "n/a"),
    ],
)
def test_a_verdict_compares_the_value_with_its_target(
    value: float | None, op: Any, limit: float, verdict: str
) -> None:
    assert Target("made up", value, op, limit).verdict == verdict


def test_a_target_met_or_missed_by_a_measured_ratio_is_reported_so() -> None:
    def scenario(name: str, harvester_wall_s: float) -> ScenarioResult:
        harvester = ContenderResult("harvester", "harvester")
        harvester.runs = [Measurement(wall_s=harvester_wall_s, files=1_000, bytes=4_096_000)]
        ceiling = ContenderResult("wrk", "ceiling", rate_only=True)
        ceiling.runs = [Measurement(wall_s=1.0, files=2_000, bytes=8_192_000)]  # 2,000 files/s
        ratio = Ratio("harvester / ceiling", harvester.files_per_s(1_000), 2_000.0, "files/s")
        result = ScenarioResult(name, "made up", files=1_000, bytes=4_096_000, runs=1)
        result.contenders = [harvester, ceiling]
        result.ratios = [ratio]
        result.targets = [Target("harvester / ceiling", ratio.value, ">=", 0.40)]
        return result

    fast, slow = scenario("fast", harvester_wall_s=1.0), scenario("slow", harvester_wall_s=4.0)
    assert fast.ratios[0].value == pytest.approx(0.5)  # 1,000 files/s of 2,000
    assert slow.ratios[0].value == pytest.approx(0.125)  # 250 files/s of 2,000
    assert [t.verdict for t in fast.targets + slow.targets] == ["PASS", "MISS"]
    summary = format_summary([fast, slow])
    assert summary[1].split()[0] == "PASS" and summary[2].split()[0] == "MISS"
    document = as_json([fast, slow], meta={})
    verdicts = [s["targets"][0]["verdict"] for s in document["scenarios"].values()]
    assert verdicts == ["PASS", "MISS"]


def test_a_figure_is_the_median_of_the_runs() -> None:
    contender = ContenderResult("harvester", "harvester")
    contender.runs = [
        Measurement(wall_s=wall, files=100, bytes=1_000_000) for wall in (2.0, 1.0, 4.0)
    ]
    assert contender.files_per_s(100) == 50.0  # of 100, 50 and 25 files/s
    assert contender.mb_per_s(1_000_000) == 0.5
    assert contender.wall_s(100) == 2.0
    assert contender.wall_range() == (1.0, 4.0)


def test_a_ratio_without_one_side_has_no_value() -> None:
    assert Ratio("r", 3.0, 2.0, "s").value == 1.5
    assert Ratio("r", None, 2.0, "s").value is None
    assert Ratio("r", 3.0, None, "s").value is None
    assert Ratio("r", 3.0, 0.0, "s").value is None


@pytest.mark.timeout(180)
def test_quick_benchmark_prints_the_table_and_writes_json(tmp_path: Path) -> None:
    stdout, document = run_bench(tmp_path, isolated_env(), ("many-small", "plan-1m"))
    scenario = check_shape(stdout, document)
    check_tree(tmp_path, "many-small", scenario)
    for key in ("wrk", "wrk-fast"):
        wrk = scenario["contenders"][key]
        if "wrk" in document["meta"]["missing_tools"]:
            assert wrk["skipped"] and "apt-get install -y wrk curl" in wrk["skipped"]
        else:
            assert wrk["skipped"] is None
            assert wrk["files_per_s"] > 0
    if "wrk" not in document["meta"]["missing_tools"]:
        assert scenario["targets"][0]["verdict"] in {"PASS", "MISS"}
    plan = document["scenarios"]["plan-1m"]
    assert "memory (peak RSS / files)" in stdout
    check_tree(tmp_path, "plan-1m", plan)
    check_plan(plan)


@pytest.mark.timeout(180)
def test_without_wrk_the_ceiling_is_skipped_with_a_hint(tmp_path: Path) -> None:
    # An empty PATH hides wrk and curl; the interpreter and the harvester are called by path.
    empty = tmp_path / "empty-path"
    empty.mkdir()
    env = isolated_env()
    env["PATH"] = str(empty)
    stdout, document = run_bench(tmp_path, env)
    scenario = check_shape(stdout, document)
    assert document["meta"]["missing_tools"] == ["wrk", "curl"]
    assert "apt-get install -y wrk curl" in stdout
    for key, server in (("wrk", "dev-api"), ("wrk-fast", "fast server")):
        wrk = scenario["contenders"][key]
        assert "apt-get install -y wrk curl" in wrk["skipped"]
        assert wrk["median_wall_s"] is None
        assert scenario["ratios"][f"harvester / wrk, {server}"]["value"] is None
    assert scenario["targets"][0]["verdict"] == "n/a"


def test_a_tree_the_file_system_has_no_room_for_is_refused_before_a_file_is_written(
    tmp_path: Path,
) -> None:
    spec = TreeSpec("huge", 10**12, 4 * KIB, 1_000)
    with pytest.raises(BenchError, match=r"free, the huge tree .* needs about"):
        make_tree(spec, tmp_path)
    assert list((tmp_path / "huge").iterdir()) == []
    assert not (tmp_path / "huge.complete").exists()


def test_a_harvest_the_server_did_not_receive_whole_is_an_error() -> None:
    def harvested(held: int, paths: int) -> ContenderResult:
        detail = {"counts": {"uploaded": 10}, "server_documents": held, "server_paths": paths}
        contender = ContenderResult("harvester-fast", "harvester, fast server")
        contender.runs = [Measurement(wall_s=1.0, files=10, bytes=40_960, detail=detail)]
        return contender

    check_all_uploaded(harvested(10, 10), 10)
    with pytest.raises(BenchError, match="holds 9 documents with 9 distinct paths for 10 files"):
        check_all_uploaded(harvested(9, 9), 10)
    with pytest.raises(BenchError, match="holds 10 documents with 9 distinct paths"):
        check_all_uploaded(harvested(10, 9), 10)


def test_the_controller_scenario_without_the_control_plane_is_skipped_in_one_line(
    tmp_path: Path,
) -> None:
    # An empty folder where the binaries would be: nothing starts, nothing is measured.
    env = isolated_env({"KERUTA_K8S_BIN": str(tmp_path)})
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--scenario", "controller"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    [line] = [line for line in done.stdout.splitlines() if line.startswith("controller:")]
    assert line == (
        f"controller: skipped: the control plane binaries are not built in {tmp_path} (`make "
        "cluster` builds them with Go, about 8 minutes the first time; or set KERUTA_K8S_BIN to "
        "where they are)"
    )
    # Asked for by name and not measured: the run says so in its exit code.
    assert done.returncode == 1, done.stdout + done.stderr
    assert "controller" in SCENARIOS
