"""Whether a path lies on a mounted volume rather than on the container's own root filesystem.

Takes a path and this process's mount table (`/proc/self/mountinfo`); gives the mount point that
holds the path's nearest existing folder, or a `ConfigError` when that is `/` itself.

Why it matters: a missing documents root means "the task wrote no documents" only when the
task's volume is there. If the cleanup Job's template forgot the volumeMount, or `--root` has a
typo, the root is missing too, and releasing the volume on that evidence would destroy every
document on it. A volume mounted at the root's folder or above shows in the mount table; the
container's root filesystem (`/`) holds no task volume.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from harvester.errors import ConfigError

MOUNTINFO = "/proc/self/mountinfo"
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def mount_points(mountinfo: str = MOUNTINFO) -> list[str]:
    """The mount points listed in `mountinfo` (the fifth field of each line, unescaped)."""
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as lines:
        return [
            _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[4])
            for fields in (line.split(" ") for line in lines)
            if len(fields) > 4
        ]


def nearest_existing(path: str) -> str:
    """`path` itself if it exists, else its closest existing ancestor, links resolved."""
    current = Path(path).absolute()
    while not os.path.lexists(current):
        current = current.parent
    return str(current.resolve())


def holding_mount(path: str, mounts: list[str]) -> str:
    """The deepest of `mounts` that is `path` or one of its ancestors."""
    best = "/"
    for mount in mounts:
        if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
            best = mount
    return best


def require_mounted_volume(root: str, *, mountinfo: str = MOUNTINFO) -> str:
    """The mount point holding `root` (or its nearest existing ancestor); `ConfigError` when
    none but the container's root filesystem does, or when the mount table cannot be read."""
    existing = nearest_existing(root)
    consequence = (
        "nothing was sent, the task status was left as it is and the volume was kept; "
        "check the cleanup Job's volumeMounts and --root (KERUTA_ARTIFACTS_DIR)"
    )
    try:
        mounts = mount_points(mountinfo)
    except OSError as exc:
        raise ConfigError(
            f"{root}: does not exist, and whether a volume is mounted there cannot be told "
            f"({mountinfo}: {exc.strerror or exc}); {consequence}"
        ) from exc
    holder = holding_mount(existing, mounts)
    if holder == "/":
        raise ConfigError(
            f"{root}: does not exist, and no volume is mounted there (its nearest existing "
            f"folder, {existing}, is on the container's root filesystem); {consequence}"
        )
    return holder
