"""The benchmark's documents trees, written once into a work folder.

Takes a `TreeSpec` (how many files, how big, in how many folders) and a folder; gives the tree's
root. Content is real (never sparse, so the disk and the page cache see every byte) and distinct
per file and per MiB block (so content-hash dedupe never shortens a run), yet cheap to write: one
random block per tree, each copy stamped with its file and block number.

A finished tree is marked by `<name>.complete` beside it (not inside: the harvester would skip a
hidden marker, the sequential contender would not), so `--workdir` can keep trees between runs.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["KIB", "MIB", "TreeSpec", "iter_files", "make_tree"]

KIB = 1024
MIB = 1024 * KIB
_BLOCK = MIB
_STAMP = struct.Struct("<QQ")  # file number, block number: 16 bytes


@dataclass(frozen=True, slots=True)
class TreeSpec:
    """`files` files of `file_size` bytes each, spread evenly over `folders` folders."""

    name: str
    files: int
    file_size: int
    folders: int
    suffix: str = ".txt"

    @property
    def total_bytes(self) -> int:
        return self.files * self.file_size

    def describe(self) -> str:
        return f"{self.files:,} files × {human_bytes(self.file_size)} in {self.folders:,} folders"


def human_bytes(size: float) -> str:
    """`4096` -> `4 KiB`, `536870912` -> `512 MiB` (binary units, as the issue names sizes)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if size == int(size) else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _relative_paths(spec: TreeSpec) -> Iterator[tuple[int, str]]:
    per_folder = -(-spec.files // spec.folders)
    width = len(str(max(spec.files - 1, 1)))
    for number in range(spec.files):
        folder = number // per_folder
        yield number, f"d{folder:03d}/f{number:0{width}d}{spec.suffix}"


def _write_file(path: Path, number: int, size: int, block: bytes) -> None:
    # O_EXCL on a fresh tree: a stale file is an error, never silently reused.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        if size < _STAMP.size:
            os.write(fd, _STAMP.pack(number, 0)[:size])
            return
        offset, index = 0, 0
        while offset < size:
            length = min(_BLOCK, size - offset)
            stamp = _STAMP.pack(number, index)
            view = memoryview(block)[_STAMP.size : length]
            os.writev(fd, [stamp, view])
            offset += length
            index += 1
    finally:
        os.close(fd)


def make_tree(spec: TreeSpec, base: Path) -> Path:
    """Write the tree `spec` under `base/<name>` unless a complete one is already there."""
    root = base / spec.name
    marker = base / f"{spec.name}.complete"
    wanted = json.dumps(asdict(spec), sort_keys=True)
    if marker.is_file() and marker.read_text() == wanted and root.is_dir():
        return root
    marker.unlink(missing_ok=True)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    block = os.urandom(min(_BLOCK, max(spec.file_size, _STAMP.size)))
    made: set[str] = set()
    for number, rel in _relative_paths(spec):
        folder = rel.rpartition("/")[0]
        if folder not in made:
            (root / folder).mkdir()
            made.add(folder)
        _write_file(root / rel, number, spec.file_size, block)
    marker.write_text(wanted)
    return root


def iter_files(root: Path) -> Iterator[tuple[str, Path]]:
    """Every regular, non-hidden file under `root` as (relative path, path), in sorted order."""
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = Path(folder) / name
            yield path.relative_to(root).as_posix(), path
