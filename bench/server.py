"""The servers the benchmark uploads to, each a separate process, one fresh instance per run.

Takes a work folder and an optional latency; gives `DevApiProcess` (`harvester dev-api`, which
stores every blob on disk) and `FastServerProcess` (`python -m bench.fast_server`, the minimal
independent keruta-api of issue 13), context managers over one `ServerProcess` base: it starts
the server on a free loopback port with a fresh folder, tells its URL, its CPU time so far and a
task's documents, and on exit stops the process and deletes what it stored. A separate process,
so the server and the client under test never share a GIL; a fresh one per run, so runs never
see each other's documents (nor the blob files an earlier run already wrote).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

from bench.tools import HARVESTER, BenchError, isolated_env, proc_cpu_seconds, repo_env

__all__ = ["DevApiProcess", "FastServerProcess", "ServerProcess"]

# Both servers say this on stderr once they accept connections.
_READY = re.compile(r"listening on (http://\S+?)[\s(]")


class ServerProcess(ABC):
    """A keruta-api stand-in as a child process on `--port 0`, with its own folder under
    `workdir`; a subclass says how to start it (`_argv`)."""

    name: str  # how the tables name it

    def __init__(self, workdir: Path, *, latency: float = 0.0) -> None:
        self._workdir = workdir
        self._latency = latency
        self._process: subprocess.Popen[bytes] | None = None
        self._data_dir: Path | None = None
        self._url: str | None = None

    @abstractmethod
    def _argv(self, store: Path) -> list[str]:
        """The command line; `store` is a fresh folder the server may write into."""

    def _env(self) -> dict[str, str]:
        return isolated_env()

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError(f"the {self.name} process is not started")
        return self._url

    def start(self, timeout: float = 30.0) -> Self:
        self._workdir.mkdir(parents=True, exist_ok=True)
        self._data_dir = Path(tempfile.mkdtemp(prefix="server-", dir=self._workdir))
        log_path = self._data_dir / "server.log"
        with log_path.open("wb") as log:
            self._process = subprocess.Popen(
                self._argv(self._data_dir / "store"),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self._env(),
            )
        deadline = time.monotonic() + timeout
        while True:
            match = _READY.search(log_path.read_text(errors="replace"))
            if match:
                self._url = match.group(1).rstrip(".,")
                return self
            if self._process.poll() is not None or time.monotonic() > deadline:
                text = log_path.read_text(errors="replace")[-2000:]
                self.stop()
                raise BenchError(f"{self.name} did not start:\n{text}")
            time.sleep(0.02)

    def cpu_seconds(self) -> float | None:
        """CPU time (user + system) the server has used so far; None where /proc cannot say."""
        return None if self._process is None else proc_cpu_seconds(self._process.pid)

    def documents(self, task_id: str) -> list[dict[str, Any]]:
        """`GET /api/tasks/<task>/documents`: what the server holds for the task."""
        url = f"{self.url}/api/tasks/{quote(task_id, safe='')}/documents"
        with urllib.request.urlopen(url, timeout=60) as response:
            data = json.load(response)
        if not isinstance(data, list):
            raise BenchError(f"GET {url}: expected a JSON list, got {type(data).__name__}")
        return data

    def stop(self) -> None:
        process, self._process, self._url = self._process, None, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class DevApiProcess(ServerProcess):
    """`harvester dev-api --port 0`, storing blobs in its fresh folder."""

    name = "dev-api"

    def __init__(
        self, workdir: Path, *, latency: float = 0.0, options: tuple[str, ...] = ()
    ) -> None:
        """`options`: more `harvester dev-api` flags (`--no-listing`, `--no-idempotency`)."""
        super().__init__(workdir, latency=latency)
        self._options = options

    def _argv(self, store: Path) -> list[str]:
        argv = [str(HARVESTER), "dev-api", "--host", "127.0.0.1", "--port", "0"]
        argv += ["--data-dir", str(store), "--latency", str(self._latency)]
        return [*argv, *self._options]


class FastServerProcess(ServerProcess):
    """`python -m bench.fast_server --port 0`: parses and hashes, keeps no blob."""

    name = "fast server"

    def _argv(self, store: Path) -> list[str]:
        argv = [sys.executable, "-m", "bench.fast_server", "--host", "127.0.0.1", "--port", "0"]
        return [*argv, "--latency", str(self._latency)]

    def _env(self) -> dict[str, str]:
        return repo_env()
