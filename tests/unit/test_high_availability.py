"""High availability's pure and in-process parts: settings, the write fence, admission from a
follower's view, the shared certificate, the probes and the CLI. The Lease election itself runs
against an in-memory Lease with the API server's resourceVersion rule (below) and, for real,
in tests/integration/test_failover.py."""

from __future__ import annotations

import asyncio
import copy
import functools
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes import client
from pydantic import ValidationError

from filterrelease.admission import confirmed_splits, server_names, webhook_configuration
from filterrelease.admission_tls import RENEW_BEFORE, ServingCertificate, issue
from filterrelease.config import Settings
from filterrelease.core.status import ProxiesStatus
from filterrelease.core.tracks import track_label
from filterrelease.health import HealthServer
from filterrelease.kube.api import KubeApi, KubeError, NotLeaderError
from filterrelease.kube.lease import LeaseApi
from filterrelease.leadership import LeaseLeadership
from filterrelease.splits import SplitRegistry
from filterrelease.telemetry import Metrics

NOW = datetime(2026, 12, 3, tzinfo=UTC)


def synchronously(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on its own event loop (the unit tier has no asyncio plugin)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return run


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- settings ---------------------------------------------------------------------------------


def test_lease_timings_default_to_controller_runtimes() -> None:
    s = Settings()
    assert (s.lease_duration_seconds, s.lease_renew_deadline_seconds) == (15.0, 10.0)
    assert s.lease_retry_period_seconds == 2.0
    assert s.leader_election is True


@pytest.mark.parametrize(
    ("duration", "deadline", "retry"),
    [("10", "10", "2"), ("15", "20", "2"), ("15", "10", "9")],
)
def test_lease_timings_that_cannot_work_are_refused_at_start(
    duration: str, deadline: str, retry: str
) -> None:
    env = {
        "FILTERRELEASE_LEASE_DURATION_SECONDS": duration,
        "FILTERRELEASE_LEASE_RENEW_DEADLINE_SECONDS": deadline,
        "FILTERRELEASE_LEASE_RETRY_PERIOD_SECONDS": retry,
    }
    with pytest.raises(ValidationError, match="lease duration > renew deadline"):
        Settings.from_env(env)


def test_identity_and_home_namespace() -> None:
    s = Settings.from_env(
        {"FILTERRELEASE_POD_NAME": "op-7d9-x", "FILTERRELEASE_OPERATOR_NAMESPACE": "ops"}
    )
    assert (s.identity, s.home_namespace) == ("op-7d9-x", "ops")
    assert Settings().home_namespace == "filterrelease-system"
    assert Settings().identity  # the host name when no pod name is given


def test_a_webhook_url_is_called_and_named_in_the_certificate() -> None:
    s = Settings(webhook_url="https://lb.example:8443/", webhook_service="ops/hook")
    assert server_names(s)[0] == "lb.example"
    hook = webhook_configuration(s, {"url": "https://10.0.0.1:9443", "caBundle": "Q0E="})
    config = hook["webhooks"][0]["clientConfig"]
    assert config == {"url": "https://lb.example:8443/pod-tracks", "caBundle": "Q0E="}


# -- the write fence --------------------------------------------------------------------------


@synchronously
async def test_a_replica_that_does_not_lead_writes_nothing() -> None:
    leading = False
    kube = KubeApi(client.ApiClient(), "filterrelease", may_write=lambda: leading)
    release = {"metadata": {"name": "r", "namespace": "shop", "uid": "u"}}
    writes: list[Callable[[], Any]] = [
        lambda: kube.patch_release_status("shop", "r", {"phase": "Healthy"}),
        lambda: kube.apply_wasmplugin({"metadata": {"name": "r", "namespace": "shop"}}),
        lambda: kube.delete_wasmplugin("shop", "r", None),
        lambda: kube.label_pod("shop", "p", "k", "v"),
        lambda: kube.remove_release_annotation("shop", "r", "filterrelease.dev/request"),
        lambda: kube.emit_event(release, type_="Normal", reason="R", message="m", now=NOW),
    ]
    for write in writes:
        with pytest.raises(NotLeaderError) as refused:
            await write()
        assert not refused.value.retriable
    kube.close()


# -- admission from a follower's view ---------------------------------------------------------


def release_body(name: str, *, split: bool, canary: bool = True) -> dict[str, Any]:
    spec: dict[str, Any] = {"selector": {"matchLabels": {"app": "web"}}}
    if canary:
        spec["strategy"] = {"canary": {"steps": [{"setWeight": 50}]}}
    return {
        "metadata": {"name": name, "namespace": "shop"},
        "spec": spec,
        "status": {"split": True} if split else {},
    }


class ReleaseReads:
    """get_release the way the API server answers it now (ahead of a lagging watch)."""

    def __init__(self, current: dict[str, dict[str, Any]], fail: bool = False) -> None:
        self.current = current
        self.fail = fail
        self.reads: list[str] = []

    async def get_release(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads.append(name)
        if self.fail:
            raise KubeError(503, "the API server is busy")
        return self.current.get(name)


@synchronously
async def test_a_follower_whose_watch_lags_the_split_still_labels_the_pod() -> None:
    splits = SplitRegistry()
    splits.load(
        [release_body("headers", split=False), release_body("plain", split=False, canary=False)]
    )
    # The leader has written status.split; this replica's watch has not delivered it yet.
    kube = ReleaseReads({"headers": release_body("headers", split=True)})
    labels = {"app": "web"}
    found = await confirmed_splits(kube, "shop", labels, splits, {})  # type: ignore[arg-type]
    assert found == {track_label("headers"): "stable"}
    assert kube.reads == ["headers"]  # a release that cannot split is never read


@synchronously
async def test_no_read_when_the_watch_already_shows_the_split_or_the_pod_is_not_selected() -> None:
    splits = SplitRegistry()
    splits.load([release_body("headers", split=True)])
    kube = ReleaseReads({})
    assert await confirmed_splits(kube, "shop", {"app": "web"}, splits, {}) == {}  # type: ignore[arg-type]
    splits.update_from_body(release_body("headers", split=False))
    assert await confirmed_splits(kube, "shop", {"app": "db"}, splits, {}) == {}  # type: ignore[arg-type]
    assert kube.reads == []


@synchronously
async def test_an_unsplit_release_read_fresh_adds_nothing_and_a_failed_read_labels() -> None:
    splits = SplitRegistry()
    splits.load([release_body("headers", split=False)])
    steady = ReleaseReads({"headers": release_body("headers", split=False)})
    assert await confirmed_splits(steady, "shop", {"app": "web"}, splits, {}) == {}  # type: ignore[arg-type]
    # Unsure: a track label too many is harmless, one too few leaves a pod without its filter.
    down = ReleaseReads({}, fail=True)
    found = await confirmed_splits(down, "shop", {"app": "web"}, splits, {})  # type: ignore[arg-type]
    assert found == {track_label("headers"): "stable"}


def test_releases_that_can_split_are_tracked_from_the_watch() -> None:
    splits = SplitRegistry()
    splits.load([release_body("a", split=False), release_body("b", split=True)])
    assert [r.name for r in splits.unsplit_canaries("shop")] == ["a"]
    splits.update_from_body(release_body("a", split=False, canary=False))
    assert splits.unsplit_canaries("shop") == ()
    splits.forget("shop", "b")
    assert splits.unsplit_canaries("shop") == ()
    assert splits.in_namespace("shop") == ()


# -- the shared serving certificate -----------------------------------------------------------


def test_a_shared_certificate_is_reused_only_while_it_serves_every_name() -> None:
    names = ["filterrelease-webhook.ops.svc", "127.0.0.1"]
    cert = issue(names, NOW)
    again = ServingCertificate.from_secret_data(copy.deepcopy(cert.as_secret_data()))
    assert again == cert
    assert cert.serves(names, NOW)
    assert cert.serves(["127.0.0.1"], NOW)  # a subset of its names
    assert not cert.serves([*names, "lb.example"], NOW)  # a name it does not carry
    assert not cert.serves(names, NOW + timedelta(days=3650) - RENEW_BEFORE)  # about to end
    other = issue(names, NOW)
    assert not ServingCertificate(cert.cert_pem, cert.key_pem, other.ca_pem).serves(names, NOW)
    assert ServingCertificate.from_secret_data({"tls.crt": b"x"}) is None


# -- probes -----------------------------------------------------------------------------------


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@synchronously
async def test_readiness_says_what_is_missing_and_who_leads() -> None:
    port = free_port()
    state = {"loaded": False, "listening": True, "leading": False}
    server = HealthServer(
        "127.0.0.1",
        port,
        {
            "FilterReleases loaded": lambda: state["loaded"],
            "webhook listening": lambda: state["listening"],
        },
        leading=lambda: state["leading"],
    )
    await server.start()
    base = f"http://127.0.0.1:{port}"
    try:
        assert await asyncio.to_thread(get, base + "/healthz") == (200, "ok\n")
        status, text = await asyncio.to_thread(get, base + "/readyz")
        assert (status, text) == (503, "not ready (follower): FilterReleases loaded\n")
        state["loaded"] = True
        assert await asyncio.to_thread(get, base + "/readyz") == (200, "ready (follower)\n")
        state["leading"] = True
        assert await asyncio.to_thread(get, base + "/readyz") == (200, "ready (leader)\n")
    finally:
        await server.stop()


# -- metrics and the command line -------------------------------------------------------------


def test_a_replica_that_stops_leading_drops_its_per_release_series() -> None:
    metrics = Metrics()
    metrics.set_build("0.1.0", "3.11.2", "1.45.2")
    metrics.set_leading(True)
    metrics.set_rollout("shop", "headers", weight=25, step=1)
    proxies = ProxiesStatus(ready="3/4", total=4, confirmed=3, stable=3, pending=1)
    metrics.set_proxies("shop", "headers", proxies)
    leading = {
        s.labels["state"]: s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == "filterrelease_proxies"
    }
    assert leading == {
        "stable": 3, "canary": 0, "pending": 1, "fallback": 0, "unknown": 0, "unreachable": 0
    }  # fmt: skip
    metrics.set_leading(False)
    exposed = {s.name: s for family in metrics.registry.collect() for s in family.samples}
    assert exposed["filterrelease_leader"].value == 0
    assert "filterrelease_canary_weight_percent" not in exposed
    assert "filterrelease_proxies" not in exposed
    info = exposed["filterrelease_build_info"]
    assert info.labels == {"version": "0.1.0", "python": "3.11.2", "kopf": "1.45.2"}


def test_help_and_version_do_not_start_the_operator() -> None:
    for flag in ("--help", "--version"):
        done = subprocess.run(
            [sys.executable, "-m", "filterrelease", flag],
            capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"}, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "filterrelease" in done.stdout
    assert "kopf" in done.stdout  # --version names the versions that run


# -- the election, on an in-memory Lease ------------------------------------------------------


class MemoryLeases(LeaseApi):
    """Leases kept in memory with the API server's rules: create refuses an existing name,
    replace refuses a stale resourceVersion (409). Writes are recorded."""

    def __init__(self) -> None:
        self.leases: dict[tuple[str, str], Any] = {}
        self.writes: list[tuple[str, str | None]] = []  # (verb, holder)
        self._version = 0

    async def read_lease(self, namespace: str, name: str) -> Any:
        if (namespace, name) not in self.leases:
            raise KubeError(404, "not found")
        return copy.deepcopy(self.leases[(namespace, name)])

    async def create_lease(self, namespace: str, lease: Any) -> Any:
        key = (namespace, lease.metadata.name)
        if key in self.leases:
            raise KubeError(409, "exists")
        return self._store(key, lease, "create")

    async def replace_lease(self, namespace: str, name: str, lease: Any) -> Any:
        current = self.leases.get((namespace, name))
        if current is None or current.metadata.resource_version != lease.metadata.resource_version:
            raise KubeError(409, "conflict")
        return self._store((namespace, name), lease, "replace")

    def _store(self, key: tuple[str, str], lease: Any, verb: str) -> Any:
        self._version += 1
        stored = copy.deepcopy(lease)
        stored.metadata.resource_version = str(self._version)
        self.leases[key] = stored
        self.writes.append((verb, stored.spec.holder_identity))
        return copy.deepcopy(stored)


async def until(condition: Callable[[], bool], what: str, within: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@synchronously
async def test_one_leader_at_a_time_and_a_clean_stop_hands_over_at_once() -> None:
    leases = MemoryLeases()
    settings = dict(
        lease_duration_seconds=30, lease_renew_deadline_seconds=20, lease_retry_period_seconds=1
    )
    led: list[str] = []

    def candidate(name: str) -> LeaseLeadership:
        async def on_lead() -> None:
            led.append(name)

        return LeaseLeadership(leases, Settings(pod_name=name, **settings), on_lead=on_lead)

    a, b = candidate("a"), candidate("b")
    await a.start()
    await until(lambda: a.leading, "a leading")
    await b.start()
    await asyncio.sleep(2.5)  # b tries twice meanwhile; the Lease is a's and far from expiry
    assert (a.leading, b.leading) == (True, False)
    assert not b.may_write()
    await a.stop()
    assert not a.may_write()  # no write after stop, whatever else is still running
    # Released, so b does not wait out the 30 s lease duration: it takes over at a retry.
    await until(lambda: b.leading, "b leading", within=10)
    await b.stop()
    assert led == ["a", "b"]
    lease = leases.leases[("filterrelease-system", "filterrelease-operator")]
    assert lease.spec.holder_identity is None  # b released it too
    # Counted as client-go does: when a new holder acquires (b), not when one releases.
    assert lease.spec.lease_transitions == 1
    holders = [holder for _, holder in leases.writes]
    assert holders[0] == "a"
    assert holders[-1] is None
    assert "b" in holders
