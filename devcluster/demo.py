"""`make demo`: the local cluster with its data plane, the operator under its own RBAC, and the
security-headers example released, updated in place, guarded against a bad spec, and
garbage-collected, while its effect shows in real traffic: the response headers of the
frontend's Envoy sidecars before and after each step, and Istio's request metrics in Prometheus.

Run: PYTHONPATH=testbed:. uv run python -m devcluster.demo [--keep] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from devcluster.demo_canary import (
    Responses,
    canary_manifest,
    follow,
    rollout_events,
    status_of,
)
from devcluster.install import OPERATOR_NAMESPACE, REPO, install_filterrelease
from devcluster.operator_process import OperatorProcess
from localcluster.cluster import LocalCluster
from localcluster.istio import DEFAULT_ISTIO_VERSION
from localcluster.mesh import MeshCluster, meshed_deployment
from localcluster.network import LOOPBACK
from localcluster.oci_publish import publish
from meshtraffic.loadgen import LoadGenerator, LoadResult, workdir_endpoints
from meshtraffic.podlogs import CONTAINER

NS = "shop"
EXAMPLE = REPO / "deploy" / "examples" / "security-headers.yaml"
TEMPLATE_EXAMPLE = REPO / "deploy" / "examples" / "templates" / "istio-slo.yaml"
REPLICAS = 3
VERSION_HEADER = "x-filter-version"
# The kubectl plugin this package installs, beside the interpreter running the demo.
PLUGIN = Path(sys.executable).parent / "kubectl-filterrelease"


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def show(cluster: LocalCluster, *args: str) -> str:
    print(f"$ kubectl {' '.join(args)}", flush=True)
    out = cluster.kubectl(*args, check=False)
    text = (out.stdout + out.stderr).rstrip()
    print("  " + text.replace("\n", "\n  "), flush=True)
    return text


def frontend() -> dict[str, Any]:
    return meshed_deployment("frontend", NS, REPLICAS, {"version": "v1"})


# -- traffic through the sidecars --------------------------------------------------------------


class Traffic:
    """Every request the demo sends through the frontend's sidecars, and what came back: (pod,
    response code) -> count, which is what Prometheus must end up counting."""

    def __init__(self, cluster: MeshCluster) -> None:
        self.cluster = cluster
        self.sent: dict[tuple[str, str], int] = {}
        self.in_flight = 0

    def sidecars(self) -> dict[str, int]:
        """Pod -> its sidecar's listener port, for the frontend pods whose sidecar serves."""
        out = {}
        for (namespace, pod), exporter in self.cluster.mesh.exporter.pods.items():
            port = exporter.pod.sidecar_port()
            if namespace == NS and port is not None:
                out[pod] = port
        return dict(sorted(out.items()))

    def get(self, pod: str, port: int) -> tuple[http.client.HTTPResponse, bytes]:
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=5)
        try:
            conn.request("GET", "/", headers={"user-agent": "demo"})
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        self._count(pod, resp.status)
        return resp, body

    def curl(self) -> None:
        """Like `curl -si` to the first frontend pod's sidecar: status, headers, body."""
        pod, port = next(iter(self.sidecars().items()))
        print(f"$ curl -si http://{LOOPBACK}:{port}/    # the {CONTAINER} sidecar of pod {pod}")
        resp, body = self.get(pod, port)
        print(f"  HTTP/1.1 {resp.status} {resp.reason}")
        for name, value in resp.getheaders():
            print(f"  {name}: {value}")
        print("\n  " + body.decode(errors="replace").rstrip(), flush=True)

    def wait_serving(self, version: str | None) -> None:
        """Until every frontend sidecar answers with x-filter-version `version` (None:
        without one)."""
        t0 = time.monotonic()

        def all_serve() -> bool:
            ports = self.sidecars()
            if len(ports) != REPLICAS:
                return False
            for pod, port in ports.items():
                try:
                    resp, _ = self.get(pod, port)
                except OSError:
                    return False
                if resp.status != 200 or resp.getheader(VERSION_HEADER) != version:
                    return False
            return True

        what = f"x-filter-version {version}" if version else "no filter"
        self.cluster.wait_for(all_serve, timeout=120, what=f"{REPLICAS} sidecars serving {what}")
        print(f"  (every sidecar serves {what}; probed for {time.monotonic() - t0:.1f}s)")

    def load(self) -> None:
        """A short, bounded load round-robin over the frontend's sidecars."""
        endpoints = workdir_endpoints(self.cluster.mesh.agent_dir, NS, selector={"app": "frontend"})
        result = LoadGenerator(endpoints, rate=40, count=120).run()
        for (_, pod), codes in result.responses.items():
            for code, n in codes.items():
                self._count(pod, code, n)
        print(
            f"  load: {result.total_sent} requests in {result.elapsed_s:.1f}s over "
            f"{len(result.sent)} sidecars: responses {result.by_code()}, "
            f"connection errors {result.total_errors}",
            flush=True,
        )

    def show_metrics(self) -> None:
        prometheus = self.cluster.mesh.prometheus
        query = f'sum by (pod, response_code) (istio_requests_total{{namespace="{NS}"}})'

        def counted() -> dict[tuple[str, str], int]:
            return {
                (s.labels["pod"], s.labels["response_code"]): int(s.value)
                for s in prometheus.query(query)
            }

        def agrees() -> bool:
            # Every response the demo saw is counted; beyond that, only requests a stopped
            # background load had in flight (answered by Envoy, never read by the demo).
            seen = counted()
            extra = sum(seen.values()) - sum(self.sent.values())
            return all(seen.get(k, 0) >= n for k, n in self.sent.items()) and (
                0 <= extra <= self.in_flight
            )

        # The sidecars flush their access logs every 200 ms; Prometheus scrapes every second.
        self.cluster.wait_for(
            agrees,
            timeout=60,
            what=f"Prometheus to count the demo's requests: {self.sent} (up to "
            f"{self.in_flight} more in flight), counted {counted()}",
        )
        print(f"$ curl -s {prometheus.url}/api/v1/query --data-urlencode 'query={query}'")
        print(f"  {'pod':<34} {'response_code':>13} {'requests':>9}")
        for (pod, code), n in sorted(counted().items()):
            print(f"  {pod:<34} {code:>13} {n:>9}")
        total, seen = sum(self.sent.values()), sum(counted().values())
        print(
            f"  (the demo read {total} responses from the sidecars; Prometheus counts {seen}: "
            f"the difference, {seen - total}, were in flight when a background load stopped)",
            flush=True,
        )

    def add(self, result: LoadResult, concurrency: int) -> None:
        """Count a load that ran on its own (during a rollout) into what Prometheus must see.
        It was stopped rather than run to its end, so up to `concurrency` requests (and any
        that failed client-side) may have been answered without the demo reading the answer."""
        for (_, pod), codes in result.responses.items():
            for code, n in codes.items():
                self._count(pod, code, n)
        self.in_flight += concurrency + result.total_errors

    def _count(self, pod: str, code: int, n: int = 1) -> None:
        key = (pod, str(code))
        self.sent[key] = self.sent.get(key, 0) + n


def release_json(cluster: LocalCluster) -> Any:
    out = cluster.kubectl("get", "frel", "security-headers", "-n", NS, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def wait_ready(cluster: LocalCluster, generation: int) -> None:
    """Until the release is Ready, printing each step on the way: the write, then the proxies
    confirming one by one (status.proxies, read from each sidecar's Envoy by the operator)."""
    t0 = time.monotonic()
    seen: list[str] = []  # the (reason, proxies) steps printed so far

    def ready() -> bool:
        body = release_json(cluster)
        status = (body or {}).get("status", {})
        if status.get("observedGeneration") != generation:
            return False
        conds = {c["type"]: c for c in status.get("conditions", [])}
        ready_cond = conds.get("Ready", {})
        proxies = status.get("proxies") or {}
        key = f"{ready_cond.get('reason', '?')}, proxies {proxies.get('ready', '-')}"
        if seen[-1:] != [key]:
            seen.append(key)
            lagging = proxies.get("lagging") or []
            who = "; ".join(f"{p['pod']} runs {p['runs']}" for p in lagging[:3])
            print(f"  +{time.monotonic() - t0:4.1f}s  {key}" + (f" ({who})" if who else ""))
        return bool(ready_cond.get("status") == "True")

    cluster.wait_for(ready, timeout=120, what="the release to be Ready")
    print(
        f"  (Ready after {time.monotonic() - t0:.1f}s: every sidecar's Envoy reports the version)"
    )


def run(workdir: Path, keep: bool) -> None:
    say(
        f"Starting the local cluster in {workdir}: the control plane (binaries built from Go "
        f"modules), Istio {DEFAULT_ISTIO_VERSION}'s CRDs, and the data plane (mesh agent, "
        "a real Envoy per meshed pod, Prometheus)"
    )
    shutil.rmtree(workdir, ignore_errors=True)
    with MeshCluster(workdir, istio_version=DEFAULT_ISTIO_VERSION) as cluster:
        say("Installing the FilterRelease CRD and the operator's RBAC")
        kubeconfig = install_filterrelease(cluster)
        say("Starting the operator as ServiceAccount filterrelease-system/filterrelease-operator")
        analysis = {
            "FILTERRELEASE_PROMETHEUS_URL": cluster.mesh.prometheus.url,
            "FILTERRELEASE_PROMETHEUS_SCRAPE_SECONDS": "1",
            "FILTERRELEASE_OPERATOR_NAMESPACE": OPERATOR_NAMESPACE,
        }
        with OperatorProcess(
            kubeconfig, workdir / "logs" / "operator.log", extra_env=analysis
        ) as operator:
            print(f"  pid {operator.pid}, log {operator.log_path}")
            demo_steps(cluster, keep)
            if keep:
                say("Cluster and operator keep running; Ctrl-C stops everything")
                print(f"  Prometheus: {cluster.mesh.prometheus.url}")
                print(f"  sidecar ports: {Traffic(cluster).sidecars()}")
                signal.sigwait({signal.SIGINT, signal.SIGTERM})
        say("Stopping the operator, the data plane and the cluster")
    print("Done: every process the demo started has been stopped.")


def build_filters() -> dict[str, bytes]:
    say("Building the Wasm filters from Go source (filters/build.sh, cached)")
    out = (
        subprocess.run(
            ["bash", str(REPO / "filters" / "build.sh")],
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    return {p.stem: p.read_bytes() for p in sorted(Path(out).glob("*.wasm"))}


def publish_versions(cluster: LocalCluster, modules: dict[str, bytes]) -> None:
    say(f"Publishing security-headers v1.1.0 and v1.2.0 to the registry {cluster.registry.host}")
    for tag, layout in (("v1.1.0", "oci-wasm"), ("v1.2.0", "docker")):
        digest = publish(
            cluster.registry.host, "filters/security-headers", tag, modules["security-headers"],
            layout,  # type: ignore[arg-type]
        )  # fmt: skip
        print(f"  filters/security-headers:{tag} ({layout} layout) -> {digest}")
    # What a plain `oras push` makes: Istio cannot load it, and pre-flight must say so.
    publish(cluster.registry.host, "filters/security-headers", "v1.3.0-oras",
            modules["security-headers"], "oras-single")  # fmt: skip
    print("  filters/security-headers:v1.3.0-oras (a one-layer `oras push`, which Istio rejects)")
    publish(cluster.registry.host, "filters/security-headers", "v1.3.0", modules["panicky"],
            "oci-wasm")  # fmt: skip
    print("  filters/security-headers:v1.3.0 (a faulty build: panics every 5th request)")


def demo_steps(cluster: MeshCluster, keep: bool = False) -> None:
    traffic = Traffic(cluster)
    publish_versions(cluster, build_filters())
    start_workload(cluster, traffic)
    say("Traffic before any release: the app's own headers (note `server: app`)")
    traffic.curl()
    traffic.load()
    release_v1(cluster)
    say("Traffic after the release: the filter runs in every sidecar")
    traffic.wait_serving("v1.1.0")
    traffic.curl()
    v2 = canary_to_v2(cluster, traffic)
    traffic.wait_serving("v1.2.0")
    traffic.curl()
    proxy_log(cluster, next(iter(traffic.sidecars())), "v1.2.0")
    faulty_rolled_back(cluster, traffic)
    traffic.wait_serving("v1.2.0")
    reject_oras_push(cluster, v2, traffic)
    refuse_bad_spec(cluster, v2)
    undo_with_the_plugin(cluster, traffic)
    say("Istio's request metrics in Prometheus, by pod and response code")
    traffic.show_metrics()
    if not keep:
        delete_release(cluster, traffic)
    how_to_look(cluster, keep)


def plugin(cluster: LocalCluster, *args: str) -> str:
    """kubectl filterrelease, as a person runs it: the console script, their kubeconfig."""
    env = {**os.environ, "KUBECONFIG": str(cluster.admin_kubeconfig)}
    result = subprocess.run(
        [str(PLUGIN), *args], env=env, capture_output=True, text=True, check=True, timeout=60
    )
    return result.stdout


def undo_with_the_plugin(cluster: MeshCluster, traffic: Traffic) -> None:
    say(
        "An incident turns out to come from v1.2.0: `kubectl filterrelease undo` puts the "
        "previous good version (v1.1.0, kept whole in status.history) back on every proxy at "
        "once, skipping the canary"
    )
    print("  $ kubectl filterrelease undo security-headers -n shop")
    t0 = time.monotonic()
    print("  " + plugin(cluster, "undo", "security-headers", "-n", NS).strip())
    traffic.load()
    traffic.wait_serving("v1.1.0")
    print(f"  every sidecar serves v1.1.0 {time.monotonic() - t0:.1f}s after the request")
    cluster.wait_for(
        lambda: (
            "every selected proxy runs"
            in (release_json(cluster) or {}).get("status", {}).get("message", "")
        ),
        timeout=60,
        what="every proxy to confirm the undo",
    )
    say(
        "Git stays the source of truth: the spec still asks for v1.2.0, so the release reads "
        "Degraded (UndoneFromSpec) until the spec changes; the tree shows it all"
    )
    print("  $ kubectl filterrelease get security-headers -n shop")
    tree = plugin(cluster, "get", "security-headers", "-n", NS).rstrip()
    print("  " + tree.replace("\n", "\n  "))


def how_to_look(cluster: MeshCluster, kept: bool) -> None:
    say(
        "Look for yourself"
        + ("" if kept else " (run `make demo DEMO_ARGS=--keep` to keep the cluster running):")
    )
    print(f"  export KUBECONFIG={cluster.admin_kubeconfig}")
    # kubectl from the testbed, kubectl-filterrelease from this venv
    print(f"  export PATH={cluster.bin_dir}:{PLUGIN.parent}:$PATH")
    print("  kubectl filterrelease get -A")
    print("  kubectl filterrelease get security-headers -n shop -w    # live, Ctrl-C to stop")
    print("  kubectl filterrelease dashboard    # the rollout dashboard in your browser")
    print("  kubectl explain filterrelease.spec.module")
    print(f"  kubectl logs -n {NS} <frontend pod> -c {CONTAINER}")


def proxy_log(cluster: MeshCluster, pod: str, version: str) -> None:
    say("The sidecar's own log: the filter started in its Envoy with each version")
    print(f"$ kubectl logs {pod} -n {NS} -c {CONTAINER} | grep 'security-headers: started'")
    lines: list[str] = []

    def logged() -> bool:
        out = cluster.kubectl("logs", pod, "-n", NS, "-c", CONTAINER, check=False).stdout
        lines[:] = [line for line in out.splitlines() if "security-headers: started" in line]
        # The pod log writer merges Envoy's log into the file kwok serves every 200 ms.
        return any(line.endswith(f"version {version}") for line in lines)

    cluster.wait_for(logged, timeout=30, what=f"the {version} start line in the proxy's log")
    for line in lines:
        print(f"  {line}")


def start_workload(cluster: MeshCluster, traffic: Traffic) -> None:
    say(
        f"A meshed workload: namespace {NS} labelled istio-injection=enabled, Deployment "
        f"frontend ({REPLICAS} pods on kwok nodes, each with an {CONTAINER} container)"
    )
    cluster.kubectl("create", "namespace", NS)
    cluster.kubectl("label", "namespace", NS, "istio-injection=enabled")
    cluster.kubectl("apply", "-f", "-", input=json.dumps(frontend()))
    cluster.kubectl("rollout", "status", "deployment/frontend", "-n", NS, "--timeout=60s")
    show(cluster, "get", "pods", "-n", NS, "-o", "wide")
    t0 = time.monotonic()
    cluster.wait_for(
        lambda: len(traffic.sidecars()) == REPLICAS,
        timeout=120,
        what=f"{REPLICAS} sidecars serving",
    )
    print(f"  a real Envoy serves each pod's traffic ({time.monotonic() - t0:.1f}s later):")
    for pod, port in traffic.sidecars().items():
        print(f"    {pod}: 127.0.0.1:{port}")


def release_v1(cluster: LocalCluster) -> dict[str, Any]:
    say(f"Release v1.1.0: {EXAMPLE.relative_to(REPO)}, registry.local -> {cluster.registry.host}")
    example = EXAMPLE.read_text().replace("registry.local", cluster.registry.host)
    print("  " + example.replace("\n", "\n  "))
    cluster.kubectl("apply", "-f", "-", input=example)
    wait_ready(cluster, generation=1)
    show(cluster, "get", "frel", "-n", NS)
    say("The WasmPlugin the operator rendered: owned, explicit priority, pinned to the digest")
    show(cluster, "get", "wasmplugin", "security-headers", "-n", NS, "-o", "yaml")
    say("The release's status: module verified, versions applied and last known good")
    body = release_json(cluster)
    print("  " + yaml.safe_dump(body["status"], sort_keys=False).replace("\n", "\n  "))
    manifest: dict[str, Any] = yaml.safe_load(example)
    return manifest


def plugin_field(cluster: LocalCluster, path: str) -> str:
    return cluster.kubectl(
        "get", "wasmplugin", "security-headers", "-n", NS, "-o", f"jsonpath={{{path}}}"
    ).stdout


def canary_to_v2(cluster: MeshCluster, traffic: Traffic) -> dict[str, Any]:
    say(
        "Release v1.2.0 with a canary (deploy/examples/security-headers-canary.yaml at demo "
        "scale): a third of the pods, analysis, two thirds, pause, analysis, promotion"
    )
    v2 = canary_manifest(
        cluster.registry.host, "v1.2.0", {"frame_options": "SAMEORIGIN", "version": "v1.2.0"}
    )
    print("  " + yaml.safe_dump(v2["spec"]["strategy"], sort_keys=False).replace("\n", "\n  "))
    print(f"  with the AnalysisTemplate it names: {TEMPLATE_EXAMPLE.relative_to(REPO)}")
    cluster.kubectl("apply", "-f", str(TEMPLATE_EXAMPLE))
    with Responses(cluster, NS) as responses:
        cluster.kubectl("apply", "-f", "-", input=json.dumps(v2))
        say("The rollout as it happens (steady traffic through every sidecar meanwhile)")
        follow(cluster, NS, "security-headers", lambda s: promoted(s, "v1.2.0"))
    traffic.add(responses.load.result, responses.load.concurrency)
    say("What the traffic saw: every response carried exactly one version of the filter")
    print(f"  {responses.summary()}")
    show(cluster, "get", "frel", "-n", NS)
    show(cluster, "get", "wasmplugins", "-n", NS)
    rollout_events(cluster, NS)
    return v2


def promoted(status: dict[str, Any], version: str) -> bool:
    stable = status.get("stable") or {}
    return (
        status.get("phase") == "Healthy"
        and stable.get("pluginConfig", {}).get("version") == version
    )


def faulty_rolled_back(cluster: MeshCluster, traffic: Traffic) -> None:
    say(
        "Release v1.3.0, a build that passes its unit tests but panics under load "
        "(filters/cmd/panicky): the canary catches it and rolls back on its own"
    )
    bad = canary_manifest(cluster.registry.host, "v1.3.0", {"panic_every": 5, "version": "v1.3.0"})
    with Responses(cluster, NS) as responses:
        cluster.kubectl("apply", "-f", "-", input=json.dumps(bad))
        follow(cluster, NS, "security-headers", lambda s: s.get("phase") == "Degraded"
               and not s.get("canaryPods"))  # fmt: skip
    traffic.add(responses.load.result, responses.load.concurrency)
    status = status_of(cluster, NS, "security-headers")
    say("Why it was rolled back, and what users saw")
    print(f"  status.rollout.aborted: {status['rollout']['aborted'][:300]}")
    print(f"  {responses.summary()}")
    print(
        "  (the failed responses came from the canary third of the pods only, for the seconds "
        "between v1.3.0 reaching them and the rollback)"
    )
    show(cluster, "get", "frel", "-n", NS)
    history = status.get("history", [])
    print("  status.history: " + "; ".join(f"{h['version']} {h['outcome']}" for h in history))
    rollout_events(cluster, NS)
    say("Back on v1.2.0 with the spec still asking for v1.3.0: Degraded until the spec changes")
    print("  kubectl annotate frel security-headers -n shop filterrelease.dev/request=retry   "
          "# would try v1.3.0 again")  # fmt: skip
    v2 = canary_manifest(
        cluster.registry.host, "v1.2.0", {"frame_options": "SAMEORIGIN", "version": "v1.2.0"}
    )
    cluster.kubectl("apply", "-f", "-", input=json.dumps(v2))
    follow(cluster, NS, "security-headers", lambda s: promoted(s, "v1.2.0"), timeout=60)


def reject_oras_push(cluster: MeshCluster, v2: dict[str, Any], traffic: Traffic) -> None:
    say("v1.3.0 pushed with `oras push` (one raw layer): pre-flight rejects it before any proxy")
    oras = json.loads(json.dumps(v2))
    oras["spec"]["module"]["url"] = v2["spec"]["module"]["url"].replace("v1.2.0", "v1.3.0-oras")
    cluster.kubectl("apply", "-f", "-", input=json.dumps(oras))

    def rejected() -> bool:
        status = (release_json(cluster) or {}).get("status", {})
        return bool(status.get("observedGeneration") == 5 and status.get("phase") == "Degraded")

    cluster.wait_for(rejected, timeout=60, what="pre-flight to reject v1.3.0")
    show(cluster, "get", "frel", "-n", NS)
    for c in release_json(cluster)["status"]["conditions"]:
        print(f"  {c['type']}={c['status']} ({c['reason']}): {c['message']}")
    print(f"  the WasmPlugin still carries {plugin_field(cluster, '.spec.url')}")
    say("Meanwhile the traffic never saw v1.3.0: the sidecars keep serving v1.2.0")
    traffic.load()
    traffic.wait_serving("v1.2.0")
    say("Back to v1.2.0 (the spec as it was): Healthy again, nothing rewritten")
    cluster.kubectl("apply", "-f", "-", input=json.dumps(v2))
    wait_ready(cluster, generation=6)


def refuse_bad_spec(cluster: LocalCluster, v2: dict[str, Any]) -> None:
    say("A bad spec (ftp:// module URL) is refused by the API server; nothing changes")
    bad = json.loads(json.dumps(v2))
    bad["spec"]["module"]["url"] = "ftp://files.local/security-headers.wasm"
    result = cluster.kubectl("apply", "-f", "-", input=json.dumps(bad), check=False)
    print("  " + result.stderr.strip().replace("\n", "\n  "))
    print(f"  the WasmPlugin still carries {plugin_field(cluster, '.spec.url')}")
    say("Events the operator recorded")
    show(cluster, "get", "events", "-n", NS, "--field-selector",
         "involvedObject.kind=FilterRelease", "--sort-by=.lastTimestamp")  # fmt: skip


def delete_release(cluster: MeshCluster, traffic: Traffic) -> None:
    say("Deleting the release: the garbage collector removes its WasmPlugin")
    cluster.kubectl("delete", "frel", "security-headers", "-n", NS)

    def gone() -> bool:
        got = cluster.kubectl("get", "wasmplugin", "security-headers", "-n", NS, check=False)
        return got.returncode != 0

    cluster.wait_for(gone, timeout=30, what="garbage collection of the WasmPlugin")
    show(cluster, "get", "wasmplugins", "-n", NS)
    say("And the sidecars serve without the filter again")
    traffic.wait_serving(None)
    traffic.curl()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=REPO / ".localcluster" / "demo")
    parser.add_argument("--keep", action="store_true", help="keep running until Ctrl-C")
    args = parser.parse_args()
    try:
        run(args.workdir.resolve(), args.keep)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
