"""When a file is done being written: the settle rule, pure (the clock and the looks come in).

Takes what the watch saw, in batches: a `Change` (added, modified, deleted) of a path, what lstat
said of it then (`Look`: size, mtime, ctime, inode; None when it was already gone), whether the
path may be a document (`candidate`; names that are ignored, hidden or excluded are still
watched, for renames), and the time; gives, from `ready(now, look_again)`, the documents that are
written:

- a path is ready once its size and mtime held still for `settle` seconds, proven by a fresh look
  when that time is up (a change seen then starts the wait again);
- a path is ready at once when it was renamed into place: it was *added* with the inode, size
  and mtime that another path of the tree (a temp file included) showed when last looked at, and
  that path was deleted in the same or a recent batch (`rename_memory` seconds), or still holds
  it (a rename whose deletion comes in the next batch, a hard link). The same size and mtime to
  the nanosecond keep a reused inode (a new file written where a deleted one's inode was freed)
  from passing for a rename. A writer that creates, fills and renames a file within one batch
  (~50 ms) leaves no earlier look: that file settles like any new one;
- a path deleted (or gone when looked at again) before it was ready is dropped: never sent.

A file moved in from outside the tree has no earlier name here: it settles like any new file.
Paths are the operating system's, relative to the root. Nothing here reads the disk or the clock.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum

RENAME_MEMORY = 10.0  # seconds a deleted path's look is kept for pairing with an added one


class Change(Enum):
    ADDED = 1
    MODIFIED = 2
    DELETED = 3


@dataclass(frozen=True, slots=True)
class Look:
    """What lstat said of a regular file at one moment."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    def same_content_as(self, other: Look) -> bool:
        """Whether nothing was written between the two looks (a rename keeps all of these)."""
        return (self.inode, self.size, self.mtime_ns) == (other.inode, other.size, other.mtime_ns)


@dataclass(frozen=True, slots=True)
class Seen:
    """One change of a batch: the path, what happened, its look then, and whether it may be a
    document."""

    change: Change
    path: str
    look: Look | None
    candidate: bool = True


@dataclass(slots=True)
class _Waiting:
    look: Look
    quiet_since: float


class Settler:
    """The files waiting to settle, and the last look of every path seen (for renames)."""

    def __init__(self, settle: float, *, rename_memory: float = RENAME_MEMORY) -> None:
        self.settle = settle
        self._rename_memory = rename_memory
        self._waiting: dict[str, _Waiting] = {}
        self._due: list[tuple[float, str]] = []  # (when to look again, path); stale ones skipped
        self._renamed: dict[str, Look] = {}  # ready at once
        self._last_look: dict[str, Look] = {}
        self._path_of_inode: dict[int, str] = {}
        self._gone: dict[int, tuple[str, Look, float]] = {}  # inode -> deleted path, look, when

    @property
    def waiting(self) -> int:
        """Documents waiting to settle (or ready to be taken)."""
        return len(self._waiting) + len(self._renamed)

    def saw(self, batch: Iterable[Seen], now: float) -> None:
        """Take one batch of changes, each path's look taken after the batch came.

        A path's changes count as one: gone when its look is None; else added when it was added
        or deleted (and is here again: a new file); else modified. Deletions are taken first: a
        rename arrives as the old name deleted and the new one added, in no particular order.
        """
        merged: dict[str, Seen] = {}
        for seen in batch:
            before = merged.get(seen.path)
            if seen.look is None:
                change = Change.DELETED
            elif seen.change is not Change.MODIFIED or (
                before is not None and before.change is Change.ADDED
            ):
                change = Change.ADDED
            else:
                change = Change.MODIFIED
            merged[seen.path] = Seen(change, seen.path, seen.look, seen.candidate)
        self._forget_old_deletions(now)
        for seen in sorted(merged.values(), key=lambda seen: seen.change is not Change.DELETED):
            if seen.change is Change.DELETED:
                self._deleted(seen.path, now)
            else:
                self._present(seen, now)

    def ready(self, now: float, look_again: Callable[[str], Look | None]) -> list[tuple[str, Look]]:
        """The documents written by `now`, each with the look that proved it; they are no
        longer waiting. `look_again(path)` is asked for each path whose quiet time is up."""
        out = list(self._renamed.items())
        self._renamed.clear()
        while self._due and self._due[0][0] <= now:
            _due, path = heapq.heappop(self._due)
            waiting = self._waiting.get(path)
            if waiting is None:
                continue  # sent, renamed or deleted since
            if waiting.quiet_since + self.settle > now:
                self._schedule(path, waiting)  # it changed since this check was planned
                continue
            look = look_again(path)
            if look is None:
                self._deleted(path, now)
            elif (look.size, look.mtime_ns) != (waiting.look.size, waiting.look.mtime_ns):
                waiting.look, waiting.quiet_since = look, now
                self._remember(path, look)
                self._schedule(path, waiting)
            else:
                del self._waiting[path]
                out.append((path, look))
        return out

    def next_check(self) -> float | None:
        """When `ready` may next give something: now for renamed files, None when nothing waits."""
        if self._renamed:
            return float("-inf")
        while self._due and self._due[0][1] not in self._waiting:
            heapq.heappop(self._due)
        return self._due[0][0] if self._due else None

    def _present(self, seen: Seen, now: float) -> None:
        path, look = seen.path, seen.look
        assert look is not None
        renamed = seen.change is Change.ADDED and self._renamed_from(path, look)
        self._remember(path, look)
        if not seen.candidate:
            return
        if renamed:
            self._waiting.pop(path, None)
            self._renamed[path] = look
            return
        waiting = self._waiting.get(path)
        if waiting is None:
            waiting = self._waiting[path] = _Waiting(look, now)
            self._schedule(path, waiting)
        elif not look.same_content_as(waiting.look) or look.ctime_ns != waiting.look.ctime_ns:
            waiting.look, waiting.quiet_since = look, now

    def _renamed_from(self, path: str, look: Look) -> bool:
        gone = self._gone.get(look.inode)
        if gone is not None and gone[0] != path and gone[1].same_content_as(look):
            del self._gone[look.inode]
            return True
        other = self._path_of_inode.get(look.inode)
        if other is None or other == path:
            return False
        before = self._last_look.get(other)
        return before is not None and before.same_content_as(look)

    def _deleted(self, path: str, now: float) -> None:
        self._waiting.pop(path, None)
        self._renamed.pop(path, None)
        look = self._last_look.pop(path, None)
        if look is not None:
            if self._path_of_inode.get(look.inode) == path:
                del self._path_of_inode[look.inode]
            self._gone[look.inode] = (path, look, now)

    def _remember(self, path: str, look: Look) -> None:
        self._last_look[path] = look
        self._path_of_inode[look.inode] = path

    def _schedule(self, path: str, waiting: _Waiting) -> None:
        heapq.heappush(self._due, (waiting.quiet_since + self.settle, path))

    def _forget_old_deletions(self, now: float) -> None:
        if self._gone:
            limit = now - self._rename_memory
            for inode in [i for i, (_p, _l, when) in self._gone.items() if when < limit]:
                del self._gone[inode]
