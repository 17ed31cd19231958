"""Retrying a transient failure: exponential backoff with full jitter, Retry-After, a deadline.

Takes an operation that raises `RetryableError` when it may succeed later; gives its result, or
`GaveUp` (carrying the last error) once the attempts or the overall deadline are spent; any other
error passes through at once. The wait is at least what the server asked for (the error's
`retry_after`, read from Retry-After by the wire client). The clock, the sleep and the random
source are injected so tests can assert the delays asked for without waiting.

A stop (the harvest's stop event, set by SIGTERM) ends the retrying: no retry is announced or
slept for once it is set, and none is made after a sleep it cut short (`stop.wait` returns at
once), so a signal never fires the remaining attempts back to back. The last error then
becomes `Interrupted`.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from harvester.errors import GaveUp, Interrupted, RetryableError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retries: int
    base_delay: float = 0.5
    max_delay: float = 30.0
    deadline: float | None = None  # on the injected clock's scale (time.monotonic by default)


def full_jitter(
    retry_number: int, base_delay: float, max_delay: float, rand: Callable[[], float]
) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(max, base * 2^(n-1))], n from 1."""
    return rand() * min(max_delay, base_delay * 2.0 ** (retry_number - 1))


class Retrier:
    """Runs an operation until it succeeds, fails permanently, or the policy is spent."""

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        sleep: Callable[[float], object] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
        stop: threading.Event | None = None,
    ) -> None:
        self.policy = policy
        self._sleep = sleep
        self._clock = clock
        self._rand = rand
        self._stop = stop

    def delay(self, retry_number: int, error: RetryableError) -> float:
        """Full jitter: uniform in [0, min(max, base * 2^(n-1))], at least what the server asked."""
        jittered = full_jitter(
            retry_number, self.policy.base_delay, self.policy.max_delay, self._rand
        )
        if error.retry_after is not None:
            return max(error.retry_after, jittered)
        return jittered

    def call(
        self,
        operation: Callable[[int], T],
        *,
        on_retry: Callable[[int, RetryableError, float], None] | None = None,
    ) -> T:
        """Call `operation(attempt)` (attempt counts from 1); retry it on `RetryableError`."""
        attempt = 1
        while True:
            try:
                return operation(attempt)
            except RetryableError as error:
                if attempt > self.policy.retries:
                    raise GaveUp(
                        f"{error} (gave up after {attempt} attempts)",
                        status_code=error.status_code,
                    ) from error
                wait = self.delay(attempt, error)
                deadline = self.policy.deadline
                if deadline is not None and self._clock() + wait > deadline:
                    raise GaveUp(
                        f"{error} (gave up after {attempt} attempts: the overall deadline "
                        "would pass before the next one; raise --deadline to wait longer)",
                        status_code=error.status_code,
                    ) from error
                self._check_stop(error)
                if on_retry is not None:
                    on_retry(attempt, error, wait)
                self._sleep(wait)
                self._check_stop(error)
                attempt += 1

    def _check_stop(self, error: RetryableError) -> None:
        if self._stop is not None and self._stop.is_set():
            raise Interrupted(f"{error}; not retried: the harvest was interrupted") from error
