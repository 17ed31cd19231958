"""Opening what lies below the documents root without ever leaving it or following a link, and
the sizes every reader of documents shares.

Takes a root folder and a relative path; gives an open file descriptor of a regular file
(`RootDir.open_regular`, or `RootDir.open_file` with its `fstat`, through `Folders` when many files
of one folder are opened in a row) or of a folder (`open_folder`). Every path component is opened
with `O_NOFOLLOW` relative to its parent's descriptor (openat), so a link swapped in anywhere along
the path after the scan cannot lead outside the root. The final open adds `O_NONBLOCK` so that a
FIFO swapped in after the scan cannot hang the pod on open; `fstat` then refuses it before a single
byte is read. The scan, the hashing and the upload all open through here, so these flags and the
read sizes below are said once.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from types import TracebackType

from harvester.errors import ConfigError, FileProblem, NotRegularFile

__all__ = [
    "CHUNK_SIZE",
    "THREADED_HASH_MIN_SIZE",
    "WHOLE_UPLOAD_MAX_SIZE",
    "Folders",
    "RootDir",
    "RootMissing",
    "open_folder",
]

# How much of a document is read at a time, by the hashing and by the upload. One reused buffer
# of this size per thread keeps memory flat for any number and size of files, and a read or a
# hash update this large costs far more than the system call and GIL hand-off around it.
CHUNK_SIZE = 1024 * 1024
# Files at least this large are hashed on the worker threads, smaller ones on the caller's: for a
# small file the GIL hand-offs around every system call cost more than the hashing saves.
THREADED_HASH_MIN_SIZE = 256 * 1024
# Files up to this size are read whole and sent in one write with their multipart frame, larger
# ones streamed in chunks: per-request cost is what limits many small documents, while memory
# stays bounded at this size per concurrent upload. Not the same fact as the hashing threshold
# above, which weighs threads against GIL hand-offs; the two are tuned apart and happen to agree.
WHOLE_UPLOAD_MAX_SIZE = 256 * 1024

# The root itself may be reached through a link (a mount path, /tmp on macOS): only what lies
# below it must not be. Every descriptor is O_CLOEXEC so that no child process inherits it.
_ROOT_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# A folder below the root: O_NOFOLLOW refuses a link swapped in for it while the harvest runs.
_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# A document: O_NOFOLLOW as for folders, and O_NONBLOCK so that a FIFO swapped in after the scan
# cannot hang the open (see the module docstring); the descriptor is made blocking once fstat has
# shown a regular file.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class RootMissing(ConfigError):
    """The documents root does not exist (for a harvest: there are no documents)."""


class RootDir:
    """The documents root, held open for the length of a harvest."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self.fd = os.open(path, _ROOT_FLAGS)
        except FileNotFoundError as exc:
            raise RootMissing(f"{path}: the documents root does not exist") from exc
        except NotADirectoryError as exc:
            raise ConfigError(f"{path}: the documents root is not a folder") from exc
        except PermissionError as exc:
            raise ConfigError(
                f"{path}: the documents root cannot be read (permission denied); "
                "check the volume mount and the pod's user"
            ) from exc

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> RootDir:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def look(self, os_rel_path: str) -> os.stat_result | None:
        """What the path names now, looked at from the root without following it if it is a
        link, or None when nothing can be seen there. Nothing is opened."""
        try:
            return os.stat(os_rel_path, dir_fd=self.fd, follow_symlinks=False)
        except OSError:
            return None

    def open_regular(self, os_rel_path: str, *, shown_as: str | None = None) -> int:
        """Open a regular file below the root for reading and return its descriptor.

        Raises `NotRegularFile` for links, FIFOs, sockets, devices and folders, `FileProblem`
        when the file cannot be read (gone, permission denied). Messages name the file as
        `shown_as` (the printable relative path) when given, else by its OS path.
        """
        return self.open_file(os_rel_path, shown_as=shown_as)[0]

    def open_file(
        self, os_rel_path: str, *, shown_as: str | None = None, folders: Folders | None = None
    ) -> tuple[int, os.stat_result]:
        """`open_regular`, giving also the `fstat` that showed a regular file.

        With `folders`, the file's folder is opened through it (kept open for the next file in
        the same folder) rather than from the root.
        """
        name = shown_as or os_rel_path
        # The path's parts are neither empty nor "." nor "..": said with three substring
        # searches rather than a split per file.
        framed = f"/{os_rel_path}/"
        if "//" in framed or "/./" in framed or "/../" in framed:
            raise NotRegularFile(f"{name}: not a plain path below the root")
        folder, _, base = os_rel_path.rpartition("/")
        try:
            if not folder:
                fd = os.open(base, _FILE_FLAGS, dir_fd=self.fd)
            elif folders is not None:
                fd = os.open(base, _FILE_FLAGS, dir_fd=folders.open(self.fd, folder))
            else:
                parent = _open_path(self.fd, folder)
                try:
                    fd = os.open(base, _FILE_FLAGS, dir_fd=parent)
                finally:
                    os.close(parent)
        except OSError as exc:
            raise _translate(name, exc) from exc
        try:
            info = os.fstat(fd)
        except OSError as exc:
            os.close(fd)
            raise _translate(name, exc) from exc
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise NotRegularFile(f"{name}: is no longer a regular file; not read")
        # Blocking again with one fcntl rather than os.set_blocking's two: F_SETFL changes only
        # O_APPEND, O_ASYNC, O_DIRECT, O_NOATIME and O_NONBLOCK, of which the file was opened
        # with O_NONBLOCK alone.
        fcntl.fcntl(fd, fcntl.F_SETFL, 0)
        return fd, info


class Folders:
    """The folder of the last file opened through it, kept open for the next file there.

    Files are read in path order, so a folder's files come one after another: each is then
    opened relative to one held descriptor instead of opening and closing every folder on its
    path. The folder was opened like any other (`O_NOFOLLOW` at every step from the root); a
    folder moved or swapped after that still holds the files it held, so a reader that keeps
    one must check afterwards that the path from the root still names the file it read, and
    open again from the root when it does not (`digest.hash_file` does both). For one thread.
    """

    __slots__ = ("_fd", "_path")

    def __init__(self) -> None:
        self._path: str | None = None
        self._fd = -1

    def open(self, root_fd: int, folder: str) -> int:
        """The descriptor of `folder` (relative to the root), opened now unless it is held."""
        if folder != self._path:
            fd = _open_path(root_fd, folder)
            self.close()
            self._path, self._fd = folder, fd
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._path, self._fd = None, -1

    def __enter__(self) -> Folders:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _open_path(root_fd: int, folder: str) -> int:
    """Open the folder at the relative path `folder`, one part at a time from `root_fd`."""
    parent = root_fd
    for part in folder.split("/"):
        try:
            fd = open_folder(part, parent)
        finally:
            if parent != root_fd:
                os.close(parent)
        parent = fd
    return parent


def open_folder(name: str, parent_fd: int) -> int:
    """Open the folder `name` inside the folder `parent_fd`, never through a link; the caller
    closes the descriptor. Raises `OSError` as `open` does (`ELOOP` or `ENOTDIR` for a link or
    anything else that is not a folder)."""
    return os.open(name, _FOLDER_FLAGS, dir_fd=parent_fd)


def _translate(name: str, exc: OSError) -> FileProblem:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return NotRegularFile(
            f"{name}: a symbolic link appeared on its path after the scan; not followed"
        )
    if exc.errno == errno.ENXIO:
        # What open() says of a socket (and of a device without a driver).
        return NotRegularFile(f"{name}: is no longer a regular file; not read")
    if exc.errno == errno.ENOENT:
        return FileProblem(f"{name}: disappeared after the scan")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return FileProblem(
            f"{name}: cannot be read (permission denied); fix its mode or --exclude it"
        )
    return FileProblem(f"{name}: cannot be opened: {exc.strerror or exc}")
