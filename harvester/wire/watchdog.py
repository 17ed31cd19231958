"""The watchdog: ends the requests in flight that stall, pass their time limit, or a stop's grace.

Takes --timeout, the overall --deadline, the harvest's stop event, a clock, and the connections
whose requests it watches (anything `Watched`: when its request began, which request that is,
the bytes it has moved, and `end`, which shuts its socket); gives `Watchdog` (`register`,
`wake`, `close`) and why a request was ended (`End`, raised to the caller as `CutShort`, or by
the connection as `Stalled` for `End.STALLED`).

The limits (the transport's docstring says why): a request that moves no byte for --timeout
ends (`End.STALLED`); one that moves, but slowly, may take --timeout plus one second per
`MIN_RATE` bytes it has moved (`End.LIMIT`, at a look that saw it move: one found waiting is
left to the stall rule, so that the error names the wait and its phase); none runs past the
--deadline, nor longer than `STOP_GRACE` seconds once the stop event is set. The sockets have
no timeout of their own once connected (CPython's is a poll() before every send and recv), so
the watchdog is what bounds a wait: it looks every `_INTERVAL`, keeps per connection the byte
count it last saw and the look that first saw it, and ends a request whose count has not
changed for --timeout. A stall is therefore ended at least --timeout after the last byte moved
and at most two looks (2 × `_INTERVAL`) later: within one look after --timeout from the look
that saw that byte.
Sync sockets have no cancel, so the watchdog shuts the request's socket down from its own
thread; the thread runs while requests are in flight and ends after `_IDLE` without one.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

KIB = 1024
MIB = 1024 * KIB
# What a request must average, after its first --timeout, to go on: 1 Mbit/s. Slower than this,
# a 100 MB document would take a quarter of an hour; a trickling server is far below it.
MIN_RATE = 128 * KIB
# How long a request in flight may still take after a stop (SIGTERM): one about to finish does;
# Kubernetes' default grace before SIGKILL (30 s) leaves ample room for the summary after it.
STOP_GRACE = 2.0
_INTERVAL = 0.25  # how often the watchdog looks at the requests in flight
_IDLE = 5.0  # its thread ends after this long without a request


class End(Enum):
    """Why the watchdog ended a request."""

    STALLED = "stalled"  # no byte moved for --timeout
    LIMIT = "limit"  # slower than MIN_RATE after its first --timeout
    DEADLINE = "deadline"  # the overall --deadline passed
    STOP = "stop"  # the harvest was stopped, and STOP_GRACE passed


class CutShort(Exception):
    """The watchdog ended the request: `why`, after `elapsed` seconds."""

    def __init__(self, why: End, elapsed: float) -> None:
        super().__init__(f"ended by the watchdog ({why.value}) after {elapsed:.1f}s")
        self.why = why
        self.elapsed = elapsed


class Watched(Protocol):
    """A connection as the watchdog sees it. `started` is None between requests; `serial`
    changes with every request (it is written after `started` and the reset of `moved`)."""

    @property
    def serial(self) -> int: ...

    @property
    def started(self) -> float | None: ...

    @property
    def moved(self) -> int: ...

    def end(self, serial: int, why: End, now: float) -> None: ...

    def drop(self) -> None: ...


class Watchdog:
    """Ends the requests in flight that pass their limit, or a stop's grace, from one thread.

    It knows the connections of its transport weakly: one whose thread ended goes with it.
    """

    def __init__(
        self,
        *,
        timeout: float,
        deadline: float | None,
        stop: threading.Event,
        clock: Callable[[], float],
    ) -> None:
        self._timeout = timeout
        self._deadline = deadline
        self._stop = stop
        self._clock = clock
        self._watched: weakref.WeakSet[Watched] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._running = False
        self._closed = threading.Event()
        self._stopped_at: float | None = None

    def register(self, watched: Watched) -> None:
        with self._lock:
            self._watched.add(watched)

    def wake(self) -> None:
        """Make sure the thread runs: a request has just begun (its `started` is set)."""
        if self._running:
            return
        with self._lock:
            if self._running:
                return
            self._running = True
            self._closed.clear()
            threading.Thread(target=self._run, name="keruta-api-watchdog", daemon=True).start()

    def close(self) -> None:
        """End the thread and close every connection it knows."""
        self._closed.set()
        with self._lock:
            watched = list(self._watched)
        for connection in watched:
            connection.drop()

    def _run(self) -> None:
        idle_since = self._clock()
        # Only this thread reads or writes it: a connection's progress as the looks saw it.
        seen: weakref.WeakKeyDictionary[Watched, _Progress] = weakref.WeakKeyDictionary()
        while not self._closed.wait(_INTERVAL):
            now = self._clock()
            with self._lock:
                watched = list(self._watched)
            busy = False
            for connection in watched:
                # serial first: a request writes started before serial, so a new serial never
                # comes with the previous request's start (nor, since moved is reset before
                # serial too, with its byte count).
                serial, started = connection.serial, connection.started
                if started is None:
                    continue
                busy = True
                moved = connection.moved
                progress = seen.get(connection)
                if progress is None or progress.serial != serial:
                    # Nothing moved yet: nothing moved since the request began. Else the bytes
                    # moved at some time before this look, taken as now: never ended early.
                    since = started if moved == 0 else now
                    progress = seen[connection] = _Progress(serial, moved, since, moving=False)
                elif progress.moved != moved:
                    progress.moved, progress.since, progress.moving = moved, now, True
                else:
                    progress.moving = False
                why = self._why_end(started, progress, now)
                if why is not None:
                    connection.end(serial, why, now)
            if busy:
                idle_since = now
            elif now - idle_since > _IDLE:
                with self._lock:
                    # A request that began since the look above keeps the thread.
                    if not any(c.started is not None for c in self._watched):
                        self._running = False
                        return
        with self._lock:
            self._running = False

    def _why_end(self, started: float, progress: _Progress, now: float) -> End | None:
        if self._stop.is_set():
            if self._stopped_at is None:
                self._stopped_at = now
            if now >= self._stopped_at + STOP_GRACE:
                return End.STOP
        if self._deadline is not None and now >= self._deadline:
            return End.DEADLINE
        if now - progress.since >= self._timeout:
            return End.STALLED
        # The rate limit is for a request that moves, slowly. One that did not move since the
        # last look is waiting: it is ended as STALLED --timeout after its last byte (within two
        # looks), so that the message names the wait and its phase, not a rate.
        if progress.moving and now - started > self._timeout + progress.moved / MIN_RATE:
            return End.LIMIT
        return None


@dataclass(slots=True)
class _Progress:
    """A request's byte count as the watchdog last saw it: `since` the look that first saw it
    (or the request's start, for a count still 0); `moving` if that was the latest look."""

    serial: int
    moved: int
    since: float
    moving: bool
