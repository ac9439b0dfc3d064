"""Benchmark: how long the operator takes to confirm that the proxies run a new version.

On a MeshCluster with N meshed pods (real Envoy sidecars) and the operator running under its own
RBAC, a release without a canary gets a new pluginConfig per run (each sidecar then applies a new
ECDS config; the module stays, so the data plane's own time is the agent's conversion and
Envoy's swap). Per run it records, on the bench's monotonic clock:
  - written: the WasmPlugin carries the new config (polled through the API, ~5 ms);
  - served: the last of the N sidecars answers with the new version (each probed directly);
  - ready: the release says Ready for the new generation (the operator read every proxy).

Prints medians over the runs of: written → served (the data plane's own apply time),
served → ready (what confirmation adds beyond it: the goal is ≤ 1 s p50 for 20 sidecars),
port-forwards per change (from the API server's own apiserver_request_total for
pods/portforward, not from the operator's counters), and the operator's CPU seconds per change
(from /proc). Also the port-forwards during an idle resync window (expected: 0).

Run: PYTHONPATH=testbed:. uv run python bench/proxy_confirmation.py --pods 20 --runs 5
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config

from devcluster.demo import build_filters
from devcluster.install import install_filterrelease
from devcluster.operator_process import OperatorProcess
from localcluster.mesh import MeshCluster, meshed_deployment
from localcluster.oci_publish import publish
from meshagent import layout

NS, NAME = "bench", "headers"
GROUP, VERSION = "filterrelease.dev", "v1alpha1"
HEADER = "x-filter-version"


def release(url: str, version: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FilterRelease",
        "metadata": {"name": NAME, "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "priority": 10,
            "module": {"url": url},
            "pluginConfig": {"version": version},
        },
    }


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def portforwards(cluster: MeshCluster) -> int:
    """The API server's own count of pods/portforward requests so far."""
    text = cluster.kubectl("get", "--raw", "/metrics").stdout
    total = 0.0
    for line in text.splitlines():
        if line.startswith("apiserver_request_total{") and 'subresource="portforward"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def serves(agent_dir: Path, pod: str, version: str) -> bool:
    port = layout.sidecar_port(agent_dir, NS, pod)
    if port is None:
        return False
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        resp.read()
        return resp.getheader(HEADER) == version
    except OSError:
        return False
    finally:
        conn.close()


def run_once(
    cluster: MeshCluster,
    custom: Any,  # client.CustomObjectsApi, read as plain JSON
    pods: list[str],
    *,
    version: str,
    operator_pid: int,
) -> dict[str, float]:
    forwards0, cpu0 = portforwards(cluster), cpu_seconds(operator_pid)
    body = custom.get_namespaced_custom_object(GROUP, VERSION, NS, "filterreleases", NAME)
    body["spec"]["pluginConfig"] = {"version": version}
    t0 = time.monotonic()
    updated = custom.replace_namespaced_custom_object(
        GROUP, VERSION, NS, "filterreleases", NAME, body
    )
    generation = updated["metadata"]["generation"]
    agent_dir = cluster.mesh.agent_dir
    written = served = ready = 0.0
    waiting = set(pods)
    deadline = t0 + 120
    while not ready and time.monotonic() < deadline:
        now = time.monotonic()
        if not written:
            plugin = custom.get_namespaced_custom_object(
                "extensions.istio.io", "v1alpha1", NS, "wasmplugins", NAME
            )
            if (plugin["spec"].get("pluginConfig") or {}).get("version") == version:
                written = now
        if written and waiting:
            waiting = {p for p in waiting if not serves(agent_dir, p, version)}
            if not waiting:
                served = time.monotonic()
        status = custom.get_namespaced_custom_object(
            GROUP, VERSION, NS, "filterreleases", NAME
        ).get("status", {})
        ready_cond: dict[str, Any] = next(
            (c for c in status.get("conditions", []) if c["type"] == "Ready"), {}
        )
        if status.get("observedGeneration") == generation and ready_cond.get("status") == "True":
            ready = time.monotonic()
            if waiting:  # Ready before a sidecar served it: the confirmation would be wrong
                raise AssertionError(
                    f"Ready while {sorted(waiting)} did not serve {version}: "
                    f"{json.dumps({k: status.get(k) for k in ('proxies', 'conditions')})}"
                )
    if not ready:
        raise TimeoutError(f"{version}: not Ready in 120 s")
    return {
        "written": written - t0,
        "served_after_write": served - written,
        "ready_after_served": ready - served,
        "portforwards": portforwards(cluster) - forwards0,
        "cpu": cpu_seconds(operator_pid) - cpu0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pods", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-confirm-") as tmp:
        workdir = Path(tmp)
        with MeshCluster(workdir / "cluster", nodes=2) as cluster:
            kubeconfig = install_filterrelease(cluster)
            operator = OperatorProcess(
                kubeconfig, workdir / "operator.log", resync_seconds=10,
                extra_env={"FILTERRELEASE_DRY_RUN": "false"},  # not what is measured here
            )  # fmt: skip
            with operator:
                cluster.kubectl("create", "namespace", NS)
                cluster.kubectl("label", "namespace", NS, "istio-injection=enabled")
                web = meshed_deployment("web", NS, args.pods)
                cluster.kubectl("apply", "-f", "-", input=json.dumps(web))
                digest = publish(
                    cluster.registry.host, "filters/security-headers", "v1",
                    build_filters()["security-headers"], "oci-wasm",
                )  # fmt: skip
                url = f"oci://{cluster.registry.host}/filters/security-headers@{digest}"
                api = config.new_client_from_config(  # type: ignore[no-untyped-call]
                    str(cluster.admin_kubeconfig)
                )
                custom: Any = client.CustomObjectsApi(api)
                t0 = time.monotonic()
                while True:
                    names = cluster.kubectl(
                        "get", "pods", "-n", NS, "-o", "jsonpath={.items[*].metadata.name}"
                    )
                    pods = sorted(names.stdout.split())
                    up = [p for p in pods if layout.sidecar_port(cluster.mesh.agent_dir, NS, p)]
                    if len(up) == args.pods:
                        break
                    if time.monotonic() - t0 > 180:
                        raise TimeoutError(f"{len(up)} of {args.pods} sidecars up")
                    time.sleep(0.5)
                print(f"{args.pods} sidecars up in {time.monotonic() - t0:.1f}s", flush=True)
                cluster.kubectl("apply", "-f", "-", input=json.dumps(release(url, "r0")))
                pid = operator.pid
                assert pid is not None
                results = []
                for i in range(args.runs + 1):
                    r = run_once(cluster, custom, pods, version=f"r{i + 1}", operator_pid=pid)
                    if i == 0:
                        continue  # the first one also warms the operator up
                    results.append(r)
                    print(
                        f"run {i}: data plane {r['served_after_write']:.2f}s, confirmation "
                        f"+{r['ready_after_served']:.2f}s, {r['portforwards']} port-forwards, "
                        f"operator CPU {r['cpu']:.2f}s",
                        flush=True,
                    )
                idle0 = portforwards(cluster)
                time.sleep(3 * operator.resync_seconds)  # three resyncs of a confirmed release
                idle = portforwards(cluster) - idle0
                log = Path(operator.log_path).read_text()
    report(args.pods, results, idle, log)


def report(pods: int, results: list[dict[str, float]], idle: int, log: str) -> None:
    med = {k: statistics.median(r[k] for r in results) for k in results[0]}
    print(f"\nproxy confirmation, {pods} sidecars, median of {len(results)} runs:")
    print(f"  WasmPlugin written → every sidecar serves it (data plane): "
          f"{med['served_after_write']:.2f}s")  # fmt: skip
    print(f"  every sidecar serves it → Ready (confirmation adds):      "
          f"{med['ready_after_served']:.2f}s")  # fmt: skip
    print(f"  port-forwards (API server count) per change:               {med['portforwards']:.0f}")
    print(f"  operator CPU per change:                                   {med['cpu']:.2f}s")
    print(f"  port-forwards during 3 idle resyncs:                       {idle}")
    if re.search(r"Traceback", log):
        print("  (the operator log has a traceback: look at it)")


if __name__ == "__main__":
    main()
