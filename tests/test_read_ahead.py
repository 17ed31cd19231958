"""A small file is read once: the upload sends the content its hashing read (issue 13).

Shown with the kernel's own count of opens (inotify's IN_OPEN on the folder, through ctypes) on
a real harvest into a real dev-api: a small file is opened once, a file streamed in chunks twice.
Also: the feed's bound on content waiting for its upload, with real threads; and the content
`hash_entries` hands on. A file changed between its hash and its upload is sent as it is now:
tests/test_harvest.py (`test_a_file_changed_after_hashing_is_hashed_again_and_sent_whole`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import struct
import threading
from collections import Counter
from concurrent.futures import Future
from pathlib import Path

import pytest

from harvester.devapi.server import DevApiServer
from harvester.exitcodes import ExitCode, exit_code_for
from harvester.harvest import run_harvest
from harvester.model import Action, Digest, Failed, FileEntry, PlanItem
from harvester.pipeline.digest import hash_entries
from harvester.pipeline.rootfs import WHOLE_UPLOAD_MAX_SIZE, RootDir
from harvester.pipeline.scan import ScanOptions, scan
from harvester.pipeline.upload import UploadFeed
from harvester.stats import NullListener
from tests.fstree import write_tree
from tests.test_harvest import Sleeps, settings_for

# Only a regression waits this long; the test then fails.
GUARD_SECONDS = 30
_IN_OPEN = 0x20
_IN_NONBLOCK = os.O_NONBLOCK
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then the name


class Opens:
    """The files opened in `folder` from now on, counted by the kernel (inotify IN_OPEN)."""

    def __init__(self, folder: Path) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self._fd = libc.inotify_init1(_IN_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            pytest.skip(f"inotify unavailable: {os.strerror(ctypes.get_errno())}")
        if libc.inotify_add_watch(self._fd, os.fsencode(folder), _IN_OPEN) < 0:
            os.close(self._fd)
            pytest.skip(f"inotify watch refused: {os.strerror(ctypes.get_errno())}")

    def counted(self) -> Counter[str]:
        """Opens per file name so far (the folder's own opens, by the scan, have no name)."""
        opens: Counter[str] = Counter()
        data = b""
        while True:
            try:
                data += os.read(self._fd, 65536)
            except BlockingIOError:
                break
        offset = 0
        while offset < len(data):
            _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            offset += _EVENT.size
            name = data[offset : offset + length].rstrip(b"\0").decode()
            offset += length
            if mask & _IN_OPEN and name:
                opens[name] += 1
        return opens

    def close(self) -> None:
        os.close(self._fd)


@pytest.mark.timeout(60)
def test_a_small_file_is_opened_once_and_a_streamed_one_twice(
    tmp_path: Path, dev_api: DevApiServer
) -> None:
    small = b"a small document\n" * 200
    large = bytes(range(256)) * ((WHOLE_UPLOAD_MAX_SIZE + 4096) // 256)
    root = write_tree(tmp_path / "doc", {"d/small.md": small, "d/large.bin": large})
    opens = Opens(root / "d")
    try:
        report = run_harvest(settings_for(root, dev_api.url), NullListener(), sleep=Sleeps())
        counted = opens.counted()
    finally:
        opens.close()

    assert exit_code_for(report.report) is ExitCode.OK
    stored = {doc.path: doc.sha256 for doc in dev_api.store.documents("task-42")}
    assert stored == {
        "d/small.md": hashlib.sha256(small).hexdigest(),
        "d/large.bin": hashlib.sha256(large).hexdigest(),
    }
    assert counted == {"small.md": 1, "large.bin": 2}


def _item(name: str, size: int) -> PlanItem:
    return PlanItem(name, Action.UPLOAD, size)


@pytest.mark.timeout(60)
def test_the_feed_holds_no_more_content_than_its_budget_and_put_waits_for_room() -> None:
    feed = UploadFeed(NullListener(), content_budget=2048)
    feed.put(_item("a", 1024), b"a" * 1024)
    feed.put(_item("b", 1024), b"b" * 1024)
    put_third = threading.Thread(target=feed.put, args=(_item("c", 1024), b"c" * 1024))
    put_third.start()
    put_third.join(0.2)
    assert put_third.is_alive(), "a put past the budget did not wait"

    taken = iter(feed)
    first_item, first_content = next(taken)  # makes room for the third
    put_third.join(GUARD_SECONDS)
    assert not put_third.is_alive(), "taking content did not make room"
    feed.close()
    rest = [(item.rel_path, content) for item, content in taken]
    assert (first_item.rel_path, first_content) == ("a", b"a" * 1024)
    assert rest == [("b", b"b" * 1024), ("c", b"c" * 1024)]


@pytest.mark.timeout(60)
def test_content_larger_than_the_budget_waits_only_for_an_empty_feed_and_none_never_waits() -> None:
    feed = UploadFeed(NullListener(), content_budget=100)
    feed.put(_item("huge", 1000), b"h" * 1000)  # alone: goes in
    feed.put(_item("plain", 10))  # no content: never waits
    feed.close()
    assert [(item.rel_path, content) for item, content in feed] == [
        ("huge", b"h" * 1000),
        ("plain", None),
    ]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["cancelled", "a worker failed"])
def test_a_put_waiting_for_room_is_let_go_when_nobody_will_take(how: str) -> None:
    feed = UploadFeed(NullListener(), content_budget=10)
    feed.put(_item("a", 10), b"a" * 10)
    put_second = threading.Thread(target=feed.put, args=(_item("b", 10), b"b" * 10))
    put_second.start()
    put_second.join(0.2)
    assert put_second.is_alive(), "a put past the budget did not wait"
    if how == "cancelled":
        feed.cancel()
    else:
        worker: Future[None] = Future()
        worker.set_exception(RuntimeError("a bug in a worker"))
        feed.cancel_if_failed(worker)
    put_second.join(GUARD_SECONDS)
    assert not put_second.is_alive()
    assert list(feed) == []


def test_a_worker_that_ended_well_leaves_the_feed_open() -> None:
    feed = UploadFeed(NullListener())
    worker: Future[None] = Future()
    worker.set_result(None)
    feed.cancel_if_failed(worker)
    feed.put(_item("a", 1), b"a")
    feed.close()
    assert [item.rel_path for item, _content in feed] == ["a"]


def test_hash_entries_hands_on_the_content_of_files_up_to_the_size_asked(tmp_path: Path) -> None:
    files = {"a.txt": b"x" * 100, "b.txt": b"y" * 101, "c.txt": b""}
    root = write_tree(tmp_path / "doc", files)
    entries = scan(str(root), ScanOptions()).entries
    told: dict[str, tuple[str, bytes | None]] = {}

    def on_result(index: int, result: Digest | Failed, content: bytes | None) -> None:
        assert isinstance(result, Digest)
        told[entries[index].rel_path] = (result.sha256, content)

    with RootDir(str(root)) as opened:
        hash_entries(opened, entries, workers=2, on_result=on_result, content_up_to=100)
        assert told == {
            "a.txt": (hashlib.sha256(files["a.txt"]).hexdigest(), files["a.txt"]),
            "b.txt": (hashlib.sha256(files["b.txt"]).hexdigest(), None),
            "c.txt": (hashlib.sha256(b"").hexdigest(), b""),
        }
        told.clear()
        hash_entries(opened, entries, workers=2, on_result=on_result)
        assert {path: content for path, (_sha, content) in told.items()} == dict.fromkeys(files)


def test_hash_entries_refuses_content_past_one_read(tmp_path: Path) -> None:
    with RootDir(str(tmp_path)) as opened, pytest.raises(ValueError, match="one read"):
        entries: list[FileEntry] = []
        hash_entries(opened, entries, workers=1, content_up_to=2**40)


@pytest.mark.timeout(60)
def test_one_streamed_document_at_a_time_while_the_small_ones_go_on() -> None:
    large = WHOLE_UPLOAD_MAX_SIZE + 1
    feed = UploadFeed(NullListener(), streams=1)
    for name in ("big-a", "big-b"):
        feed.put(_item(name, large))
    for name in ("s1", "s2"):
        feed.put(_item(name, 10), b"x" * 10)
    taken = iter(feed)
    order = [next(taken)[0].rel_path for _ in range(3)]
    assert order == ["big-a", "s1", "s2"], "a second stream started, or the small ones waited"

    after: list[str] = []
    waiting = threading.Thread(target=lambda: after.append(next(taken)[0].rel_path))
    waiting.start()
    waiting.join(0.2)
    assert waiting.is_alive(), "big-b started while big-a was still streaming"
    feed.finished(_item("s1", 10))  # a small one ending frees no stream
    waiting.join(0.2)
    assert waiting.is_alive()
    feed.finished(_item("big-a", large))
    waiting.join(GUARD_SECONDS)
    assert after == ["big-b"]
    feed.close()
    assert list(taken) == []


@pytest.mark.timeout(90)
def test_a_harvest_of_several_large_files_and_small_ones_sends_each_once(
    tmp_path: Path, dev_api: DevApiServer
) -> None:
    size = WHOLE_UPLOAD_MAX_SIZE + 4096
    files: dict[str, bytes | str] = {f"big/{n}.bin": bytes([n]) * size for n in range(3)}
    files.update({f"small/{n}.md": f"note {n}\n" for n in range(20)})
    root = write_tree(tmp_path / "doc", files)

    report = run_harvest(settings_for(root, dev_api.url), NullListener(), sleep=Sleeps())

    assert exit_code_for(report.report) is ExitCode.OK
    stored = sorted((doc.path, doc.sha256) for doc in dev_api.store.documents("task-42"))
    expected = {p: c.encode() if isinstance(c, str) else c for p, c in files.items()}
    assert stored == sorted((p, hashlib.sha256(c).hexdigest()) for p, c in expected.items())
