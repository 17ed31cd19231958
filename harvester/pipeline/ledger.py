"""The ledger of accepted uploads, written by group commit: a crash re-sends at most a window.

Takes a `LedgerStore` (where entries live and survive the pod: ConfigMaps owned by the PVC,
`harvester.kube.ledger`) and a `Listener`; gives `Ledger`:

- `known()`: every entry recorded so far, by any run (read once, when the ledger opens);
- `slot()`: a context manager each upload holds from before its request until the server's
  acknowledgement is recorded. Taking one blocks while `window` slots are taken, so at no moment
  are more than `window` documents in flight or acknowledged but not yet recorded, and a
  SIGKILL re-sends at most `window` documents (none where the server honours Idempotency-Key);
- `Slot.record(entry)` once the server acknowledged that very document; a slot left without a
  record (the upload failed) is given back at once;
- `close()`: writes what waits, then stops.

A thread writes the waiting entries in batches (group commit): as soon as `batch` wait, or
`linger` seconds after the first one came, or at once when someone waits for a slot; never one
write per file, never only at the end. A write that fails is tried again (`attempts` in all,
backing off); once a write fails for good the ledger turns off with one warning: slots no longer
wait, nothing more is recorded, and re-runs rely on the server's listing and Idempotency-Key.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

from harvester.errors import LedgerError
from harvester.model import LedgerEntry
from harvester.stats import Level, Listener

WINDOW = 64  # documents in flight or acknowledged but unrecorded, at most
BATCH = 32  # entries that start a write without waiting for the linger
LINGER = 0.5  # seconds an entry waits for others before it is written anyway
ATTEMPTS = 4  # writes of one batch before the ledger turns off
BACKOFF = 0.5  # seconds before the second attempt; doubled each time


class LedgerStore(Protocol):
    """Where the ledger's entries are kept (`harvester.kube.ledger.ConfigMapLedger`).

    `where` names it for people ("ConfigMaps keruta-ledger-… owned by PVC ns/pvc-123").
    `read` gives every entry written so far, by any writer; `append` adds entries without
    losing any other writer's (optimistic concurrency); both raise `LedgerError` with a
    sentence when they cannot.
    """

    where: str

    def read(self) -> list[LedgerEntry]: ...

    def append(self, entries: Sequence[LedgerEntry]) -> None: ...


class Slot:
    """One upload's place in the window; see `Ledger.slot`."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self.recorded = False

    def record(self, entry: LedgerEntry) -> None:
        """The server acknowledged this document: queue its entry (the slot stays taken until
        the entry is written)."""
        if not self.recorded:
            self.recorded = True
            self._ledger._queue(entry)


class Ledger:
    def __init__(
        self,
        store: LedgerStore,
        listener: Listener,
        *,
        window: int = WINDOW,
        batch: int = BATCH,
        linger: float = LINGER,
        attempts: int = ATTEMPTS,
        backoff: float = BACKOFF,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        if window < 1 or batch < 1:
            raise ValueError("a ledger needs a window and a batch of at least 1")
        self.store = store
        self._listener = listener
        self._window, self._batch, self._linger = window, batch, linger
        self._attempts, self._backoff, self._sleep = attempts, backoff, sleep
        self._cond = threading.Condition()
        self._taken = 0  # slots held: uploads in flight, entries waiting or being written
        self._waiting: list[LedgerEntry] = []
        self._first_waiting_at = 0.0
        self._someone_blocked = False
        self._closing = False
        self._off = False
        self.written = 0  # entries this ledger wrote
        self._known = store.read()
        self._thread = threading.Thread(target=self._write_loop, name="ledger", daemon=True)
        self._thread.start()

    @property
    def on(self) -> bool:
        """False once a write failed for good: nothing more is recorded."""
        return not self._off

    @property
    def unrecorded(self) -> int:
        """Slots taken now: documents in flight, or acknowledged and not yet written."""
        with self._cond:
            return self._taken

    def known(self) -> list[LedgerEntry]:
        """The entries recorded before this ledger opened (by any run)."""
        return list(self._known)

    @contextmanager
    def slot(self) -> Iterator[Slot]:
        with self._cond:
            while self._taken >= self._window and not self._off:
                self._someone_blocked = True
                self._cond.notify_all()
                self._cond.wait()
            self._taken += 1
        slot = Slot(self)
        try:
            yield slot
        finally:
            if not slot.recorded:
                self._give_back(1)

    def close(self) -> None:
        """Write every waiting entry (with the usual retries), then stop the writer."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _queue(self, entry: LedgerEntry) -> None:
        with self._cond:
            if self._off:
                self._taken -= 1
                self._cond.notify_all()
                return
            if not self._waiting:
                self._first_waiting_at = time.monotonic()
            self._waiting.append(entry)
            if len(self._waiting) >= self._batch:
                self._cond.notify_all()

    def _give_back(self, count: int) -> None:
        with self._cond:
            self._taken -= count
            self._cond.notify_all()

    def _next_batch(self) -> list[LedgerEntry] | None:
        """Wait until a batch is due; None once closing with nothing left."""
        with self._cond:
            while True:
                if self._waiting:
                    due = self._first_waiting_at + self._linger - time.monotonic()
                    if (
                        self._closing
                        or self._someone_blocked
                        or len(self._waiting) >= self._batch
                        or due <= 0
                    ):
                        batch, self._waiting = self._waiting, []
                        self._someone_blocked = False
                        return batch
                    self._cond.wait(due)
                elif self._closing:
                    return None
                else:
                    self._cond.wait()

    def _write_loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            if self._write(batch):
                self.written += len(batch)
            self._give_back(len(batch))

    def _write(self, batch: list[LedgerEntry]) -> bool:
        delay = self._backoff
        for attempt in range(1, self._attempts + 1):
            try:
                self.store.append(batch)
                return True
            except Exception as exc:  # noqa: BLE001 - a writer that died would hold every slot
                if not isinstance(exc, LedgerError):
                    exc = LedgerError(f"{type(exc).__name__}: {exc}")
                if attempt == self._attempts:
                    self._turn_off(exc, len(batch))
                    return False
                self._listener.notice(
                    Level.WARNING,
                    f"ledger: {exc}; writing {len(batch)} entries again in {delay:.1f}s",
                )
                self._sleep(delay)
                delay *= 2
        return False

    def _turn_off(self, problem: LedgerError, lost: int) -> None:
        with self._cond:
            self._off = True
            dropped = len(self._waiting)
            self._waiting = []
            self._taken -= dropped
            self._cond.notify_all()
        self._listener.notice(
            Level.WARNING,
            f"ledger ({self.store.where}): {problem}; {lost + dropped} acknowledged documents "
            "not recorded and none will be: a re-run relies on keruta-api's listing and "
            "Idempotency-Key",
        )
