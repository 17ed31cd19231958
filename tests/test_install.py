"""What `pip install .` (no extras, the cleanup image) gives: the harvest without the dev-api.

A real install into a fresh virtualenv needs the index (or a wheel of every dependency) and takes
about 20 s, so it is measured by hand (the README's numbers). This test makes the same
environment offline in a second: a folder holding the project and, symlinked from this virtualenv,
exactly the distributions its runtime requirements reach (read from their metadata, extras left
out), run by a Python that sees nothing else (`-S`: no site-packages). A dependency missing from
pyproject.toml, or a harvest module importing the server stack, fails here.
"""

from __future__ import annotations

import os
import pkgutil
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import harvester
from harvester.cli import DEV_API_EXTRA, DEV_API_STACK
from harvester.exitcodes import ExitCode

PROJECT = Path(harvester.__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((PROJECT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", Requirement(requirement).name).lower()


def _runtime_closure() -> list[metadata.Distribution]:
    """Every installed distribution that `pip install .` (no extras) would bring."""
    wanted = [Requirement(line) for line in PYPROJECT["dependencies"]]
    seen: dict[str, metadata.Distribution] = {}
    while wanted:
        requirement = wanted.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        key = _name(requirement.name)
        if key in seen:
            continue
        seen[key] = distribution = metadata.distribution(requirement.name)
        wanted.extend(Requirement(line) for line in distribution.requires or [])
    return list(seen.values())


def _top_level(distribution: metadata.Distribution) -> set[str]:
    """The names a distribution puts in site-packages: its modules and its .dist-info."""
    names = set()
    for file in distribution.files or []:
        first = file.parts[0]
        if first not in ("..", "__pycache__") and not first.endswith(".pth"):
            names.add(first)
    return names


@pytest.fixture(scope="module")
def bare_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site-packages as `pip install .` would make it, from this virtualenv's files."""
    site = tmp_path_factory.mktemp("site-packages")
    (site / "harvester").symlink_to(PROJECT / "harvester", target_is_directory=True)
    for distribution in _runtime_closure():
        for name in _top_level(distribution):
            source = Path(str(distribution.locate_file(name)))
            if source.exists() and not (site / name).exists():
                (site / name).symlink_to(source)
    return site


def run_bare(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(site), "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-S", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
        cwd=site,
    )


def test_the_runtime_requirements_leave_out_the_dev_api_stack() -> None:
    runtime = {_name(line) for line in PYPROJECT["dependencies"]}
    extra = {_name(line) for line in PYPROJECT["optional-dependencies"][DEV_API_EXTRA]}
    stack = {name.replace("_", "-") for name in DEV_API_STACK}
    assert extra == stack
    assert not runtime & stack


def test_dev_includes_the_dev_api_extra() -> None:
    assert f"keruta-harvester[{DEV_API_EXTRA}]" in PYPROJECT["optional-dependencies"]["dev"]


def test_the_bare_install_hides_the_stack(bare_install: Path) -> None:
    probe = "import importlib.util as u, sys; print([m for m in sys.argv[1:] if u.find_spec(m)])"
    answer = run_bare(bare_install, "-c", probe, *sorted(DEV_API_STACK))
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.strip() == "[]"


def test_every_module_but_the_dev_api_imports_without_its_stack(bare_install: Path) -> None:
    modules = [
        info.name
        for info in pkgutil.walk_packages(harvester.__path__, "harvester.")
        if not info.name.startswith("harvester.devapi") and info.name != "harvester.__main__"
    ]
    assert "harvester.harvest" in modules and "harvester.kube.cluster" in modules
    probe = "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]"
    answer = run_bare(bare_install, "-c", probe, *modules)
    assert answer.returncode == 0, answer.stderr


@pytest.mark.parametrize("args", [["--help"], ["cleanup", "--help"], ["version"]])
def test_the_cleanup_commands_run_without_the_stack(bare_install: Path, args: list[str]) -> None:
    answer = run_bare(bare_install, "-m", "harvester", *args)
    assert answer.returncode == ExitCode.OK, answer.stderr


@pytest.mark.parametrize("command", ["dev-api", "demo"])
def test_the_dev_api_commands_say_which_extra_to_install(bare_install: Path, command: str) -> None:
    answer = run_bare(bare_install, "-m", "harvester", command)
    assert answer.returncode == ExitCode.USAGE
    assert answer.stdout == ""
    sentence = " ".join(answer.stderr.split())
    assert sentence.startswith(f"error: harvester {command}: needs the dev-api's server stack")
    assert "pip install 'keruta-harvester[dev-api]'" in sentence
    assert "Traceback" not in answer.stderr
