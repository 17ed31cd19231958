"""Child processes and the external tools the benchmark relies on.

Takes argv lists; gives `run_timed` (wall time, exit code, CPU time and the child's peak RSS),
the path of the `harvester` CLI next to this interpreter, a clean environment
for children (no keruta settings, no way to a cluster; `repo_env` adds this checkout to
PYTHONPATH for `python -m bench.<module>` children), and `find_tool`, which says how to get
`wrk` or `curl` when they are missing instead of failing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "HARVESTER",
    "INSTALL_HINT",
    "BenchError",
    "PeakRss",
    "Timed",
    "find_tool",
    "isolated_env",
    "proc_cpu_seconds",
    "repo_env",
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


def repo_env() -> dict[str, str]:
    """`isolated_env()` in which `python -m bench.<module>` finds this checkout's `bench`."""
    repo = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)
    return isolated_env({"PYTHONPATH": path})


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
        peak = PeakRss(process.pid)
        _pid, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        peak.stop()
    finally:
        for handle in (out, err):
            if not isinstance(handle, int):
                handle.close()
    process.returncode = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    rss = peak.value if peak.value is not None else int(usage.ru_maxrss) * 1024  # Linux: KiB
    return Timed(wall, process.returncode, rss, cpu)


def proc_cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) the running process `pid` has used so far; None where /proc
    cannot say (it has exited, or this is not Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    # After the command name: state is field 3, utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class PeakRss:
    """The peak RSS of a running child, read from /proc/PID/status (VmHWM) until it exits.

    Not wait4's ru_maxrss: that counts the memory of the process that forked the child, before
    it exec'd (the benchmark's, or pytest's), and so reports the parent's size for a small child.
    VmHWM belongs to the exec'd program alone. `value` is None when /proc could not be read.
    """

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.value: int | None = None
        self._path = Path(f"/proc/{pid}/status")
        self._interval = interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def _watch(self) -> None:
        while True:
            self._read()
            if self._done.wait(self._interval):
                return

    def _read(self) -> None:
        try:
            text = self._path.read_text()
        except OSError:
            return
        for line in text.splitlines():
            if line.startswith("VmHWM:"):
                kib = int(line.split()[1])
                self.value = max(self.value or 0, kib * 1024)
                return


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
