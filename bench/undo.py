"""Benchmark: how fast `undo` puts an earlier good version back, measured on the traffic itself.

On one MeshCluster (the real operator, a real Envoy per pod running the real filter, the real
registry and Prometheus; 4 meshed pods), --runs times, under steady load through every sidecar:

  undo (healthy)   v1 released, v2 released over it (every pod on v2, Healthy), then the request
                   `undo`: every pod back on v1
  undo (canary)    v2 stable, v3 as a canary held at its pause on half the pods, then `undo`:
                   every pod on v2 at once
  abort (canary)   the same canary, then `abort`: the rollback every canary already had

Figures per run, from the moment the request annotation was written:
  all on old     until the last response that did not carry the old version alone (after it,
                 every sidecar answered with the old version only)
  confirmed      until the status said every selected proxy runs it (the operator read each
                 proxy's Envoy)
  mixed          responses with two versions or none in the whole run (must be 0)

Prints medians, asserts nothing. Run: PYTHONPATH=testbed:. uv run python bench/undo.py [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from localcluster.oci_publish import publish
from tests.support.canary import (
    Mesh,
    Traffic,
    install_v1,
    operated_mesh,
    release,
    status,
    versions_of,
)
from tests.support.polling import poll
from tests.support.wasm import built_filters, with_custom_section

PAUSED = [{"setWeight": 50}, {"pause": {}}]
ONE_STEP = [{"setWeight": 100}]  # v2 promoted at once (release() has default steps)
RELEASE = "headers"


def request(mesh: Mesh, value: str) -> float:
    t0 = time.monotonic()
    mesh.cluster.kubectl("annotate", "frel", RELEASE, "-n", "shop", "--overwrite",
                         f"filterrelease.dev/request={value}")  # fmt: skip
    return t0


def measure(
    mesh: Mesh, traffic: Traffic, t0: float, old: str, done: Callable[[dict[str, object]], bool]
) -> tuple[float, float]:
    def settled() -> bool:
        recent = traffic.since(time.monotonic() - 2)
        return len({s[1] for s in recent}) == 4 and all(versions_of(s[3]) == [old] for s in recent)

    poll(settled, timeout=90, what=f"two seconds of {old} alone")
    confirmed = poll(lambda: (done(status(mesh)) and time.monotonic()) or None, timeout=60,
                     what="the proxies confirmed")  # fmt: skip
    samples = traffic.since(t0)
    last_other = max((s[0] for s in samples if versions_of(s[3]) != [old]), default=t0)
    return last_other - t0, confirmed - t0


def undone(current: dict[str, object]) -> bool:
    return "every selected proxy runs" in str(current.get("message", ""))


def rolled_back(current: dict[str, object]) -> bool:
    history = current.get("history") or [{}]
    return isinstance(history, list) and history[0].get("outcome") == "RolledBack"


def canary_held(mesh: Mesh) -> None:
    release(mesh, "security-headers", {"version": "v3"}, steps=PAUSED)
    poll(lambda: status(mesh).get("phase") == "Paused" or None, timeout=120,
         what="the v3 canary at its pause")  # fmt: skip


def healthy_on(mesh: Mesh, version: str) -> None:
    def on() -> bool:
        current = status(mesh)
        stable = current.get("stable") or {}
        return current.get("phase") == "Healthy" and stable.get("pluginConfig") == {
            "version": version
        }

    poll(on, timeout=120, what=f"Healthy on {version}")


def one_run(mesh: Mesh) -> dict[str, tuple[float, float, int]]:
    figures: dict[str, tuple[float, float, int]] = {}
    install_v1(mesh)
    release(mesh, "security-headers", {"version": "v2"}, steps=ONE_STEP)
    healthy_on(mesh, "v2")
    with Traffic(mesh) as traffic:
        t0 = request(mesh, "undo")
        old_s, confirmed_s = measure(mesh, traffic, t0, "v1", undone)
        mixed = sum(1 for s in traffic.since(t0) if len(versions_of(s[3])) != 1)
    figures["undo (healthy)"] = (old_s, confirmed_s, mixed)
    for name, value, done in (("undo (canary)", "undo", undone),
                              ("abort (canary)", "abort", rolled_back)):  # fmt: skip
        install_v1(mesh)
        release(mesh, "security-headers", {"version": "v2"}, steps=ONE_STEP)
        healthy_on(mesh, "v2")
        canary_held(mesh)
        with Traffic(mesh) as traffic:
            t0 = request(mesh, value)
            old_s, confirmed_s = measure(mesh, traffic, t0, "v2", done)
            mixed = sum(1 for s in traffic.since(t0) if len(versions_of(s[3])) != 1)
        figures[name] = (old_s, confirmed_s, mixed)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    modules = built_filters()
    with (
        tempfile.TemporaryDirectory(prefix="bench-undo-") as tmp,
        operated_mesh(Path(tmp)) as (cluster, operator),
    ):
        mesh = Mesh(cluster, operator)
        wasm = with_custom_section(modules["security-headers"], "bench", b"undo")
        digest = publish(cluster.registry.host, "filters/security-headers", "b", wasm, "oci-wasm")
        mesh.modules["security-headers"] = (
            f"oci://{cluster.registry.host}/filters/security-headers@{digest}"
        )
        runs: list[dict[str, tuple[float, float, int]]] = []
        for i in range(args.runs):
            runs.append(one_run(mesh))
            line = "; ".join(f"{k} {v[0]:.2f}s/{v[1]:.2f}s" for k, v in runs[-1].items())
            print(f"run {i + 1}/{args.runs}: {line}", flush=True)
    print(f"\nmedians of {args.runs} runs (from the request; 4 pods, steady load)")
    print(f"{'':16} {'all on old':>11} {'confirmed':>10} {'mixed':>6}")
    for name in runs[0]:
        old = statistics.median(r[name][0] for r in runs)
        confirmed = statistics.median(r[name][1] for r in runs)
        mixed = sum(r[name][2] for r in runs)
        print(f"{name:16} {old:10.2f}s {confirmed:9.2f}s {mixed:6d}")


if __name__ == "__main__":
    main()
