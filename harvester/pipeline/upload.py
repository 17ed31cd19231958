"""Uploading the planned documents: bounded concurrency, retries, verified streaming.

Takes the plan's upload items, the open documents root and a `DocumentSink` (keruta-api's
client, which asks the run's gate before every upload); gives one `Receipt` per item. The items
come all at once (`Uploader.upload_all`: receipts in their order) or one by one as the plan
decides them while files are still hashed (`Uploader.uploading`: an `UploadFeed` to put them in,
each receipt paired with its item). A small file may come with the content its hashing read
while it held still: it is sent from that, once a `stat` by its path shows it still the file
that was hashed (inode, size, mtime, ctime); for many small documents the second open, checks
and read cost more than the upload itself. Otherwise each file is re-opened for every attempt
(never rewound from a consumed stream) and streamed in chunks while its inode, size, mtime and
ctime are checked against the digest's (see `verified_chunks`). Either way a file that changed
since it was hashed aborts the request (mid-body when streamed), is hashed again and sent again
from the file, and after a few changes is reported as failed, never uploaded half-written.

A rejected token (401/403) stops every worker at once; the remaining items are "not attempted".

With a `Ledger` each upload holds one of its slots from before its first request until the
server's acknowledgement is recorded (`LedgerEntry`: the path as it was read, sha256, size, the
server's id), so at no moment are more than the ledger's window of accepted documents unrecorded.
"""

from __future__ import annotations

import heapq
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Protocol

from harvester.errors import (
    INTERRUPTED,
    ApiError,
    AuthRejected,
    FileChanged,
    FileProblem,
    Interrupted,
    RetryableError,
)
from harvester.model import (
    Digest,
    DocumentContent,
    FileSpan,
    LedgerEntry,
    Outcome,
    PlanItem,
    Receipt,
)
from harvester.pipeline.digest import hash_file
from harvester.pipeline.ledger import Ledger, Slot
from harvester.pipeline.rootfs import CHUNK_SIZE, WHOLE_UPLOAD_MAX_SIZE, RootDir
from harvester.retry import Retrier
from harvester.stats import Level, Listener, NullListener, Stage

# How often a file may change under our feet before it counts as still being written.
MAX_CONTENT_CHANGES = 2
# How much of the small files' content the hashing read may wait for its upload (`UploadFeed`):
# 2,000 documents of 4 KiB, ample to keep every upload worker busy.
READ_AHEAD_BUDGET = 8 * 1024 * 1024
# How many streamed documents (over WHOLE_UPLOAD_MAX_SIZE) go at once while the feed decides
# (`UploadFeed`): one stream already fills the link and the server's disk, and more only compete
# for them; the other workers send the small documents meanwhile. 4 × 512 MiB into dev-api on 2
# cores: 6.4-7.3 s one at a time, 9.8-11.3 s four at once (curl alone: 4.9 s one by one, 6.3 s
# four at once).
STREAMED_AT_ONCE = 1


class DocumentSink(Protocol):
    """Where documents go: keruta-api's client (`harvester.wire.client.KerutaApi`) in a harvest.

    `upload_document` sends one document whose content is, or yields, exactly `size` bytes, and
    gives the server's id for it (None when the server named none); it raises the errors of
    `harvester.errors` (retryable, rejected, auth), and lets an exception from `content` (the
    file changed) through unchanged after aborting the request.
    """

    def upload_document(
        self,
        task_id: str,
        rel_path: str,
        sha256: str,
        size: int,
        content: DocumentContent,
    ) -> str | None: ...


# An item and, for a small file, the content the hashing read (sent instead of reading it again).
Work = tuple[PlanItem, bytes | None]


class UploadFeed:
    """Planned uploads handed to an `Uploader` as their decisions become final.

    `put` (from any thread) starts the upload stage with the first item and grows its totals
    with each, so progress reads as done of decided so far. The largest item waiting is taken
    first: the hashes of many small files come in long before a large file's, and a large file
    queued behind them would be the last upload still running, alone. But no more than
    `streams` streamed documents (over `WHOLE_UPLOAD_MAX_SIZE`) go at once; while they do, the
    other workers take the small ones (`finished` tells the feed that a worker is done with an
    item). Once the feed is closed the workers end when it is empty; a cancelled feed gives them
    nothing more. After the uploader is done, `answered` pairs every item taken with its
    receipt, in the order taken.

    An item may come with its content, as the hashing read it (a small file): the upload then
    neither opens nor reads the file again. Such content waits in the feed up to
    `content_budget` bytes; past it `put` waits until the workers have taken half, so the
    hashing never runs further ahead of the uploads than that.
    """

    def __init__(
        self,
        listener: Listener,
        content_budget: int = READ_AHEAD_BUDGET,
        streams: int = STREAMED_AT_ONCE,
    ) -> None:
        self._listener = listener
        # One condition for the items, the content's room and the streams: its waiters are the
        # one worker asking for an item (the others queue on the uploader's lock) and `put`.
        self._changed = threading.Condition(threading.Lock())
        # Heaps of (-size, number, item, content): the largest first, then in the order put.
        self._small: list[tuple[int, int, PlanItem, bytes | None]] = []
        self._streamed: list[tuple[int, int, PlanItem, bytes | None]] = []
        self._streams = streams
        self._streaming = 0
        self._content_budget = content_budget
        self._content_waiting = 0
        self._put = 0
        self._started = False
        self._closed = False
        self._cancelled = False
        self.answered: list[tuple[PlanItem, Receipt]] = []

    def put(self, item: PlanItem, content: bytes | None = None) -> None:
        with self._changed:
            if not self._started:
                # Started only when there is something to send, as when the plan came whole.
                self._listener.stage_started(Stage.UPLOAD, 0, 0)
                self._started = True
            self._listener.stage_grew(Stage.UPLOAD, 1, item.size or 0)
            self._put += 1
            if content is not None:
                if self._content_waiting + len(content) > self._content_budget:
                    # Until half the budget is free: one wake-up for many items, not one each.
                    while self._content_waiting > self._content_budget // 2 and not self._cancelled:
                        self._changed.wait()
                self._content_waiting += len(content)
            size = item.size or 0
            heap = self._streamed if size > WHOLE_UPLOAD_MAX_SIZE else self._small
            heapq.heappush(heap, (-size, self._put, item, content))
            self._changed.notify_all()

    @property
    def started(self) -> bool:
        """Whether an item was put (and so the upload stage started)."""
        return self._started

    def close(self) -> None:
        """No more items will come."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def cancel(self) -> None:
        """Give the workers nothing more, not even what was put and not yet taken; a `put`
        waiting for room no longer waits."""
        with self._changed:
            self._cancelled = True
            self._changed.notify_all()

    def cancel_if_failed(self, worker: Future[None]) -> None:
        """A worker's end: one ended by an error takes no more items, nor may `put` wait for it
        to take them (the error is raised once the uploads are waited for)."""
        if worker.exception() is not None:
            self.cancel()

    def finished(self, item: PlanItem) -> None:
        """A worker is done with `item` (uploaded or not): a streamed one frees its stream."""
        if (item.size or 0) > WHOLE_UPLOAD_MAX_SIZE:
            with self._changed:
                self._streaming -= 1
                self._changed.notify_all()

    def __iter__(self) -> Iterator[Work]:
        # One generator shared by the workers: the first to meet the end ends it for all.
        while True:
            with self._changed:
                while True:
                    if self._cancelled:
                        return
                    if self._streamed and self._streaming < self._streams:
                        _size, _number, item, content = heapq.heappop(self._streamed)
                        self._streaming += 1
                        break
                    if self._small:
                        _size, _number, item, content = heapq.heappop(self._small)
                        break
                    if self._closed and not self._streamed:
                        return
                    self._changed.wait()
                if content is not None:
                    self._content_waiting -= len(content)
                    if self._content_waiting <= self._content_budget // 2:
                        self._changed.notify_all()
            yield item, content


class Uploader:
    """Uploads plan items on `concurrency` threads, each taking the next item when it is free.

    Afterwards `auth_error` holds the rejection that stopped every worker, if any.
    """

    def __init__(
        self,
        api: DocumentSink,
        root: RootDir,
        task_id: str,
        retrier: Retrier,
        *,
        concurrency: int,
        listener: Listener | None = None,
        stop: threading.Event | None = None,
        deadline: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        ledger: Ledger | None = None,
    ) -> None:
        self._api = api
        self._ledger = ledger
        self._root = root
        self._task_id = task_id
        self._retrier = retrier
        self._concurrency = concurrency
        self._listener = listener or NullListener()
        self._stop = stop or threading.Event()
        self._deadline = deadline
        self._clock = clock
        self._abort = threading.Event()
        self.auth_error: AuthRejected | None = None

    def upload_all(self, items: Sequence[PlanItem]) -> tuple[Receipt, ...]:
        """One receipt per item, in the items' order."""
        total_bytes = sum(item.size or 0 for item in items)
        self._listener.stage_started(Stage.UPLOAD, len(items), total_bytes)
        answered: list[tuple[PlanItem, Receipt]] = []
        try:
            workers = min(self._concurrency, len(items))
            with ThreadPoolExecutor(workers or 1, thread_name_prefix="upload") as pool:
                work = ((item, None) for item in items)
                _wait_all(self._start(pool, workers, work, answered))
        finally:
            self._listener.stage_finished(Stage.UPLOAD)
        return tuple(receipt for _item, receipt in answered)

    @contextmanager
    def uploading(self) -> Iterator[UploadFeed]:
        """Upload what is put into the yielded feed while the caller goes on (hashing the other
        files); on leaving, close the feed and wait for every upload, then `feed.answered`
        holds the receipts. Leaving with an exception sends nothing more than is in flight."""
        feed = UploadFeed(self._listener)
        try:
            with ThreadPoolExecutor(self._concurrency, thread_name_prefix="upload") as pool:
                workers = self._start(
                    pool, self._concurrency, iter(feed), feed.answered, feed.finished
                )
                for worker in workers:
                    worker.add_done_callback(feed.cancel_if_failed)
                try:
                    yield feed
                except BaseException:
                    feed.cancel()
                    raise
                feed.close()
                _wait_all(workers)
        finally:
            if feed.started:
                self._listener.stage_finished(Stage.UPLOAD)

    def _start(
        self,
        pool: ThreadPoolExecutor,
        workers: int,
        items: Iterator[Work],
        answered: list[tuple[PlanItem, Receipt]],
        finished: Callable[[PlanItem], None] | None = None,
    ) -> list[Future[None]]:
        """`workers` threads of `pool` that take items until there are none, each item's
        receipt put in `answered` at the place it was taken, and `finished` told of it."""
        lock = threading.Lock()
        not_yet = Receipt(Outcome.NOT_ATTEMPTED)

        def work() -> None:
            # A worker takes the next item itself instead of one future per item: a harvest of
            # a million files would otherwise hold a million futures.
            while True:
                with lock:
                    work = next(items, None)
                    if work is None:
                        return
                    item, content = work
                    place = len(answered)
                    answered.append((item, not_yet))
                try:
                    answered[place] = (item, self._upload_one(item, content))
                finally:
                    if finished is not None:
                        finished(item)

        return [pool.submit(work) for _ in range(workers)]

    def _upload_one(self, item: PlanItem, content: bytes | None) -> Receipt:
        if self._ledger is None:
            return self._upload(item, None, content)
        with self._ledger.slot() as slot:
            return self._upload(item, slot, content)

    def _upload(self, item: PlanItem, slot: Slot | None, content: bytes | None) -> Receipt:
        assert item.digest is not None, "only planned uploads reach the uploader"
        digest = item.digest
        attempts = 0
        for _change in range(MAX_CONTENT_CHANGES + 1):

            def attempt(
                _number: int, current: Digest = digest, held: bytes | None = content
            ) -> Receipt:
                nonlocal attempts
                self._check_may_start()
                attempts += 1
                return self._send(current, attempts, slot, held)

            try:
                return self._retrier.call(attempt, on_retry=self._on_retry(item.rel_path))
            except FileChanged:
                content = None  # read again from the file from now on
                try:
                    digest = hash_file(self._root, digest.entry)
                except FileProblem as exc:
                    return self._failed(item, str(exc), attempts)
                self._listener.notice(
                    Level.WARNING,
                    f"{item.rel_path}: changed after it was hashed; hashed again and resending",
                )
            except Interrupted as exc:
                return Receipt(Outcome.NOT_ATTEMPTED, attempts, error=str(exc))
            except AuthRejected as exc:
                if self.auth_error is None:
                    self.auth_error = exc
                self._abort.set()
                return self._failed(item, f"{item.rel_path}: {exc}", attempts)
            except ApiError as exc:
                return self._failed(item, f"{item.rel_path}: {exc}", attempts)
            except FileProblem as exc:
                return self._failed(item, str(exc), attempts)
        message = (
            f"{item.rel_path}: kept changing while it was uploaded "
            f"({MAX_CONTENT_CHANGES + 1} tries); it is still being written, not uploaded"
        )
        return self._failed(item, message, attempts)

    def _check_may_start(self) -> None:
        if self._abort.is_set():
            raise Interrupted("not attempted: keruta-api rejected the token")
        if self._stop.is_set():
            raise Interrupted(f"not attempted: {INTERRUPTED}")
        if self._deadline is not None and self._clock() > self._deadline:
            raise Interrupted("not attempted: the overall --deadline passed")

    def _send(
        self, digest: Digest, attempts: int, slot: Slot | None, content: bytes | None
    ) -> Receipt:
        if content is None:
            return self._send_file(digest, attempts, slot)
        # By its path, not opened: what is sent is `content`, the read that held still.
        _check_unchanged(self._root.look(digest.entry.os_path), digest)
        document_id = self._api.upload_document(
            self._task_id, digest.rel_path, digest.sha256, digest.size, content
        )
        return self._sent(digest, attempts, slot, document_id, digest.size)

    def _send_file(self, digest: Digest, attempts: int, slot: Slot | None) -> Receipt:
        fd = self._root.open_regular(digest.entry.os_path, shown_as=digest.rel_path)
        sent = 0

        def counted(chunks: Iterator[bytes | FileSpan]) -> Iterator[bytes | FileSpan]:
            nonlocal sent
            for chunk in chunks:
                yield chunk
                sent += len(chunk)
                self._listener.advanced(Stage.UPLOAD, nbytes=len(chunk))

        try:
            if digest.size <= WHOLE_UPLOAD_MAX_SIZE:
                # Read and checked whole before the request starts, and sent in one write with
                # its multipart frame.
                _check_unchanged(os.fstat(fd), digest)
                content: bytes | Iterator[bytes | FileSpan] = _verified_rest(fd, digest, 0)
            else:
                content = counted(verified_chunks(fd, digest))
            document_id = self._api.upload_document(
                self._task_id, digest.rel_path, digest.sha256, digest.size, content
            )
        except BaseException:
            if sent:
                self._listener.advanced(Stage.UPLOAD, nbytes=-sent)
            raise
        finally:
            os.close(fd)
        return self._sent(digest, attempts, slot, document_id, digest.size - sent)

    def _sent(
        self,
        digest: Digest,
        attempts: int,
        slot: Slot | None,
        document_id: str | None,
        unreported: int,
    ) -> Receipt:
        """The server acknowledged `digest`'s document: recorded in the ledger, counted."""
        if slot is not None:
            entry = LedgerEntry(digest.entry.os_path, digest.sha256, digest.size, document_id)
            slot.record(entry)
        self._listener.advanced(Stage.UPLOAD, files=1, nbytes=unreported)
        return Receipt(Outcome.UPLOADED, attempts, document_id=document_id)

    def _on_retry(self, rel_path: str) -> Callable[[int, RetryableError, float], None]:
        def notice(attempt: int, error: RetryableError, wait: float) -> None:
            self._listener.notice(
                Level.WARNING, f"{rel_path}: {error}; retrying in {wait:.1f}s (attempt {attempt})"
            )

        return notice

    def _failed(self, item: PlanItem, message: str, attempts: int) -> Receipt:
        self._listener.file_failed(item.rel_path, message, Stage.UPLOAD)
        # A failed file completes its share of the stage's bytes (its bytes sent were taken
        # back), so the counter reads bytes dealt with of bytes planned and still ends full.
        self._listener.advanced(Stage.UPLOAD, files=1, nbytes=item.size or 0)
        return Receipt(Outcome.FAILED, attempts, error=message)


def _wait_all(workers: list[Future[None]]) -> None:
    """Wait for every worker; the first unexpected error is raised once all have ended."""
    for worker in workers:
        worker.exception()
    for worker in workers:
        worker.result()


def verified_chunks(fd: int, digest: Digest) -> Iterator[bytes | FileSpan]:
    """The file's content in `CHUNK_SIZE` pieces, raising `FileChanged` before the last byte is
    handed on if the file is not exactly the one that was hashed.

    All but the last piece are `FileSpan`s: the kernel reads them as they are sent. The last is
    read here, then the file is shown unchanged, then it is handed on: every byte sent was read
    between two checks that saw the same file. "The same" is proven by the inode, size, mtime
    and ctime the digest recorded: every write changes the ctime, and no one can set a ctime
    back. (The content is not hashed a second time: on large files that doubled the client's
    CPU; nor copied through Python: sendfile halved the client's system time on large files.)
    """
    _check_unchanged(os.fstat(fd), digest)
    size, offset = digest.size, 0
    while size - offset > CHUNK_SIZE:
        yield FileSpan(fd, offset, CHUNK_SIZE, digest.rel_path)
        offset += CHUNK_SIZE
    # The last piece is held back until the file is shown unchanged, so a changed file aborts
    # the request before the server could see a complete body.
    last = _verified_rest(fd, digest, offset)
    if last:
        yield last


def _verified_rest(fd: int, digest: Digest, offset: int) -> bytes:
    """The file's bytes from `offset` to its end, read, then shown to be the hashed file's."""
    rest = os.pread(fd, digest.size - offset, offset)
    if len(rest) < digest.size - offset:
        raise FileChanged.shrank(digest.rel_path)
    if os.pread(fd, 1, digest.size):
        raise FileChanged(f"{digest.rel_path}: grew while it was uploaded")
    _check_unchanged(os.fstat(fd), digest, "changed while it was uploaded")
    return rest


def _check_unchanged(
    now: os.stat_result | None, digest: Digest, what: str = "changed after it was hashed"
) -> None:
    """`FileChanged` unless `now` (a look at the file, None when it is gone) shows the very file
    that was hashed, as it was: its inode, size, mtime and ctime."""
    same = now is not None and (now.st_ino, now.st_size, now.st_mtime_ns, now.st_ctime_ns) == (
        digest.inode,
        digest.size,
        digest.mtime_ns,
        digest.ctime_ns,
    )
    if not same:
        raise FileChanged(f"{digest.rel_path}: {what}")
