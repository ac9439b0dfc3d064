"""The warm dry-run pool (providers/dryrun_pool.py) on the real Envoy with the real modules: the
same verdicts as a fresh Envoy per check, one compile per module, a crashed module's Envoy
replaced, the memory bound kept, and no Envoy outliving the pool or a SIGKILLed operator."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from filterrelease.core.module import ModuleProblem, Reason
from filterrelease.providers.dryrun import EnvoyDryRun
from filterrelease.providers.dryrun_pool import WarmDryRuns
from filterrelease.providers.envoy import find_envoy

ROOT = Path(__file__).resolve().parents[2]
PLENTY = 2**34  # a memory bound nothing reaches


@pytest.fixture
def pool() -> Iterator[WarmDryRuns]:
    warm = WarmDryRuns(find_envoy(), memory_bytes=PLENTY)
    try:
        yield warm
    finally:
        warm.close()


def verdict(dry_run: EnvoyDryRun | WarmDryRuns, module: Path, config: str) -> ModuleProblem | None:
    try:
        dry_run.check(module.read_bytes(), None, config)
    except ModuleProblem as problem:
        return problem
    return None


def expect(problem: ModuleProblem | None, reason: Reason) -> str:
    """The problem's message, once it is one of `reason`."""
    assert problem is not None
    assert problem.reason is reason, problem.message
    return problem.message


def pids(pool: WarmDryRuns) -> list[int]:
    return [pid for warm in pool._warm.values() if (pid := warm.process.pid) is not None]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) is gone for our purpose.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False


def wait_gone(pid: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while alive(pid):
        assert time.monotonic() < deadline, f"process {pid} still runs after {timeout}s"
        time.sleep(0.05)


CASES = [
    ("security-headers", '{"frame_options":"DENY"}', None, ""),
    ("security-headers", '{"frame_option":"DENY"}', Reason.CONFIG_REJECTED,
     'unknown key "frame_option"'),
    ("config-rejecting", "{}", Reason.CONFIG_REJECTED, "rejecting the plugin configuration"),
    ("panicky", '{"panic_every":1}', Reason.INVALID_MODULE,
     "answered its first request in Envoy with HTTP 503"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "config", "reason", "words"), CASES, ids=["ok", "typo", "rejects", "crashes"]
)
def test_the_pool_gives_the_verdicts_of_a_fresh_envoy(
    modules: dict[str, Path],
    pool: WarmDryRuns,
    name: str,
    config: str,
    reason: Reason | None,
    words: str,
) -> None:
    cold = verdict(EnvoyDryRun(find_envoy()), modules[name], config)
    warm = verdict(pool, modules[name], config)
    assert (cold and cold.reason, warm and warm.reason) == (reason, reason)
    if reason is not None:
        assert words in expect(cold, reason)
        assert words in expect(warm, reason)
    assert pool.counts["fallback"] == 0


def test_a_config_rejected_after_one_was_accepted_on_the_same_module(
    modules: dict[str, Path], pool: WarmDryRuns
) -> None:
    module = modules["security-headers"]
    assert verdict(pool, module, '{"version":"v1"}') is None
    rejected = expect(verdict(pool, module, '{"x_frame":"DENY"}'), Reason.CONFIG_REJECTED)
    assert 'unknown key "x_frame"' in rejected
    assert "v1" not in rejected  # Envoy's lines of this check only, not of the one before
    # The rejected config left the accepted one in place; the next one is judged on its own.
    assert verdict(pool, module, '{"version":"v2"}') is None
    expect(verdict(pool, module, '{"x_frame":"DENY"}'), Reason.CONFIG_REJECTED)
    assert pool.counts == {"warm": 4, "started": 1, "evicted": 0, "fallback": 0}


def test_the_envoy_of_a_module_that_crashed_is_replaced(
    modules: dict[str, Path], pool: WarmDryRuns
) -> None:
    module = modules["panicky"]
    assert verdict(pool, module, '{"panic_every":1000}') is None
    first = pids(pool)
    expect(verdict(pool, module, '{"panic_every":1}'), Reason.INVALID_MODULE)
    assert pool.size() == 0
    wait_gone(first[0])
    assert verdict(pool, module, '{"panic_every":1000}') is None
    assert (pool.counts["started"], pool.counts["evicted"]) == (2, 1)


def test_the_pool_keeps_within_its_memory_bound(modules: dict[str, Path]) -> None:
    # A bound below one Envoy: only the one just used stays.
    pool = WarmDryRuns(find_envoy(), memory_bytes=1)
    try:
        assert verdict(pool, modules["security-headers"], '{"version":"a"}') is None
        first = pids(pool)
        assert verdict(pool, modules["slow"], '{"delay_ms":1}') is None
        assert (pool.size(), pool.counts["evicted"]) == (1, 1)
        wait_gone(first[0])
        # Room for both: two warm Envoys, each measured.
        pool._memory_bytes = PLENTY
        assert verdict(pool, modules["security-headers"], '{"version":"b"}') is None
        assert pool.size() == 2
        assert pool.memory_bytes() > 2 * 2**20
    finally:
        pool.close()


def test_a_warm_envoy_that_died_gives_way_to_a_fresh_one(
    modules: dict[str, Path], pool: WarmDryRuns
) -> None:
    module = modules["security-headers"]
    assert verdict(pool, module, '{"version":"a"}') is None
    (pid,) = pids(pool)
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid)
    rejected = expect(verdict(pool, module, '{"frame_option":"DENY"}'), Reason.CONFIG_REJECTED)
    assert 'unknown key "frame_option"' in rejected
    assert (pool.counts["fallback"], pool.size()) == (1, 0)


def test_close_stops_every_envoy(modules: dict[str, Path]) -> None:
    pool = WarmDryRuns(find_envoy(), memory_bytes=PLENTY)
    try:
        assert verdict(pool, modules["security-headers"], "") is None
        assert verdict(pool, modules["slow"], "") is None
        running = pids(pool)
        assert len(running) == 2
    finally:
        pool.close()
    for pid in running:
        wait_gone(pid)
    with pytest.raises(RuntimeError, match="closed"):
        pool.check(modules["slow"].read_bytes(), None, "")


CHILD = """
import sys
from pathlib import Path
from filterrelease.providers.dryrun_pool import WarmDryRuns
from filterrelease.providers.envoy import find_envoy
pool = WarmDryRuns(find_envoy(), memory_bytes=2**34)
pool.check(Path(sys.argv[1]).read_bytes(), None, "")
print(*[w.process.pid for w in pool._warm.values()], flush=True)
sys.stdin.read()
"""


def test_a_sigkilled_operator_leaves_no_warm_envoy_behind(modules: dict[str, Path]) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "operator")}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(modules["security-headers"])],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdout is not None
        pid = int(child.stdout.readline())
        assert alive(pid)
    finally:
        child.kill()
        child.wait(10)
    wait_gone(pid)
