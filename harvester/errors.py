"""Errors classified by what the caller should do about them.

Raw transport/OS exceptions are translated into these at the seam where they happen, so the
stages above only ever decide between: retry later, give up on this file, or stop the run.
"""

from __future__ import annotations


class HarvesterError(Exception):
    """Base of every expected failure; its message is a sentence meant for a person."""


class ConfigError(HarvesterError):
    """Bad usage or configuration: nothing was attempted (exit 2)."""


class FileProblem(HarvesterError):
    """A document could not be read safely (not regular, unreadable, changed while read)."""


class NotRegularFile(FileProblem):
    """The path is (or became) a link, FIFO, socket, device or folder; it is never opened."""


class FileChanged(FileProblem):
    """The file's size, mtime or content changed while it was being read."""

    @classmethod
    def shrank(cls, rel_path: str) -> FileChanged:
        """The file ended before the size it was hashed at, while it was uploaded."""
        return cls(f"{rel_path}: shrank while it was uploaded")


class LedgerError(HarvesterError):
    """The ledger of accepted uploads could not be read or written (a store's refusal, said as
    a sentence); the harvest goes on without it."""


class ApiError(HarvesterError):
    """keruta-api did not accept a request."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class RetryableError(ApiError):
    """A transient failure: the same request may succeed later (5xx, 429, timeouts, resets)."""

    def __init__(
        self, message: str, *, status_code: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status_code=status_code)
        self.retry_after = retry_after


class GaveUp(ApiError):
    """A retryable failure that stayed: the retries or the overall deadline ran out.

    Not a `RetryableError`, so no caller retries it again; the message says which limit ran
    out and carries the last error, which is also its `__cause__`.
    """


class RejectedError(ApiError):
    """A permanent refusal of this one request (4xx other than auth): do not retry it."""


class AuthRejected(ApiError):
    """401/403: the token is missing or wrong; the whole run stops at once (exit 6)."""


INTERRUPTED = "the harvest was interrupted"


class Interrupted(HarvesterError):
    """The run was asked to stop (SIGTERM/SIGINT) before this work could start."""
