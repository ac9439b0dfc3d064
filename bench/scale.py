"""Benchmark: one operator and N FilterReleases (issue 13's scale table).

For each N (default 100, 300, 1000) and each config mix — one pluginConfig shared by every
release, or N distinct ones (each team its own) — on N distinct selectors of one module:

  - apply → all Ready: total, and per release p50/p99 (the time a watch first saw the release's
    Ready=True, from the apply);
  - API requests per release on create, and per release per idle resync, read from the API
    server's own `apiserver_request_total` (by verb and resource), not from our counters. The
    benchmark's own requests (its server-side apply of the releases, its watch) and the Lease
    renewals (a fixed 1 per 2 s) are left out;
  - the operator's RSS and CPU seconds (its own process; the dry run's warm Envoys apart);
  - after a SIGKILL and a start: time until the new process reconciled every release, the
    writes that restart caused, and the dry runs it ran.

With --soak-minutes M: one run at the largest N, then M minutes of idle resyncs: RSS growth
and writes.

Prints the medians over --runs runs (the machine is shared and noisy), and the range.
Run: make bench   (or PYTHONPATH=testbed:. uv run python bench/scale.py --sizes 100,300)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

from devcluster.operator_process import OperatorProcess
from localcluster import LocalCluster
from tests.support.operator_bench import BenchCluster, bench_cluster, reconciled
from tests.support.polling import poll

GROUP, VERSION, PLURAL = "filterrelease.dev", "v1alpha1", "filterreleases"
READS = {"GET", "LIST"}
# Writes that are not the operator's: the benchmark applies the releases.
NOT_OURS = {("filterreleases", "")}
# Leader election (one renewal per retry period) and kwok's node heartbeats: the same however
# many releases there are.
BACKGROUND = {"leases", "nodes"}


def release(namespace: str, i: int, url: str, distinct: bool) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FilterRelease",
        "metadata": {"name": f"r{i}", "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": {"app": f"a{i}"}},
            "priority": 10,
            "module": {"url": url},
            "pluginConfig": {"version": f"team-{i}" if distinct else "shared"},
        },
    }


# -- the API server's own request counts --

_SAMPLE = re.compile(r"^apiserver_request_total\{([^}]*)\} (\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def api_requests(cluster: LocalCluster) -> Counter[tuple[str, str, str]]:
    """(verb, resource, subresource) → requests so far, from the API server's /metrics."""
    text = cluster.kubectl("get", "--raw", "/metrics").stdout
    counts: Counter[tuple[str, str, str]] = Counter()
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            labels = dict(_LABEL.findall(match.group(1)))
            key = (
                labels.get("verb", ""),
                labels.get("resource", ""),
                labels.get("subresource", ""),
            )
            counts[key] += int(float(match.group(2)))
    return counts


@dataclass
class Requests:
    reads: int = 0
    writes: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    reads_by_kind: Counter[str] = field(default_factory=Counter)

    @classmethod
    def between(
        cls, before: Counter[tuple[str, str, str]], after: Counter[tuple[str, str, str]]
    ) -> Requests:
        out = cls()
        for (verb, resource, sub), count in (after - before).items():
            # Watches are long-lived streams (every controller's, and the benchmark's own), not
            # requests per release.
            if verb == "WATCH" or resource in BACKGROUND:
                continue
            if (resource, sub) in NOT_OURS and verb not in READS:
                continue
            kind = f"{verb} {resource}{'/' + sub if sub else ''}"
            if verb in READS:
                out.reads += count
                out.reads_by_kind[kind] += count
            else:
                out.writes += count
                out.by_kind[kind] += count
        return out


def settle(cluster: LocalCluster, quiet: float = 3.0, timeout: float = 120) -> None:
    """Wait until the operator has written nothing for `quiet` s (Events come after Ready)."""
    last = Requests.between(Counter(), api_requests(cluster)).writes
    calm_since = time.monotonic()
    deadline = calm_since + timeout
    while time.monotonic() - calm_since < quiet and time.monotonic() < deadline:
        time.sleep(0.5)
        now = Requests.between(Counter(), api_requests(cluster)).writes
        if now != last:
            last, calm_since = now, time.monotonic()


# -- the operator's process --


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reconcile_count(operator: OperatorProcess) -> float:
    """Reconciles the operator ran so far, all releases together."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in operator.metrics().splitlines()
        if line.startswith("filterrelease_reconcile_total{")
    )


class ReadyWatch:
    """When a watch first saw each release Ready=True."""

    def __init__(self, kubeconfig: Path, namespace: str) -> None:
        self.ready: dict[str, float] = {}
        self._lock = threading.Lock()
        api_client = config.new_client_from_config(str(kubeconfig))  # type: ignore[no-untyped-call]
        self._api = client.CustomObjectsApi(api_client)
        self._watch = watch.Watch()  # type: ignore[no-untyped-call]
        self._thread = threading.Thread(target=self._run, args=(namespace,), daemon=True)
        self._thread.start()

    def _run(self, namespace: str) -> None:
        with contextlib.suppress(Exception):  # the stream ends when the benchmark stops it
            for event in self._watch.stream(  # type: ignore[no-untyped-call]
                self._api.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL
            ):
                obj = event["object"]
                conditions = obj.get("status", {}).get("conditions", [])
                if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                    with self._lock:
                        self.ready.setdefault(obj["metadata"]["name"], time.monotonic())

    def count(self) -> int:
        with self._lock:
            return len(self.ready)

    def stop(self) -> None:
        self._watch.stop()  # type: ignore[no-untyped-call]


# -- one run --


@dataclass
class Run:
    total: float
    p50: float
    p99: float
    create: Requests
    idle: Requests
    idle_resyncs: float
    rss: float
    cpu: float
    dry_runs: float
    restart: float
    restart_writes: Requests
    restart_dry_runs: float


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def one_run(
    bench: BenchCluster,
    resync: float,
    n: int,
    *,
    distinct: bool,
    tag: str,
    soak_minutes: float = 0,
) -> Run:
    cluster = bench.cluster
    namespace = f"scale-{tag}"
    cluster.kubectl("create", "namespace", namespace)
    # Only this namespace: leftovers of earlier runs (being deleted) are not this run's work.
    operator = OperatorProcess(
        bench.kubeconfig,
        bench.workdir / f"operator-{tag}.log",
        resync_seconds=resync,
        extra_env={"FILTERRELEASE_NAMESPACES": namespace},
    )
    operator.start()
    watcher = ReadyWatch(cluster.admin_kubeconfig, namespace)
    try:
        assert operator.pid is not None
        items = [release(namespace, i, bench.url, distinct) for i in range(n)]
        document = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        before = api_requests(cluster)
        cpu0 = cpu_seconds(operator.pid)
        t0 = time.monotonic()
        cluster.kubectl("apply", "--server-side", "-f", "-", input=document)
        poll(lambda: watcher.count() >= n, timeout=1800, what=f"{n} releases Ready")
        total = time.monotonic() - t0
        latencies = [at - t0 for at in watcher.ready.values()]
        settle(cluster)
        create = Requests.between(before, api_requests(cluster))
        cpu = cpu_seconds(operator.pid) - cpu0
        dry_runs = operator.metric("filterrelease_dry_runs_total")

        # Idle: whole resyncs, nothing changed.
        before = api_requests(cluster)
        rss_before = rss_mib(operator.pid)
        reconciles_before = reconcile_count(operator)
        idle_seconds = max(3 * resync, soak_minutes * 60)
        t_idle = time.monotonic()
        while time.monotonic() - t_idle < idle_seconds:
            time.sleep(min(60.0, idle_seconds))
            if soak_minutes:
                print(f"    soak: {(time.monotonic() - t_idle) / 60:4.1f} min, "
                      f"RSS {rss_mib(operator.pid):.0f} MiB", flush=True)  # fmt: skip
        idle = Requests.between(before, api_requests(cluster))
        # Resync passes that ran (each reconciles every release once), as the operator counts.
        idle_resyncs = max(1.0, (reconcile_count(operator) - reconciles_before) / n)
        rss = rss_mib(operator.pid)
        if soak_minutes:
            print(f"    soak: RSS {rss_before:.0f} → {rss:.0f} MiB "
                  f"({(rss - rss_before) / rss_before * 100:+.1f} %), "
                  f"{idle.writes} writes in {idle_seconds / 60:.0f} min")  # fmt: skip

        # Restart: SIGKILL, start, every release reconciled by the new process.
        operator.kill()
        before = api_requests(cluster)
        t1 = time.monotonic()
        operator.start()
        poll(lambda: len(reconciled(operator)) >= n, timeout=900, what="every release reconciled")
        restart = time.monotonic() - t1
        settle(cluster)
        restart_writes = Requests.between(before, api_requests(cluster))
        restart_dry_runs = operator.metric("filterrelease_dry_runs_total")
    finally:
        watcher.stop()
        # Gone before the next run, whose request counts must not include this clean-up.
        cluster.kubectl("delete", "namespace", namespace, "--timeout=600s", check=False)
        operator.stop()
    return Run(
        total, percentile(latencies, 0.5), percentile(latencies, 0.99), create, idle,
        idle_resyncs, rss, cpu, dry_runs, restart, restart_writes,
        restart_dry_runs,
    )  # fmt: skip


def med(values: list[float], unit: str = "", digits: int = 1) -> str:
    m = statistics.median(values)
    spread = f" ({min(values):.{digits}f} to {max(values):.{digits}f})" if len(values) > 1 else ""
    return f"{m:.{digits}f}{unit}{spread}"


def report(n: int, distinct: bool, runs: list[Run]) -> None:
    mix = f"{n} distinct configs" if distinct else "1 shared config"
    print(f"\n{n} releases, {mix} ({len(runs)} run{'s' * (len(runs) > 1)}; median (range)):")
    print(f"  apply → all Ready        {med([r.total for r in runs], ' s')}")
    print(f"  per release p50 / p99    {med([r.p50 for r in runs], ' s')} / "
          f"{med([r.p99 for r in runs], ' s')}")  # fmt: skip
    print(f"  API on create, per rel.  {med([r.create.writes / n for r in runs], ' writes', 2)}, "
          f"{med([r.create.reads / n for r in runs], ' reads', 2)}")  # fmt: skip
    print(f"    writes: {by_kind([r.create.by_kind for r in runs], n)}")
    print(f"    reads: {by_kind([r.create.reads_by_kind for r in runs], n)}")
    per_resync = [
        (r.idle.writes / r.idle_resyncs / n, r.idle.reads / r.idle_resyncs / n) for r in runs
    ]
    print(f"  API per idle resync/rel. {med([w for w, _ in per_resync], ' writes', 2)}, "
          f"{med([rd for _, rd in per_resync], ' reads', 2)}")  # fmt: skip
    resyncs = sum(r.idle_resyncs for r in runs) / len(runs)
    print(f"    reads: {by_kind([r.idle.reads_by_kind for r in runs], n * resyncs)}")
    print(f"    writes (all, not per release): {by_kind([r.idle.by_kind for r in runs], 1)}")
    print(f"  operator RSS, CPU        {med([r.rss for r in runs], ' MiB', 0)}, "
          f"{med([r.cpu for r in runs], ' CPU s')} to create")  # fmt: skip
    print(f"  dry runs                 {med([r.dry_runs for r in runs], '', 0)}")
    print(f"  restart → all reconciled {med([r.restart for r in runs], ' s')} after the kill, "
          f"{med([float(r.restart_writes.writes) for r in runs], ' writes', 0)}, "
          f"{med([r.restart_dry_runs for r in runs], ' dry runs', 0)}")  # fmt: skip
    print(f"    writes: {by_kind([r.restart_writes.by_kind for r in runs], 1)}")


def by_kind(counts: list[Counter[str]], per: float) -> str:
    """The mean over the runs of each kind of request, per `per` (e.g. per release)."""
    total = Counter[str]()
    for count in counts:
        total.update(count)
    return ", ".join(f"{k} {v / len(counts) / per:.2f}" for k, v in total.most_common()) or "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--sizes", default="100,300,1000")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--resync", type=float, default=10.0, help="the operator's resync (s)")
    parser.add_argument("--mix", choices=["both", "shared", "distinct"], default="both")
    parser.add_argument("--soak-minutes", type=float, default=0)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    mixes = {"both": [False, True], "shared": [False], "distinct": [True]}[args.mix]
    with bench_cluster("bench-scale-") as bench:
        if args.soak_minutes:
            n = max(sizes)
            print(f"soak: {n} releases, {args.soak_minutes:g} min of resyncs every "
                  f"{args.resync:g} s", flush=True)  # fmt: skip
            run = one_run(
                bench,
                args.resync,
                n,
                distinct=mixes[-1],
                tag="soak",
                soak_minutes=args.soak_minutes,
            )
            report(n, mixes[-1], [run])
            return
        for n in sizes:
            for distinct in mixes:
                runs = []
                for k in range(args.runs):
                    tag = f"{n}-{'d' if distinct else 's'}-{k}"
                    print(f"run {tag} …", flush=True)
                    runs.append(one_run(bench, args.resync, n, distinct=distinct, tag=tag))
                report(n, distinct, runs)


if __name__ == "__main__":
    main()
