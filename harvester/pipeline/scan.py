"""Finding the documents below the root, without opening a single file.

Takes a root folder and `ScanOptions`; gives a `ScanResult`: the regular files to harvest as
`FileEntry`s, every path deliberately left out as a `Skipped` with its reason, and every folder
that could not be listed as a `Failed` (which keeps the harvest from being called complete; the
listener hears of each `Failed` as it is found).

Only `lstat` information is used. Links are never followed, and nothing that is not a folder is
ever opened: opening a FIFO blocks until a writer appears (a hung pod), and opening a device can
have side effects. Folders are opened with `O_NOFOLLOW` relative to their parent's descriptor, so
a folder swapped for a link while the scan runs cannot lead it outside the root.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from operator import attrgetter

from harvester.errors import ConfigError
from harvester.model import Failed, FileEntry, ScanResult, Skipped, SkipReason
from harvester.pipeline.rootfs import RootDir, RootMissing
from harvester.stats import Listener, NullListener, Stage

__all__ = ["GlobSet", "ScanOptions", "display_path", "scan"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NULL_LISTENER = NullListener()
_BY_PATH = attrgetter("rel_path")


@dataclass(frozen=True, slots=True)
class ScanOptions:
    """What the scan keeps.

    `include`/`exclude` are glob patterns (see `GlobSet`); `max_file_size` is in bytes, `None`
    for no limit.
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    include_hidden: bool = False
    max_file_size: int | None = 100 * 1024 * 1024


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
    excludes = GlobSet.compile(options.exclude, option="--exclude")
    includes = GlobSet.compile(options.include, option="--include")
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


class GlobSet:
    """Glob patterns compiled once, matched against POSIX relative paths.

    The rules are those of .gitignore: `*` and `?` never cross `/`; `**` as a whole path
    component matches any number of folders (`**/x`, `a/**/b`, `a/**`); `[abc]`, `[a-z]` and
    `[!a]` are character classes; a backslash makes the next character literal. A pattern without
    `/` matches the base name at any depth; one with a `/` (a leading `/` is dropped) matches the
    whole path from the root. A trailing `/` makes a pattern match folders only. A pattern that
    matches everything inside a folder (`build/**`) also matches the folder itself.
    """

    __slots__ = ("_dir_name", "_dir_path", "_file_name", "_file_path", "patterns")

    def __init__(self, patterns: Iterable[str] = (), *, option: str = "pattern") -> None:
        self.patterns = tuple(patterns)
        file_name: list[str] = []
        file_path: list[str] = []
        dir_name: list[str] = []
        dir_path: list[str] = []
        for pattern in self.patterns:
            regex, anchored, dir_only = _parse(pattern, option)
            (dir_path if anchored else dir_name).append(regex)
            if not dir_only:
                (file_path if anchored else file_name).append(regex)
        self._file_name = _combine(file_name, pattern_for=option)
        self._file_path = _combine(file_path, pattern_for=option)
        self._dir_name = _combine(dir_name, pattern_for=option)
        self._dir_path = _combine(dir_path, pattern_for=option)

    @classmethod
    def compile(cls, patterns: Iterable[str], *, option: str = "pattern") -> GlobSet:
        """Compile `patterns`; `ConfigError` names `option` when one is invalid."""
        return cls(patterns, option=option)

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def __repr__(self) -> str:
        return f"GlobSet({self.patterns!r})"

    def matches_file(self, rel_path: str) -> bool:
        """Whether a file at `rel_path` matches at least one pattern."""
        name = rel_path.rpartition("/")[2]
        return bool(
            (self._file_name is not None and self._file_name.fullmatch(name))
            or (self._file_path is not None and self._file_path.fullmatch(rel_path))
        )

    def matches_dir(self, rel_path: str) -> bool:
        """Whether a folder at `rel_path` matches at least one pattern."""
        name = rel_path.rpartition("/")[2]
        if self._dir_name is not None and self._dir_name.fullmatch(name):
            return True
        return self._dir_path is not None and bool(
            self._dir_path.fullmatch(rel_path) or self._dir_path.fullmatch(rel_path + "/")
        )


def _parse(pattern: str, option: str) -> tuple[str, bool, bool]:
    """A pattern's regex, whether it is anchored at the root, and whether it is for folders."""
    body = pattern
    dir_only = body.endswith("/")
    body = body.rstrip("/")
    anchored = "/" in body
    body = body.removeprefix("/")
    if not body:
        raise ConfigError(f"{option} {pattern!r}: an empty pattern matches nothing; remove it")
    return _glob_to_regex(body, pattern, option), anchored, dir_only


def _glob_to_regex(glob: str, pattern: str, option: str) -> str:
    out: list[str] = []
    i, n = 0, len(glob)
    while i < n:
        ch = glob[i]
        if ch == "*":
            j = i
            while j < n and glob[j] == "*":
                j += 1
            whole_component = j - i >= 2 and (i == 0 or glob[i - 1] == "/")
            if whole_component and j < n and glob[j] == "/":
                out.append("(?:.*/)?")  # "**/": zero or more folders
                i = j + 1
            elif whole_component and j == n:
                out.append(".*")  # trailing "**": everything below
                i = j
            else:
                out.append("[^/]*")
                i = j
        elif ch == "?":
            out.append("[^/]")
            i += 1
        elif ch == "[":
            regex, i = _char_class(glob, i, pattern, option)
            out.append(regex)
        elif ch == "\\" and i + 1 < n:
            out.append(re.escape(glob[i + 1]))
            i += 2
        else:
            out.append(re.escape(ch))
            i += 1
    return "".join(out)


def _char_class(glob: str, start: int, pattern: str, option: str) -> tuple[str, int]:
    """Translate the class opening at `start`; a `[` that is never closed is a literal."""
    n = len(glob)
    j = start + 1
    negate = j < n and glob[j] in "!^"
    if negate:
        j += 1
    items: list[str] = []
    first = True
    while j < n and (glob[j] != "]" or first):
        first = False
        low = glob[j]
        if low == "\\" and j + 1 < n:
            j += 1
            low = glob[j]
        if j + 2 < n and glob[j + 1] == "-" and glob[j + 2] != "]":
            high = glob[j + 2]
            if high < low:
                raise ConfigError(
                    f"{option} {pattern!r}: the range {low}-{high} is backwards; write {high}-{low}"
                )
            items.append(f"{re.escape(low)}-{re.escape(high)}")
            j += 3
        else:
            items.append(re.escape(low))
            j += 1
    if j >= n:
        return re.escape("["), start + 1
    body = "".join(items)
    # A class never matches the folder separator, as in .gitignore.
    return (f"[^/{body}]" if negate else f"(?!/)[{body}]"), j + 1


def _combine(regexes: list[str], *, pattern_for: str) -> re.Pattern[str] | None:
    if not regexes:
        return None
    try:
        return re.compile("|".join(f"(?:{regex})" for regex in regexes), re.DOTALL)
    except re.error as exc:  # pragma: no cover - _glob_to_regex escapes everything it emits
        raise ConfigError(f"{pattern_for}: a pattern cannot be used: {exc}") from exc


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
                    child_fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
                except OSError as exc:
                    self._fail(Failed(rel, _listing_error(rel, exc)))
                    continue
                try:
                    child_pending = self._list(child_fd, os_rel + "/", rel + "/")
                except OSError as exc:
                    os.close(child_fd)
                    self._fail(Failed(rel, _listing_error(rel, exc)))
                    continue
                stack.append((child_fd, os_rel + "/", rel + "/", child_pending))
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
        include_hidden, advanced = self._include_hidden, self._listener.advanced
        with os.scandir(dir_fd) as listing:
            for item in listing:
                name = item.name
                shown = name if name.isascii() else _display_name(name)
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
                    if excludes and excludes.matches_dir(rel):
                        skipped.append(Skipped(rel, SkipReason.EXCLUDED))
                    else:
                        subdirs.append((name, shown))
                    continue
                if excludes and excludes.matches_file(rel):
                    skipped.append(Skipped(rel, SkipReason.EXCLUDED))
                    continue
                if includes and not includes.matches_file(rel):
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
                entries.append(FileEntry(rel, os_prefix + name, size, info.st_mtime_ns))
                advanced(Stage.SCAN, 1, size)
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
