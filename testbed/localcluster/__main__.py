"""CLI: `python -m localcluster up --workdir DIR [--nodes N] [--mesh]` and
`python -m localcluster build`.

With --mesh the data plane runs too (localcluster.mesh.MeshCluster): Istio's CRDs, the mesh
agent with a real Envoy per meshed pod, Istio metrics in a real Prometheus, and
`kubectl logs <pod> -c istio-proxy`.

From the repository root: `PYTHONPATH=testbed uv run python -m localcluster up --workdir /tmp/c`
(or `uv run python testbed/localcluster up ...`, which finds the package by itself).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

if not __package__:
    # Run as a directory (`python testbed/localcluster`): make `import localcluster` work.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from localcluster.binaries import ensure_binaries
from localcluster.cluster import LocalCluster
from localcluster.errors import ClusterStartError
from localcluster.istio import DEFAULT_ISTIO_VERSION, ISTIO_VERSIONS
from localcluster.mesh import MeshCluster


def _up(args: argparse.Namespace) -> int:
    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        print(f"\nlocalcluster: got {signal.Signals(signum).name}, stopping...", file=sys.stderr)
        stop_requested.set()

    workdir = Path(args.workdir)
    kwok_configs = [Path(c) for c in args.kwok_config]
    cluster = (
        MeshCluster(workdir, nodes=args.nodes, kwok_configs=kwok_configs, istio_version=args.istio)
        if args.mesh
        else LocalCluster(workdir, nodes=args.nodes, kwok_configs=kwok_configs)
    )
    # SIGINT during start() raises KeyboardInterrupt, which start() turns into a clean stop.
    # SIGTERM gets the same treatment by raising it ourselves until the cluster is up.
    signal.signal(signal.SIGTERM, lambda *_: _raise_interrupt())
    try:
        cluster.start(deadline_s=args.deadline)
    except ClusterStartError as exc:
        print(f"localcluster: start failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("localcluster: interrupted during start; stopped", file=sys.stderr)
        return 130

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    kubectl = cluster.bin_dir / "kubectl"
    mesh = _mesh_help(cluster) if isinstance(cluster, MeshCluster) else ""
    print(
        f"""
Cluster is up: {cluster.server}  ({cluster.nodes} kwok nodes; logs in {cluster.logs_dir})

    export KUBECONFIG={cluster.admin_kubeconfig}
    export PATH={cluster.bin_dir}:$PATH
    {kubectl} get nodes
{mesh}
Press Ctrl-C (or send SIGTERM) to stop.""",
        flush=True,
    )
    try:
        while not stop_requested.wait(1.0):
            dead = cluster.dead_components()
            if dead:
                print(f"localcluster: {', '.join(dead)} exited; stopping", file=sys.stderr)
                return 1
    finally:
        cluster.stop()
        print("localcluster: stopped", file=sys.stderr)
    return 0


def _mesh_help(cluster: MeshCluster) -> str:
    mesh = cluster.mesh
    return f"""
Data plane: Istio {cluster.istio_version} CRDs, mesh agent (files in {mesh.agent_dir}),
Prometheus at {mesh.prometheus.url}
    Pods of namespaces labelled istio-injection=enabled that declare an `istio-proxy`
    container get a real Envoy sidecar on 127.0.0.1:<port in {mesh.agent_dir}/<ns>/<pod>/port>.
    kubectl logs <pod> -c istio-proxy
    curl -s '{mesh.prometheus.url}/api/v1/query?query=istio_requests_total'
"""


def _raise_interrupt() -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m localcluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a cluster and keep it running until Ctrl-C")
    up.add_argument("--workdir", required=True, help="directory for logs, certs, etcd data")
    up.add_argument("--nodes", type=int, default=3, help="number of kwok nodes (default 3)")
    up.add_argument(
        "--kwok-config",
        action="append",
        default=[],
        metavar="FILE",
        help="extra kwok config file, e.g. ClusterLogs rules (repeatable)",
    )
    up.add_argument("--deadline", type=float, default=120, help="start-up deadline in seconds")
    up.add_argument(
        "--mesh",
        action="store_true",
        help="also run the data plane: mesh agent, Envoy sidecars, metrics, Prometheus",
    )
    up.add_argument(
        "--istio",
        choices=ISTIO_VERSIONS,
        default=DEFAULT_ISTIO_VERSION,
        help=f"Istio CRD version installed with --mesh (default {DEFAULT_ISTIO_VERSION})",
    )
    sub.add_parser("build", help="build (or find cached) control-plane binaries")
    args = parser.parse_args(argv)

    if args.command == "build":
        print(ensure_binaries())
        return 0
    return _up(args)


if __name__ == "__main__":
    sys.exit(main())
