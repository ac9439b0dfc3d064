"""The coordination.k8s.io/v1 Lease that elects the one replica allowed to write.

The election loop is the Kubernetes client's own (`kubernetes.aio.leaderelection`); this module
gives it a lock on the Lease through our synchronous client (the same credentials, worker
threads and error mapping as every other call, no second HTTP stack), and adds what that loop
lacks: releasing the Lease on a clean shutdown, so that a rolling update hands over at once
instead of after a whole lease duration, and the `leaseTransitions` count other tools read.

Every write is a replace with the resourceVersion last read: two candidates that both saw the
Lease expire cannot both take it, the API server refuses the second with a conflict.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.aio.client.exceptions import ApiException as AioApiException
from kubernetes.aio.leaderelection.electionconfig import Config as ElectionConfig
from kubernetes.aio.leaderelection.leaderelection import LeaderElection
from kubernetes.aio.leaderelection.leaderelectionrecord import LeaderElectionRecord
from kubernetes.aio.leaderelection.resourcelock.baselock import BaseLock

from filterrelease.kube.api import KubeApi, KubeError

log = logging.getLogger(__name__)

# What a released Lease says: nobody holds it, and it expires a second after release.
RELEASED_DURATION_SECONDS = 1


class LeaseApi(KubeApi):
    """Reads and writes of Leases (a KubeApi for its worker threads and error mapping)."""

    def __init__(self, api_client: client.ApiClient, field_manager: str, timeout: float) -> None:
        super().__init__(api_client, field_manager)
        self._coordination = client.CoordinationV1Api(api_client)
        # A call that hangs must not hold the renew loop past its deadline: the leader would
        # go on writing while a follower, seeing no renewal, takes the Lease.
        self._timeout = timeout

    async def read_lease(self, namespace: str, name: str) -> Any:
        return await self._call(
            self._coordination.read_namespaced_lease, name, namespace,
            _request_timeout=self._timeout,
        )  # fmt: skip

    async def create_lease(self, namespace: str, lease: Any) -> Any:
        return await self._call(
            self._coordination.create_namespaced_lease, namespace, lease,
            _request_timeout=self._timeout,
        )  # fmt: skip

    async def replace_lease(self, namespace: str, name: str, lease: Any) -> Any:
        """Refused with 409 when the Lease changed since `lease` was read."""
        return await self._call(
            self._coordination.replace_namespaced_lease, name, namespace, lease,
            _request_timeout=self._timeout,
        )  # fmt: skip


class LeaseLock(BaseLock):
    """The election loop's lock (get / create / update an election record) on one Lease."""

    def __init__(self, api: LeaseApi, name: str, namespace: str, identity: str) -> None:
        super().__init__(name, namespace, identity)
        self._api = api
        self._lease: Any = None  # the V1Lease last read or written (its resourceVersion)

    async def get(
        self, name: str, namespace: str
    ) -> tuple[bool, LeaderElectionRecord] | tuple[bool, Exception]:
        try:
            self._lease = await self._api.read_lease(namespace, name)
        except KubeError as err:
            # The loop only creates the Lease on a clean 404, read from this exception's body.
            body = json.dumps({"code": err.status, "message": err.message})
            return False, AioApiException(status=err.status, reason=err.message, body=body)
        return True, _record(self._lease)

    async def create(
        self, name: str, namespace: str, election_record: LeaderElectionRecord
    ) -> bool:
        lease = client.V1Lease(
            metadata=client.V1ObjectMeta(name=name, namespace=namespace),
            spec=_spec(election_record, client.V1LeaseSpec(lease_transitions=0)),
        )
        try:
            self._lease = await self._api.create_lease(namespace, lease)
        except KubeError as err:
            _log_refused("create", name, err)
            return False
        return True

    async def update(self, name: str, namespace: str, updated_record: LeaderElectionRecord) -> bool:
        if self._lease is None:
            return False
        spec = self._lease.spec or client.V1LeaseSpec()
        if spec.holder_identity != updated_record.holder_identity:
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
        self._lease.spec = _spec(updated_record, spec)
        try:
            self._lease = await self._api.replace_lease(namespace, name, self._lease)
        except KubeError as err:
            _log_refused("update", name, err)
            self._lease = None  # read again before the next attempt
            return False
        return True

    async def release(self) -> bool:
        """Give the Lease up if we hold it: the next candidate takes it at its next retry.

        False when we did not hold it (any more) or the write failed; the Lease then simply
        expires."""
        try:
            lease = await self._api.read_lease(self.namespace, self.name)
        except KubeError as err:
            log.warning("cannot read Lease %s/%s to release it: %s", self.namespace, self.name, err)
            return False
        if lease.spec is None or lease.spec.holder_identity != self.identity:
            return False
        lease.spec.holder_identity = None
        lease.spec.lease_duration_seconds = RELEASED_DURATION_SECONDS
        lease.spec.renew_time = datetime.now(UTC)
        try:
            await self._api.replace_lease(self.namespace, self.name, lease)
        except KubeError as err:
            log.warning("cannot release Lease %s/%s: %s", self.namespace, self.name, err)
            return False
        return True


async def hold(
    lock: LeaseLock,
    *,
    lease_duration: float,
    renew_deadline: float,
    retry_period: float,
    on_started: Callable[[], Coroutine[Any, Any, None]],
    on_stopped: Callable[[], Coroutine[Any, Any, None]],
) -> None:
    """One term: wait until the Lease is ours, run `on_started` as a task while renewing it
    every `retry_period`, and return once a renewal failed for `renew_deadline` (the task is
    cancelled and `on_stopped` awaited first)."""
    election = LeaderElection(
        ElectionConfig(
            lock,
            lease_duration=lease_duration,
            renew_deadline=renew_deadline,
            retry_period=retry_period,
            onstarted_leading=on_started,
            onstopped_leading=on_stopped,
        )
    )
    await election.run()


def _record(lease: Any) -> LeaderElectionRecord:
    """The election record of a Lease: None fields where the Lease has none (released), which
    the loop takes as free to acquire. Times stay in the Lease's own spelling, so two reads of
    an unchanged Lease compare equal (the loop measures expiry from the last change it saw)."""
    spec = lease.spec
    if spec is None:
        return LeaderElectionRecord(None, None, None, None)
    return LeaderElectionRecord(
        spec.holder_identity or None,
        str(spec.lease_duration_seconds) if spec.lease_duration_seconds else None,
        spec.acquire_time.isoformat() if spec.acquire_time else None,
        spec.renew_time.isoformat() if spec.renew_time else None,
    )


def _spec(record: LeaderElectionRecord, spec: Any) -> Any:
    """Write a record the loop made into a Lease spec. The loop stamps its records with the
    local wall clock as text; the Lease gets the same instant as a UTC time."""
    now = datetime.now(UTC)
    spec.holder_identity = record.holder_identity
    spec.lease_duration_seconds = int(float(record.lease_duration or 0)) or None
    spec.acquire_time = _instant(record.acquire_time) or now
    spec.renew_time = _instant(record.renew_time) or now
    return spec


def _instant(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.astimezone(UTC)


def _log_refused(verb: str, name: str, err: KubeError) -> None:
    # A conflict is the election working (another candidate wrote first): not worth a warning.
    if err.status == 409:
        log.debug("Lease %s: %s lost a race (409)", name, verb)
    else:
        log.warning("Lease %s: cannot %s: %s", name, verb, err)
