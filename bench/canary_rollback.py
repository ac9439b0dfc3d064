"""Benchmark: what a faulty version costs the users of a canary, measured on the traffic itself.

On one MeshCluster (the real operator, a real Envoy per pod running the real filters, the real
registry and Prometheus; 4 meshed pods), for each faulty variant, --runs times: a fresh release
of v1 (security-headers) on every pod, then, under steady load through every sidecar (--rate
requests/s, round robin), the faulty version released with the end-to-end tests' canary (25 % of
the pods, analysis of success rate >= 99 % and p99 latency <= 250 ms every 5 s, then 50 %, ...;
Wasm fast-fail in the background), until the operator has rolled it back and every sidecar
answers with v1 alone.

  panicking         filters/cmd/panicky {"panic_every": 3}: the VM dies, 503 from then on
  5xx               filters/cmd/local-5xx {"fail_every": 2, "status": 503}
  slow              filters/cmd/slow {"delay_ms": 400}: above the 250 ms SLO
  unfetchable       pre-flight verifies it, a pre-rollout webhook holds the rollout, the
                    module's blob is deleted from the registry's storage, the gate opens: the
                    canary proxies cannot fetch it (FAIL_CLOSE: deny-all, 403)
  config-rejecting  security-headers with an unknown pluginConfig key; the operator runs with
                    FILTERRELEASE_DRY_RUN=false for the whole bench (with the dry run this
                    version never reaches a proxy; the other variants pass the dry run anyway,
                    and pre-flight ends before the first bad response, so it changes nothing
                    that is measured here)

Each version is published with a digest of its own per run (a Wasm custom section), so every
run fetches and compiles the module as a new release would.

Figures per run, from the responses (times are when each request was SENT, the load generator's
clock; a response is "bad" if its status is not 200, if it carries no version, two versions or
a foreign one, or, for slow, if the canary version took longer than the SLO):
  first bad → all v1    from the first bad response to the last response that was not a 200
                        with v1 alone: after it, every sidecar answered only with v1
  decision → all v1     from the operator's decision to roll back (status.rollout.aborted as
                        first seen by polling the API every 0.1 s; abortedAt and the Events
                        have whole seconds only) to that same moment
  first bad → decision  how long the analysis took to see it
  bad responses         how many the users got; connection errors are counted apart

Prints figures, asserts nothing. Run: make bench   (or
PYTHONPATH=testbed:. uv run python bench/canary_rollback.py [--runs 3] [--variants 5xx,slow];
make bench CANARY_BENCH_ARGS="--runs 5" passes options through)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from filterrelease.core.promql import wasm_queries
from meshtraffic.loadgen import Response
from tests.support.canary import CHAIN, NS, Mesh, Traffic, install_v1, serving, status, versions_of
from tests.support.canary_faults import (
    TYPO_CONFIG,
    FaultMesh,
    Gate,
    Watcher,
    all_v1_lately,
    faulty_mesh,
    faulty_release,
    lose_blob,
    publish_module,
    wait_rolled_back,
)
from tests.support.polling import poll
from tests.support.wasm import built_filters

REPO = Path(__file__).resolve().parents[1]
# The latency bound of tests.support.canary's ANALYSIS (latencyP99 maxMilliseconds): slower is bad.
SLO_MS = 250.0
# faulty_mesh's FILTERRELEASE_PROMETHEUS_SCRAPE_SECONDS (Prometheus really scrapes every 1 s).
SCRAPE_S = 1.0


@dataclass(frozen=True)
class Variant:
    name: str
    module: str  # filters/cmd/<module>
    config: dict[str, Any]
    unfetchable: bool = False
    slow: bool = False


VARIANTS = {
    v.name: v
    for v in (
        Variant("panicking", "panicky", {"panic_every": 3, "version": "bad"}),
        Variant("5xx", "local-5xx", {"fail_every": 2, "status": 503, "version": "bad"}),
        Variant("slow", "slow", {"delay_ms": 400, "version": "bad"}, slow=True),
        Variant("unfetchable", "security-headers", {"version": "bad"}, unfetchable=True),
        Variant("config-rejecting", "security-headers", TYPO_CONFIG),
    )
}


class Sample(NamedTuple):
    sent: float  # monotonic
    pod: str
    status: int
    versions: list[str]
    latency_ms: float


class TimedTraffic(Traffic):
    """tests.support.canary's Traffic, also keeping when each request was sent and its latency."""

    def __init__(self, mesh: Mesh, rate: float) -> None:
        self.timed: list[Sample] = []
        super().__init__(mesh, rate=rate)

    def _record(self, response: Response) -> None:
        now = time.monotonic()
        chain = response.headers.get(CHAIN, "")
        sample = Sample(
            now - response.latency_s,
            response.endpoint.pod,
            response.status,
            versions_of(chain),
            response.latency_s * 1000,
        )
        with self.lock:
            self.seen.append((now, response.endpoint.pod, response.status, chain))
            self.timed.append(sample)


@dataclass(frozen=True)
class Run:
    window_s: float | None  # first bad → all v1
    decision_s: float | None  # decision → all v1
    detect_s: float | None  # first bad → decision
    bad: int
    errors: int
    responses: int
    canary_pods: int
    aborted: str


def bad(sample: Sample, variant: Variant) -> bool:
    if sample.status != 200 or sample.versions not in (["v1"], ["bad"]):
        return True
    return variant.slow and sample.versions == ["bad"] and sample.latency_ms > SLO_MS


def no_recent_wasm_failures(mesh: Mesh) -> None:
    """Wait until the Wasm fast-fail's own queries find no failed fetch or conversion on any
    pod of the workload in the last two scrapes and two seconds, so that each run starts from a
    quiet data plane. (The fast-fail itself compares its counters with their values when the
    canary started, so an earlier run's failure on the same pod no longer counts against it.)"""
    prometheus = mesh.cluster.mesh.prometheus
    since = datetime.now(UTC) - timedelta(seconds=2 * SCRAPE_S + 2)
    queries = wasm_queries(NS, serving(mesh.cluster), since)

    def clean() -> bool:
        return all(
            sum(s.value for s in prometheus.query(q)) == 0
            for q in (queries.fetch_failures, queries.conversion_failures)
        )

    poll(clean, timeout=60, what="no recent Wasm fetch or conversion failure")


def one_run(mesh: FaultMesh, variant: Variant, index: int, rate: float) -> Run:
    install_v1(mesh)
    no_recent_wasm_failures(mesh)
    if variant.name == "config-rejecting":
        key = "security-headers"  # v1's own module: only the configuration is wrong
    else:
        key = f"{variant.name}-{index}"
        mesh.modules[key], layer = publish_module(
            mesh, variant.module, f"bench-{variant.name}-{index}-{time.time_ns()}"
        )
    gate: AbstractContextManager[Gate | None] = Gate() if variant.unfetchable else nullcontext()
    traffic = TimedTraffic(mesh, rate)
    with gate as held, Watcher(mesh) as watcher, traffic:
        t0 = time.monotonic()
        hooks = [{"name": "hold", "type": "pre-rollout", "url": held.url}] if held else []
        faulty_release(mesh, key, variant.config, webhooks=hooks)
        if held is not None:
            poll(lambda: held.calls > 0 and (status(mesh).get("rollout") or {}).get("gate"),
                 timeout=120, what="the pre-rollout gate holding")  # fmt: skip
            lose_blob(mesh.cluster.registry, f"filters/{variant.module}", layer)
            held.opened.set()
        wait_rolled_back(mesh, traffic)

        def settled() -> bool:
            # Two seconds of v1 alone from every sidecar, all of them after the rollback: a
            # fast rollback would otherwise be judged partly on responses from before it.
            back = watcher.rolled_back_seen
            return back is not None and time.monotonic() - back >= 2 and all_v1_lately(traffic)

        poll(settled, timeout=30, what="two seconds of v1 after the rollback")
        with traffic.lock:
            samples = [s for s in traffic.timed if s.sent >= t0]
        errors = sum(sum(kinds.values()) for kinds in traffic.load.result.errors.values())
    decided = watcher.aborted_seen
    assert decided is not None
    bad_sent = [s.sent for s in samples if bad(s, variant)]
    not_v1 = [s.sent for s in samples if s.status != 200 or s.versions != ["v1"]]
    first_bad = min(bad_sent) if bad_sent else None
    all_v1 = max(not_v1) if not_v1 else None
    return Run(
        window_s=all_v1 - first_bad if all_v1 is not None and first_bad is not None else None,
        decision_s=all_v1 - decided if all_v1 is not None else None,
        detect_s=decided - first_bad if first_bad is not None else None,
        bad=len(bad_sent),
        errors=errors,
        responses=len(samples),
        canary_pods=len(watcher.canary_pods),
        aborted=watcher.aborted or "",
    )


def spread(values: list[float], fmt: Callable[[float], str], runs: int) -> str:
    if not values:
        return "-"
    text = " / ".join(fmt(v) for v in (statistics.median(values), min(values), max(values)))
    # Times exist only for runs with a bad response: say when that was not all of them.
    return text if len(values) == runs else f"{text} ({len(values)} of {runs})"


def seconds(v: float) -> str:
    return f"{v:.1f}"


def count(v: float) -> str:
    return f"{v:g}"


def table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]
    ]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def summary(results: dict[str, list[Run]]) -> str:
    header = (
        "variant",
        "runs",
        "first bad → all v1 (s)",
        "decision → all v1 (s)",
        "first bad → decision (s)",
        "bad responses",
        "conn. errors",
    )
    rows: list[tuple[str, ...]] = []
    for name, runs in results.items():

        def values(get: Callable[[Run], float | None], runs: list[Run] = runs) -> list[float]:
            return [v for r in runs if (v := get(r)) is not None]

        rows.append(
            (
                name,
                str(len(runs)),
                spread(values(lambda r: r.window_s), seconds, len(runs)),
                spread(values(lambda r: r.decision_s), seconds, len(runs)),
                spread(values(lambda r: r.detect_s), seconds, len(runs)),
                spread(values(lambda r: r.bad), count, len(runs)),
                spread(values(lambda r: r.errors), count, len(runs)),
            )
        )
    return table(rows, header) + (
        "\n(median / min / max over the runs; times in s from request send times; "
        '"-": no run had a bad response; (k of n): only k runs had one)'
    )


@contextmanager
def workdir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="canary-rollback-") as tmp:
        yield Path(tmp)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="rollouts per variant")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated, of: {', '.join(VARIANTS)}",
    )
    parser.add_argument("--rate", type=float, default=40, help="requests/s over the 4 sidecars")
    parser.add_argument("--workdir", type=Path, help="keep files here (default: a temp dir)")
    args = parser.parse_args()
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown or not chosen:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")

    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} (shared)")
    started = time.monotonic()
    modules = built_filters()
    results: dict[str, list[Run]] = {name: [] for name in chosen}
    failed: list[str] = []
    env = {"FILTERRELEASE_DRY_RUN": "false"}
    with workdir(args.workdir) as wd, faulty_mesh(wd, modules, operator_env=env) as mesh:
        print(f"mesh cluster and operator up in {time.monotonic() - started:.0f} s")
        for name in chosen:
            for index in range(args.runs):
                try:
                    run = one_run(mesh, VARIANTS[name], index, args.rate)
                except (TimeoutError, RuntimeError, subprocess.CalledProcessError) as err:
                    # One run that cannot start or finish must not take the others' figures
                    # down with it: it is reported, and the next run starts from v1 again.
                    failed.append(f"{name} run {index + 1}: {str(err).splitlines()[0][:300]}")
                    print(f"{failed[-1]} (not counted)", flush=True)
                    continue
                results[name].append(run)
                window = "-" if run.window_s is None else f"{run.window_s:.1f} s"
                print(
                    f"{name} run {index + 1}: first bad → all v1 {window}, "
                    f"{run.bad} bad of {run.responses} responses, {run.errors} connection "
                    f"errors, {run.canary_pods} canary pod(s); aborted: {run.aborted[:150]}",
                    flush=True,
                )
    print(f"\n{summary(results)}")
    if failed:
        print(f"{len(failed)} run(s) failed and are not in the figures:", *failed, sep="\n  ")
    print(
        f"load: {args.rate:g} requests/s offered; whole bench {time.monotonic() - started:.0f} s; "
        f"load average {os.getloadavg()[0]:.2f} at the end"
    )


if __name__ == "__main__":
    main()
