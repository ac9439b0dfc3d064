"""Benchmark: local control plane start/stop, and the operator's reaction time.

Prints, for N runs each (medians, as the machines are shared and noisy):
  - cluster start (etcd → apiserver → controller-manager → scheduler → kwok → Deployment Running)
    and stop;
  - create: FilterRelease created → its WasmPlugin exists (measured by a watch, not by polling),
    for a module the operator has never seen: registry resolution, layout and ABI checks, and
    the Envoy dry run (when an Envoy is available) are all in it;
  - update: a new version (new digest) → WasmPlugin carries it;
  - status: that update → status Ready for the new generation;
  - config: a pluginConfig-only change → WasmPlugin carries it (dry run with the new config).

Run: make bench   (or PYTHONPATH=testbed uv run python bench/release_latency.py --runs 10)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

from devcluster.install import install_filterrelease
from devcluster.operator_process import OperatorProcess
from localcluster import LocalCluster
from localcluster.istio import DEFAULT_ISTIO_VERSION, install_istio_crds
from localcluster.oci_publish import publish

GROUP, VERSION = "filterrelease.dev", "v1alpha1"


def release(namespace: str, name: str, url: str, version: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FilterRelease",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "priority": 10,
            "module": {"url": url},
            "pluginConfig": {"version": version},
        },
    }


def security_headers() -> bytes:
    out = (
        subprocess.run(["bash", "filters/build.sh"], stdout=subprocess.PIPE, text=True, check=True)
        .stdout.strip()
        .splitlines()[-1]
    )
    return (Path(out) / "security-headers.wasm").read_bytes()


def distinct(module: bytes, tag: str) -> bytes:
    """The module plus a Wasm custom section naming `tag`: same code, a digest of its own."""
    body = bytes([len("bench")]) + b"bench" + tag.encode()
    return module + b"\x00" + bytes([len(body)]) + body


class PluginWatcher:
    """Records when each WasmPlugin first carries a given spec (url + config), from a watch."""

    def __init__(self, api: client.CustomObjectsApi, namespace: str) -> None:
        self.seen: dict[tuple[str, str], float] = {}
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, args=(api, namespace), daemon=True)
        self._thread.start()

    def _run(self, api: client.CustomObjectsApi, namespace: str) -> None:
        # The stream breaks when the cluster stops at the end of the benchmark: that is its end.
        with contextlib.suppress(Exception):
            self._follow(api, namespace)

    def _follow(self, api: client.CustomObjectsApi, namespace: str) -> None:
        for event in watch.Watch().stream(  # type: ignore[no-untyped-call]
            api.list_namespaced_custom_object,
            "extensions.istio.io", "v1alpha1", namespace, "wasmplugins",
        ):  # fmt: skip
            obj = event["object"]
            with self._cond:
                spec = obj["spec"]
                key = (obj["metadata"]["name"], spec["url"] + json.dumps(spec.get("pluginConfig")))
                self.seen.setdefault(key, time.monotonic())
                self._cond.notify_all()

    def wait(self, name: str, url: str, version: str, timeout: float = 60) -> float:
        key = (name, url + json.dumps({"version": version}))
        with self._cond:
            if not self._cond.wait_for(lambda: key in self.seen, timeout):
                raise TimeoutError(f"{name} never carried {url} with version {version}")
            return self.seen[key]


def ready_at(api: client.CustomObjectsApi, namespace: str, name: str, generation: int) -> float:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        body: Any = api.get_namespaced_custom_object(
            GROUP, VERSION, namespace, "filterreleases", name
        )
        status = body.get("status", {})
        ready = [c for c in status.get("conditions", []) if c["type"] == "Ready"]
        if (
            status.get("observedGeneration") == generation
            and ready
            and ready[0]["status"] == "True"
        ):
            return time.monotonic()
        time.sleep(0.01)
    raise TimeoutError(f"{name} not Ready for generation {generation}")


def fmt(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    median = statistics.median(ms)
    return f"median {median:7.1f} ms   min {ms[0]:7.1f}   max {ms[-1]:7.1f}   (n={len(ms)})"


def bench_cluster(runs: int) -> None:
    starts, stops = [], []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            cluster = LocalCluster(Path(tmp))
            t0 = time.monotonic()
            cluster.start()
            starts.append(time.monotonic() - t0)
            t0 = time.monotonic()
            cluster.stop()
            stops.append(time.monotonic() - t0)
    print(f"cluster start           {fmt(starts)}")
    print(f"cluster stop            {fmt(stops)}")


def bench_operator(runs: int, dry_run: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp, LocalCluster(Path(tmp)) as cluster:
        install_istio_crds(cluster, DEFAULT_ISTIO_VERSION)
        kubeconfig = install_filterrelease(cluster)
        cluster.kubectl("create", "namespace", "bench")
        api_client = config.new_client_from_config(  # type: ignore[no-untyped-call]
            str(cluster.admin_kubeconfig)
        )
        api = client.CustomObjectsApi(api_client)
        module = security_headers()
        registry = cluster.registry.host
        env = {"FILTERRELEASE_DRY_RUN": "true" if dry_run else "false"}
        print(f"operator with the Envoy dry run {'on' if dry_run else 'off'}:")
        with OperatorProcess(kubeconfig, Path(tmp) / "operator.log", extra_env=env):
            watcher = PluginWatcher(api, "bench")
            create, update, status, config_change = [], [], [], []
            for i in range(runs):
                name = f"r{i}"
                urls, pinned = {}, {}
                for tag in ("v1", "v2"):
                    digest = publish(registry, f"bench/{name}", tag, distinct(module, f"{i}{tag}"))
                    urls[tag] = f"oci://{registry}/bench/{name}:{tag}"
                    pinned[tag] = f"oci://{registry}/bench/{name}@{digest}"
                t0 = time.monotonic()
                api.create_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    "bench",
                    "filterreleases",
                    release("bench", name, urls["v1"], "v1"),
                )
                create.append(watcher.wait(name, pinned["v1"], "v1") - t0)
                ready_at(api, "bench", name, 1)
                t0 = time.monotonic()
                patch(api, name, release("bench", name, urls["v2"], "v2"))
                update.append(watcher.wait(name, pinned["v2"], "v2") - t0)
                status.append(ready_at(api, "bench", name, 2) - t0)
                t0 = time.monotonic()
                patch(api, name, release("bench", name, urls["v2"], "v2b"))
                config_change.append(watcher.wait(name, pinned["v2"], "v2b") - t0)
            print(f"create → WasmPlugin     {fmt(create)}")
            print(f"update → WasmPlugin     {fmt(update)}")
            print(f"update → status Ready   {fmt(status)}")
            print(f"config → WasmPlugin     {fmt(config_change)}")


def patch(api: client.CustomObjectsApi, name: str, body: dict[str, Any]) -> None:
    api.patch_namespaced_custom_object(
        GROUP, VERSION, "bench", "filterreleases", name, {"spec": body["spec"]},
        _content_type="application/merge-patch+json",
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10, help="operator runs (cluster: a third)")
    parser.add_argument("--no-cluster", action="store_true", help="skip the start/stop figures")
    parser.add_argument("--no-dry-run", action="store_true", help="operator without Envoy runs")
    args = parser.parse_args()
    if not args.no_cluster:
        bench_cluster(max(3, args.runs // 3))
    bench_operator(args.runs, dry_run=not args.no_dry_run)


if __name__ == "__main__":
    main()
