"""Change events of the documents tree, from watchfiles: inotify, polling, and the fallback.

Takes the root, whether to poll (and how often), the event that ends the watch and a `Listener`;
gives, from `Events.get(timeout)`, batches of `(Change, path)` with paths relative to the root as
the operating system names them; `RESCAN` each time the watch is in place (what was written
before raised no event: at start, once the root appeared, after the fallback to polling); and
`CLOSED` once the watch has ended. The only importer of watchfiles.

A thread runs watchfiles' `watch` (its Rust loop wakes every `STEP_MS` to look at the end event,
and hands back an empty batch once a second; nothing else runs while the tree is quiet). When
inotify is refused, as in pods where the per-user instance or watch limit is reached, the watch
goes on by polling, with one warning: watchfiles raises `WatchfilesRustInternalError` "Error
creating recommended watcher: Too many open files (os error 24)" when no inotify instance can be
had, and `OSError` "OS file watch limit reached" when a folder cannot be added (or the same as
"error in underlying watcher: ..." once it runs). A name that is not UTF-8 ends watchfiles'
watch (it cannot make it a string): the watch starts again and the tree is rescanned, with one
warning. `watch_fn` is watchfiles' `watch` unless a test hands in another.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path
from typing import Any

import watchfiles

from harvester.stats import Level, Listener
from harvester.watch.settle import Change

DEBOUNCE_MS = 300  # the longest a batch gathers changes once one came
STEP_MS = 50  # a batch is handed on once no change came for this long
ROOT_CHECK_SECONDS = 1.0  # how often a root that does not exist yet is looked for
ESTABLISHED_TIMEOUT_MS = 1000  # the longest wait for watchfiles' first answer
RESTART_PAUSE = 1.0  # seconds between two restarts after a name watchfiles cannot decode

WatchFn = Callable[..., Iterator[set[tuple[watchfiles.Change, str]]]]

# What says that inotify itself was refused, in watchfiles' errors (see the module docstring).
_REFUSALS = ("too many open files", "os error 24", "watch limit", "no space left", "os error 28")

_CHANGE = {
    watchfiles.Change.added: Change.ADDED,
    watchfiles.Change.modified: Change.MODIFIED,
    watchfiles.Change.deleted: Change.DELETED,
}


class Signal(Enum):
    RESCAN = "rescan"
    CLOSED = "closed"


RESCAN, CLOSED = Signal.RESCAN, Signal.CLOSED
Batch = list[tuple[Change, str]]


class WatchFailed(Exception):
    """The tree cannot be followed at all (polling refused too); the message is a sentence."""


def undecodable_name(error: BaseException) -> bool:
    """Whether `error`, raised by watchfiles, is its refusal of a name that is not UTF-8
    ("Unable to decode path ... to string")."""
    return isinstance(error, RuntimeError) and "unable to decode path" in str(error).lower()


def inotify_refused(error: BaseException) -> bool:
    """Whether `error`, raised by watchfiles, says that inotify was refused (a limit)."""
    # WatchfilesRustInternalError is a RuntimeError; the limits are told apart by their text.
    text = str(error).lower()
    return isinstance(error, (RuntimeError, OSError)) and any(r in text for r in _REFUSALS)


class Events:
    """The watch thread and the queue of what it saw; see the module docstring."""

    def __init__(
        self,
        root: str,
        end: threading.Event,
        listener: Listener,
        *,
        poll: bool,
        poll_interval: float,
        watch_fn: WatchFn = watchfiles.watch,
    ) -> None:
        self._root = str(Path(root).absolute())
        self._prefix = self._root.rstrip("/") + "/"
        self._end = end
        self._listener = listener
        self.polling = poll
        self._poll_ms = max(1, round(poll_interval * 1000))
        self._watch_fn = watch_fn
        self._queue: queue.SimpleQueue[Batch | Signal | WatchFailed] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="watch", daemon=True)
        self._said_undecodable = False

    def start(self) -> None:
        self._thread.start()

    def get(self, timeout: float | None) -> Batch | Signal | None:
        """The next batch or signal; None when `timeout` seconds passed without one. Raises
        `WatchFailed` when the tree cannot be followed."""
        try:
            item = self._queue.get(timeout=None if timeout is None else max(timeout, 0.0))
        except queue.Empty:
            return None
        if isinstance(item, WatchFailed):
            raise item
        return item

    def join(self) -> None:
        """Wait for the watch thread to end (the end event set); at once if it never started."""
        if self._thread.ident is not None:
            self._thread.join()

    def _run(self) -> None:
        try:
            if self._root_appeared():
                self._follow()
        finally:
            self._queue.put(CLOSED)

    def _root_appeared(self) -> bool:
        """Wait for the root (the main container may create it after this sidecar started)."""
        if Path(self._root).is_dir():
            return True
        self._listener.notice(
            Level.INFO, f"{self._root}: does not exist yet; waiting for it to appear"
        )
        while not Path(self._root).is_dir():
            if self._end.wait(ROOT_CHECK_SECONDS):
                return False
        return True

    def _follow(self) -> None:
        while not self._end.is_set():
            established = False
            try:
                for changes in self._watch_fn(self._root, **self._arguments()):
                    if not established:
                        # The first answer (changes, or none within the timeout) shows the
                        # watch in place: what was written before it is looked for once.
                        established = True
                        how = "polling" if self.polling else "inotify"
                        self._listener.notice(
                            Level.INFO, f"{self._root}: following changes ({how})"
                        )
                        self._queue.put(RESCAN)
                    if changes:
                        self._queue.put(self._batch(changes))
                return  # the end event was set
            except (RuntimeError, OSError) as exc:
                if undecodable_name(exc):
                    self._restart_after_undecodable(exc)
                    continue
                if self.polling or not inotify_refused(exc):
                    how = "polling" if self.polling else "inotify"
                    self._queue.put(WatchFailed(f"{self._root}: cannot be followed ({how}: {exc})"))
                    return
                self._listener.notice(
                    Level.WARNING,
                    f"{self._root}: inotify refused ({exc}); following the tree by polling every "
                    f"{self._poll_ms / 1000:g}s instead (as --poll); raise the node's "
                    "fs.inotify.max_user_instances and max_user_watches to avoid this",
                )
                self.polling = True  # and, once in place, a rescan: changes meanwhile raised none

    def _restart_after_undecodable(self, error: BaseException) -> None:
        """watchfiles ends its watch on a name that is not UTF-8 (by inotify and by polling
        alike), dropping that batch: the watch starts again, and once in place the tree is
        rescanned (RESCAN), which finds such files and whatever else the batch held. Said once;
        a name written again and again costs at most one rescan every `RESTART_PAUSE`."""
        if not self._said_undecodable:
            self._said_undecodable = True
            self._listener.notice(
                Level.WARNING,
                f"{self._root}: watchfiles cannot report a file name that is not UTF-8 "
                f"({error}); the tree is rescanned instead each time (such files are sent as "
                "they settle, and by the final pass)",
            )
        self._end.wait(RESTART_PAUSE)

    def _arguments(self) -> dict[str, Any]:
        return {
            # Every name is wanted, editors' temp files too: a rename of one is a document.
            "watch_filter": None,
            "debounce": DEBOUNCE_MS,
            "step": STEP_MS,
            "stop_event": self._end,
            # An empty set once a second when nothing changed: the first shows the watch in
            # place, the others cost a wake-up a second.
            "rust_timeout": ESTABLISHED_TIMEOUT_MS,
            "yield_on_timeout": True,
            "raise_interrupt": False,
            "force_polling": self.polling,
            "poll_delay_ms": self._poll_ms,
            "ignore_permission_denied": True,
        }

    def _batch(self, changes: set[tuple[watchfiles.Change, str]]) -> Batch:
        prefix = self._prefix
        return [
            (_CHANGE[change], path[len(prefix) :])
            for change, path in changes
            if path.startswith(prefix)
        ]
