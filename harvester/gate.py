"""The one gate every act with an effect outside this process passes.

Takes what the settings allow (`--dry-run`, `--keep-pvc`); gives a `Gate` that the keruta-api
client (uploads, status updates) and the task's volume (the PVC delete, the finalizer patch, the
Kubernetes Events) each require as an argument and ask before every act, so that a dry run or a
kept PVC cannot be forgotten by a new code path (rclone's SkipDestructive is the model). Reads
never pass it: they change nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from harvester.errors import HarvesterError


class Act(StrEnum):
    UPLOAD = "upload documents"
    SET_STATUS = "update the task status"
    DELETE_PVC = "delete the PVC"
    RELEASE_FINALIZER = "remove the PVC's pvc-protection finalizer"
    RECORD_EVENT = "record a Kubernetes Event"


# What --keep-pvc closes: the claim and what protects it. Events stay open: they are records of
# what happened, for `kubectl describe pvc`, and change nothing about the volume.
_KEEPS_PVC = frozenset({Act.DELETE_PVC, Act.RELEASE_FINALIZER})


class GateClosed(HarvesterError):
    """An act was attempted that the settings forbid; a programming error if ever raised."""


@dataclass(frozen=True, slots=True)
class Gate:
    """A dry run closes every act (it changes nothing); a kept PVC closes the PVC's release."""

    dry_run: bool = False
    keep_pvc: bool = False

    def why_closed(self, act: Act) -> str | None:
        """None when `act` may happen, else the reason it may not."""
        if self.dry_run:
            return "dry run (--dry-run)"
        if act in _KEEPS_PVC and self.keep_pvc:
            return "kept (--keep-pvc)"
        return None

    def check(self, act: Act) -> None:
        """Raise `GateClosed` unless `act` may happen."""
        reason = self.why_closed(act)
        if reason is not None:
            raise GateClosed(f"refused to {act}: {reason}")
