"""The dashboard's web server: thin aiohttp handlers over the Session (a person's own
credentials), a watch thread that pushes release changes to the browsers (Server-Sent Events),
and the page (static/: HTML, JS and CSS, no build step, nothing from a CDN)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import secrets
import signal
import threading
import time
import webbrowser
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from filterrelease.dashboard.actions import InvalidRequestError, validate_request
from filterrelease.dashboard.board import Board, Hub
from filterrelease.dashboard.guard import (
    TOKEN_HEADER,
    WILDCARDS,
    allowed_hosts,
    host_allowed,
    origin_allowed,
    token_matches,
)
from filterrelease.dashboard.view import event_rows, release_view
from filterrelease.kube.api import KubeError
from filterrelease.kube.session import Session

log = logging.getLogger("filterrelease.dashboard")

STATIC = Path(__file__).parent / "static"
# How long a "may this person patch releases here?" answer is trusted.
PERMISSION_SECONDS = 30.0
# A comment line on idle streams, so proxies and the browser keep the connection open.
HEARTBEAT_SECONDS = 15.0
# How long the watch asks the API server to hold each watch: also how long a stop can wait.
WATCH_SECONDS = 10

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Dashboard:
    def __init__(self, session: Session, namespace: str | None, *, read_only: bool) -> None:
        self.session = session
        self.namespace = namespace
        self.read_only = read_only
        self.token = secrets.token_urlsafe(32)
        self.board = Board()
        self.allowed: frozenset[str] | None = frozenset()  # set once the port is bound
        self.stop = threading.Event()
        self.connected: dict[str, Any] = {"ok": False, "message": "connecting"}
        self._permissions: dict[str, tuple[float, bool]] = {}
        self._permissions_lock = threading.Lock()
        self._hub: Hub | None = None
        self._watcher: threading.Thread | None = None

    # -- the watch thread ------------------------------------------------------------------

    def start_watch(self, loop: asyncio.AbstractEventLoop) -> None:
        self._hub = Hub(loop)
        self._watcher = threading.Thread(target=self._watch, name="dashboard-watch", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        backoff = 1.0
        while not self.stop.is_set():
            try:
                # A fresh list first: releases deleted while the watch was lost go away.
                for message in self.board.replace(self.session.releases(self.namespace)):
                    self._publish(message)
                self._set_connected(True, "live")
                backoff = 1.0
                for kind, release in self.session.watch_releases(
                    self.namespace, self.stop, timeout=WATCH_SECONDS
                ):
                    change = self.board.apply(kind, release)
                    if change is not None:
                        self._publish(change)
            except Exception as exc:
                # Not only KubeError: a connection cut mid-stream surfaces from the client
                # library as its own error, and a dead watch thread would freeze every page.
                why = exc.message if isinstance(exc, KubeError) else type(exc).__name__
                log.warning("watching releases failed (%s): retrying in %.0fs", why, backoff)
                self._set_connected(False, f"reconnecting: {why}")
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def _set_connected(self, ok: bool, message: str) -> None:
        if self.connected["ok"] != ok or self.connected["message"] != message:
            self.connected = {"ok": ok, "message": message}
            self._publish({"type": "connection", **self.connected})

    def _publish(self, message: dict[str, Any]) -> None:
        if self._hub is not None:
            self._hub.publish(message)

    def close(self) -> None:
        self.stop.set()
        if self._hub is not None:
            self._hub.close()
        if self._watcher is not None:
            # The watch notices the stop within WATCH_SECONDS; Ctrl-C should not wait that
            # long, and the thread is a daemon: a watch still open cannot keep the process.
            self._watcher.join(timeout=2)

    # -- permissions -------------------------------------------------------------------------

    def may_act(self, namespace: str) -> bool:
        """Whether the buttons show and a POST goes through: never when read-only, else what
        RBAC says about patching releases there (asked at most every PERMISSION_SECONDS)."""
        if self.read_only:
            return False
        now = time.monotonic()
        with self._permissions_lock:
            cached = self._permissions.get(namespace)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            allowed = self.session.can_i("patch", namespace)
        except KubeError as exc:
            log.warning("could not ask whether releases in %s may be patched: %s", namespace, exc)
            allowed = False
        with self._permissions_lock:
            self._permissions[namespace] = (now + PERMISSION_SECONDS, allowed)
        return allowed

    # -- the web app ---------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/", self.index)
        app.router.add_get("/api/stream", self.stream)
        app.router.add_get("/api/releases", self.list_releases)
        app.router.add_get("/api/releases/{namespace}/{name}", self.detail)
        app.router.add_get("/api/releases/{namespace}/{name}/events", self.events)
        app.router.add_post("/api/releases/{namespace}/{name}/request", self.request)
        app.router.add_static("/static/", STATIC)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not host_allowed(request.headers.get("Host"), self.allowed):
            # A DNS-rebinding page reaches us under its own name: refuse to serve it anything.
            return web.json_response({"error": "unexpected Host header"}, status=403)
        response = await handler(request)
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
            "form-action 'none'; base-uri 'none'",
        )
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    async def index(self, _: web.Request) -> web.Response:
        page = (STATIC / "index.html").read_text(encoding="utf-8")
        page = page.replace("__TOKEN__", self.token).replace(
            "__READ_ONLY__", "true" if self.read_only else "false"
        )
        return web.Response(text=page, content_type="text/html", charset="utf-8")

    async def list_releases(self, _: web.Request) -> web.Response:
        return web.json_response({"rows": self.board.rows(), "connection": self.connected})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        assert self._hub is not None
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        queue = self._hub.subscribe()
        try:
            snapshot = {"type": "snapshot", "rows": self.board.rows(), **_conn(self.connected)}
            await response.write(_sse(snapshot))
            while True:
                try:
                    message = await asyncio.wait_for(queue.get(), HEARTBEAT_SECONDS)
                except TimeoutError:
                    await response.write(b": heartbeat\n\n")
                    continue
                if message is None:
                    break
                await response.write(_sse(message))
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the browser went away (or the server stops)
        finally:
            self._hub.unsubscribe(queue)
        return response

    async def detail(self, request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        try:
            view = await asyncio.to_thread(self._detail, namespace, name)
        except KubeError as exc:
            return _kube_error(exc)
        return web.json_response(view)

    def _detail(self, namespace: str, name: str) -> dict[str, Any]:
        release = self.board.release((namespace, name)) or self.session.release(namespace, name)
        problems: list[str] = []
        selector = ((release.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        pods = _or_note(lambda: self.session.pods(namespace, selector), [], "pods", problems)
        events = _or_note(lambda: self.session.events(namespace, name), [], "events", problems)
        plugins: list[dict[str, Any]] = []
        for plugin_name in (release.get("status") or {}).get("wasmPlugins") or []:
            found = _or_note(
                functools.partial(self.session.wasm_plugin, namespace, plugin_name),
                None,
                f"WasmPlugin {plugin_name}",
                problems,
            )
            if found is not None:
                plugins.append(found)
        view = release_view(
            release,
            metrics=self.board.metrics((namespace, name)),
            pods=pods if selector else [],
            events=events,
            plugins=plugins,
            may_act=self.may_act(namespace),
        )
        view["problems"] = problems
        return view

    async def events(self, request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        try:
            found = await asyncio.to_thread(self.session.events, namespace, name)
        except KubeError as exc:
            return _kube_error(exc)
        return web.json_response({"events": event_rows(found)})

    async def request(self, request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        if self.read_only:
            return _refuse(403, "this dashboard is read-only")
        if not token_matches(request.headers.get(TOKEN_HEADER), self.token):
            return _refuse(403, "missing or wrong dashboard token: reload the page")
        if not origin_allowed(request.headers.get("Origin"), request.headers.get("Host")):
            return _refuse(403, "cross-origin request refused")
        try:
            body = await request.json()
            value = validate_request(body.get("request") if isinstance(body, dict) else None)
        except (json.JSONDecodeError, InvalidRequestError) as exc:
            return _refuse(400, str(exc))
        if not await asyncio.to_thread(self.may_act, namespace):
            return _refuse(403, f"you may not patch FilterReleases in {namespace}")
        try:
            await asyncio.to_thread(self.session.request, namespace, name, value)
        except KubeError as exc:
            return _kube_error(exc)
        log.info("requested %s on %s/%s", value, namespace, name)
        return web.json_response(
            {"ok": True, "message": f"asked the operator to {value} {namespace}/{name}"}
        )


def _or_note(fetch: Callable[[], Any], default: Any, what: str, problems: list[str]) -> Any:
    """A part of the page that could not be read is left out and said so, not the whole page."""
    try:
        return fetch()
    except KubeError as exc:
        problems.append(f"{what}: {exc.message}")
        return default


def _conn(connected: dict[str, Any]) -> dict[str, Any]:
    return {"connection": dict(connected)}


def _sse(message: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(message, separators=(',', ':'))}\n\n".encode()


def _refuse(status: int, message: str) -> web.Response:
    return web.json_response({"ok": False, "message": message}, status=status)


def _kube_error(exc: KubeError) -> web.Response:
    # 0: the API server was not reached at all; to the browser that is a bad gateway.
    status = exc.status if 400 <= exc.status < 600 else 502
    return _refuse(status, exc.message)


# -- the entry point ---------------------------------------------------------------------------


def serve(
    session: Session,
    *,
    namespace: str | None,
    address: str,
    port: int,
    read_only: bool,
    open_browser: bool,
) -> None:
    """Serve the dashboard until Ctrl-C or SIGTERM; prints the URL (port 0: any free port)."""
    asyncio.run(_serve(Dashboard(session, namespace, read_only=read_only), address, port,
                       open_browser))  # fmt: skip


async def _serve(dashboard: Dashboard, address: str, port: int, open_browser: bool) -> None:
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopped.set)
    runner = web.AppRunner(dashboard.app(), access_log=None, shutdown_timeout=2)
    await runner.setup()
    try:
        site = web.TCPSite(runner, address, port)
        await site.start()
        bound = runner.addresses[0][1]
        dashboard.allowed = allowed_hosts(address, bound)
        dashboard.start_watch(loop)
        url = f"http://{_url_host(address)}:{bound}/"
        mode = "read-only" if dashboard.read_only else "actions allowed by your RBAC"
        print(f"filterrelease dashboard on {url} ({mode}); Ctrl-C to stop", flush=True)
        if dashboard.allowed is None and not dashboard.read_only:
            log.warning("bound to all addresses with actions on: any page that can reach this "
                        "port may load it under any name; prefer --read-only here")  # fmt: skip
        if open_browser:
            await asyncio.to_thread(webbrowser.open, url)
        await stopped.wait()
    finally:
        dashboard.close()
        with contextlib.suppress(Exception):
            await runner.cleanup()


def _url_host(address: str) -> str:
    if address in WILDCARDS:
        return "127.0.0.1"
    return f"[{address}]" if ":" in address else address
