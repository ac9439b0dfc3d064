"""The shell around canary webhooks: gates the rollout waits on, events it only tells about.

gate() asks every hook of one type at once and combines their answers (core.hooks.combine);
what the answer means for the rollout is the state machine's (core/canary.py). Notifier sends
event hooks fire-and-forget: a reconcile never waits on a Slack bridge, and a receiver that is
down costs a log line, not a stuck rollout.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

from filterrelease.core.hooks import (
    Event,
    GateResult,
    HookType,
    Subject,
    Webhook,
    combine,
    of_type,
    payload,
)
from filterrelease.providers.hook import call

log = logging.getLogger(__name__)


async def _ask(webhook: Webhook, subject: Subject, executor: Executor | None) -> GateResult:
    try:
        return await call(webhook, payload(webhook, subject), executor=executor)
    except Exception as exc:
        # call() reports every expected failure as a result, so this is a bug. A gate that
        # cannot be asked stays shut (and a rollback hook stays silent) rather than crash the
        # reconcile; the traceback goes to the log.
        log.exception("webhook %s could not be called", webhook.name)
        return GateResult(passed=False, message=f"{webhook.name}: internal error: {exc!r}")


async def gate(
    webhooks: Iterable[Webhook],
    hook_type: HookType,
    subject: Subject,
    *,
    executor: Executor | None = None,
) -> GateResult:
    """Ask all hooks of one type at once; gates must all pass, one rollback hook is enough.

    Concurrent where Flagger asks one after another and stops at the first "no": the wait is
    the slowest hook's, not the sum of them, and every refusal is named in the message. The
    price: with two pre-rollout hooks, the second runs even when the first fails.
    Returns within the longest timeout of those hooks, plus a second.
    """
    if hook_type is HookType.EVENT:
        raise ValueError("event hooks are notifications: use Notifier.send")
    hooks = of_type(webhooks, hook_type)
    results = await asyncio.gather(*(_ask(w, subject, executor) for w in hooks))
    return combine(hook_type, results)


class _Lane:
    """Deliveries to one receiver, one at a time in the order they were sent."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class Notifier:
    """Sends event hooks in the background.

    Per receiver URL, events arrive in the order they happened (a chat channel reading
    "promoted" before "weight 50%" helps nobody); different receivers are served in parallel,
    at most `concurrency` calls at a time, in a thread pool of that size of the notifier's own,
    so slow receivers never take the threads the Kubernetes adapter needs. At most
    `max_pending` deliveries wait; beyond that new ones are dropped with a warning instead of
    piling up in memory while a receiver is down.
    """

    def __init__(self, *, concurrency: int = 4, max_pending: int = 256) -> None:
        if concurrency < 1 or max_pending < 1:
            raise ValueError("concurrency and max_pending must be at least 1")
        self._executor = ThreadPoolExecutor(concurrency, thread_name_prefix="webhook-event")
        self._slots = asyncio.Semaphore(concurrency)
        self._max_pending = max_pending
        self._lanes: dict[str, _Lane] = {}
        # The loop keeps only weak references to tasks: without this set a delivery could be
        # garbage-collected half-way.
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def pending(self) -> int:
        """Deliveries sent and not finished yet."""
        return len(self._tasks)

    def send(self, webhooks: Iterable[Webhook], subject: Subject, event: Event) -> int:
        """Schedule the event to every event hook among webhooks; return how many were.

        Never waits and never raises for a receiver; must be called from the event loop.
        """
        scheduled = 0
        for hook in of_type(webhooks, HookType.EVENT):
            if self._closed:
                log.warning("event for webhook %s dropped: shutting down", hook.name)
                continue
            if len(self._tasks) >= self._max_pending:
                log.warning(
                    "event for webhook %s dropped: %d deliveries already waiting",
                    hook.name,
                    len(self._tasks),
                )
                continue
            body = payload(hook, subject, event)
            task = asyncio.get_running_loop().create_task(
                self._deliver(hook, body), name=f"webhook-event {hook.name}"
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            scheduled += 1
        return scheduled

    async def _deliver(self, hook: Webhook, body: dict[str, Any]) -> None:
        # Joining the lane happens before the first await, so tasks queue on its lock in the
        # order send() created them: asyncio.Lock wakes waiters first in, first out.
        lane = self._lanes.setdefault(hook.url, _Lane())
        lane.users += 1
        try:
            async with lane.lock, self._slots:
                result = await call(hook, body, executor=self._executor)
            if not result.passed:
                log.warning("event webhook failed: %s", result.message)
        except Exception:
            log.exception("event webhook %s could not be called", hook.name)
        finally:
            lane.users -= 1
            if lane.users == 0:
                del self._lanes[hook.url]

    async def aclose(self, grace_seconds: float = 5.0) -> None:
        """Stop taking events; give pending deliveries up to grace_seconds, then drop them.

        A dropped call's worker thread finishes on its own, within its hook's timeout.
        """
        self._closed = True
        pending = set(self._tasks)
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace_seconds)
            if late:
                log.warning("%d event webhook deliveries dropped at shutdown", len(late))
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)
