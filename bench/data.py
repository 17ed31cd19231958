"""The benchmark's documents trees, written once into a work folder.

Takes a `TreeSpec` (how many files, how big, in how many folders) and a folder; gives the tree's
root, after checking that the file system has room for it. Content is real (never sparse, so the
disk and the page cache see every byte) and distinct per file and per MiB block (so content-hash
dedupe never shortens a run), yet cheap to write: one random block per tree, each copy stamped
with its file and block number.

A finished tree is marked by `<name>.complete` beside it (not inside: the harvester would skip a
hidden marker, the sequential contender would not), so `--workdir` can keep trees between runs.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.tools import BenchError

__all__ = ["KIB", "MIB", "PROGRESS_EVERY", "TreeSpec", "check_room", "iter_files", "make_tree"]

KIB = 1024
MIB = 1024 * KIB
PROGRESS_EVERY = 100_000  # files between two progress calls while a tree is written
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
        if size <= _BLOCK:
            # One write for a small file: a million-file tree is mostly system calls.
            os.write(fd, (_STAMP.pack(number, 0) + block[_STAMP.size : size])[:size])
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


def make_tree(spec: TreeSpec, base: Path, *, progress: Callable[[int], None] | None = None) -> Path:
    """Write the tree `spec` under `base/<name>` unless a complete one is already there.

    `progress(files_written)` is called every `PROGRESS_EVERY` files of a tree being written.
    Raises `BenchError` when the file system has too little room for it (checked first).
    """
    root = base / spec.name
    marker = base / f"{spec.name}.complete"
    wanted = json.dumps(asdict(spec), sort_keys=True)
    if marker.is_file() and marker.read_text() == wanted and root.is_dir():
        return root
    marker.unlink(missing_ok=True)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    check_room(spec, root)
    block = os.urandom(min(_BLOCK, max(spec.file_size, _STAMP.size)))
    made: set[str] = set()
    for number, rel in _relative_paths(spec):
        folder = rel.rpartition("/")[0]
        if folder not in made:
            (root / folder).mkdir()
            made.add(folder)
        _write_file(root / rel, number, spec.file_size, block)
        if progress is not None and (number + 1) % PROGRESS_EVERY == 0:
            progress(number + 1)
    marker.write_text(wanted)
    return root


def check_room(spec: TreeSpec, where: Path) -> None:
    """Raise `BenchError` unless the file system of `where` has the blocks and inodes for the
    tree, with a tenth to spare (a million small files take a few GB: one block each)."""
    fs = os.statvfs(where)
    unit = fs.f_frsize or 4096
    blocks_per_file = max(1, -(-spec.file_size // unit))
    need_bytes = (spec.files * blocks_per_file + spec.folders) * unit * 11 // 10
    free_bytes = fs.f_bavail * unit
    if free_bytes < need_bytes:
        raise BenchError(
            f"{where}: {human_bytes(free_bytes)} free, the {spec.name} tree ({spec.describe()}) "
            f"needs about {human_bytes(need_bytes)}; free some room or pass --workdir elsewhere"
        )
    need_inodes = (spec.files + spec.folders) * 11 // 10
    # f_files is 0 where the file system has no fixed inode table (btrfs): nothing to check.
    if fs.f_files and fs.f_favail < need_inodes:
        raise BenchError(
            f"{where}: {fs.f_favail:,} free inodes, the {spec.name} tree ({spec.describe()}) "
            f"needs about {need_inodes:,}; pass --workdir on a file system with more"
        )


def iter_files(root: Path) -> Iterator[tuple[str, Path]]:
    """Every regular, non-hidden file under `root` as (relative path, path), in sorted order."""
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = Path(folder) / name
            yield path.relative_to(root).as_posix(), path
