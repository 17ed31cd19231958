"""Finding the documents below the root, without opening a single file.

Takes a root folder and `ScanOptions`; gives a `ScanResult`: the regular files to harvest as
`FileEntry`s, every path deliberately left out as a `Skipped` with its reason, and every folder
that could not be listed as a `Failed` (which keeps the harvest from being called complete; the
listener hears of each `Failed` as it is found).

Only `lstat` information is used. Links are never followed, and nothing that is not a folder is
ever opened: opening a FIFO blocks until a writer appears (a hung pod), and opening a device can
have side effects. Folders are opened with `O_NOFOLLOW` relative to their parent's descriptor
(`rootfs.open_folder`), so a folder swapped for a link while the scan runs cannot lead it outside
the root.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from dataclasses import dataclass
from operator import attrgetter

from harvester.errors import ConfigError
from harvester.model import Failed, FileEntry, ScanResult, Skipped, SkipReason
from harvester.pipeline.globs import GlobSet
from harvester.pipeline.rootfs import RootDir, RootMissing, open_folder
from harvester.stats import Listener, NullListener, Stage

__all__ = ["ScanOptions", "display_path", "scan"]

_NULL_LISTENER = NullListener()
_BY_PATH = attrgetter("rel_path")


@dataclass(frozen=True, slots=True)
class ScanOptions:
    """What the scan keeps.

    `include`/`exclude` are glob patterns (see `harvester.pipeline.globs`); `max_file_size` is
    in bytes, `None` for no limit. The defaults keep everything; a harvest's limits are its
    `Settings`' (the one place an option's default is said).
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    include_hidden: bool = False
    max_file_size: int | None = None


def scan(
    root: str,
    options: ScanOptions,
    listener: Listener = _NULL_LISTENER,
    *,
    stop: threading.Event | None = None,
) -> ScanResult:
    """List every file below `root` with what the scan decided about it.

    A missing root gives an empty result with `root_exists=False`. Once `stop` is set no further
    folder is listed (the result is then partial: the caller knows it was stopped). Raises
    `ConfigError` when the root is not a folder or cannot be read, or when a pattern or the size
    limit is invalid.
    """
    excludes = GlobSet(options.exclude, option="--exclude")
    includes = GlobSet(options.include, option="--include")
    if options.max_file_size is not None and options.max_file_size < 0:
        raise ConfigError(f"--max-file-size must be zero or more, not {options.max_file_size}")
    try:
        root_dir = RootDir(root)
    except RootMissing:
        return ScanResult((), (), (), root_exists=False)
    except OSError as exc:
        raise ConfigError(
            f"{root}: the documents root cannot be opened: {exc.strerror or exc}"
        ) from exc
    listener.stage_started(Stage.SCAN, 0, 0)
    try:
        with root_dir:
            walker = _Walker(options, excludes, includes, listener, stop or threading.Event())
            walker.walk(root_dir.fd, root)
            return walker.result()
    finally:
        listener.stage_finished(Stage.SCAN)


def display_path(os_rel_path: str) -> str:
    """The path as people and keruta-api see it: `os_rel_path` with odd bytes made visible.

    A name that is valid UTF-8 is shown as it is. In a name that is not, each undecodable byte
    appears as `%XX` (b"bad\\xffname.txt" -> "bad%FFname.txt") and `%` itself as `%25`, so two
    such names never read the same. `os_rel_path` is what `os` gives for the raw bytes
    (surrogate-escaped), `/`-separated.
    """
    if os_rel_path.isascii():
        return os_rel_path
    return "/".join(_display_name(name) for name in os_rel_path.split("/"))


def _display_name(name: str) -> str:
    raw = os.fsencode(name)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    # surrogateescape turns each undecodable byte 0xXX into the lone surrogate U+DCXX.
    return "".join(
        f"%{ord(ch) - 0xDC00:02X}" if "\udc80" <= ch <= "\udcff" else "%25" if ch == "%" else ch
        for ch in raw.decode("utf-8", "surrogateescape")
    )


def _skip_reason(mode: int) -> SkipReason:
    if stat.S_ISLNK(mode):
        return SkipReason.SYMLINK
    if stat.S_ISFIFO(mode):
        return SkipReason.FIFO
    if stat.S_ISSOCK(mode):
        return SkipReason.SOCKET
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return SkipReason.DEVICE
    return SkipReason.OTHER_TYPE


def _listing_error(rel_path: str, exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM):
        why = "cannot be listed (permission denied)"
        hint = "fix its mode or --exclude it"
    elif exc.errno == errno.ENOENT:
        why = "cannot be listed (it disappeared while the scan ran)"
        hint = "run the harvest again once the task has stopped writing"
    elif exc.errno in (errno.ELOOP, errno.ENOTDIR):
        why = "cannot be listed (it stopped being a folder while the scan ran)"
        hint = "run the harvest again once the task has stopped writing"
    elif exc.errno in (errno.EMFILE, errno.ENFILE):
        why = "cannot be listed (too many open files: the tree is nested very deeply)"
        hint = "raise the open-file limit or --exclude it"
    else:
        why = f"cannot be listed ({exc.strerror or exc})"
        hint = "check the volume"
    return f"{rel_path}: {why}; its files were not harvested — {hint}"


def _examine_error(rel_path: str, exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (
            f"{rel_path}: cannot be examined (permission denied on its folder); "
            "fix the folder's mode or --exclude it"
        )
    return f"{rel_path}: cannot be examined ({exc.strerror or exc}); check the volume"


class _Walker:
    """One scan's state: the lists it fills and the options it applies."""

    __slots__ = (
        "_excludes",
        "_include_hidden",
        "_includes",
        "_listener",
        "_max_size",
        "_stop",
        "entries",
        "failed",
        "skipped",
    )

    def __init__(
        self,
        options: ScanOptions,
        excludes: GlobSet,
        includes: GlobSet,
        listener: Listener,
        stop: threading.Event,
    ) -> None:
        self._stop = stop
        self._excludes = excludes
        self._includes = includes
        self._include_hidden = options.include_hidden
        self._max_size = options.max_file_size
        self._listener = listener
        self.entries: list[FileEntry] = []
        self.skipped: list[Skipped] = []
        self.failed: list[Failed] = []

    def walk(self, root_fd: int, root: str) -> None:
        try:
            subdirs = self._list(root_fd, "", "")
        except OSError as exc:
            raise ConfigError(
                f"{root}: the documents root cannot be listed: {exc.strerror or exc}"
            ) from exc
        # Depth first, holding one descriptor per level: links swapped in while the scan runs are
        # refused by O_NOFOLLOW at every step, and a wide folder costs no descriptors.
        stack: list[tuple[int, str, str, list[tuple[str, str]]]] = [(-1, "", "", subdirs)]
        try:
            while stack and not self._stop.is_set():
                fd, os_prefix, shown_prefix, pending = stack[-1]
                if not pending:
                    stack.pop()
                    if fd >= 0:
                        os.close(fd)
                    continue
                name, shown = pending.pop()
                parent_fd = root_fd if fd < 0 else fd
                os_rel, rel = os_prefix + name, shown_prefix + shown
                try:
                    child_fd = open_folder(name, parent_fd)
                except OSError as exc:
                    self._fail(Failed(rel, _listing_error(rel, exc)))
                    continue
                try:
                    child_pending = self._list(child_fd, os_rel + "/", rel + "/")
                except OSError as exc:
                    os.close(child_fd)
                    self._fail(Failed(rel, _listing_error(rel, exc)))
                    continue
                child_os_prefix = os_rel + "/"
                # One string for both when the names are plain: every path below shares it.
                child_prefix = child_os_prefix if rel == os_rel else rel + "/"
                stack.append((child_fd, child_os_prefix, child_prefix, child_pending))
        finally:
            for fd, *_rest in stack:
                if fd >= 0:
                    os.close(fd)

    def _fail(self, failure: Failed) -> None:
        """Record a path that cannot be harvested and tell the listener now, so a live log
        shows it while the scan runs rather than only in the final summary."""
        self.failed.append(failure)
        self._listener.file_failed(failure.rel_path, failure.error)

    def _list(self, dir_fd: int, os_prefix: str, shown_prefix: str) -> list[tuple[str, str]]:
        """Sort one folder's entries into the result lists; return its subfolders to visit."""
        subdirs: list[tuple[str, str]] = []
        entries, skipped, fail = self.entries, self.skipped, self._fail
        excludes, includes, max_size = self._excludes, self._includes, self._max_size
        # Asked once per folder, not through GlobSet.__bool__ once per entry.
        excluding, including = bool(excludes), bool(includes)
        include_hidden = self._include_hidden
        # A path whose every name shows as it is gets one string for rel_path and os_path.
        plain_prefix = os_prefix == shown_prefix
        found = found_bytes = 0
        with os.scandir(dir_fd) as listing:
            for item in listing:
                name = item.name
                plain = name.isascii()
                shown = name if plain else _display_name(name)
                rel = shown_prefix + shown
                if not include_hidden and name.startswith("."):
                    skipped.append(Skipped(rel, SkipReason.HIDDEN))
                    continue
                try:
                    is_dir = item.is_dir(follow_symlinks=False)
                except OSError as exc:
                    fail(Failed(rel, _examine_error(rel, exc)))
                    continue
                if is_dir:
                    if excluding and excludes.matches_dir(rel):
                        skipped.append(Skipped(rel, SkipReason.EXCLUDED))
                    else:
                        subdirs.append((name, shown))
                    continue
                if excluding and excludes.matches_file(rel):
                    skipped.append(Skipped(rel, SkipReason.EXCLUDED))
                    continue
                if including and not includes.matches_file(rel):
                    skipped.append(Skipped(rel, SkipReason.NOT_INCLUDED))
                    continue
                try:
                    info = item.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed since it was listed: there is nothing left to harvest
                except OSError as exc:
                    fail(Failed(rel, _examine_error(rel, exc)))
                    continue
                if not stat.S_ISREG(info.st_mode):
                    skipped.append(Skipped(rel, _skip_reason(info.st_mode)))
                    continue
                size = info.st_size
                if max_size is not None and size > max_size:
                    skipped.append(Skipped(rel, SkipReason.TOO_LARGE, size))
                    continue
                os_rel = rel if plain_prefix and (plain or shown == name) else os_prefix + name
                entries.append(FileEntry(rel, os_rel, size, info.st_mtime_ns))
                found += 1
                found_bytes += size
        # Told once per folder, not per file: the count is the same, the lock taken far less.
        if found:
            self._listener.advanced(Stage.SCAN, found, found_bytes)
        return subdirs

    def result(self) -> ScanResult:
        self.entries.sort(key=_BY_PATH)
        entries = self._without_name_clashes()
        self.skipped.sort(key=_BY_PATH)
        self.failed.sort(key=_BY_PATH)
        return ScanResult(tuple(entries), tuple(self.skipped), tuple(self.failed))

    def _without_name_clashes(self) -> list[FileEntry]:
        """Keep two files from being sent under one name.

        A valid UTF-8 name such as "a%FF" and the undecodable b"a\\xff" display alike. The file
        whose name was shown unchanged keeps it; the others fail, since uploading them would
        replace it on the server.
        """
        entries = self.entries
        clashes = {
            entries[i].rel_path
            for i in range(1, len(entries))
            if entries[i].rel_path == entries[i - 1].rel_path
        }
        if not clashes:
            return entries
        kept: list[FileEntry] = []
        for entry in entries:
            if entry.rel_path not in clashes or entry.os_path == entry.rel_path:
                kept.append(entry)
            else:
                self._fail(
                    Failed(
                        entry.rel_path,
                        f"{entry.rel_path}: its name is not valid UTF-8 (its bytes: "
                        f"{os.fsencode(entry.os_path).decode('ascii', 'backslashreplace')}) and, "
                        "once its odd bytes are escaped, reads the same as another file's; "
                        "rename one of them",
                        entry.size,
                    )
                )
        return kept
