"""The ledger's group commit (harvester/pipeline/ledger.py) over an in-memory store: the window
is never exceeded, entries are written in batches (a lone one after the linger), a failed
upload gives its slot back, a store that keeps failing turns the ledger off (said once) instead
of holding the uploads, and `close` writes what waits. The ConfigMap store itself is tested on
the real control plane."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from harvester.errors import LedgerError
from harvester.model import LedgerEntry
from harvester.pipeline.ledger import Ledger
from harvester.stats import Level
from tests.volume_support import Notices


class MemoryStore:
    """Keeps entries in a list; `hold` pauses every write until set; `fail` refuses them."""

    where = "memory"

    def __init__(self, entries: Sequence[LedgerEntry] = ()) -> None:
        self.entries = list(entries)
        self.writes: list[int] = []
        self.hold = threading.Event()
        self.hold.set()
        self.fail = False
        self.writing = threading.Event()

    def read(self) -> list[LedgerEntry]:
        return list(self.entries)

    def append(self, entries: Sequence[LedgerEntry]) -> None:
        self.writing.set()
        self.hold.wait(30)
        if self.fail:
            raise LedgerError("ConfigMap keruta-ledger-x: forbidden")
        self.entries.extend(entries)
        self.writes.append(len(entries))


def entry(n: int) -> LedgerEntry:
    return LedgerEntry(f"doc-{n:04d}.md", f"{n:064x}", n, f"id-{n}")


def test_known_is_what_the_store_held_when_it_opened() -> None:
    with Ledger(MemoryStore([entry(1)]), Notices()) as ledger:
        assert ledger.known() == [entry(1)]


def test_the_window_is_never_exceeded_and_entries_go_in_batches() -> None:
    store, window = MemoryStore(), 8
    store.hold.clear()  # the first write waits: the window fills up behind it
    high_water, lock = 0, threading.Lock()

    def upload(n: int) -> None:
        nonlocal high_water
        with ledger.slot() as slot:
            with lock:
                high_water = max(high_water, ledger.unrecorded)
            slot.record(entry(n))

    ledger = Ledger(store, Notices(), window=window, batch=4, linger=10)
    threads = [threading.Thread(target=upload, args=(n,)) for n in range(40)]
    for thread in threads:
        thread.start()
    assert store.writing.wait(10)
    # Writes are held: exactly `window` uploads got a slot, the rest wait for one.
    assert ledger.unrecorded == window
    store.hold.set()
    for thread in threads:
        thread.join(10)
    ledger.close()
    assert sorted(e.path for e in store.entries) == [entry(n).path for n in range(40)]
    assert high_water <= window
    assert sum(store.writes) == 40 and max(store.writes) <= window
    assert len(store.writes) < 40  # group commit: never a write per entry


def test_a_lone_entry_is_written_after_the_linger_and_a_failed_upload_gives_its_slot_back() -> None:
    store = MemoryStore()
    with Ledger(store, Notices(), window=1, linger=0.05) as ledger:
        with ledger.slot():
            pass  # the upload failed: nothing recorded, the slot is free again
        with ledger.slot() as slot:
            slot.record(entry(1))
        done = threading.Event()

        def wait_for_write() -> None:
            with ledger.slot():  # only free once entry 1 was written
                done.set()

        threading.Thread(target=wait_for_write).start()
        assert done.wait(10)
        assert store.entries == [entry(1)]


def test_a_store_that_keeps_failing_turns_the_ledger_off_once() -> None:
    store, notices, sleeps = MemoryStore(), Notices(), list[float]()
    store.fail = True
    ledger = Ledger(store, notices, window=2, batch=1, attempts=3, sleep=sleeps.append)
    for n in range(5):  # never blocked for long: the ledger turns off instead
        with ledger.slot() as slot:
            slot.record(entry(n))
    ledger.close()
    assert not ledger.on and store.entries == []
    assert sleeps[:2] == [0.5, 1.0]  # backing off between attempts
    warnings = [text for level, text in notices.lines if level is Level.WARNING]
    final = [text for text in warnings if "none will be" in text]
    assert len(final) == 1 and "listing and Idempotency-Key" in final[0]


def test_close_writes_what_waits() -> None:
    store = MemoryStore()
    ledger = Ledger(store, Notices(), linger=3600)
    with ledger.slot() as slot:
        slot.record(entry(7))
    ledger.close()
    assert store.entries == [entry(7)] and ledger.written == 1


def test_a_window_of_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Ledger(MemoryStore(), Notices(), window=0)


def test_a_store_that_breaks_unexpectedly_turns_the_ledger_off_instead_of_holding_the_slots() -> (
    None
):
    class Broken(MemoryStore):
        def append(self, entries: Sequence[LedgerEntry]) -> None:
            raise RuntimeError("a bug in the store")

    notices = Notices()
    ledger = Ledger(Broken(), notices, window=1, batch=1, attempts=1)
    for n in range(3):  # with a window of 1, a dead writer would hold the second slot forever
        with ledger.slot() as slot:
            slot.record(entry(n))
    ledger.close()
    assert not ledger.on
    assert any("RuntimeError: a bug in the store" in text for _level, text in notices.lines)
