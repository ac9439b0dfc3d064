"""The dashboard's handlers over an in-memory stand-in for the person's Session (the real one,
on a real API server, is in tests/integration/test_dashboard_browser.py): what is refused and
why, what goes through, and the live stream's first message."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, cast

from aiohttp.test_utils import TestClient, TestServer

from filterrelease.dashboard.guard import TOKEN_HEADER, allowed_hosts
from filterrelease.dashboard.server import Dashboard
from filterrelease.kube.api import KubeError
from filterrelease.kube.session import Session

RELEASE = {
    "metadata": {"namespace": "shop", "name": "headers", "resourceVersion": "1"},
    "spec": {"selector": {"matchLabels": {"app": "web"}}},
    "status": {"phase": "Progressing", "rollout": {"revision": "h", "step": 0}},
}


class StandIn:
    """The Session calls the dashboard makes, answered from memory."""

    def __init__(self, may_patch: bool = True) -> None:
        self.may_patch = may_patch
        self.requests: list[tuple[str, str, str]] = []
        self.can_i_calls = 0

    def releases(self, namespace: str | None) -> list[dict[str, Any]]:
        return [RELEASE]

    def watch_releases(
        self, namespace: str | None, stop: threading.Event, timeout: int = 30
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        yield "ADDED", RELEASE
        stop.wait()

    def release(self, namespace: str, name: str) -> dict[str, Any]:
        raise KubeError(404, f"{name} not found")

    def pods(self, namespace: str, match_labels: dict[str, str]) -> list[dict[str, Any]]:
        raise KubeError(403, "pods is forbidden")

    def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return [
            {
                "type": "Normal",
                "reason": "StepPassed",
                "message": "step 1/4",
                "lastTimestamp": "2026-01-01T00:00:00Z",
            }
        ]

    def wasm_plugin(self, namespace: str, name: str) -> dict[str, Any] | None:
        return None

    def can_i(self, verb: str, namespace: str) -> bool:
        self.can_i_calls += 1
        return self.may_patch

    def request(self, namespace: str, name: str, value: str) -> dict[str, Any]:
        self.requests.append((namespace, name, value))
        return RELEASE


Scenario = Callable[[TestClient[Any, Any], Dashboard], Awaitable[None]]


def run(scenario: Scenario, session: StandIn, *, read_only: bool = False) -> None:
    async def main() -> None:
        dashboard = Dashboard(cast(Session, session), None, read_only=read_only)
        server = TestServer(dashboard.app(), host="127.0.0.1")
        async with TestClient(server) as client:
            dashboard.allowed = allowed_hosts("127.0.0.1", server.port or 0)
            dashboard.start_watch(asyncio.get_running_loop())
            try:
                await scenario(client, dashboard)
            finally:
                dashboard.close()

    asyncio.run(main())


async def post(
    client: TestClient[Any, Any], body: Any, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    response = await client.post(
        "/api/releases/shop/headers/request",
        data=json.dumps(body),
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    return response.status, await response.json()


def test_the_page_carries_the_token_and_a_strict_content_security_policy() -> None:
    async def scenario(client: TestClient[Any, Any], dashboard: Dashboard) -> None:
        response = await client.get("/")
        page = await response.text()
        assert f'content="{dashboard.token}"' in page
        assert "script-src" not in response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]
        assert (await client.get("/static/app.js")).status == 200

    run(scenario, StandIn())


def test_a_request_with_the_token_goes_through_as_the_person() -> None:
    session = StandIn()

    async def scenario(client: TestClient[Any, Any], dashboard: Dashboard) -> None:
        status, body = await post(client, {"request": "pause"}, {TOKEN_HEADER: dashboard.token})
        assert status == 200, body
        assert session.requests == [("shop", "headers", "pause")]
        await post(client, {"request": "resume"}, {TOKEN_HEADER: dashboard.token})
        assert session.can_i_calls == 1  # the RBAC answer is cached per namespace

    run(scenario, session)


def test_refusals() -> None:
    session = StandIn()

    async def scenario(client: TestClient[Any, Any], dashboard: Dashboard) -> None:
        token = {TOKEN_HEADER: dashboard.token}
        assert (await post(client, {"request": "pause"}))[0] == 403  # no token
        assert (await post(client, {"request": "pause"}, {TOKEN_HEADER: "x"}))[0] == 403
        evil = {**token, "Origin": "http://evil.example"}
        assert (await post(client, {"request": "pause"}, evil))[0] == 403
        assert (await post(client, {"request": "delete"}, token))[0] == 400
        assert (await post(client, ["pause"], token))[0] == 400
        # DNS rebinding: the page of another name that resolves here gets nothing at all.
        rebound = await client.get("/api/releases", headers={"Host": "evil.example:80"})
        assert rebound.status == 403
        assert session.requests == []

    run(scenario, session)


def test_read_only_refuses_even_with_the_token_and_never_asks_rbac() -> None:
    session = StandIn()

    async def scenario(client: TestClient[Any, Any], dashboard: Dashboard) -> None:
        status, body = await post(client, {"request": "pause"}, {TOKEN_HEADER: dashboard.token})
        assert (status, body["message"]) == (403, "this dashboard is read-only")
        response = await client.get("/")
        assert 'name="filterrelease-read-only" content="true"' in await response.text()

    run(scenario, session, read_only=True)
    assert session.requests == []
    assert session.can_i_calls == 0


def test_rbac_that_denies_patch_hides_the_buttons_and_refuses_the_request() -> None:
    session = StandIn(may_patch=False)

    async def scenario(client: TestClient[Any, Any], dashboard: Dashboard) -> None:
        status, _ = await post(client, {"request": "pause"}, {TOKEN_HEADER: dashboard.token})
        assert status == 403
        view = await wait_for_detail(client)
        assert view["actions"] == []
        assert view["mayAct"] is False

    run(scenario, session)
    assert session.requests == []


async def wait_for_detail(client: TestClient[Any, Any]) -> dict[str, Any]:
    """The release page's model, once the watch thread has the release (polled, bounded)."""
    for _ in range(200):
        response = await client.get("/api/releases/shop/headers")
        if response.status == 200:
            return cast(dict[str, Any], await response.json())
        await asyncio.sleep(0.05)
    raise AssertionError("the watch never delivered the release")


def test_a_part_that_cannot_be_read_is_named_and_the_rest_shown() -> None:
    async def scenario(client: TestClient[Any, Any], dashboard: Dashboard) -> None:
        view = await wait_for_detail(client)
        assert view["problems"] == ["pods: pods is forbidden"]
        assert [e["reason"] for e in view["events"]] == ["StepPassed"]
        assert view["actions"] == ["promote", "promote-full", "pause", "abort"]

    run(scenario, StandIn())


def test_the_stream_starts_with_a_snapshot_of_every_release() -> None:
    async def scenario(client: TestClient[Any, Any], dashboard: Dashboard) -> None:
        await wait_for_detail(client)
        response = await client.get("/api/stream")
        assert response.headers["Content-Type"].startswith("text/event-stream")
        line = await response.content.readline()
        message = json.loads(line.decode().removeprefix("data: "))
        assert message["type"] == "snapshot"
        assert [(r["namespace"], r["name"]) for r in message["rows"]] == [("shop", "headers")]
        response.close()

    run(scenario, StandIn())
