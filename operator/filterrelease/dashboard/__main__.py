"""`python -m filterrelease.dashboard`: the dashboard alone, as `kubectl filterrelease
dashboard` runs it (the plugin's own CLI is the usual way in)."""

from __future__ import annotations

import argparse
import logging
import sys

from filterrelease.dashboard.server import serve
from filterrelease.kube.api import KubeError
from filterrelease.kube.session import Session


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m filterrelease.dashboard")
    parser.add_argument("--kubeconfig")
    parser.add_argument("--context")
    parser.add_argument("-n", "--namespace", help="only this namespace (default: all)")
    # As `kubectl filterrelease dashboard` accepts it; every namespace is the default here.
    parser.add_argument("-A", "--all-namespaces", action="store_true")
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3100)
    parser.add_argument("--read-only", action="store_true")
    parser.add_argument("--no-browser", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        session = Session.connect(args.kubeconfig, args.context)
    except KubeError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    try:
        serve(session, namespace=args.namespace, address=args.address, port=args.port,
              read_only=args.read_only, open_browser=not args.no_browser)  # fmt: skip
    finally:
        session.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
