"""`python -m bench --quick` runs end to end on a tiny tree, with or without wrk and curl.

Runs the benchmark as a child process (the dev-api it starts is a separate process too) and
checks the shape of what it prints and writes. No timing is asserted: figures on a shared CI
machine say nothing, and PASS/MISS verdicts are information, not test outcomes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.process import isolated_env

REPO = Path(__file__).resolve().parent.parent


def run_bench(tmp_path: Path, env: dict[str, str]) -> tuple[str, dict[str, Any]]:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--scenario",
            "many-small",
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
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout, json.loads(out.read_text())


def check_shape(stdout: str, document: dict[str, Any]) -> dict[str, Any]:
    assert "many-small:" in stdout
    assert "contender" in stdout
    assert "harvester / ceiling (wrk)" in stdout
    assert "targets:" in stdout
    assert set(document) == {"meta", "scenarios"}
    assert document["meta"]["runs"] == 1
    assert document["meta"]["quick"] is True
    scenario: dict[str, Any] = document["scenarios"]["many-small"]
    assert {"description", "files", "bytes", "contenders", "ratios", "targets"} <= set(scenario)
    assert set(scenario["contenders"]) == {"harvester", "wrk", "wrk-same", "sequential"}
    for key in ("harvester", "sequential"):
        contender = scenario["contenders"][key]
        assert contender["skipped"] is None
        assert len(contender["runs"]) == 1
        assert contender["median_wall_s"] > 0
        assert contender["files_per_s"] > 0
        assert contender["mb_per_s"] > 0
        assert contender["peak_rss_mb"] > 0
    harvester_run = scenario["contenders"]["harvester"]["runs"][0]
    assert harvester_run["files"] == scenario["files"]
    assert harvester_run["detail"]["counts"]["uploaded"] == scenario["files"]
    assert scenario["ratios"]["sequential / harvester"]["value"] > 0
    [target] = scenario["targets"]
    assert target["verdict"] in {"PASS", "MISS", "n/a"}
    return scenario


@pytest.mark.timeout(120)
def test_quick_benchmark_prints_the_table_and_writes_json(tmp_path: Path) -> None:
    stdout, document = run_bench(tmp_path, isolated_env())
    scenario = check_shape(stdout, document)
    wrk = scenario["contenders"]["wrk"]
    if "wrk" in document["meta"]["missing_tools"]:
        assert wrk["skipped"] and "apt-get install -y wrk curl" in wrk["skipped"]
    else:
        assert wrk["skipped"] is None
        assert wrk["files_per_s"] > 0
        assert scenario["targets"][0]["verdict"] in {"PASS", "MISS"}


@pytest.mark.timeout(120)
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
    wrk = scenario["contenders"]["wrk"]
    assert "apt-get install -y wrk curl" in wrk["skipped"]
    assert wrk["median_wall_s"] is None
    assert scenario["ratios"]["harvester / ceiling (wrk)"]["value"] is None
    assert scenario["targets"][0]["verdict"] == "n/a"
