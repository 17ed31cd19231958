"""Whether the documents root lies on a mounted volume: mount tables written as real files, and
this machine's own table."""

from __future__ import annotations

from pathlib import Path

import pytest

from harvester.errors import ConfigError
from harvester.pipeline.mounts import (
    holding_mount,
    mount_points,
    nearest_existing,
    require_mounted_volume,
)

# The shape of /proc/self/mountinfo in a cleanup pod: the overlay root, the kubelet's files, the
# task volume at /.keruta (its subPath), and a mount point with a space in its name.
POD_MOUNTINFO = """\
1460 1380 0:412 / / ro,relatime master:1 - overlay overlay rw,lowerdir=/var/lib/x
1461 1460 0:415 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
1468 1460 8:1 /pods/x/etc-hosts /etc/hosts rw,relatime - ext4 /dev/sda1 rw
1469 1460 8:1 /pods/x/volumes/pvc-1/.keruta /.keruta ro,relatime - ext4 /dev/sdb rw
1470 1460 0:99 / /data\\040dir rw,relatime - tmpfs tmpfs rw
"""


@pytest.fixture
def mountinfo(tmp_path: Path) -> str:
    path = tmp_path / "mountinfo"
    path.write_text(POD_MOUNTINFO)
    return str(path)


def test_mount_points_are_read_and_unescaped(mountinfo: str) -> None:
    assert mount_points(mountinfo) == ["/", "/proc", "/etc/hosts", "/.keruta", "/data dir"]


def test_the_deepest_mount_holding_a_path_wins() -> None:
    mounts = ["/", "/.keruta", "/.keruta/doc/inner", "/.kerutax"]
    assert holding_mount("/.keruta/doc", mounts) == "/.keruta"
    assert holding_mount("/.keruta", mounts) == "/.keruta"
    assert holding_mount("/.keruta/doc/inner/x", mounts) == "/.keruta/doc/inner"
    assert holding_mount("/.kerut", mounts) == "/"


def test_the_nearest_existing_folder_is_found(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    assert nearest_existing(str(tmp_path / "a" / "b" / "c")) == str((tmp_path / "a").resolve())
    assert nearest_existing(str(tmp_path / "a")) == str((tmp_path / "a").resolve())


def test_a_root_on_a_mounted_volume_passes(mountinfo: str, tmp_path: Path) -> None:
    # The missing root's nearest existing folder is tmp_path; declare tmp_path a mount point.
    table = Path(mountinfo)
    table.write_text(POD_MOUNTINFO + f"1471 1460 0:98 / {tmp_path} rw - tmpfs tmpfs rw\n")
    assert require_mounted_volume(str(tmp_path / "doc"), mountinfo=mountinfo) == str(tmp_path)


def test_a_root_on_the_containers_own_filesystem_is_refused(mountinfo: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        require_mounted_volume(str(tmp_path / "doc"), mountinfo=mountinfo)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'doc'}: does not exist, and no volume is mounted")
    assert "the volume was kept" in message
    assert "--root" in message


def test_an_unreadable_mount_table_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be told"):
        require_mounted_volume(str(tmp_path / "doc"), mountinfo=str(tmp_path / "none"))


def test_this_machines_mount_table_is_readable() -> None:
    assert "/" in mount_points()
