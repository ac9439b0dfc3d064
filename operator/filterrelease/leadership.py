"""Which replica may reconcile and write: the holder of the Lease (kube/lease.py).

Every replica runs the same watches and serves the pod admission webhook from its own view of
the releases, so a follower is warm: when it takes the Lease over, its first act is one
reconcile of every release (`on_lead`), from the status the last leader wrote. Until then its
reconciles are skipped, and the kube adapter refuses its writes (`may_write`), so even a reconcile
that was under way when the Lease was lost cannot write after the renew deadline, which passes
before any other candidate can take the Lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from filterrelease.config import Settings
from filterrelease.kube.lease import LeaseApi, LeaseLock, hold

log = logging.getLogger(__name__)


class Leadership:
    """Always leading: the operator runs alone (leader election off)."""

    def __init__(self) -> None:
        self._leading = True

    @property
    def leading(self) -> bool:
        return self._leading

    def may_write(self) -> bool:
        return self._leading

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class LeaseLeadership(Leadership):
    """Campaign for the Lease for as long as the operator runs; lead while holding it."""

    def __init__(
        self,
        api: LeaseApi,
        settings: Settings,
        *,
        on_lead: Callable[[], Coroutine[Any, Any, None]],
        on_change: Callable[[bool], None] = lambda leading: None,
    ) -> None:
        super().__init__()
        self._leading = False
        self._settings = settings
        self._lock = LeaseLock(
            api,
            settings.lease_name,
            settings.lease_namespace or settings.home_namespace,
            settings.identity,
        )
        self._on_lead = on_lead
        self._on_change = on_change
        self._task: asyncio.Task[None] | None = None

    @property
    def identity(self) -> str:
        return str(self._lock.identity)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._campaign(), name="leader election")

    async def stop(self) -> None:
        """Stop writing at once, stop campaigning, and give the Lease up if we hold it."""
        was_leading = self._leading
        self._set(leading=False)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if was_leading and await self._lock.release():
            log.info("released Lease %s/%s", self._lock.namespace, self._lock.name)

    async def _campaign(self) -> None:
        s = self._settings
        log.info(
            "campaigning for Lease %s/%s as %s",
            self._lock.namespace, self._lock.name, self._lock.identity,
        )  # fmt: skip
        while True:
            try:
                await hold(
                    self._lock,
                    lease_duration=s.lease_duration_seconds,
                    renew_deadline=s.lease_renew_deadline_seconds,
                    retry_period=s.lease_retry_period_seconds,
                    on_started=self._started,
                    on_stopped=self._stopped,
                )
            except Exception:
                # Never let an election error end the campaign: a follower that stopped
                # campaigning could never take over.
                log.exception("leader election failed; campaigning again")
                self._set(leading=False)
                await asyncio.sleep(s.lease_retry_period_seconds)

    async def _started(self) -> None:
        # Runs as a task the election cancels when the Lease is lost: so does the catch-up.
        self._set(leading=True)
        log.info("leading (Lease %s/%s): reconciling every release", self._lock.namespace,
                 self._lock.name)  # fmt: skip
        await self._on_lead()

    async def _stopped(self) -> None:
        self._set(leading=False)
        log.warning("lost Lease %s/%s: no more writes from this replica", self._lock.namespace,
                    self._lock.name)  # fmt: skip

    def _set(self, *, leading: bool) -> None:
        if leading != self._leading:
            self._leading = leading
            self._on_change(leading)
