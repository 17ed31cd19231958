"""The contenders: each moves a tree (or replays requests) against a server and is measured.

Takes a server URL, a task id, a tree and a scratch folder; gives a `Measurement` (wall seconds,
files and bytes moved, peak RSS when it is a Python child of ours, details to keep in the JSON).

- `harvester_cleanup`: the real CLI, `harvester cleanup ... --log-format json`, as a user runs it.
- `harvester_plan`: `harvester cleanup --dry-run` (no server at all).
- `sequential`: the old agent's algorithm (`bench.sequential`) in its own interpreter.
- `wrk_ceiling`: `wrk` posting multipart documents at the same concurrency; requests/s is the
  ceiling of what the server and the loopback allow, measured by a client written in C.
- `curl_uploads`: `curl -F file=@...` per file, one after another or all at once.

Every contender checks that the server accepted everything; a failure raises `BenchError`
with the tail of the child's output, never a silently fast figure.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bench.tools import HARVESTER, BenchError, Timed, isolated_env, repo_env, run_timed
from harvester.wire.multipart import document_body

__all__ = [
    "Measurement",
    "curl_uploads",
    "harvester_cleanup",
    "harvester_plan",
    "sequential",
    "wrk_ceiling",
]

_BOUNDARY = "keruta-bench-0123456789abcdef"


@dataclass(frozen=True, slots=True)
class Measurement:
    """One run of one contender."""

    wall_s: float
    files: int
    bytes: int
    peak_rss: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    client_cpu_s: float | None = None  # the contender's own processes, user + system
    server_cpu_s: float | None = None  # the dev-api's, during this run (set by the scenario)


def _tail(path: Path, limit: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


def _summary(stdout: Path, event: str = "summary") -> dict[str, Any]:
    """The final `event` object of `--log-format json` output, plus the stage timings seen.

    `summary` ends a harvest, `plan` a dry run.
    """
    summary: dict[str, Any] | None = None
    stages: dict[str, float] = {}
    with stdout.open("rb") as lines:
        for line in lines:
            if not line.startswith(b"{"):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == event:
                summary = record
            elif record.get("event") == "stage_finished":
                stages[str(record.get("stage"))] = float(record.get("elapsed_s", 0.0))
    if summary is None:
        raise BenchError(f"no {event!r} line in the harvester's output:\n{_tail(stdout)}")
    summary["stage_seconds"] = stages
    return summary


def harvester_cleanup(
    url: str,
    task_id: str,
    root: Path,
    scratch: Path,
    *,
    concurrency: int = 8,
    options: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> Measurement:
    """`harvester cleanup` over `root` into `url` (with more flags `options` and environment
    `env`, e.g. a cluster's); the uploads must all succeed."""
    out, err = scratch / f"harvester-{task_id}.out", scratch / f"harvester-{task_id}.err"
    argv = [str(HARVESTER), "cleanup", "--task-id", task_id, "--api-url", url, "--root", str(root)]
    argv += ["--log-format", "json", "--progress-interval", "3600", "--max-file-size", "0"]
    argv += ["--keep-pvc", "--concurrency", str(concurrency), *options]
    timed = run_timed(argv, stdout=out, stderr=err, env=isolated_env(env) if env else None)
    if timed.returncode != 0:
        raise BenchError(
            f"harvester cleanup exited {timed.returncode}:\n{_tail(err)}\n{_tail(out, 600)}"
        )
    summary = _summary(out)
    counts: dict[str, int] = summary["counts"]
    moved = counts.get("uploaded", 0) + counts.get("already-uploaded", 0)
    detail = {
        "counts": counts,
        "bytes_uploaded": summary.get("bytes_uploaded", 0),
        "internal_elapsed_s": summary.get("elapsed_seconds"),
        "stage_seconds": summary["stage_seconds"],
    }
    total = sum(int(f.get("size", 0)) for f in summary.get("files", []))
    for path in (out, err):
        path.unlink(missing_ok=True)
    return Measurement(timed.wall_s, moved, total, timed.peak_rss, detail, timed.cpu_s)


def harvester_plan(root: Path, scratch: Path) -> Measurement:
    """`harvester cleanup --dry-run` over `root`: scan, hash, plan, print; no server."""
    out, err = scratch / "plan.out", scratch / "plan.err"
    argv = [str(HARVESTER), "cleanup", "--dry-run", "--task-id", "bench-plan", "--root", str(root)]
    argv += ["--log-format", "json", "--progress-interval", "3600", "--max-file-size", "0"]
    timed = run_timed(argv, stdout=out, stderr=err)
    if timed.returncode != 0:
        raise BenchError(f"harvester cleanup --dry-run exited {timed.returncode}:\n{_tail(err)}")
    size = out.stat().st_size
    summary = _summary(out, "plan")
    files = summary.get("items", [])
    total = sum(int(f.get("size", 0)) for f in files)
    detail = {
        "counts": summary["counts"],
        "stage_seconds": summary["stage_seconds"],
        "stdout_bytes": size,
        "internal_elapsed_s": summary.get("elapsed_seconds"),
    }
    for path in (out, err):
        path.unlink(missing_ok=True)
    return Measurement(timed.wall_s, len(files), total, timed.peak_rss, detail, timed.cpu_s)


def sequential(url: str, task_id: str, root: Path, scratch: Path) -> Measurement:
    """The old agent's algorithm (`python -m bench.sequential`) in its own interpreter."""
    out, err = scratch / "sequential.out", scratch / "sequential.err"
    argv = [sys.executable, "-m", "bench.sequential", "--api-url", url, "--task-id", task_id]
    argv += ["--root", str(root)]
    timed = run_timed(argv, stdout=out, stderr=err, env=repo_env())
    if timed.returncode != 0:
        raise BenchError(f"the sequential uploader exited {timed.returncode}:\n{_tail(err)}")
    result = json.loads(out.read_text())
    files, total = int(result["files"]), int(result["bytes"])
    return Measurement(timed.wall_s, files, total, timed.peak_rss, client_cpu_s=timed.cpu_s)


# wrk runs this in each of its threads. `request()` builds a new body per request: a 4 KiB
# file part whose content and name carry the thread and a counter, so every request makes the
# server parse and hash (dev-api: and store) a new document, as each of the harvester's uploads
# does. There is no `sha256` part (Lua cannot hash; both servers accept a document without one,
# and checking it is a string compare) and no Idempotency-Key (dev-api answers a repeated key
# from memory, far cheaper than a store).
_WRK_DISTINCT = r"""
local counter = 0
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
local path = "%(path)s"
local ctype = "multipart/form-data; boundary=%(boundary)s"
local dash = "--%(boundary)s\r\n"
local filler = string.rep("x", %(size)d - 24)
function request()
  counter = counter + 1
  local name = string.format("wrk/%%d/%%08d.txt", tid, counter)
  local content = string.format("%%8d%%16d", tid, counter) .. filler
  local body = dash .. 'Content-Disposition: form-data; name="path"\r\n\r\n' .. name .. "\r\n"
    .. dash .. 'Content-Disposition: form-data; name="size"\r\n\r\n%(size)d\r\n'
    .. dash .. 'Content-Disposition: form-data; name="file"; filename="' .. name .. '"\r\n'
    .. "Content-Type: text/plain\r\n\r\n" .. content .. "\r\n--%(boundary)s--\r\n"
  return wrk.format("POST", path, {["Content-Type"] = ctype}, body)
end
"""

# One body read from a file and replayed: after the first request the server finds the blob
# already stored and only records a document, so this is the cheaper upper bound.
_WRK_SAME = r"""
local f = assert(io.open("%(body_file)s", "rb"))
wrk.method = "POST"
wrk.path = "%(path)s"
wrk.headers["Content-Type"] = "multipart/form-data; boundary=%(boundary)s"
wrk.body = f:read("*a")
f:close()
"""

_WRK_DONE = r"""
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\nBENCH-JSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, '
    .. '"write": %d, "status": %d, "timeout": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def wrk_ceiling(
    wrk: str,
    url: str,
    task_id: str,
    scratch: Path,
    *,
    duration_s: float,
    concurrency: int = 8,
    file_size: int = 4096,
    distinct: bool = True,
) -> Measurement:
    """`wrk -t2 -c<concurrency> -d<duration>` posting documents; `files` is requests made."""
    path = f"/api/tasks/{quote(task_id, safe='')}/documents"
    values: dict[str, object] = {"path": path, "boundary": _BOUNDARY, "size": file_size}
    if distinct:
        script = _WRK_DISTINCT % values
    else:
        content = os.urandom(file_size)
        digest = hashlib.sha256(content).hexdigest()
        body = document_body("wrk/ceiling.txt", digest, file_size, boundary=_BOUNDARY)
        body_file = scratch / "wrk-body.bin"
        body_file.write_bytes(body.head + content + body.tail)
        script = _WRK_SAME % {**values, "body_file": str(body_file)}
    lua = scratch / "wrk.lua"
    lua.write_text(script + _WRK_DONE)
    seconds = max(1, round(duration_s))
    argv = [wrk, "-t2", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "30s", "-s", str(lua)]
    out, err = scratch / "wrk.out", scratch / "wrk.err"
    timed = run_timed([*argv, url], stdout=out, stderr=err)
    text = out.read_text(errors="replace")
    line = next((ln for ln in text.splitlines() if ln.startswith("BENCH-JSON ")), None)
    if timed.returncode != 0 or line is None:
        raise BenchError(f"wrk exited {timed.returncode}:\n{text}\n{_tail(err, 800)}")
    stats: dict[str, int] = json.loads(line.removeprefix("BENCH-JSON "))
    for leftover in (out, err, lua):
        leftover.unlink(missing_ok=True)
    errors = {k: v for k, v in stats.items() if k not in ("requests", "duration_us") and v}
    if errors or stats["requests"] == 0:
        raise BenchError(f"wrk saw errors {errors} in {stats['requests']} requests:\n{text}")
    requests, duration = stats["requests"], stats["duration_us"] / 1e6
    detail = {
        "requests": requests,
        "duration_s": duration,
        "requests_per_s": requests / duration,
        "process_s": timed.wall_s,
        "body": "distinct per request" if distinct else "one body replayed",
    }
    # The run's "wall time" is its duration; files/s is then requests/s.
    return Measurement(duration, requests, requests * file_size, None, detail, timed.cpu_s)


def curl_uploads(
    curl: str, url: str, task_id: str, files: list[Path], scratch: Path, *, parallel: bool
) -> Measurement:
    """`curl -sS -o /dev/null -F file=@<path>` per file, one after another or all at once."""
    endpoint = f"{url}/api/tasks/{quote(task_id, safe='')}/documents"

    def upload(number: int, path: Path) -> Timed:
        argv = [curl, "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-F", f"file=@{path}"]
        out, err = scratch / f"curl-{number}.out", scratch / f"curl-{number}.err"
        timed = run_timed([*argv, endpoint], stdout=out, stderr=err)
        code = out.read_text(errors="replace").strip()
        if timed.returncode != 0 or code not in ("200", "201"):
            raise BenchError(f"curl exited {timed.returncode} with HTTP {code}: {_tail(err, 600)}")
        for path in (out, err):
            path.unlink(missing_ok=True)
        return timed

    started = time.perf_counter()
    if parallel:
        with ThreadPoolExecutor(len(files)) as pool:
            done = list(pool.map(upload, range(len(files)), files))
    else:
        done = [upload(number, path) for number, path in enumerate(files)]
    wall = time.perf_counter() - started
    total = sum(path.stat().st_size for path in files)
    mode = f"{len(files)} at once" if parallel else "one after another"
    cpu = sum(timed.cpu_s for timed in done)
    return Measurement(wall, len(files), total, None, {"mode": mode}, cpu)
