"""Meshed pods of a local cluster: a pod manifest with an istio-proxy container, the Running
pods a Service would list, and Prometheus' Istio samples keyed by pod and response code."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from localcluster import LocalCluster
from localcluster.prometheus import Sample
from meshtraffic.podlogs import CONTAINER


def by_pod_code(samples: list[Sample]) -> dict[tuple[str, str], float]:
    return {(s.labels["pod"], s.labels["response_code"]): s.value for s in samples}


def meshed_pod(namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": "web"}},
        "spec": {
            "containers": [
                {"name": "app", "image": "registry.local/app:1"},
                {"name": CONTAINER, "image": "registry.local/proxyv2:1"},
            ],
            "terminationGracePeriodSeconds": 0,
        },
    }


def list_pods(cluster: LocalCluster) -> Callable[[str, Any], list[str]]:
    """Running pods matching a selector, as a Service's endpoints would list them."""

    def names(namespace: str, selector: Any) -> list[str]:
        result = cluster.kubectl(
            "get", "pods", "-n", namespace,
            "-l", ",".join(f"{k}={v}" for k, v in selector.items()),
            "--field-selector=status.phase=Running",
            "-o", "jsonpath={.items[*].metadata.name}",
        )  # fmt: skip
        return result.stdout.split()

    return names
