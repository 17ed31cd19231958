"""The controller's Events, written by a thread of their own.

Takes write functions (each one Event: returns None, or why it could not be written) and a
`Listener`; gives `EventWriter.submit`, which returns at once. An Event is a courtesy to the
operator, so it never holds up a decision: the workers go on to the next Job while the writer
sends, as client-go's event broadcaster does. A failed write is said as a warning; past
`backlog` Events waiting, new ones are dropped and counted (said once a burst). `close` writes
what is waiting, for at most `drain_seconds`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

from harvester.stats import Level, Listener
from harvester.text import plural

Write = Callable[[], str | None]

BACKLOG = 10_000  # Events waiting to be written; more are dropped (and counted)
DRAIN_SECONDS = 5.0


class EventWriter:
    def __init__(
        self,
        listener: Listener,
        *,
        backlog: int = BACKLOG,
        drain_seconds: float = DRAIN_SECONDS,
    ) -> None:
        self._listener = listener
        self._waiting: queue.Queue[Write] = queue.Queue(maxsize=backlog)
        self._drain_seconds = drain_seconds
        self._lock = threading.Lock()
        self._dropped = 0
        self._closing = threading.Event()
        self._deadline = 0.0
        self._thread = threading.Thread(target=self._run, name="events", daemon=True)
        self._thread.start()

    def submit(self, write: Write) -> None:
        try:
            self._waiting.put_nowait(write)
        except queue.Full:
            with self._lock:
                self._dropped += 1
                first = self._dropped == 1
            if first:
                self._listener.notice(
                    Level.WARNING,
                    f"Kubernetes Events: {self._waiting.maxsize} waiting to be written; "
                    "dropping new ones until they are",
                )

    def close(self) -> None:
        """Write what is waiting (for at most `drain_seconds`), then stop."""
        self._deadline = time.monotonic() + self._drain_seconds
        self._closing.set()
        self._thread.join(self._drain_seconds + 1.0)
        left = self._waiting.qsize()
        if left:
            self._listener.notice(
                Level.WARNING, f"Kubernetes Events: {plural(left, 'Event')} not written at stop"
            )

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self) -> None:
        while not (self._closing.is_set() and time.monotonic() > self._deadline):
            try:
                write = self._waiting.get(timeout=0.1)
            except queue.Empty:
                if self._closing.is_set():
                    return
                continue
            with self._lock:
                dropped, self._dropped = self._dropped, 0
            if dropped:
                self._listener.notice(
                    Level.WARNING, f"Kubernetes Events: {plural(dropped, 'Event')} dropped"
                )
            problem = write()
            if problem is not None:
                self._listener.notice(Level.WARNING, f"Kubernetes Event not written: {problem}")
