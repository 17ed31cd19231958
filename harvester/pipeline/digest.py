"""Hashing the scanned files: the SHA-256 of content that held still while it was read.

Takes the open `RootDir` and the scan's `FileEntry`s; gives one `Digest` per file, or a `Failed`
for a file that could not be read safely. Each file is opened through `RootDir.open_file` (no
link followed anywhere on its path, refused unless it is a regular file; small files through
their folder held open for the next one, `rootfs.Folders`), read in `CHUNK_SIZE` pieces into one
reused buffer per thread (a small file in one read), and checked: its size, mtime, ctime and
inode must be the same before and after the read, the bytes read must equal its size, and the
path from the root must still name the same file. Otherwise it is read again after a pause,
opened from the root; a file that never holds still is reported as changing, never hashed
half-written, and one that holds still but never reads as long as its size says (a pseudo-file,
as under /proc or /sys) is reported as such. Large files are hashed on a few threads, since
hashlib and the reads release the GIL.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed

from harvester.errors import INTERRUPTED, FileChanged, FileProblem
from harvester.model import Digest, Failed, FileEntry
from harvester.pipeline.rootfs import CHUNK_SIZE, THREADED_HASH_MIN_SIZE, Folders, RootDir
from harvester.stats import Level, Listener, NullListener, Stage

__all__ = ["hash_entries", "hash_file", "sha256_of_fd"]

NOT_HASHED = f"not hashed: {INTERRUPTED}"

_NULL_LISTENER = NullListener()

# Told each file's hash result (see `hash_entries`): its index, the result, its content or None.
OnResult = Callable[[int, Digest | Failed, bytes | None], None]
_buffers = threading.local()


def _buffer() -> memoryview:
    """This thread's read buffer: allocated once, so memory stays flat for any number of files."""
    view: memoryview | None = getattr(_buffers, "view", None)
    if view is None:
        view = memoryview(bytearray(CHUNK_SIZE))
        _buffers.view = view
    return view


def sha256_of_fd(
    fd: int,
    *,
    limit: int | None = None,
    progress: Callable[[int], None] | None = None,
    size: int | None = None,
) -> tuple[str, int]:
    """Read `fd` from its current offset to the end, or to `limit` bytes; return the hex
    SHA-256 and the number of bytes read.

    `size` is the size the file should have: a read that brings the total to exactly `size`
    while it asked for more has met the end (a regular file reads short only there), which
    spares the read that would give nothing: for a small file, one read instead of two.
    `progress` is called with the size of each chunk. Raises `OSError` as the read does.

    A small file read whole in one read leaves its bytes to this thread's `_content_read`.
    """
    _buffers.whole = None
    if limit is not None and limit <= CHUNK_SIZE and progress is None:
        # A small file in one read of its own bytes, hashed in one call: at 100,000 files the
        # shared buffer's slicing and the loop cost more than the read.
        data = os.read(fd, limit)
        count = len(data)
        if count in (size, limit, 0):
            _buffers.whole = data
            return hashlib.sha256(data).hexdigest(), count
        # Short of both its size and the limit: read on, as for a large file.
        return _sha256_on(fd, hashlib.sha256(data), count, limit, None, size)
    return _sha256_on(fd, hashlib.sha256(), 0, limit, progress, size)


def _sha256_on(
    fd: int,
    hasher: hashlib._Hash,
    total: int,
    limit: int | None,
    progress: Callable[[int], None] | None,
    size: int | None,
) -> tuple[str, int]:
    """`sha256_of_fd` after its first `total` bytes went into `hasher`."""
    view = _buffer()
    while limit is None or total < limit:
        want = view if limit is None or limit - total >= CHUNK_SIZE else view[: limit - total]
        count = os.readv(fd, (want,))
        if count == 0:
            break
        hasher.update(view[:count])
        total += count
        if progress is not None:
            progress(count)
        if total == size and count < len(want):
            break
    return hasher.hexdigest(), total


def _content_read(size: int) -> bytes | None:
    """The bytes of the file this thread has just hashed, when one read gave all `size` of them
    (`hash_file` gives a digest only for a read of exactly its size); else None."""
    whole: bytes | None = getattr(_buffers, "whole", None)
    return whole if whole is not None and len(whole) == size else None


class _NewBytes:
    """Forwards progress, counting bytes that a later attempt reads again only once."""

    __slots__ = ("_progress", "_seen", "reported")

    def __init__(self, progress: Callable[[int], None] | None) -> None:
        self._progress = progress
        self._seen = 0
        self.reported = 0

    def new_attempt(self) -> None:
        self._seen = 0

    def __call__(self, count: int) -> None:
        self._seen += count
        if self._seen > self.reported:
            if self._progress is not None:
                self._progress(self._seen - self.reported)
            self.reported = self._seen


def hash_file(
    root: RootDir,
    entry: FileEntry,
    *,
    attempts: int = 3,
    pause: Callable[[float], None] = time.sleep,
    progress: Callable[[int], None] | None = None,
    folders: Folders | None = None,
) -> Digest:
    """The digest of `entry`'s content, read while the file held still.

    An unstable read is repeated after `pause(0.1 * n)` seconds, up to `attempts` reads in all.
    The digest carries the size and mtime seen while hashing, which may differ from the scan's.
    `progress` is called with the number of newly read bytes (a re-read is not counted twice).
    `folders` opens the first read's file through a held folder (see `rootfs.Folders`); a read
    again lets go of it and opens from the root. Raises `FileChanged` when no read was stable,
    `NotRegularFile` when the path is no longer a regular file, `FileProblem` when it cannot be
    opened or read, or when every read held still yet gave other than the file's reported size
    (a pseudo-file).
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    counter = None if progress is None else _NewBytes(progress)
    # Whether every read so far held still yet gave other than the reported size: a file whose
    # size lies (a pseudo-file, as under /proc or /sys), not one that is being written.
    size_lies = True
    for attempt in range(1, attempts + 1):
        if attempt > 1:
            pause(0.1 * (attempt - 1))
            if folders is not None:
                # The held folder may be the one that moved: this file and the next are
                # opened from the root again.
                folders.close()
                folders = None
        if counter is not None:
            counter.new_attempt()
        fd, before = _open(root, entry, folders)
        try:
            # One byte past the size shows growth; reading on would never end while a
            # writer keeps appending faster than the file is read.
            size = before.st_size
            sha256, count = sha256_of_fd(fd, limit=size + 1, progress=counter, size=size)
        except OSError as exc:
            raise FileProblem(
                f"{entry.rel_path}: cannot be read ({exc.strerror or exc}); check the volume"
            ) from exc
        finally:
            os.close(fd)
        after = _still_at_path(root, entry, before)
        if after is None:
            held_still = False
        else:
            held_still = (
                size == after.st_size
                and before.st_mtime_ns == after.st_mtime_ns
                and before.st_ctime_ns == after.st_ctime_ns
            )
            if held_still and count == size:
                return _digest(entry, sha256, after)
        size_lies = size_lies and held_still
    if size_lies:
        raise FileProblem(
            f"{entry.rel_path}: not a regular file with a stable size (its reported size is "
            "not what reading it gives, as for files under /proc or /sys); not uploaded — "
            "--exclude it"
        )
    raise FileChanged(
        f"{entry.rel_path}: kept changing while it was read ({attempts} attempts); "
        "it is still being written — not uploaded"
    )


def _open(root: RootDir, entry: FileEntry, folders: Folders | None) -> tuple[int, os.stat_result]:
    """`entry`'s file opened, through the held folder when there is one. What the held folder
    cannot open is asked of the root, whose answer stands: the folder may have moved."""
    # Named by rel_path: an OS path that is not UTF-8 could not be printed in a message.
    if folders is not None:
        try:
            return root.open_file(entry.os_path, shown_as=entry.rel_path, folders=folders)
        except FileProblem:
            folders.close()
    return root.open_file(entry.os_path, shown_as=entry.rel_path)


def _digest(entry: FileEntry, sha256: str, seen: os.stat_result) -> Digest:
    # The scan's int objects when the values agree (they nearly always do), and the mtime's
    # for a ctime equal to it (a file written once): a million digests then hold no second
    # copy of each size and time.
    size = entry.size if entry.size == seen.st_size else seen.st_size
    mtime_ns = entry.mtime_ns if entry.mtime_ns == seen.st_mtime_ns else seen.st_mtime_ns
    ctime_ns = mtime_ns if mtime_ns == seen.st_ctime_ns else seen.st_ctime_ns
    return Digest(entry, sha256, size, mtime_ns, ctime_ns, seen.st_ino)


def _still_at_path(
    root: RootDir, entry: FileEntry, opened: os.stat_result
) -> os.stat_result | None:
    """The file at `entry`'s path from the root, looked at now, if it is still the file that was
    opened (else None).

    A new version renamed over the path after the read began bumps the old file's ctime, but one
    renamed over it between the open and the first fstat does not: only this check sees it. It
    also holds a file read through a held folder (`rootfs.Folders`) to the path from the root.
    Being the same inode, what it shows is what an `fstat` of the read descriptor would show at
    this later moment: the look after the read, made with one system call instead of two.
    """
    now = root.look(entry.os_path)
    if now is not None and now.st_ino == opened.st_ino and now.st_dev == opened.st_dev:
        return now
    return None


def hash_entries(
    root: RootDir,
    entries: Sequence[FileEntry],
    *,
    workers: int,
    listener: Listener = _NULL_LISTENER,
    stop: threading.Event | None = None,
    on_result: OnResult | None = None,
    content_up_to: int | None = None,
) -> tuple[list[Digest], list[Failed]]:
    """Hash `entries` on `workers` threads; give the digests and the failures, each in input order.

    Every `FileProblem` becomes a `Failed` (and `listener.file_failed`). Once `stop` is set no
    further file is started; those left become `Failed` with "not hashed: the harvest was
    interrupted". Unexpected errors stop the other workers and are raised.

    `on_result(index, result, content)` is told each entry's result as soon as it is known (so a
    planner can decide, and an upload start, while other files are still read): exactly once per
    entry, one call at a time, from whichever thread hashed it; the files left by a stop last, in
    order. `content` is the file's content, read in one piece while it held still, for a file of
    at most `content_up_to` bytes (then the upload need not open it again), else None (and
    always None without `content_up_to`).
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    if content_up_to is not None and not 0 <= content_up_to < CHUNK_SIZE:
        raise ValueError(f"content_up_to must be below one read, not {content_up_to}")
    total = len(entries)
    listener.stage_started(Stage.HASH, total, sum(entry.size for entry in entries))
    try:
        results = _hash_all(root, entries, workers, listener, stop, on_result, content_up_to)
        digests: list[Digest] = []
        failed: list[Failed] = []
        interrupted = 0
        for index, (entry, result) in enumerate(zip(entries, results, strict=True)):
            if isinstance(result, Digest):
                digests.append(result)
            elif isinstance(result, Failed):
                failed.append(result)
            else:
                interrupted += 1
                left = Failed(entry.rel_path, f"{entry.rel_path}: {NOT_HASHED}", entry.size)
                failed.append(left)
                if on_result is not None:
                    on_result(index, left, None)
        if interrupted:
            listener.notice(
                Level.WARNING,
                f"hashing was interrupted: {interrupted} of {total} files were not hashed",
            )
        return digests, failed
    finally:
        listener.stage_finished(Stage.HASH)


def _hash_all(
    root: RootDir,
    entries: Sequence[FileEntry],
    workers: int,
    listener: Listener,
    stop: threading.Event | None,
    on_result: OnResult | None,
    content_up_to: int | None,
) -> list[Digest | Failed | None]:
    results: list[Digest | Failed | None] = [None] * len(entries)
    lock = threading.Lock()
    told = threading.Lock()

    def hash_one(index: int, folders: Folders | None = None) -> None:
        result = results[index] = _hash_one(root, entries[index], listener, folders)
        if on_result is not None:
            content = None
            if (
                content_up_to is not None
                and isinstance(result, Digest)
                and result.size <= content_up_to
            ):
                content = _content_read(result.size)
            with told:
                on_result(index, result, content)

    large = [i for i, entry in enumerate(entries) if entry.size >= THREADED_HASH_MIN_SIZE]
    indexes = iter(large)
    abort = threading.Event()

    def stopped() -> bool:
        return abort.is_set() or (stop is not None and stop.is_set())

    def work() -> None:
        # Workers take the next index themselves instead of one future per file: a harvest of a
        # million files would otherwise hold a million futures.
        while not stopped():
            with lock:
                index = next(indexes, None)
            if index is None:
                return
            hash_one(index)

    with (
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="harvester-hash") as pool,
        Folders() as folders,
    ):
        futures = [pool.submit(work) for _ in range(min(workers, len(large)))]
        try:
            # Small files are hashed here, one after another, while the pool reads the large
            # ones: for a small file the GIL hand-offs around every system call cost more than
            # the hashing (hashlib keeps the GIL for inputs under 2 KiB), so threads slow it down.
            for index, entry in enumerate(entries):
                if stopped():
                    break
                if entry.size < THREADED_HASH_MIN_SIZE:
                    hash_one(index, folders)
            for future in as_completed(futures):
                future.result()  # the first unexpected error stops the other workers at once
        except BaseException:
            abort.set()
            raise
    return results


def _hash_one(
    root: RootDir, entry: FileEntry, listener: Listener, folders: Folders | None = None
) -> Digest | Failed:
    counter: _NewBytes | None = None
    if entry.size >= CHUNK_SIZE:
        # Bytes as they are read; a file read in one go tells its bytes with its end below,
        # one call to the listener instead of two.
        counter = _NewBytes(lambda count: listener.advanced(Stage.HASH, nbytes=count))
    try:
        result: Digest | Failed = hash_file(root, entry, progress=counter, folders=folders)
    except FileProblem as exc:
        message = str(exc)
        result = Failed(entry.rel_path, message, entry.size)
        listener.file_failed(entry.rel_path, message, Stage.HASH)
    # A file that failed or shrank still completes its share of the stage's bytes.
    reported = 0 if counter is None else counter.reported
    listener.advanced(Stage.HASH, files=1, nbytes=max(0, entry.size - reported))
    return result
