"""Benchmark: the local mesh at 20 sidecars under steady load, and how fast a WasmPlugin change
reaches the last of them.

Starts a MeshCluster, three meshed Deployments (8 + 7 + 5 pods) in a namespace labelled
istio-injection=enabled, and one WasmPlugin selecting all of them: the real security-headers
filter from filters/, published to the cluster's registry and pinned to its digest. Then:

  1. steady load from the load generator (its own process, a client outside the mesh) for
     --duration seconds, round-robin over the 20 sidecars; over that window, CPU time from
     /proc/<pid>/stat (utime+stime deltas, as % of one core) and resident memory (VmRSS) per
     component group: the Envoy sidecars, this process (mesh agent, upstream app, metrics
     exporter, pod logs: threads of one Python process), Prometheus, the control plane, the
     registries and the load generator; requests/s achieved, error rate, latency quantiles,
     and Prometheus's count of the same requests;
  2. --changes times: patch the WasmPlugin's pluginConfig (a new `version`, which the filter
     sends back as x-filter-version) and probe every sidecar directly until each one's
     responses carry the new value; "change → last sidecar" is from the patch request to the
     first such response from the last sidecar. The load keeps running meanwhile, and its
     errors during the changes are reported too.

Prints figures, it asserts nothing. Run: make bench   (or
PYTHONPATH=testbed uv run python bench/mesh_scale.py [--duration 30] [--rate 200] [--changes 5])
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, config

from localcluster.mesh import MeshCluster, meshed_deployment
from localcluster.oci_publish import publish
from localcluster.processes import ManagedProcess
from meshagent.layout import PORT_FILE
from meshtraffic.loadgen import LOOPBACK

REPO = Path(__file__).resolve().parents[1]
NS = "scale"
WORKLOADS = {"web": 8, "api": 7, "cart": 5}  # 20 pods
SELECTOR = {"mesh-scale": "yes"}  # on every pod of the three Deployments
PLUGIN = "security-headers"
VERSION_HEADER = "x-filter-version"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
REGISTRIES = ("registry", "auth-registry")


# -- the workload ------------------------------------------------------------------------------


def wasmplugin(url: str, sha256: str, version: str) -> dict[str, Any]:
    return {
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": PLUGIN, "namespace": NS},
        "spec": {
            "selector": {"matchLabels": SELECTOR},
            "url": url,
            "sha256": sha256,
            "phase": "AUTHN",
            "priority": 10,
            "failStrategy": "FAIL_CLOSE",
            "pluginConfig": {"version": version},
        },
    }


def security_headers_module() -> bytes:
    out = subprocess.run(
        ["bash", str(REPO / "filters" / "build.sh")],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    ).stdout
    return (Path(out.strip().splitlines()[-1]) / "security-headers.wasm").read_bytes()


# -- probing every sidecar directly ------------------------------------------------------------


class Prober:
    """One keep-alive connection per sidecar; which of them answer with a given header value."""

    def __init__(self, agent_dir: Path, pods: list[str]) -> None:
        self.agent_dir = agent_dir
        self.pods = pods
        self._conns: dict[str, http.client.HTTPConnection] = {}
        self.failures = 0

    def port(self, pod: str) -> int | None:
        try:
            return int((self.agent_dir / NS / pod / PORT_FILE).read_text())
        except (OSError, ValueError):
            return None

    def header(self, pod: str) -> str | None:
        """The sidecar's x-filter-version on one GET (None if it did not answer 200)."""
        conn = self._conns.get(pod)
        if conn is None:
            port = self.port(pod)
            if port is None:
                return None
            conn = self._conns[pod] = http.client.HTTPConnection(LOOPBACK, port, timeout=5)
        try:
            conn.request("GET", "/", headers={"x-probe": "mesh-scale"})
            resp = conn.getresponse()
            resp.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            del self._conns[pod]
            self.failures += 1
            return None
        if resp.status != 200:
            self.failures += 1
            return None
        return resp.getheader(VERSION_HEADER)

    def wait_all(self, value: str, t0: float, timeout: float) -> dict[str, float]:
        """Sweep the sidecars still behind until each has answered with `value`; pod ->
        seconds from t0 to its first such answer."""
        pending = list(self.pods)
        seen: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while pending:
            for pod in list(pending):
                if self.header(pod) == value:
                    seen[pod] = time.monotonic() - t0
                    pending.remove(pod)
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} sidecars never served {value}: {pending}")
        return seen

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()


# -- /proc accounting --------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcSample:
    cpu_s: float  # utime + stime
    rss_kb: int
    # Proportional set size: shared pages divided among the processes sharing them. The 20
    # Envoys share one binary's text, which RSS counts 20 times and PSS once in all.
    pss_kb: int


def proc_sample(pid: int) -> ProcSample | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        statm = Path(f"/proc/{pid}/statm").read_text()
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; utime and stime are fields 14 and 15.
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])
    pss = next((int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:")), 0)
    return ProcSample(ticks / CLK_TCK, int(statm.split()[1]) * PAGE_KB, pss)


def machine_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, all cores (from /proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # without guest time, which is already in user
    return ((total - idle) / CLK_TCK, total / CLK_TCK)


Groups = dict[str, dict[str, int]]  # group -> process name -> pid


def snapshot(groups: Groups) -> dict[str, dict[str, ProcSample]]:
    out: dict[str, dict[str, ProcSample]] = {}
    for group, pids in groups.items():
        out[group] = {}
        for name, pid in pids.items():
            sample = proc_sample(pid)
            if sample is not None:
                out[group][name] = sample
    return out


def component_groups(cluster: MeshCluster, loadgen_pid: int) -> Groups:
    pids = cluster.pids
    return {
        "Envoy sidecars": {n: p for n, p in pids.items() if n.startswith("envoy ")},
        "mesh agent + exporter + pod logs (this process)": {"bench": os.getpid()},
        "Prometheus": {"prometheus": pids["prometheus"]},
        "control plane (etcd, apiserver, kcm, scheduler, kwok)": {
            n: pids[n] for n in CONTROL_PLANE
        },
        "OCI registries": {n: pids[n] for n in REGISTRIES if n in pids},
        "load generator (its own process)": {"loadgen": loadgen_pid},
    }


# -- the load generator as a process of its own ------------------------------------------------


@contextmanager
def load_process(
    cluster: MeshCluster, workdir: Path, name: str, *, rate: float, duration: float, workers: int
) -> Iterator[tuple[ManagedProcess, Path]]:
    """`python -m meshtraffic.loadgen` over every pod matching SELECTOR; stopped (SIGTERM,
    then the whole group killed) however the block ends. Yields the process and the file its
    JSON result appears in when it ends."""
    out = workdir / f"{name}.json"
    selectors = [f"--selector={k}={v}" for k, v in SELECTOR.items()]
    argv = [
        sys.executable, "-m", "meshtraffic.loadgen",
        "--workdir", str(cluster.mesh.agent_dir), "--namespace", NS, *selectors,
        "--rate", str(rate), "--duration", str(duration),
        "--concurrency", str(workers), "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / "testbed")}
    proc = ManagedProcess(f"loadgen-{name}", argv, workdir / f"{name}.log", env=env)
    try:
        yield proc, out
    finally:
        proc.stop(10)


def access_log_read(cluster: MeshCluster) -> int:
    """Bytes of the sidecars' access logs the exporter has read so far (grows with requests)."""
    return sum(p.offset for p in cluster.mesh.exporter.pods.values())


def wait_flowing(cluster: MeshCluster, proc: ManagedProcess) -> None:
    """Until the load generator's requests reach the sidecars (its process takes a moment to
    start); at once if it dies."""
    start = access_log_read(cluster)

    def flowing() -> bool:
        if not proc.alive():
            raise RuntimeError(f"the load generator exited:\n{proc.log_tail()}")
        return access_log_read(cluster) > start + 4096  # a dozen requests or so

    poll(flowing, 30, "the load to reach the sidecars")


def wait_result(proc: ManagedProcess, out: Path, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while not out.exists():
        if not proc.alive() and not out.exists():
            raise RuntimeError(f"load generator ended without a result:\n{proc.log_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no load generator result after {timeout:g}s")
        time.sleep(0.1)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def poll(
    fn: Callable[[], bool],
    timeout: float,
    what: str,
    interval: float = 0.2,
    diagnose: Callable[[], str] | None = None,
) -> float:
    """fn() until true; the seconds it took. TimeoutError naming `what` (with diagnose())."""
    t0 = time.monotonic()
    while not fn():
        if time.monotonic() - t0 > timeout:
            detail = f"\n{diagnose()}" if diagnose is not None else ""
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}{detail}")
        time.sleep(interval)
    return time.monotonic() - t0


# -- reporting ---------------------------------------------------------------------------------


def table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        first, *rest = cells
        return "  ".join(
            [first.ljust(widths[0]), *(c.rjust(w) for c, w in zip(rest, widths[1:], strict=True))]
        )

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def mib(kb: float) -> str:
    return f"{kb / 1024:.1f}"


def quantiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    return (
        f"median {statistics.median(ordered):.2f} s, min {ordered[0]:.2f} s, "
        f"max {ordered[-1]:.2f} s (n={len(ordered)})"
    )


def resource_table(
    before: dict[str, dict[str, ProcSample]],
    after: dict[str, dict[str, ProcSample]],
    wall_s: float,
) -> str:
    rows: list[tuple[str, ...]] = []
    total_cpu = 0.0
    total_rss = total_pss = 0
    for group, samples in after.items():
        common = [n for n in samples if n in before[group]]
        cpu = sum(samples[n].cpu_s - before[group][n].cpu_s for n in common)
        rss = sum(s.rss_kb for s in samples.values())
        pss = sum(s.pss_kb for s in samples.values())
        total_cpu += cpu
        total_rss += rss
        total_pss += pss
        rows.append((group, str(len(samples)), f"{100 * cpu / wall_s:.1f}", mib(rss), mib(pss)))
    rows.append(("total", "", f"{100 * total_cpu / wall_s:.1f}", mib(total_rss), mib(total_pss)))
    return table(rows, ("component", "processes", "CPU % of one core", "RSS MiB", "PSS MiB"))


def total_cpu_s(
    before: dict[str, dict[str, ProcSample]], after: dict[str, dict[str, ProcSample]]
) -> float:
    return sum(
        s.cpu_s - before[group][name].cpu_s
        for group, samples in after.items()
        for name, s in samples.items()
        if name in before[group]
    )


def sidecar_memory(after: dict[str, dict[str, ProcSample]]) -> str:
    sidecars = after["Envoy sidecars"].values()
    rss = sorted(s.rss_kb for s in sidecars)
    pss = sorted(s.pss_kb for s in sidecars)
    return (
        f"per sidecar: RSS median {mib(statistics.median(rss))} MiB (min {mib(rss[0])}, "
        f"max {mib(rss[-1])}), PSS median {mib(statistics.median(pss))} MiB (min "
        f"{mib(pss[0])}, max {mib(pss[-1])}), n={len(rss)}"
    )


def load_summary(result: Mapping[str, Any]) -> str:
    sent = result["sent"]
    ok = int(result["by_code"].get("200", 0))
    errors = sent - ok
    lat = result["latency_ms"]
    p50, p99 = lat.get("p50"), lat.get("p99")
    latency = f"{p50:.1f} / {p99:.1f} ms" if p50 is not None and p99 is not None else "n/a"
    return (
        f"{sent} requests to {result['pods']} sidecars in {result['elapsed_s']:.1f} s: "
        f"{result['responses'] / result['elapsed_s']:.1f} responses/s; "
        f"errors {errors} ({100 * errors / max(sent, 1):.2f}%: codes {result['by_code']}, "
        f"connection errors {result['errors']}, no endpoint {result['no_endpoint']}); "
        f"latency p50 / p99 {latency}"
    )


# -- the run -----------------------------------------------------------------------------------


def run(args: argparse.Namespace, workdir: Path) -> None:
    load1 = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} cores, load average {load1:.2f} at start (shared)")
    t0 = time.monotonic()
    with MeshCluster(workdir / "cluster", nodes=3) as cluster:
        print(f"mesh cluster started in {time.monotonic() - t0:.1f} s")
        mesh = cluster.mesh
        module = security_headers_module()
        digest = publish(cluster.registry.host, f"filters/{PLUGIN}", "bench", module, "oci-wasm")
        url = f"oci://{cluster.registry.host}/filters/{PLUGIN}@{digest}"
        api = client.CustomObjectsApi(
            config.new_client_from_config(str(cluster.admin_kubeconfig))  # type: ignore[no-untyped-call]
        )

        cluster.kubectl("create", "namespace", NS)
        cluster.kubectl("label", "namespace", NS, "istio-injection=enabled")
        cluster.kubectl(
            "apply", "-f", "-", input=json.dumps(wasmplugin(url, digest.split(":")[1], "v0"))
        )
        t0 = time.monotonic()
        for name, replicas in WORKLOADS.items():
            cluster.kubectl(
                "apply",
                "-f",
                "-",
                input=json.dumps(meshed_deployment(name, NS, replicas, SELECTOR)),
            )
        pods_total = sum(WORKLOADS.values())

        def diagnose() -> str:
            pods = cluster.kubectl("get", "pods", "-n", NS, "-o", "wide", check=False).stdout
            log = (mesh.agent_dir / "agent.log").read_text().splitlines()[-30:]
            return pods + "\n".join(log)

        poll(
            lambda: len(mesh.exporter.pods) == pods_total,
            180,
            f"{pods_total} sidecars",
            diagnose=diagnose,
        )
        pods = sorted(pod for _, pod in mesh.exporter.pods)
        prober = Prober(mesh.agent_dir, pods)
        try:
            prober.wait_all("v0", t0, timeout=120)
            up_s = time.monotonic() - t0
            print(
                f"{len(WORKLOADS)} Deployments applied → {pods_total} sidecars serving the "
                f"filter: {up_s:.1f} s"
            )
            mesh.prometheus.wait_for_targets(pods_total, timeout=60)
            measure_load(args, cluster, workdir)
            measure_changes(args, cluster, api, prober, workdir=workdir, module=module)
        finally:
            prober.close()
        print("\nstopping the mesh cluster")
    print("done: every process the benchmark started has been stopped")


def measure_load(args: argparse.Namespace, cluster: MeshCluster, workdir: Path) -> None:
    mesh = cluster.mesh

    def requests_counted() -> float:
        query = f'sum(istio_requests_total{{namespace="{NS}"}})'
        return sum(s.value for s in mesh.prometheus.query(query))

    before_total = requests_counted()
    # The load runs a little longer than the window, which starts once requests flow.
    with load_process(
        cluster, workdir, "steady", rate=args.rate, duration=args.duration + 3,
        workers=args.concurrency,
    ) as (proc, out):  # fmt: skip
        groups = component_groups(cluster, proc.pid)
        wait_flowing(cluster, proc)
        before = snapshot(groups)
        machine0 = machine_busy_s()
        w0 = time.monotonic()
        # The measurement window itself: a fixed span of steady load, not a wait for an event.
        threading.Event().wait(args.duration)
        wall = time.monotonic() - w0
        after = snapshot(groups)
        machine1 = machine_busy_s()
        result = wait_result(proc, out, timeout=args.duration + 60)
    busy = machine1[0] - machine0[0]
    total = machine1[1] - machine0[1]
    print(f"\n== steady load: {args.rate:g} requests/s offered, window {wall:.1f} s")
    print(resource_table(before, after, wall))
    print(sidecar_memory(after))
    others = busy - total_cpu_s(before, after)
    print(
        f"machine: {100 * busy / total:.0f}% of all {os.cpu_count()} cores busy in the window, "
        f"{100 * busy / wall:.0f}% of one core, of which {100 * others / wall:.0f}% not the "
        "processes above (the kernel's own work, kubectl, other users of the machine)"
    )
    print("load: " + load_summary(result))
    want = before_total + result["responses"]
    try:
        lag = poll(lambda: requests_counted() >= want, 30, "Prometheus to count the load")
        print(f"Prometheus: istio_requests_total counted all of them ({lag:.1f} s after the load)")
    except TimeoutError:
        print(
            f"Prometheus: counted {requests_counted() - before_total:.0f} of {result['responses']}"
        )


@dataclass
class Series:
    """Timings of one kind of WasmPlugin change, in seconds from the patch request."""

    title: str
    accepted: list[float]
    first: list[float]
    last: list[float]
    # CPU seconds all the Envoys used from the patch to the last sidecar serving the change
    # (the load's share included).
    envoy_cpu: list[float]


def measure_changes(
    args: argparse.Namespace,
    cluster: MeshCluster,
    api: client.CustomObjectsApi,
    prober: Prober,
    *,
    workdir: Path,
    module: bytes,
) -> None:
    # Distinct module versions (same code, digests of their own), pushed before the clock runs.
    registry = cluster.registry.host
    modules = []
    for i in range(1, args.changes + 1):
        tag = f"m{i}"
        digest = publish(registry, f"filters/{PLUGIN}", tag, tagged(module, tag), "oci-wasm")
        modules.append((tag, f"oci://{registry}/filters/{PLUGIN}@{digest}", digest))
    config_changes = [
        (f"c{i}", {"pluginConfig": {"version": f"c{i}"}}) for i in range(1, args.changes + 1)
    ]
    module_changes = [
        (tag, {"url": url, "sha256": digest.split(":")[1], "pluginConfig": {"version": tag}})
        for tag, url, digest in modules
    ]
    with load_process(
        cluster, workdir, "changes", rate=args.rate, duration=600, workers=args.concurrency
    ) as (proc, out):
        wait_flowing(cluster, proc)
        series = [
            timed_changes(
                args, cluster, api, prober, "pluginConfig only (ECDS update)", config_changes
            ),
            timed_changes(
                args, cluster, api, prober, "module version (fetch, new VM)", module_changes
            ),
        ]
        proc.signal_group(signal.SIGTERM)  # the generator writes its result and ends
        result = wait_result(proc, out, timeout=30)
    runs = len(series[0].last)
    print(f"\n== WasmPlugin change → every sidecar serving it, under the same load ({runs} runs)")
    rows = [
        (
            s.title,
            *(
                f"{statistics.median(v):.2f} / {min(v):.2f} / {max(v):.2f}"
                for v in (s.accepted, s.first, s.last, s.envoy_cpu)
            ),
        )
        for s in series
    ]
    header = (
        "change (s: median / min / max)",
        "patch accepted",
        "first sidecar",
        "last sidecar",
        "Envoys' CPU s",
    )
    print(table(rows, header))
    print(f"probe failures (non-200 or connection errors): {prober.failures}")
    print("load during the changes: " + load_summary(result))


def timed_changes(  # noqa: PLR0917 - one call site, all positional reads well
    args: argparse.Namespace,
    cluster: MeshCluster,
    api: client.CustomObjectsApi,
    prober: Prober,
    title: str,
    changes: list[tuple[str, dict[str, Any]]],
) -> Series:
    """Each change: merge-patch the WasmPlugin's spec, then probe until every sidecar answers
    with x-filter-version = the change's value."""
    series = Series(title, [], [], [], [])
    print(f"\n{title}:")
    for value, spec in changes:
        # Steady load between changes, so that each one starts from the same state.
        threading.Event().wait(args.gap)
        envoys = {"envoys": {n: p for n, p in cluster.pids.items() if n.startswith("envoy ")}}
        cpu0 = snapshot(envoys)
        t0 = time.monotonic()
        api.patch_namespaced_custom_object(
            "extensions.istio.io", "v1alpha1", NS, "wasmplugins", PLUGIN, {"spec": spec},
            _content_type="application/merge-patch+json",
        )  # fmt: skip
        series.accepted.append(time.monotonic() - t0)
        seen = prober.wait_all(value, t0, timeout=120)
        series.envoy_cpu.append(total_cpu_s(cpu0, snapshot(envoys)))
        series.first.append(min(seen.values()))
        series.last.append(max(seen.values()))
        print(
            f"  {value}: patch accepted {series.accepted[-1]:.2f} s, first sidecar "
            f"{series.first[-1]:.2f} s, last of {len(seen)} {series.last[-1]:.2f} s; "
            f"Envoys used {series.envoy_cpu[-1]:.1f} CPU s meanwhile"
        )
    return series


def tagged(module: bytes, tag: str) -> bytes:
    """The module with a Wasm custom section "mesh-scale" holding `tag` appended: the same
    code under a digest of its own (section id 0, sizes as unsigned LEB128)."""

    def leb128(n: int) -> bytes:
        out = bytearray()
        while True:
            low, n = n & 0x7F, n >> 7
            out.append(low | (0x80 if n else 0))
            if not n:
                return bytes(out)

    name = b"mesh-scale"
    content = leb128(len(name)) + name + tag.encode()
    return module + b"\x00" + leb128(len(content)) + content


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=30, help="steady-load window (s)")
    parser.add_argument("--rate", type=float, default=200, help="offered requests per second")
    parser.add_argument("--concurrency", type=int, default=8, help="load generator workers")
    parser.add_argument("--changes", type=int, default=5, help="changes of each kind to time")
    parser.add_argument("--gap", type=float, default=2, help="seconds of load between changes")
    parser.add_argument("--workdir", type=Path, help="keep files here (default: a temp dir)")
    args = parser.parse_args()
    if args.workdir is not None:
        run(args, args.workdir.resolve())
        return
    with tempfile.TemporaryDirectory(prefix="mesh-scale-") as tmp:
        run(args, Path(tmp))


if __name__ == "__main__":
    main()
