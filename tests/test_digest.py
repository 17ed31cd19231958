"""digest: hashing real files in tmp_path, including files that change or are swapped under it."""

from __future__ import annotations

import fcntl
import hashlib
import os
import random
import threading
import time
from pathlib import Path

import pytest

from harvester.errors import FileChanged, FileProblem, NotRegularFile
from harvester.model import Digest, Failed, FileEntry
from harvester.pipeline.digest import hash_entries, hash_file, sha256_of_fd
from harvester.pipeline.rootfs import CHUNK_SIZE, Folders, RootDir
from harvester.pipeline.scan import ScanOptions, scan
from harvester.stats import Level, Stage
from tests.fstree import (
    make_fifo,
    make_socket,
    make_world_readable,
    no_access,
    run_unprivileged,
    write_bytes_name,
    write_tree,
)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entries_of(root: Path) -> dict[str, FileEntry]:
    return {entry.rel_path: entry for entry in scan(str(root), ScanOptions()).entries}


def no_pause(seconds: float) -> None:
    raise AssertionError(f"an unexpected pause of {seconds} s: the first read was not stable")


class Recorder:
    """A listener that writes down what it hears (from any thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started: list[tuple[Stage, int, int]] = []
        self.files = 0
        self.nbytes = 0
        self.failures: list[tuple[str, str]] = []
        self.notices: list[tuple[Level, str]] = []
        self.finished: list[Stage] = []

    def stage_started(self, stage: Stage, files: int, nbytes: int) -> None:
        self.started.append((stage, files, nbytes))

    def stage_grew(self, stage: Stage, files: int, nbytes: int) -> None:
        raise AssertionError(f"the hash stage's {stage} grew")

    def advanced(self, stage: Stage, files: int = 0, nbytes: int = 0) -> None:
        assert stage is Stage.HASH
        with self.lock:
            self.files += files
            self.nbytes += nbytes

    def file_failed(self, rel_path: str, message: str, stage: Stage | None = None) -> None:
        assert stage is Stage.HASH
        with self.lock:
            self.failures.append((rel_path, message))

    def notice(self, level: Level, message: str) -> None:
        self.notices.append((level, message))

    def stage_finished(self, stage: Stage) -> None:
        self.finished.append(stage)


# -- hash_file ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 5 * CHUNK_SIZE // 2]
)
def test_sha256_matches_hashlib(tmp_path: Path, size: int) -> None:
    data = random.Random(size).randbytes(size)
    write_tree(tmp_path, {"d/file.bin": data})
    entry = entries_of(tmp_path)["d/file.bin"]
    chunks: list[int] = []
    with RootDir(str(tmp_path)) as root:
        digest = hash_file(root, entry, pause=no_pause, progress=chunks.append)
    stat = (tmp_path / "d" / "file.bin").stat()
    assert digest == Digest(
        entry, sha(data), size, entry.mtime_ns, ctime_ns=stat.st_ctime_ns, inode=stat.st_ino
    )
    assert sum(chunks) == size
    assert all(chunk <= CHUNK_SIZE for chunk in chunks)


def test_sha256_of_fd_reads_from_the_offset_to_the_end(tmp_path: Path) -> None:
    write_tree(tmp_path, {"f": b"header|body"})
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        os.lseek(fd, 7, os.SEEK_SET)
        assert sha256_of_fd(fd) == (sha(b"body"), 4)
    finally:
        os.close(fd)


def test_sha256_of_fd_stops_at_its_limit(tmp_path: Path) -> None:
    data = random.Random(1).randbytes(CHUNK_SIZE + 10)
    write_tree(tmp_path, {"f": data})
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        assert sha256_of_fd(fd, limit=CHUNK_SIZE + 3) == (
            sha(data[: CHUNK_SIZE + 3]),
            CHUNK_SIZE + 3,
        )
    finally:
        os.close(fd)


def test_sha256_of_fd_small_reads_on_after_a_short_read() -> None:
    # A pipe reads short where a regular file would not: the one-read path for small files
    # must then read on, to the end, rather than hash what its first read gave.
    read_end, write_end = os.pipe()
    os.write(write_end, b"abcd")

    def write_the_rest() -> None:
        time.sleep(0.05)  # most likely after the first read; the result is the same either way
        os.write(write_end, b"ef")
        os.close(write_end)

    writer = threading.Thread(target=write_the_rest)
    writer.start()
    try:
        assert sha256_of_fd(read_end, limit=11, size=10) == (sha(b"abcdef"), 6)
    finally:
        writer.join()
        os.close(read_end)


def test_sha256_of_fd_small_stops_one_byte_past_the_size(tmp_path: Path) -> None:
    write_tree(tmp_path, {"f": b"grown beyond"})
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        assert sha256_of_fd(fd, limit=6, size=5) == (sha(b"grown "), 6)
    finally:
        os.close(fd)


def test_changed_since_the_scan_but_stable_is_hashed_as_it_is_now(tmp_path: Path) -> None:
    write_tree(tmp_path, {"report.md": "first draft"})
    entry = entries_of(tmp_path)["report.md"]
    (tmp_path / "report.md").write_bytes(b"the final, longer version")
    os.utime(tmp_path / "report.md", ns=(entry.mtime_ns, entry.mtime_ns + 5_000_000_000))
    with RootDir(str(tmp_path)) as root:
        digest = hash_file(root, entry, pause=no_pause)
    assert digest.entry == entry
    assert digest.sha256 == sha(b"the final, longer version")
    assert digest.size == len(b"the final, longer version")
    assert digest.mtime_ns == entry.mtime_ns + 5_000_000_000


def test_undecodable_name_is_hashed_and_named_readably(tmp_path: Path) -> None:
    write_bytes_name(tmp_path, b"bad\xffname.txt", b"odd bytes")
    entry = entries_of(tmp_path)["bad%FFname.txt"]
    with RootDir(str(tmp_path)) as root:
        assert hash_file(root, entry, pause=no_pause).sha256 == sha(b"odd bytes")
        os.remove(os.path.join(os.fsencode(tmp_path), b"bad\xffname.txt"))
        with pytest.raises(FileProblem) as caught:
            hash_file(root, entry, pause=no_pause)
    assert str(caught.value) == "bad%FFname.txt: disappeared after the scan"


def test_file_gone_after_the_scan_is_a_file_problem(tmp_path: Path) -> None:
    write_tree(tmp_path, {"gone.txt": "x"})
    entry = entries_of(tmp_path)["gone.txt"]
    (tmp_path / "gone.txt").unlink()
    with RootDir(str(tmp_path)) as root, pytest.raises(FileProblem, match="disappeared") as caught:
        hash_file(root, entry, pause=no_pause)
    assert not isinstance(caught.value, NotRegularFile)


# -- swapped after the scan ---------------------------------------------------------------------


def swap_target(tmp_path: Path) -> tuple[Path, FileEntry]:
    root = write_tree(tmp_path / "root", {"docs/a.txt": "real", "other.txt": "other"})
    write_tree(tmp_path / "outside", {"secret.txt": "secret"})
    entry = entries_of(root)["docs/a.txt"]
    (root / "docs" / "a.txt").unlink()
    return root, entry


@pytest.mark.timeout(10)
@pytest.mark.parametrize("kind", ["link-outside", "link-inside", "fifo", "socket", "folder"])
def test_file_swapped_after_the_scan_is_refused_without_blocking(tmp_path: Path, kind: str) -> None:
    root, entry = swap_target(tmp_path)
    target = root / "docs" / "a.txt"
    if kind == "link-outside":
        target.symlink_to(tmp_path / "outside" / "secret.txt")
    elif kind == "link-inside":
        target.symlink_to("../other.txt")
    elif kind == "fifo":
        make_fifo(target)  # a blocking open would hang here; the timeout would catch it
    elif kind == "socket":
        make_socket(target)
    else:
        target.mkdir()
    with RootDir(str(root)) as root_dir, pytest.raises(NotRegularFile, match=r"^docs/a\.txt: "):
        hash_file(root_dir, entry, pause=no_pause)


def test_folder_on_the_path_swapped_for_a_link_is_refused(tmp_path: Path) -> None:
    root, entry = swap_target(tmp_path)
    (tmp_path / "outside" / "a.txt").write_text("outside")
    (root / "docs").rename(root / "docs-moved")
    (root / "docs").symlink_to(tmp_path / "outside", target_is_directory=True)
    with RootDir(str(root)) as root_dir, pytest.raises(NotRegularFile, match="symbolic link"):
        hash_file(root_dir, entry, pause=no_pause)


# -- a folder held open for the next file (rootfs.Folders) --------------------------------------


def test_files_read_through_held_folders_hash_as_read_from_the_root(tmp_path: Path) -> None:
    contents = {"a/1.txt": b"one", "a/2.txt": b"two", "b/c/3.txt": b"three", "top.txt": b"top"}
    write_tree(tmp_path, contents)
    entries = entries_of(tmp_path)
    with RootDir(str(tmp_path)) as root, Folders() as folders:
        held = [hash_file(root, e, pause=no_pause, folders=folders) for e in entries.values()]
        fresh = [hash_file(root, e, pause=no_pause) for e in entries.values()]
    assert held == fresh
    assert [d.sha256 for d in held] == [sha(contents[path]) for path in entries]


def test_a_file_opened_below_the_root_reads_blocking_with_no_flag_left(tmp_path: Path) -> None:
    """Opened with O_NONBLOCK (a FIFO swapped in must not hang the open), then made blocking:
    its status flags are those os.set_blocking would have left."""
    write_tree(tmp_path, {"d/a.txt": "a"})
    reference = os.open(tmp_path / "d" / "a.txt", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    os.set_blocking(reference, True)
    expected = fcntl.fcntl(reference, fcntl.F_GETFL)
    os.close(reference)
    with RootDir(str(tmp_path)) as root, Folders() as folders:
        for held in (None, folders):
            fd, info = root.open_file("d/a.txt", folders=held)
            try:
                assert os.get_blocking(fd)
                assert fcntl.fcntl(fd, fcntl.F_GETFL) == expected
                assert (info.st_ino, info.st_size) == (os.fstat(fd).st_ino, 1)
            finally:
                os.close(fd)


def held_then_moved(tmp_path: Path) -> tuple[Path, FileEntry, RootDir, Folders]:
    """A tree whose folder docs/ is held (its first file was read through it), then moved."""
    root = write_tree(tmp_path / "root", {"docs/a.txt": "a", "docs/b.txt": "inside"})
    entries = entries_of(root)
    root_dir, folders = RootDir(str(root)), Folders()
    hash_file(root_dir, entries["docs/a.txt"], pause=no_pause, folders=folders)
    (root / "docs").rename(root / "docs-moved")
    return root, entries["docs/b.txt"], root_dir, folders


def test_held_folder_swapped_for_a_link_is_refused_when_read_again(tmp_path: Path) -> None:
    root, entry, root_dir, folders = held_then_moved(tmp_path)
    write_tree(tmp_path / "outside", {"b.txt": "secret"})
    (root / "docs").symlink_to(tmp_path / "outside", target_is_directory=True)
    pauses: list[float] = []
    with root_dir, folders, pytest.raises(NotRegularFile, match="symbolic link"):
        hash_file(root_dir, entry, pause=pauses.append, folders=folders)
    # The held folder's file was read, but the path from the root named another: read again.
    assert pauses == [pytest.approx(0.1)]


def test_held_folder_replaced_gives_the_file_the_path_now_names(tmp_path: Path) -> None:
    root, entry, root_dir, folders = held_then_moved(tmp_path)
    write_tree(root, {"docs/b.txt": "the new folder's", "docs/c.txt": "and its next file"})
    later = FileEntry("docs/c.txt", "docs/c.txt", 17, entry.mtime_ns)
    pauses: list[float] = []
    with root_dir, folders:
        digest = hash_file(root_dir, entry, pause=pauses.append, folders=folders)
        # The moved folder is let go of: the next file of the path is not read there first.
        following = hash_file(root_dir, later, pause=pauses.append, folders=folders)
    assert digest.sha256 == sha(b"the new folder's")
    assert following.sha256 == sha(b"and its next file")
    assert pauses == [pytest.approx(0.1)]


def test_a_file_the_held_folder_no_longer_has_is_opened_from_the_root(tmp_path: Path) -> None:
    root, entry, root_dir, folders = held_then_moved(tmp_path)
    (root / "docs-moved" / "b.txt").unlink()
    write_tree(root, {"docs/b.txt": "only in the new folder"})
    with root_dir, folders:
        digest = hash_file(root_dir, entry, pause=no_pause, folders=folders)
    assert digest.sha256 == sha(b"only in the new folder")


def test_a_read_that_ends_at_the_expected_size_is_the_last(tmp_path: Path) -> None:
    """A pipe with its writer still open would answer a second read with EAGAIN (it is made
    non-blocking), so this passes only if the read that reached `size` was the last one."""
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b"twelve bytes")
        os.set_blocking(read_end, False)
        assert sha256_of_fd(read_end, limit=13, size=12) == (sha(b"twelve bytes"), 12)
        os.write(write_end, b"more")
        with pytest.raises(BlockingIOError):  # without `size`, reading goes on to the writer
            sha256_of_fd(read_end, limit=13)
    finally:
        os.close(read_end)
        os.close(write_end)


# -- files that change while they are read ------------------------------------------------------


class Writer:
    """Changes the file on disk: while it is being read (from the progress hook, which runs
    between chunks) and between attempts (from the pause hook)."""

    def __init__(self, path: Path, *, change_reads: int, final: bytes | None = None) -> None:
        self.path = path
        self.change_reads = change_reads
        self.final = final
        self.pauses: list[float] = []

    def during_read(self, _count: int) -> None:
        if len(self.pauses) < self.change_reads:
            with self.path.open("ab") as out:
                out.write(b"more\n")

    def pause(self, seconds: float) -> None:
        self.pauses.append(seconds)
        if self.final is not None:
            self.path.write_bytes(self.final)


@pytest.mark.timeout(10)  # a reader that followed the appends would never finish
def test_file_that_keeps_changing_is_refused(tmp_path: Path) -> None:
    write_tree(tmp_path, {"log.txt": "start\n"})
    entry = entries_of(tmp_path)["log.txt"]
    writer = Writer(tmp_path / "log.txt", change_reads=99)
    with RootDir(str(tmp_path)) as root, pytest.raises(FileChanged) as caught:
        hash_file(root, entry, pause=writer.pause, progress=writer.during_read)
    assert str(caught.value) == (
        "log.txt: kept changing while it was read (3 attempts); "
        "it is still being written — not uploaded"
    )
    assert writer.pauses == [pytest.approx(0.1), pytest.approx(0.2)]


def test_file_that_settles_is_hashed_as_it_finally_is(tmp_path: Path) -> None:
    write_tree(tmp_path, {"log.txt": "start\n"})
    entry = entries_of(tmp_path)["log.txt"]
    final = b"start\nthe whole, final content\n"
    writer = Writer(tmp_path / "log.txt", change_reads=1, final=final)
    with RootDir(str(tmp_path)) as root:
        digest = hash_file(root, entry, pause=writer.pause, progress=writer.during_read)
    assert writer.pauses == [pytest.approx(0.1)]
    assert (tmp_path / "log.txt").read_bytes() == final
    assert digest.sha256 == sha(final)
    assert digest.size == len(final)
    assert digest.mtime_ns == (tmp_path / "log.txt").stat().st_mtime_ns


def test_same_size_rewrite_with_a_new_mtime_is_noticed(tmp_path: Path) -> None:
    write_tree(tmp_path, {"a.txt": "version 1"})
    path = tmp_path / "a.txt"
    entry = entries_of(tmp_path)["a.txt"]
    pauses: list[float] = []

    def rewrite(_count: int) -> None:
        if not pauses:
            path.write_bytes(b"version 2")
            os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns + 1_000_000_000))

    with RootDir(str(tmp_path)) as root:
        digest = hash_file(root, entry, pause=pauses.append, progress=rewrite)
    assert pauses == [pytest.approx(0.1)]
    assert digest.sha256 == sha(b"version 2")


def test_new_version_renamed_over_the_file_while_reading_is_read_again(tmp_path: Path) -> None:
    write_tree(tmp_path, {"out/result.json": '{"old": true}'})
    entry = entries_of(tmp_path)["out/result.json"]
    pauses: list[float] = []

    def replace(_count: int) -> None:
        if not pauses:
            (tmp_path / "out" / "result.json.tmp").write_text('{"new": true, "more": 1}')
            os.replace(tmp_path / "out" / "result.json.tmp", tmp_path / "out" / "result.json")

    with RootDir(str(tmp_path)) as root:
        digest = hash_file(root, entry, pause=pauses.append, progress=replace)
    assert pauses == [pytest.approx(0.1)]
    assert digest.sha256 == sha(b'{"new": true, "more": 1}')


def test_unreadable_file_is_a_file_problem(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "tree", {"secret.txt": "s"})
    make_world_readable(root)
    entry = entries_of(root)["secret.txt"]

    def hash_secret() -> Digest:
        with RootDir(".") as root_dir:
            return hash_file(root_dir, entry, pause=no_pause)

    with no_access(root / "secret.txt"), pytest.raises(FileProblem) as caught:
        run_unprivileged(root, hash_secret, denied=["secret.txt"])
    assert str(caught.value) == (
        "secret.txt: cannot be read (permission denied); fix its mode or --exclude it"
    )


# -- hash_entries -------------------------------------------------------------------------------


def test_hash_entries_keeps_input_order_and_reports_progress(tmp_path: Path) -> None:
    contents = {f"d{i % 5}/f{i:03}.bin": random.Random(i).randbytes(i * 997) for i in range(60)}
    contents["big.bin"] = random.Random(0).randbytes(3 * CHUNK_SIZE + 5)
    write_tree(tmp_path, contents)
    entries = scan(str(tmp_path), ScanOptions()).entries
    recorder = Recorder()
    with RootDir(str(tmp_path)) as root:
        digests, failed = hash_entries(root, entries, workers=4, listener=recorder)
    assert failed == []
    assert [d.entry for d in digests] == list(entries)
    assert all(d.sha256 == sha(contents[d.rel_path]) for d in digests)
    total = sum(len(data) for data in contents.values())
    assert recorder.started == [(Stage.HASH, len(contents), total)]
    assert (recorder.files, recorder.nbytes) == (len(contents), total)
    assert recorder.finished == [Stage.HASH]


@pytest.mark.timeout(10)
def test_hash_entries_turns_file_problems_into_failures(tmp_path: Path) -> None:
    write_tree(tmp_path, {"a.txt": "a", "b.txt": "bb", "c.txt": "ccc", "d.txt": "dddd"})
    entries = scan(str(tmp_path), ScanOptions()).entries
    (tmp_path / "b.txt").unlink()
    (tmp_path / "d.txt").unlink()
    make_fifo(tmp_path / "d.txt")
    recorder = Recorder()
    with RootDir(str(tmp_path)) as root:
        digests, failed = hash_entries(root, entries, workers=3, listener=recorder)
    assert [d.rel_path for d in digests] == ["a.txt", "c.txt"]
    assert failed == [
        Failed("b.txt", "b.txt: disappeared after the scan", 2),
        Failed("d.txt", "d.txt: is no longer a regular file; not read", 4),
    ]
    assert sorted(recorder.failures) == [(f.rel_path, f.error) for f in failed]
    # Failed files still complete their share, so a progress bar ends full.
    assert (recorder.files, recorder.nbytes) == (4, 10)


def test_stop_before_the_start_hashes_nothing(tmp_path: Path) -> None:
    write_tree(tmp_path, {"a.txt": "a", "b.txt": "b"})
    entries = scan(str(tmp_path), ScanOptions()).entries
    stop = threading.Event()
    stop.set()
    recorder = Recorder()
    with RootDir(str(tmp_path)) as root:
        digests, failed = hash_entries(root, entries, workers=4, listener=recorder, stop=stop)
    assert digests == []
    assert failed == [
        Failed("a.txt", "a.txt: not hashed: the harvest was interrupted", 1),
        Failed("b.txt", "b.txt: not hashed: the harvest was interrupted", 1),
    ]
    assert recorder.failures == []
    assert recorder.notices == [
        (Level.WARNING, "hashing was interrupted: 2 of 2 files were not hashed")
    ]
    assert recorder.finished == [Stage.HASH]


def test_stop_during_the_stage_leaves_the_rest_unstarted(tmp_path: Path) -> None:
    write_tree(tmp_path, {f"f{i}.txt": str(i) for i in range(10)})
    entries = scan(str(tmp_path), ScanOptions()).entries
    stop = threading.Event()

    class StopAfterFirst(Recorder):
        def advanced(self, stage: Stage, files: int = 0, nbytes: int = 0) -> None:
            super().advanced(stage, files, nbytes)
            if files:
                stop.set()

    with RootDir(str(tmp_path)) as root:
        digests, failed = hash_entries(
            root, entries, workers=1, listener=StopAfterFirst(), stop=stop
        )
    assert [d.rel_path for d in digests] == ["f0.txt"]
    assert [f.rel_path for f in failed] == [f"f{i}.txt" for i in range(1, 10)]
    assert all(f.error.endswith("not hashed: the harvest was interrupted") for f in failed)


def test_hash_entries_of_nothing(tmp_path: Path) -> None:
    recorder = Recorder()
    with RootDir(str(tmp_path)) as root:
        assert hash_entries(root, [], workers=4, listener=recorder) == ([], [])
    assert recorder.started == [(Stage.HASH, 0, 0)]
    assert recorder.finished == [Stage.HASH]


def test_bad_arguments_are_programming_errors(tmp_path: Path) -> None:
    write_tree(tmp_path, {"a.txt": "a"})
    (entry,) = scan(str(tmp_path), ScanOptions()).entries
    with RootDir(str(tmp_path)) as root:
        with pytest.raises(ValueError, match="attempts"):
            hash_file(root, entry, attempts=0)
        with pytest.raises(ValueError, match="workers"):
            hash_entries(root, [entry], workers=0)


# -- pseudo-files -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("folder", "name"),
    [
        ("/proc/sys/kernel", "osrelease"),  # st_size 0, reading gives the release
        ("/sys/kernel/mm/transparent_hugepage", "enabled"),  # st_size 4096, reading gives less
    ],
)
def test_pseudo_file_whose_size_lies_is_not_called_still_being_written(
    folder: str, name: str
) -> None:
    if not os.path.isfile(os.path.join(folder, name)):
        pytest.skip(f"{folder}/{name} does not exist here")
    scanned = scan(folder, ScanOptions(include=("/" + name,)))
    assert [entry.rel_path for entry in scanned.entries] == [name]
    recorder = Recorder()
    with RootDir(folder) as root:
        digests, failed = hash_entries(root, scanned.entries, workers=4, listener=recorder)
    assert digests == []
    ((path, message),) = recorder.failures
    assert path == name and failed[0].error == message
    assert message == (
        f"{name}: not a regular file with a stable size (its reported size is not what reading "
        "it gives, as for files under /proc or /sys); not uploaded — --exclude it"
    )
