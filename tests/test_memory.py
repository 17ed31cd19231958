"""Memory stays flat whatever the file size: a 1 GiB harvest peaks no higher than a 16 MiB one.

Both harvests run the real CLI as a child process against the dev-api; the child's peak RSS is
its own high-water mark (VmHWM, see bench.tools.PeakRss), so nothing here measures time. The
files are sparse, so the test spends its time in hashing and on the wire, not on the disk.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.tools import run_timed
from harvester.devapi.server import DevApiServer
from tests.process import BIN, isolated_env

MIB = 1024 * 1024


def peak_rss_of_harvest(root: Path, api_url: str, task_id: str, tmp_path: Path) -> int:
    """Run `harvester cleanup` over `root`; return the child's peak RSS in bytes."""
    stderr = tmp_path / f"{task_id}.stderr"
    timed = run_timed(
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
        stderr=stderr,
        env=isolated_env(),
    )
    assert timed.returncode == 0, stderr.read_text()
    return timed.peak_rss


def sparse_file(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        out.truncate(size)


@pytest.mark.timeout(300)
def test_peak_rss_does_not_grow_with_the_file_size(tmp_path: Path, dev_api: DevApiServer) -> None:
    small, large = tmp_path / "small", tmp_path / "large"
    sparse_file(small / "data.bin", 16 * MIB)
    sparse_file(large / "data.bin", 1024 * MIB)

    small_rss = peak_rss_of_harvest(small, dev_api.url, "small", tmp_path)
    large_rss = peak_rss_of_harvest(large, dev_api.url, "large", tmp_path)

    (stored,) = dev_api.store.documents("large")
    assert stored.size == 1024 * MIB
    # A harvester that held the file in memory would grow by about 1 GiB; streaming allows
    # only noise (a few chunk buffers and allocator slack).
    growth = large_rss - small_rss
    print(f"peak RSS: 16 MiB file {small_rss / MIB:.1f} MiB, 1 GiB file {large_rss / MIB:.1f} MiB")
    assert growth < 16 * MIB, f"peak RSS grew by {growth / MIB:.1f} MiB for a 1 GiB file"
