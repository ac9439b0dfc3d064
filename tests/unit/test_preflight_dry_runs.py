"""The pre-flight's Envoy dry runs: one per (module, pluginConfig) however many releases ask at
once, and none for a verdict the release's status already holds (after a restart)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, cast

from filterrelease.core.module import ModuleProblem, Reason, VerifiedModule, dry_run_key
from filterrelease.core.spec import Module
from filterrelease.ports import DryRun
from filterrelease.preflight import Preflight
from filterrelease.providers.registry import RegistryClient
from filterrelease.telemetry import Metrics

SHA = "ab" * 32
URL = f"oci://registry.local/filters/h@sha256:{SHA}"


class CountingDryRun:
    """Envoy's dry run, counted; it blocks until released so that checks overlap."""

    def __init__(self, problem: ModuleProblem | None = None) -> None:
        self.calls = 0
        self.release = threading.Event()
        self.problem = problem

    def check(self, module: bytes, plugin_name: str | None, configuration: str) -> None:
        self.calls += 1
        self.release.wait(10)
        if self.problem is not None:
            raise self.problem

    def close(self) -> None:
        pass


def preflight(dry_run: CountingDryRun) -> Preflight:
    found = Preflight(cast(Any, None), cast(RegistryClient, None), Metrics(), cast(DryRun, dry_run))
    found._modules[SHA] = b"\0asm\1\0\0\0"  # verified before: its bytes are kept
    return found


def verified(**extra: Any) -> VerifiedModule:
    return VerifiedModule(
        source_url=URL, url=URL, sha256=SHA, layout="oci-wasm", abi="proxy_abi_version_0_2_1",
        generation=1, **extra,
    )  # fmt: skip


def test_identical_dry_runs_at_once_run_once() -> None:
    dry_run = CountingDryRun()
    checks = preflight(dry_run)
    module = Module(url=URL)

    async def many() -> list[str]:
        asks = [checks._dry_run_check("ns", module, verified(), {"v": 1}) for _ in range(20)]
        loop = asyncio.get_running_loop()
        loop.call_later(0.2, dry_run.release.set)
        return await asyncio.gather(*asks)

    keys = asyncio.run(many())
    assert dry_run.calls == 1
    assert set(keys) == {dry_run_key('{"v": 1}')}


def test_a_rejection_is_every_waiters_answer() -> None:
    dry_run = CountingDryRun(ModuleProblem(Reason.CONFIG_REJECTED, "bad config"))
    dry_run.release.set()
    checks = preflight(dry_run)

    async def two() -> list[Any]:
        asks = [checks._dry_run_check("ns", Module(url=URL), verified(), {"v": 2}) for _ in "ab"]
        return await asyncio.gather(*asks, return_exceptions=True)

    answers = asyncio.run(two())
    assert dry_run.calls == 1
    assert all(isinstance(a, ModuleProblem) and a.reason is Reason.CONFIG_REJECTED for a in answers)


def test_a_verdict_in_the_status_is_not_run_again_after_a_restart() -> None:
    dry_run = CountingDryRun()
    dry_run.release.set()
    checks = preflight(dry_run)  # a new process: nothing in memory
    before = verified(dry_run=True, dry_run_config=dry_run_key('{"v": 1}'))
    key = asyncio.run(checks._dry_run_check("ns", Module(url=URL), verified(), {"v": 1}, before))
    assert key == before.dry_run_config
    assert dry_run.calls == 0
    # Another config on the same module is not covered by that verdict.
    asyncio.run(checks._dry_run_check("ns", Module(url=URL), verified(), {"v": 2}, before))
    assert dry_run.calls == 1
