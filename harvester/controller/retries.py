"""Jobs whose act failed, handled again after a backoff: a level-triggered controller does not
wait for the next change to try again.

Takes `put` (hands a Job to its worker); gives `Retries`: `failed(job)` schedules the Job again
after an exponential backoff with full jitter (1 s, doubling, at most 5 min) and returns the
delay; `seen(job)` keeps the newest version the watch gave of a Job that waits, so it is the one
handled again; `done(job)` forgets it. One thread sleeps until the next one is due.
"""

from __future__ import annotations

import heapq
import random
import threading
import time
from collections.abc import Callable

from harvester.model import MainJob
from harvester.retry import full_jitter

RETRY_BASE = 1.0  # seconds before the first retry, at most
RETRY_MAX = 300.0  # seconds between retries, at most: a Role fixed later is seen within this


class Retries:
    def __init__(
        self,
        put: Callable[[MainJob], None],
        *,
        base: float = RETRY_BASE,
        most: float = RETRY_MAX,
        rand: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._put = put
        self._base, self._most, self._rand, self._clock = base, most, rand, clock
        self._cond = threading.Condition()
        self._failures: dict[str, int] = {}
        self._newest: dict[str, MainJob] = {}
        self._due: list[tuple[float, str]] = []
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="retries", daemon=True)
        self._thread.start()

    def failed(self, job: MainJob) -> float:
        with self._cond:
            failures = self._failures.get(job.uid, 0) + 1
            self._failures[job.uid] = failures
            self._newest.setdefault(job.uid, job)
            delay = full_jitter(failures, self._base, self._most, self._rand)
            heapq.heappush(self._due, (self._clock() + delay, job.uid))
            self._cond.notify_all()
        return delay

    def seen(self, job: MainJob) -> None:
        with self._cond:
            if job.uid in self._newest:
                self._newest[job.uid] = job

    def done(self, job: MainJob) -> None:
        with self._cond:
            self._failures.pop(job.uid, None)
            self._newest.pop(job.uid, None)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._due or self._due[0][0] > self._clock()):
                    wait = self._due[0][0] - self._clock() if self._due else None
                    self._cond.wait(wait)
                if self._closed:
                    return
                _due, uid = heapq.heappop(self._due)
                job = self._newest.pop(uid, None)
            if job is not None:
                self._put(job)
