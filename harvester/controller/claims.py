"""Claims stuck `Terminating`: the volume a harvest released that Kubernetes does not let go.

Takes the controller's Kubernetes actions, where to look (namespaces, the label selector) and
the threshold (`--stuck-claim-after`); gives `StuckClaims`, whose `run` checks every so often
and says each claim that stays `Terminating` longer than the threshold once: a log line, a
Warning Event on the claim, and the gauge `keruta_harvester_claims_stuck_terminating`.
pvc-protection keeps a deleted claim while any pod object that used it exists, finished pods
included; the controller's TTLs normally remove them, so a stuck claim means something else
holds it (a pod of another workload, a Job without the TTL, a controller that was down).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol

from harvester.errors import HarvesterError
from harvester.model import TerminatingClaim
from harvester.stats import Level, Listener


class ClaimActions(Protocol):
    def terminating_claims(
        self, namespaces: Sequence[str] | None, selector: str
    ) -> list[TerminatingClaim]: ...

    def claim_event(self, claim: TerminatingClaim, reason: str, message: str) -> str | None: ...


class StuckClaims:
    """See the module docstring."""

    def __init__(
        self,
        actions: ClaimActions,
        namespaces: Sequence[str] | None,
        selector: str,
        after: float,
        listener: Listener,
        count: Callable[[int], None],
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._actions, self._namespaces, self._selector = actions, namespaces, selector
        self._after, self._listener, self._count, self._now = after, listener, count, now
        self._said: set[str] = set()  # uids of the claims already reported

    def run(self, stop: threading.Event) -> None:
        """Check until `stop` is set: every half threshold, at most every minute."""
        every = min(max(self._after / 2, 0.5), 60.0)
        while not stop.wait(every):
            try:
                self.check()
            except HarvesterError as exc:
                self._listener.notice(Level.WARNING, f"controller: stuck claims not checked: {exc}")

    def check(self) -> None:
        now = self._now()
        stuck = [
            claim
            for claim in self._actions.terminating_claims(self._namespaces, self._selector)
            if (now - claim.deleted_at).total_seconds() > self._after
        ]
        self._count(len(stuck))
        self._listener.notice(
            Level.DEBUG, f"controller: {len(stuck)} claims Terminating past the threshold"
        )
        self._said &= {claim.uid for claim in stuck}
        for claim in stuck:
            if claim.uid in self._said:
                continue
            self._said.add(claim.uid)
            minutes = (now - claim.deleted_at).total_seconds() / 60
            message = (
                f"PVC {claim.namespace}/{claim.name} has been Terminating for {minutes:.0f} min: "
                "a pod object that used it still exists (pvc-protection counts finished pods "
                "too); delete that pod or its Job (kubectl get pods -o wide shows who mounts it)"
            )
            self._listener.notice(Level.WARNING, message)
            problem = self._actions.claim_event(claim, "StuckTerminating", message)
            if problem is not None:
                self._listener.notice(Level.WARNING, f"Kubernetes Event not written: {problem}")
