"""Backoff, jitter, Retry-After and the deadline, asserted through the sleeps asked for."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from harvester.errors import ApiError, GaveUp, Interrupted, RejectedError, RetryableError
from harvester.retry import Retrier, RetryPolicy


class Recorder:
    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self.now = 0.0

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


def failing(
    times: int, error: Exception, result: str = "ok"
) -> tuple[list[int], Callable[[int], str]]:
    calls: list[int] = []

    def operation(attempt: int) -> str:
        calls.append(attempt)
        if len(calls) <= times:
            raise error
        return result

    return calls, operation


def test_succeeds_after_transient_failures_with_growing_jittered_delays() -> None:
    rec = Recorder()
    retrier = Retrier(
        RetryPolicy(retries=3, base_delay=1.0, max_delay=30.0),
        sleep=rec.sleep,
        clock=rec.clock,
        rand=lambda: 1.0,  # the top of the jitter range shows the exponential ceiling
    )
    calls, operation = failing(3, RetryableError("503"))
    assert retrier.call(operation) == "ok"
    assert calls == [1, 2, 3, 4]
    assert rec.sleeps == [1.0, 2.0, 4.0]


def test_full_jitter_draws_from_zero_to_the_ceiling() -> None:
    rec = Recorder()
    retrier = Retrier(RetryPolicy(retries=2, base_delay=2.0), sleep=rec.sleep, rand=lambda: 0.25)
    _calls, operation = failing(2, RetryableError("reset"))
    retrier.call(operation)
    assert rec.sleeps == [0.5, 1.0]


def test_retry_after_is_a_floor_for_the_delay() -> None:
    rec = Recorder()
    retrier = Retrier(RetryPolicy(retries=1, base_delay=0.5), sleep=rec.sleep, rand=lambda: 0.5)
    _calls, operation = failing(1, RetryableError("429", status_code=429, retry_after=7.0))
    retrier.call(operation)
    assert rec.sleeps == [7.0]


def test_gives_up_after_the_bounded_attempts_naming_them() -> None:
    rec = Recorder()
    retrier = Retrier(RetryPolicy(retries=2), sleep=rec.sleep, rand=lambda: 0.0)
    calls, operation = failing(10, RetryableError("500 Internal Server Error", status_code=500))
    with pytest.raises(GaveUp, match="gave up after 3 attempts") as info:
        retrier.call(operation)
    assert calls == [1, 2, 3]
    assert info.value.status_code == 500


def test_deadline_stops_before_a_sleep_that_would_pass_it() -> None:
    rec = Recorder()
    retrier = Retrier(
        RetryPolicy(retries=10, deadline=5.0), sleep=rec.sleep, clock=rec.clock, rand=lambda: 0.0
    )
    _calls, operation = failing(10, RetryableError("429", retry_after=3.0))
    with pytest.raises(GaveUp, match="deadline"):
        retrier.call(operation)
    assert rec.sleeps == [3.0]  # a second 3 s wait would end at 6 s, past the 5 s deadline


def test_permanent_errors_are_not_retried() -> None:
    rec = Recorder()
    retrier = Retrier(RetryPolicy(retries=5), sleep=rec.sleep)
    calls, operation = failing(1, RejectedError("413"))
    with pytest.raises(RejectedError):
        retrier.call(operation)
    assert calls == [1]
    assert rec.sleeps == []


def test_giving_up_is_final_so_an_outer_retrier_does_not_retry_it() -> None:
    rec = Recorder()
    inner = Retrier(RetryPolicy(retries=1), sleep=rec.sleep, rand=lambda: 0.0)
    outer = Retrier(RetryPolicy(retries=3), sleep=rec.sleep, rand=lambda: 0.0)
    last = RetryableError("503", status_code=503)
    calls, operation = failing(10, last)
    with pytest.raises(GaveUp) as info:
        outer.call(lambda _attempt: inner.call(operation))
    assert calls == [1, 2]  # the inner retrier's two attempts, and no more
    assert isinstance(info.value, ApiError)
    assert not isinstance(info.value, RetryableError)
    assert info.value.status_code == 503
    assert info.value.__cause__ is last


def test_a_stop_during_the_wait_ends_the_retries_without_another_attempt() -> None:
    rec = Recorder()
    stop = threading.Event()
    retries: list[float] = []

    def sleep(seconds: float) -> None:
        rec.sleep(seconds)
        stop.set()  # SIGTERM arrives while waiting; stop.wait would return at once

    retrier = Retrier(RetryPolicy(retries=3), sleep=sleep, rand=lambda: 0.0, stop=stop)
    calls, operation = failing(10, RetryableError("503", status_code=503, retry_after=10.0))
    with pytest.raises(Interrupted, match="interrupted") as info:
        retrier.call(operation, on_retry=lambda _n, _err, wait: retries.append(wait))
    assert calls == [1]  # no attempt after the signal
    assert rec.sleeps == [10.0]
    assert retries == [10.0]  # "retrying in 10.0s" said once, not three times
    assert "503" in str(info.value)


def test_a_stop_before_the_wait_neither_announces_nor_sleeps() -> None:
    rec = Recorder()
    stop = threading.Event()
    stop.set()
    retrier = Retrier(RetryPolicy(retries=3), sleep=rec.sleep, stop=stop)
    calls, operation = failing(10, RetryableError("reset"))
    with pytest.raises(Interrupted):
        retrier.call(operation, on_retry=lambda *_args: pytest.fail("announced a retry"))
    assert calls == [1]
    assert rec.sleeps == []
