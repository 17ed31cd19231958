"""Child processes and the external tools the benchmark relies on.

Takes argv lists; gives `run_timed` (wall time, exit code and the child's peak RSS from the
kernel's `wait4`), the path of the `harvester` CLI next to this interpreter, a clean environment
for children (no keruta settings, no way to a cluster), and `find_tool`, which says how to get
`wrk` or `curl` when they are missing instead of failing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "HARVESTER",
    "INSTALL_HINT",
    "BenchError",
    "Timed",
    "find_tool",
    "isolated_env",
    "run_timed",
    "tool_version",
]

HARVESTER = Path(sys.executable).parent / "harvester"
INSTALL_HINT = "apt-get install -y wrk curl"


class BenchError(Exception):
    """A benchmark step that could not be measured; the message says what and why."""


@dataclass(frozen=True, slots=True)
class Timed:
    """One finished child: wall seconds, exit code, peak RSS in bytes, CPU seconds (user+sys)."""

    wall_s: float
    returncode: int
    peak_rss: int
    cpu_s: float


def isolated_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without keruta settings and without any way to a real cluster."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KERUTA_", "KUBERNETES_"))}
    env["KUBECONFIG"] = "/nonexistent"
    env.update(extra or {})
    return env


def run_timed(
    argv: list[str],
    *,
    stdout: Path | None = None,
    stderr: Path | None = None,
    env: dict[str, str] | None = None,
) -> Timed:
    """Run `argv` to completion, output into the given files; time it and take its peak RSS."""
    out = stdout.open("wb") if stdout is not None else subprocess.DEVNULL
    err = stderr.open("wb") if stderr is not None else subprocess.DEVNULL
    try:
        started = time.perf_counter()
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env or isolated_env()
        )
        _pid, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
    finally:
        for handle in (out, err):
            if not isinstance(handle, int):
                handle.close()
    process.returncode = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    return Timed(wall, process.returncode, int(usage.ru_maxrss) * 1024, cpu)  # Linux: KiB


def find_tool(name: str) -> tuple[str | None, str]:
    """(path, "") when `name` is on PATH, else (None, a sentence saying how to get it)."""
    path = shutil.which(name)
    if path:
        return path, ""
    return None, f"{name} is not installed; its contender is skipped (get it: {INSTALL_HINT})"


def tool_version(path: str | None) -> str:
    """`<tool> <version>` from `<tool> --version`, or "" when it cannot say."""
    if path is None:
        return ""
    try:
        done = subprocess.run(
            [path, "--version"], capture_output=True, timeout=10, check=False, env=isolated_env()
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = (done.stdout or done.stderr).decode(errors="replace").splitlines()
    # `curl 7.88.1 (x86_64-pc-linux-gnu) libcurl/...`: the name and the version are enough.
    return " ".join(lines[0].split()[:2]) if lines else ""
