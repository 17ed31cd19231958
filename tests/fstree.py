"""Building odd file trees for tests: links, FIFOs, sockets, devices, undecodable names, and
files nobody may read.

Everything here makes real filesystem objects; nothing is mocked. Paths may be `Path`, `str` or
`bytes` (for names that are not valid UTF-8).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")
PathArg = str | bytes | os.PathLike[str]

NOBODY = 65534


def write_tree(root: Path, files: Mapping[str, bytes | str]) -> Path:
    """Create `files` ({"a/b.txt": content}) below `root`, with their folders; return `root`."""
    for rel_path, content in files.items():
        path = root / rel_path
        path.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode() if isinstance(content, str) else content
        path.write_bytes(data)
    return root


def write_bytes_name(folder: PathArg, name: bytes, content: bytes = b"") -> bytes:
    """Create a file whose name is raw bytes (e.g. b"bad\\xffname.txt"); return its full path."""
    path = os.path.join(os.fsencode(folder), name)
    with open(path, "wb") as out:
        out.write(content)
    return path


def make_fifo(path: PathArg) -> None:
    """A named pipe. Opening it for reading would block until a writer appears."""
    os.mkfifo(path)


def make_socket(path: Path) -> None:
    """A Unix socket file, bound by a real socket (which is closed; the file stays).

    AF_UNIX addresses are limited to about 100 bytes, shorter than pytest's tmp paths, so the
    socket is bound by its bare name from inside its folder.
    """
    with contextlib.chdir(path.parent), socket.socket(socket.AF_UNIX) as sock:
        sock.bind(path.name)


def make_char_device(path: PathArg) -> None:
    """A character device (the same device as /dev/null); skips the test when not permitted."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o644, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating a device file needs CAP_MKNOD")


def make_world_readable(root: Path) -> None:
    """Give every folder below `root` (and `root`) 0755 and every file 0644, whatever the umask."""
    root.chmod(0o755)
    for folder, dirnames, filenames in os.walk(root):
        for name in dirnames:
            Path(folder, name).chmod(0o755)
        for name in filenames:
            path = Path(folder, name)
            if path.is_file() and not path.is_symlink():
                path.chmod(0o644)


@contextlib.contextmanager
def no_access(path: Path) -> Iterator[Path]:
    """chmod 000 `path` for the block, then put its mode back (so tmp_path can be removed)."""
    mode = stat.S_IMODE(path.lstat().st_mode)
    path.chmod(0)
    try:
        yield path
    finally:
        path.chmod(mode)


def run_unprivileged(cwd: Path, fn: Callable[[], T], *, denied: Sequence[str] = ()) -> T:
    """Run `fn()` in a forked child for which file modes hold, and return its result.

    As root, chmod 000 stops nothing, so the child drops to uid/gid 65534 (nobody) when the test
    runs as root and stays itself otherwise. It enters `cwd` before dropping, so `fn` should use
    paths relative to the working folder: pytest's tmp folders (0700) above `cwd` need not be
    opened to nobody, but `cwd` and the tree in it must be (see `make_world_readable`).

    `denied` names paths (relative to `cwd`) that must be unreadable in the child; when one is
    not (a capability such as CAP_DAC_OVERRIDE survived), or the child cannot drop to nobody, the
    test is skipped rather than passing without testing anything. `fn`'s result or exception
    comes back pickled. The child imports nothing new (nobody may not read the interpreter's
    files), so import what `fn` needs in the test module.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        try:
            os.close(read_end)
            outcome = _child_outcome(cwd, fn, denied)
            try:
                data = pickle.dumps(outcome)
            except Exception as exc:  # noqa: BLE001 - anything unpicklable is reported as text
                data = pickle.dumps(("raised", RuntimeError(f"unpicklable result: {exc!r}")))
            with os.fdopen(write_end, "wb") as out:
                out.write(data)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as inp:
        data = inp.read()
    os.waitpid(pid, 0)
    if not data:
        raise RuntimeError("the unprivileged child died without an answer")
    status, payload = pickle.loads(data)
    if status == "skip":
        pytest.skip(payload)
    if status == "raised":
        raise payload
    result: T = payload
    return result


def _child_outcome(
    cwd: Path, fn: Callable[[], object], denied: Sequence[str]
) -> tuple[str, object]:
    try:
        os.chdir(cwd)
        if os.geteuid() == 0:
            try:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            except PermissionError:
                return "skip", "cannot drop root privileges to test file modes"
        for path in denied:
            if os.access(path, os.R_OK):
                return "skip", f"{path} stays readable despite chmod 000 (a capability?)"
        return "ok", fn()
    except BaseException as exc:  # noqa: BLE001 - the parent re-raises it
        return "raised", exc
