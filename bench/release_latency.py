"""Benchmark: local control plane start/stop, and the operator's reaction time.

Prints, for N runs each (medians, as the machines are shared and noisy):
  - cluster start (etcd → apiserver → controller-manager → scheduler → kwok → Deployment Running)
    and stop;
  - create: FilterRelease created → its WasmPlugin exists (measured by a watch, not by polling);
  - update: spec changed → WasmPlugin carries the new version;
  - status: spec changed → status Ready for the new generation.

Run: make bench   (or PYTHONPATH=testbed uv run python bench/release_latency.py --runs 10)
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

from localcluster import LocalCluster
from localcluster.install import DEFAULT_ISTIO_VERSION, install_filterrelease, install_istio_crds
from localcluster.operator_process import OperatorProcess

GROUP, VERSION = "filterrelease.dev", "v1alpha1"


def release(namespace: str, name: str, tag: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FilterRelease",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "priority": 10,
            "module": {"url": f"oci://registry.local/filters/bench:{tag}"},
            "pluginConfig": {"tag": tag},
        },
    }


class PluginWatcher:
    """Records when each WasmPlugin first carries a given URL, from a watch stream."""

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
                key = (obj["metadata"]["name"], obj["spec"]["url"])
                self.seen.setdefault(key, time.monotonic())
                self._cond.notify_all()

    def wait(self, name: str, url: str, timeout: float = 30) -> float:
        with self._cond:
            if not self._cond.wait_for(lambda: (name, url) in self.seen, timeout):
                raise TimeoutError(f"{name} never carried {url}")
            return self.seen[(name, url)]


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


def bench_operator(runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, LocalCluster(Path(tmp)) as cluster:
        install_istio_crds(cluster, DEFAULT_ISTIO_VERSION)
        kubeconfig = install_filterrelease(cluster)
        cluster.kubectl("create", "namespace", "bench")
        api_client = config.new_client_from_config(  # type: ignore[no-untyped-call]
            str(cluster.admin_kubeconfig)
        )
        api = client.CustomObjectsApi(api_client)
        with OperatorProcess(kubeconfig, Path(tmp) / "operator.log"):
            watcher = PluginWatcher(api, "bench")
            create, update, status = [], [], []
            for i in range(runs):
                name = f"r{i}"
                t0 = time.monotonic()
                api.create_namespaced_custom_object(
                    GROUP, VERSION, "bench", "filterreleases", release("bench", name, "v1")
                )
                create.append(watcher.wait(name, "oci://registry.local/filters/bench:v1") - t0)
                ready_at(api, "bench", name, 1)
                t0 = time.monotonic()
                api.patch_namespaced_custom_object(
                    GROUP, VERSION, "bench", "filterreleases", name,
                    {"spec": release("bench", name, "v2")["spec"]},
                    _content_type="application/merge-patch+json",
                )  # fmt: skip
                update.append(watcher.wait(name, "oci://registry.local/filters/bench:v2") - t0)
                status.append(ready_at(api, "bench", name, 2) - t0)
            print(f"create → WasmPlugin     {fmt(create)}")
            print(f"update → WasmPlugin     {fmt(update)}")
            print(f"update → status Ready   {fmt(status)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10, help="operator runs (cluster: a third)")
    args = parser.parse_args()
    bench_cluster(max(3, args.runs // 3))
    bench_operator(args.runs)


if __name__ == "__main__":
    main()
