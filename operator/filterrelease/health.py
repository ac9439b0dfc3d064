"""The probes' endpoint: GET /healthz (liveness) and GET /readyz (readiness).

Ready means this replica can do its part for the cluster now, whether it leads or not: its list
of FilterReleases is loaded (the pod admission webhook answers from it) and, with the webhook on,
the webhook listens. A follower is ready: every replica serves the webhook, and the webhook
Service must send pod admissions to followers too. Leadership is in the body, for people.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web

log = logging.getLogger(__name__)

# name → is it true now? Every check must pass for /readyz to answer 200.
Checks = dict[str, Callable[[], bool]]


class HealthServer:
    def __init__(
        self,
        address: str,
        port: int,
        readiness: Checks,
        leading: Callable[[], bool],
    ) -> None:
        self._address = address
        self._port = port
        self._readiness = readiness
        self._leading = leading
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._address, self._port).start()
        log.info("probes on http://%s:%d/healthz and /readyz", self._address, self._port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _healthz(self, _: web.Request) -> web.Response:
        # Answering at all is the signal: the event loop is not stuck.
        return web.Response(text="ok\n")

    async def _readyz(self, _: web.Request) -> web.Response:
        failing = [name for name, check in self._readiness.items() if not check()]
        role = "leader" if self._leading() else "follower"
        if failing:
            return web.Response(status=503, text=f"not ready ({role}): {', '.join(failing)}\n")
        return web.Response(text=f"ready ({role})\n")
