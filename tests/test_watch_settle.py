"""The settle rule (harvester/watch/settle.py), pure: a clock and the looks are handed in."""

from __future__ import annotations

from harvester.watch.settle import Change, Look, Seen, Settler

SETTLE = 2.0


class Disk:
    """What `look_again` reads: the looks a test sets, None for a path that is gone."""

    def __init__(self) -> None:
        self.looks: dict[str, Look] = {}
        self.asked: list[str] = []

    def __call__(self, path: str) -> Look | None:
        self.asked.append(path)
        return self.looks.get(path)

    def write(self, path: str, size: int, at: int, inode: int = 1) -> Look:
        look = self.looks[path] = Look(size, at, at, inode)
        return look


def test_a_file_is_ready_once_its_size_and_mtime_held_still_for_settle() -> None:
    disk, settler = Disk(), Settler(SETTLE)
    settler.saw([Seen(Change.ADDED, "a.md", disk.write("a.md", 0, 100))], now=0.0)
    settler.saw([Seen(Change.MODIFIED, "a.md", disk.write("a.md", 10, 101))], now=1.0)
    assert settler.next_check() == SETTLE  # planned when it was first seen
    assert settler.ready(2.9, disk) == []  # checked at 2.0: it changed at 1.0, so wait on
    assert settler.next_check() == 1.0 + SETTLE
    assert settler.ready(3.0, disk) == [("a.md", disk.looks["a.md"])]
    assert settler.waiting == 0
    assert settler.next_check() is None


def test_a_change_seen_only_when_the_time_is_up_starts_the_wait_again() -> None:
    """No event for the last write (polling missed it, NFS): the fresh look catches it."""
    disk, settler = Disk(), Settler(SETTLE)
    settler.saw([Seen(Change.ADDED, "a.md", disk.write("a.md", 5, 100))], now=0.0)
    disk.write("a.md", 9, 150)  # written without an event
    assert settler.ready(2.0, disk) == []
    assert settler.next_check() == 2.0 + SETTLE
    assert settler.ready(4.0, disk) == [("a.md", disk.looks["a.md"])]


def test_a_file_deleted_before_it_settled_is_never_ready() -> None:
    disk, settler = Disk(), Settler(SETTLE)
    settler.saw([Seen(Change.ADDED, "draft.md", disk.write("draft.md", 3, 100))], now=0.0)
    settler.saw([Seen(Change.DELETED, "draft.md", None)], now=1.0)
    assert settler.ready(10.0, disk) == []
    assert settler.waiting == 0


def test_a_file_gone_when_looked_at_again_is_dropped() -> None:
    disk, settler = Disk(), Settler(SETTLE)
    settler.saw([Seen(Change.ADDED, "x.md", disk.write("x.md", 3, 100))], now=0.0)
    del disk.looks["x.md"]  # its deletion raised no event
    assert settler.ready(5.0, disk) == []
    assert settler.waiting == 0


def test_a_temp_file_renamed_into_place_is_ready_at_once() -> None:
    disk, settler = Disk(), Settler(SETTLE)
    tmp = disk.write("report.md.tmp", 42, 100, inode=7)
    settler.saw([Seen(Change.ADDED, "report.md.tmp", tmp, candidate=False)], now=0.0)
    # The rename: the old name deleted and the new one added, in one batch, in any order.
    renamed = Look(42, 100, 120, 7)  # a rename changes the ctime only
    settler.saw(
        [Seen(Change.ADDED, "report.md", renamed), Seen(Change.DELETED, "report.md.tmp", None)],
        now=0.1,
    )
    assert settler.next_check() == float("-inf")
    assert settler.ready(0.1, disk) == [("report.md", renamed)]
    assert disk.asked == []  # no wait, no second look


def test_a_rename_whose_deletion_comes_in_the_next_batch_is_ready_at_once() -> None:
    settler = Settler(SETTLE)
    settler.saw([Seen(Change.ADDED, "a.md", Look(5, 100, 100, 3))], now=0.0)
    assert settler.ready(2.0, Disk()) == []  # gone from the test's disk: dropped
    settler.saw([Seen(Change.ADDED, "t.tmp", Look(8, 200, 200, 4), candidate=False)], 3.0)
    settler.saw([Seen(Change.ADDED, "b.md", Look(8, 200, 210, 4))], now=3.1)
    assert [path for path, _look in settler.ready(3.1, Disk())] == ["b.md"]


def test_a_reused_inode_is_not_a_rename() -> None:
    """A temp file deleted, then a new file created on its freed inode: it must settle."""
    disk, settler = Disk(), Settler(SETTLE)
    settler.saw([Seen(Change.ADDED, "x.tmp", Look(42, 100, 100, 7), candidate=False)], 0.0)
    settler.saw([Seen(Change.DELETED, "x.tmp", None)], now=0.5)
    fresh = disk.write("new.md", 0, 130, inode=7)
    settler.saw([Seen(Change.ADDED, "new.md", fresh)], now=0.6)
    assert settler.ready(0.6, disk) == []
    assert settler.ready(0.6 + SETTLE, disk) == [("new.md", fresh)]


def test_an_old_deletion_is_forgotten() -> None:
    settler = Settler(SETTLE, rename_memory=5.0)
    settler.saw([Seen(Change.ADDED, "x.tmp", Look(4, 100, 100, 7), candidate=False)], 0.0)
    settler.saw([Seen(Change.DELETED, "x.tmp", None)], now=1.0)
    settler.saw([Seen(Change.ADDED, "late.md", Look(4, 100, 300, 7))], now=7.0)
    assert settler.ready(7.0, Disk()) == []


def test_names_that_are_not_documents_are_never_ready() -> None:
    disk, settler = Disk(), Settler(SETTLE)
    settler.saw([Seen(Change.ADDED, "a.swp", disk.write("a.swp", 1, 100), candidate=False)], 0)
    assert settler.next_check() is None
    assert settler.ready(100.0, disk) == []


def test_a_file_deleted_and_written_again_in_one_batch_is_new() -> None:
    disk, settler = Disk(), Settler(SETTLE)
    first = disk.write("a.md", 5, 100, inode=1)
    settler.saw([Seen(Change.ADDED, "a.md", first)], now=0.0)
    assert settler.ready(2.0, disk) == [("a.md", first)]
    again = disk.write("a.md", 6, 300, inode=2)
    settler.saw([Seen(Change.DELETED, "a.md", again), Seen(Change.ADDED, "a.md", again)], 3.0)
    assert settler.ready(3.0, disk) == []
    assert settler.ready(5.0, disk) == [("a.md", again)]


def test_ten_thousand_files_settle_together_in_one_check() -> None:
    disk, settler = Disk(), Settler(SETTLE)
    names = [f"d/{i:05}.md" for i in range(10_000)]
    settler.saw(
        [Seen(Change.ADDED, n, disk.write(n, 1, 100, inode=i)) for i, n in enumerate(names)], 0
    )
    assert settler.waiting == 10_000
    ready = settler.ready(SETTLE, disk)
    assert sorted(path for path, _look in ready) == names
    assert settler.waiting == 0
