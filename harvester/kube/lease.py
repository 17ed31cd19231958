"""Leader election on a `coordination.k8s.io/v1` Lease, so two controller replicas never both act.

Takes the API client, the Lease's namespace and name, this replica's identity and the timings;
gives a `LeaderElector` whose thread keeps trying to hold the Lease (create it, renew it, or take
it over once its holder stopped renewing for `lease_duration`), and whose `leading` / `lost`
events tell the controller when to act and when to stop. Every write carries the Lease's
resourceVersion (optimistic concurrency): of two replicas writing at once, one gets 409 and
stays a follower. A leader that cannot renew within `renew_deadline` gives the lease up (`lost`):
it must stop acting at once, because another replica may take over as soon as the lease runs
out. No lease excludes two actors completely (clocks, pauses), which is why every act of the
controller is idempotent anyway.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from harvester.kube.cluster import CONTROLLER_ROLE, translate_error, unreachable_error
from harvester.kube.rest import REQUEST_TIMEOUT

LEASE_NAME = "keruta-harvester-controller"


class LeaderElector:
    """Holds (or waits for) the Lease on a thread; see the module docstring."""

    def __init__(
        self,
        api_client: client.ApiClient,
        namespace: str,
        identity: str,
        *,
        name: str = LEASE_NAME,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        on_problem: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not retry_period < renew_deadline < lease_duration:
            raise ValueError("leader election needs retry_period < renew_deadline < lease_duration")
        self._coordination = client.CoordinationV1Api(api_client)
        self._api_client = api_client
        self.namespace, self.name, self.identity = namespace, name, identity
        self._duration, self._deadline, self._period = lease_duration, renew_deadline, retry_period
        self._on_problem = on_problem or (lambda _text: None)
        self._clock = clock
        self.leading = threading.Event()
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)

    def start(self) -> LeaderElector:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop campaigning; a leader gives the Lease up (so a follower need not wait it out)."""
        self._stop.set()
        self._thread.join(timeout=self._period + REQUEST_TIMEOUT[1])
        if self.leading.is_set() and not self.lost.is_set():
            self._release()

    def _run(self) -> None:
        last_renewed = self._clock()
        said: str | None = None  # a problem is said once, until it changes or goes away
        while not self._stop.is_set():
            try:
                held = self.try_hold()
                said = None
            except Exception as exc:  # noqa: BLE001 - any failure is "not renewed"; said, retried
                problem = f"Lease {self.namespace}/{self.name}: {exc}"
                if problem != said:
                    self._on_problem(problem)
                    said = problem
                held = False
            now = self._clock()
            if held:
                last_renewed = now
                self.leading.set()
            elif self.leading.is_set() and now - last_renewed > self._deadline:
                # Not renewed in time: another replica may take over once the lease runs out,
                # so this one stops acting now, before it could.
                self.lost.set()
                return
            self._stop.wait(self._period)

    def try_hold(self) -> bool:
        """One round: True when this replica holds the Lease after it."""
        now = _micro_time()
        try:
            lease = self._coordination.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as exc:
            if exc.status != 404:
                raise self._refused(exc, "get") from exc
            return self._write(self._create, self._spec(now, transitions=0, acquired=now))
        except HTTPError as exc:
            raise unreachable_error(self._api_client, exc) from exc
        spec = lease.spec
        holder = spec.holder_identity if spec else None
        if spec is not None and holder == self.identity:
            spec.renew_time = now
            return self._write(self._replace, lease)
        renewed = (spec.renew_time or spec.acquire_time) if spec else None
        duration = (spec.lease_duration_seconds if spec else None) or self._duration
        if holder and renewed is not None and now < renewed + timedelta(seconds=duration):
            return False  # held, and renewed recently enough: follow
        transitions = ((spec.lease_transitions if spec else None) or 0) + 1
        lease.spec = self._spec(now, transitions=transitions, acquired=now)
        return self._write(self._replace, lease)

    def _spec(self, now: datetime, *, transitions: int, acquired: datetime) -> Any:
        return client.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=int(self._duration),
            acquire_time=acquired,
            renew_time=now,
            lease_transitions=transitions,
        )

    def _create(self, spec: Any) -> None:
        body = client.V1Lease(metadata=client.V1ObjectMeta(name=self.name), spec=spec)
        self._coordination.create_namespaced_lease(
            self.namespace, body, _request_timeout=REQUEST_TIMEOUT
        )

    def _replace(self, lease: Any) -> None:
        # The read's resourceVersion rides along: a concurrent writer makes this a 409.
        self._coordination.replace_namespaced_lease(
            self.name, self.namespace, lease, _request_timeout=REQUEST_TIMEOUT
        )

    def _write(self, write: Callable[[Any], None], body: Any) -> bool:
        verb = "create" if write == self._create else "update"
        try:
            write(body)
        except ApiException as exc:
            if exc.status == 409:
                return False  # another replica wrote first
            raise self._refused(exc, verb) from exc
        except HTTPError as exc:
            raise unreachable_error(self._api_client, exc) from exc
        return True

    def _release(self) -> None:
        verb = "get"
        try:
            lease = self._coordination.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=REQUEST_TIMEOUT
            )
            if lease.spec and lease.spec.holder_identity == self.identity:
                lease.spec.holder_identity = None
                lease.spec.renew_time = None
                verb = "update"
                self._replace(lease)
        except ApiException as exc:
            # Translated, as every other refusal: the raw exception's text is several lines
            # with the API server's headers and body.
            problem: Exception = self._refused(exc, verb)
            self._on_problem(f"Lease {self.namespace}/{self.name} not given up: {problem}")
        except HTTPError as exc:
            problem = unreachable_error(self._api_client, exc)
            self._on_problem(f"Lease {self.namespace}/{self.name} not given up: {problem}")

    def _refused(self, exc: ApiException, verb: str) -> Exception:
        return translate_error(exc, verb, "leases", self.name, self.namespace, role=CONTROLLER_ROLE)


def _micro_time() -> datetime:
    """Now, for a Lease's MicroTime fields. The client writes a datetime with `isoformat()`,
    which leaves out the fraction when it is zero; the API server then refuses the time
    (MicroTime needs the six digits), so a zero fraction is moved by one microsecond."""
    now = datetime.now(UTC)
    return now if now.microsecond else now.replace(microsecond=1)
