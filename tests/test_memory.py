"""Memory stays flat whatever the file size: a 1 GiB harvest peaks no higher than a 16 MiB one.

Both harvests run the real CLI as a child process against the dev-api; the child's peak RSS comes
from the kernel (wait4's ru_maxrss), so nothing here measures time. The files are sparse, so the
test spends its time in hashing and on the wire, not on the disk.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from harvester.devapi import DevApiServer
from tests.process import BIN, isolated_env

KIB = 1024
MIB = 1024 * KIB


def peak_rss_of_harvest(root: Path, api_url: str, task_id: str) -> int:
    """Run `harvester cleanup` over `root`; return the child's peak RSS in bytes."""
    process = subprocess.Popen(
        [
            str(BIN / "harvester"),
            "cleanup",
            f"--task-id={task_id}",
            f"--api-url={api_url}",
            f"--root={root}",
            "--max-file-size=0",
            "--log-format=json",
            "--progress-interval=60",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=isolated_env(),
    )
    _pid, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    stderr = process.stderr.read().decode() if process.stderr else ""
    if process.stderr:
        process.stderr.close()
    assert process.returncode == 0, stderr
    return int(usage.ru_maxrss) * KIB  # Linux reports kilobytes


def sparse_file(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        out.truncate(size)


@pytest.mark.timeout(300)
def test_peak_rss_does_not_grow_with_the_file_size(tmp_path: Path, dev_api: DevApiServer) -> None:
    small, large = tmp_path / "small", tmp_path / "large"
    sparse_file(small / "data.bin", 16 * MIB)
    sparse_file(large / "data.bin", 1024 * MIB)

    small_rss = peak_rss_of_harvest(small, dev_api.url, "small")
    large_rss = peak_rss_of_harvest(large, dev_api.url, "large")

    (stored,) = dev_api.store.documents("large")
    assert stored.size == 1024 * MIB
    # A harvester that held the file in memory would grow by about 1 GiB; streaming allows
    # only noise (a few chunk buffers and allocator slack).
    growth = large_rss - small_rss
    print(f"peak RSS: 16 MiB file {small_rss / MIB:.1f} MiB, 1 GiB file {large_rss / MIB:.1f} MiB")
    assert growth < 16 * MIB, f"peak RSS grew by {growth / MIB:.1f} MiB for a 1 GiB file"
