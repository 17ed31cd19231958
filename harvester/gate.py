"""The one gate every act with an effect outside this process passes.

Uploads, status updates and the PVC deletion all ask the gate first, so that `--dry-run` and
`--keep-pvc` cannot be forgotten by a new code path (rclone's SkipDestructive is the model).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from harvester.errors import HarvesterError


class Act(StrEnum):
    UPLOAD = "upload documents"
    SET_STATUS = "update the task status"
    DELETE_PVC = "delete the PVC"


class GateClosed(HarvesterError):
    """An act was attempted that the settings forbid; a programming error if ever raised."""


@dataclass(frozen=True, slots=True)
class Gate:
    dry_run: bool = False
    keep_pvc: bool = False

    def why_closed(self, act: Act) -> str | None:
        """None when `act` may happen, else the reason it may not."""
        if self.dry_run:
            return "dry run (--dry-run)"
        if act is Act.DELETE_PVC and self.keep_pvc:
            return "kept (--keep-pvc)"
        return None

    def check(self, act: Act) -> None:
        reason = self.why_closed(act)
        if reason is not None:
            raise GateClosed(f"refused to {act}: {reason}")
