"""The Dockerfile and .dockerignore, read as text (no container engine is needed).

- multi-stage: a build stage makes wheels, a final stage on the same slim Python installs only
  those wheels (no source tree, no pip cache, no URLs fetched with ADD);
- the final image runs as a numeric non-root user, the one the cleanup Job declares, and needs
  to write only under /tmp (HOME), the Job's emptyDir;
- no ENV or ARG looks like a secret;
- the commands the image and the manifests run are console scripts of the package;
- .dockerignore keeps .git, the virtualenv, the tests and .env files out of the build context,
  but not what the build copies.
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import yaml  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CLEANUP_JOB = ROOT / "deploy" / "cleanup-job.yaml"
PYPROJECT = ROOT / "pyproject.toml"

SECRET_NAME = re.compile(r"TOKEN|PASSW|SECRET|KEY|CREDENTIAL|AUTH", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------
# A small Dockerfile reader


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    args: str  # the rest, continuations joined
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    index: int
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def instructions(text: str) -> list[Instruction]:
    """Instructions with `\\` continuations joined; comments and blank lines dropped (also the
    comment lines inside a continuation, as Docker does)."""
    found: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            start = number
        continued = stripped.endswith("\\")
        pending.append(stripped[:-1].strip() if continued else stripped)
        if not continued:
            joined = " ".join(pending)
            keyword, _, args = joined.partition(" ")
            found.append(Instruction(keyword.upper(), args.strip(), start))
            pending = []
    assert not pending, "the Dockerfile ends in a line continuation"
    return found


def substitute(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), text)


def flags(args: str) -> tuple[dict[str, list[str]], list[str]]:
    """`--name=value` flags (repeatable) and the remaining words of an instruction."""
    words = shlex.split(args)
    found: dict[str, list[str]] = {}
    rest: list[str] = []
    for position, word in enumerate(words):
        if word.startswith("--") and not rest:
            name, _, value = word[2:].partition("=")
            found.setdefault(name, []).append(value)
        else:
            rest = words[position:]
            break
    return found, rest


@cache
def stages() -> tuple[Stage, ...]:
    global_args: dict[str, str] = {}
    result: list[Stage] = []
    for instruction in instructions(DOCKERFILE.read_text(encoding="utf-8")):
        if instruction.keyword == "FROM":
            _flags, words = flags(instruction.args)
            base = substitute(words[0], global_args)
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            result.append(Stage(base, name, len(result)))
        elif not result:
            assert instruction.keyword == "ARG", f"line {instruction.line}: only ARG before FROM"
            key, _, default = instruction.args.partition("=")
            global_args[key.strip()] = default.strip()
        else:
            result[-1].instructions.append(instruction)
    return tuple(result)


def final() -> Stage:
    return stages()[-1]


def env_of(stage: Stage) -> dict[str, str]:
    """ENV of a stage, in both the `A=1 B=2` and the legacy `A 1` forms."""
    env: dict[str, str] = {}
    for instruction in stage.all("ENV"):
        words = shlex.split(instruction.args)
        if "=" not in words[0]:
            env[words[0]] = instruction.args.partition(" ")[2].strip()
            continue
        for word in words:
            key, _, value = word.partition("=")
            env[key] = value
    return env


def cleanup_job() -> dict[str, Any]:
    docs = [doc for doc in yaml.safe_load_all(CLEANUP_JOB.read_text(encoding="utf-8")) if doc]
    job: dict[str, Any] = next(doc for doc in docs if doc["kind"] == "Job")
    return job


# ---------------------------------------------------------------------------------------------
# Stages and what reaches the final image


def test_reader_handles_continuations_and_comments() -> None:
    text = "FROM a AS b\n# c\nRUN x \\\n  # inside\n  && y\nUSER 1\n"
    assert instructions(text) == [
        Instruction("FROM", "a AS b", 1),
        Instruction("RUN", "x && y", 3),
        Instruction("USER", "1", 6),
    ]


def test_multi_stage_on_one_pinned_slim_base() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2
    build, last = all_stages[0], final()
    assert re.fullmatch(r"python:3\.\d+-slim(-[a-z]+)?", last.base), last.base
    assert build.base == last.base, "build the wheels on the interpreter that runs them"
    assert build.name, "the build stage needs a name to copy from"


def wheel_sources(stage: Stage) -> list[tuple[str, str]]:
    """(stage, path) for every file the stage takes from another stage: COPY --from and
    RUN --mount=...,from=..."""
    sources: list[tuple[str, str]] = []
    for instruction in stage.instructions:
        if instruction.keyword not in ("COPY", "RUN"):
            continue
        options, words = flags(instruction.args)
        if instruction.keyword == "COPY":
            assert options.get("from"), (
                f"line {instruction.line}: COPY in the final stage copies from the build "
                "context; only the build stage's wheels belong in the image"
            )
            sources += [(options["from"][0], source) for source in words[:-1]]
        for mount in options.get("mount", []):
            settings = dict(part.partition("=")[::2] for part in mount.split(","))
            if settings.get("type", "bind") == "bind":
                assert settings.get("from"), f"line {instruction.line}: bind mount of the context"
                sources.append((settings["from"], settings.get("source", "/")))
    return sources


def test_final_stage_takes_only_the_wheels_from_the_build_stage() -> None:
    last, earlier = final(), {s.name for s in stages()[:-1]}
    assert not last.all("ADD"), "ADD in the final stage"
    sources = wheel_sources(last)
    assert sources, "the final stage takes nothing from the build stage"
    for stage_name, source in sources:
        assert stage_name in earlier, f"final stage takes {source} from {stage_name}"
        assert PurePosixPath(source) == PurePosixPath("/wheels"), source
    build = next(s for s in stages() if s.name == sources[0][0])
    assert any("pip wheel" in run.args and "/wheels" in run.args for run in build.all("RUN"))


def test_build_stage_copies_only_existing_project_files() -> None:
    build = stages()[0]
    for instruction in build.all("COPY"):
        _options, words = flags(instruction.args)
        for source in words[:-1]:
            assert source not in (".", "./", "*"), "the whole context: .git, tests, secrets"
            assert (ROOT / source).exists(), f"COPY {source}: no such file in the project"


def test_no_add_of_urls() -> None:
    for stage in stages():
        for instruction in stage.all("ADD"):
            assert not re.search(r"(https?|ftp)://|git@", instruction.args), instruction


def test_pip_installs_in_the_final_stage_keep_no_cache_and_use_only_the_wheels() -> None:
    runs = [run.args for run in final().all("RUN") if re.search(r"\bpip3? install\b", run.args)]
    assert runs
    for command in runs:
        for part in re.split(r"&&|;", command):
            if re.search(r"\bpip3? install\b", part):
                assert "--no-cache-dir" in part, part
                assert "--no-index" in part, part
                assert "--find-links=/wheels" in part or "--find-links /wheels" in part, part
    assert not any(
        re.search(r"\b(gcc|build-essential|apt-get)\b", r.args) for r in final().all("RUN")
    )


def test_no_secret_in_env_or_arg() -> None:
    names: list[str] = []
    for stage in stages():
        names += list(env_of(stage))
        names += [a.args.partition("=")[0].strip() for a in stage.all("ARG")]
    global_args = re.findall(r"^ARG\s+(\w+)", DOCKERFILE.read_text(encoding="utf-8"), re.M)
    for name in names + global_args:
        assert not SECRET_NAME.search(name), f"{name}: secrets belong in the Secret, not the image"


# ---------------------------------------------------------------------------------------------
# How the image runs


def test_final_user_is_numeric_non_root_and_the_jobs() -> None:
    users = final().all("USER")
    assert users, "no USER: the image would run as root"
    user, _, group = users[-1].args.partition(":")
    assert user.isdigit() and int(user) != 0, f"USER {users[-1].args}: numeric and not root"
    assert group.isdigit() and int(group) != 0, f"USER {users[-1].args}: numeric group, not 0"
    pod = cleanup_job()["spec"]["template"]["spec"]["securityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"]) == (int(user), int(group))


def test_runtime_environment_writes_only_under_tmp() -> None:
    env = env_of(final())
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["HOME"] == "/tmp"
    spec = cleanup_job()["spec"]["template"]["spec"]
    empty_dirs = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    mounts = spec["containers"][0]["volumeMounts"]
    writable = {m["mountPath"] for m in mounts if m["name"] in empty_dirs}
    assert env["HOME"] in writable, "HOME must be the Job's writable emptyDir"


def test_no_entrypoint_and_cmd_is_a_console_script() -> None:
    assert not final().all("ENTRYPOINT"), "the Job's command starts with keruta-agent itself"
    cmds = final().all("CMD")
    assert cmds
    cmd = json.loads(cmds[-1].args)  # exec form: no shell, signals reach the harvester
    assert cmd == ["harvester", "--help"]


def console_scripts() -> dict[str, str]:
    with PYPROJECT.open("rb") as handle:
        scripts: dict[str, str] = tomllib.load(handle)["project"]["scripts"]
    return scripts


def test_commands_used_are_console_scripts_with_importable_targets() -> None:
    scripts = console_scripts()
    job_command = cleanup_job()["spec"]["template"]["spec"]["containers"][0]["command"][0]
    image_command = json.loads(final().all("CMD")[-1].args)[0]
    for command in {"keruta-agent", "harvester", job_command, image_command}:
        assert command in scripts, f"{command} is not in [project.scripts]"
        module_name, _, attribute = scripts[command].partition(":")
        target = getattr(importlib.import_module(module_name), attribute)
        assert callable(target), scripts[command]
    assert scripts["keruta-agent"] == scripts["harvester"] == "harvester.cli:main"


# ---------------------------------------------------------------------------------------------
# .dockerignore


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regular expression."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end = pattern.index("]", i)
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("^") else body) + "]")
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out) + r"\Z")


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    decision = False
    for raw in patterns:
        exclude = not raw.startswith("!")
        pattern = str(PurePosixPath(raw.lstrip("!").strip("/")))
        regex = _glob_regex(pattern)
        if any(regex.match(candidate) for candidate in candidates):
            decision = exclude
    return decision


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_dockerignore_matcher() -> None:
    assert ignored("a/b/c.pyc", ["**/*.pyc"])
    assert ignored("tests/x.py", ["tests"])
    assert not ignored("tests/x.py", ["tests", "!tests/x.py"])
    assert not ignored("sub/.env", [".env"])


def test_dockerignore_keeps_secrets_and_clutter_out() -> None:
    patterns = dockerignore_patterns()
    for path in (
        ".git",
        ".git/config",
        ".venv/bin/python",
        "tests/test_deploy.py",
        "bench/run.py",
        ".env",
        ".env.production",
        "prod.env",
        "harvester/__pycache__/cli.cpython-312.pyc",
        ".mypy_cache/3.11/x.json",
        "keruta_harvester.egg-info/PKG-INFO",
    ):
        assert ignored(path, patterns), f"{path} is sent to the build context"


def test_dockerignore_keeps_what_the_build_copies() -> None:
    patterns = dockerignore_patterns()
    for instruction in stages()[0].all("COPY"):
        _options, words = flags(instruction.args)
        for source in words[:-1]:
            assert not ignored(source.rstrip("/"), patterns), f"COPY {source}: ignored"
    for path in ("pyproject.toml", "README.md", "harvester/cli.py", "harvester/py.typed"):
        assert not ignored(path, patterns), f"{path} is needed to build the wheel"
