"""What stages tell the reporter: the `Listener` protocol.

Stages count; reporters print. A stage calls these methods from any thread, so implementations
must be thread-safe and cheap (`advanced` is called for every chunk sent).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol


class Stage(StrEnum):
    SCAN = "scan"
    HASH = "hash"
    UPLOAD = "upload"


class Level(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class Listener(Protocol):
    def stage_started(self, stage: Stage, files: int, nbytes: int) -> None:
        """A stage begins with this much work ahead (0 when unknown, as for the scan)."""

    def advanced(self, stage: Stage, files: int = 0, nbytes: int = 0) -> None:
        """Some work of the stage is done: whole files and/or bytes."""

    def file_failed(self, rel_path: str, message: str) -> None:
        """A document could not be harvested; `message` is a full sentence."""

    def notice(self, level: Level, message: str) -> None:
        """Anything else a person should read."""

    def stage_finished(self, stage: Stage) -> None:
        """The stage is over."""


class NullListener:
    """A listener that ignores everything (library use, tests of single stages)."""

    def stage_started(self, stage: Stage, files: int, nbytes: int) -> None:
        pass

    def advanced(self, stage: Stage, files: int = 0, nbytes: int = 0) -> None:
        pass

    def file_failed(self, rel_path: str, message: str) -> None:
        pass

    def notice(self, level: Level, message: str) -> None:
        pass

    def stage_finished(self, stage: Stage) -> None:
        pass
