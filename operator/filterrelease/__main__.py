"""`filterrelease` / `python -m filterrelease`: run the operator (its settings come from the
environment, FILTERRELEASE_*; see config.py and the README)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import kopf
from kopf._core.engines.peering import Identity  # kopf does not re-export its NewType

from filterrelease.build import build_versions
from filterrelease.config import PREFIX, Settings
from filterrelease.handlers import register


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="filterrelease",
        description="Roll out Istio WasmPlugin filters safely: render, pin, canary, analyse, "
        "promote or roll back FilterReleases (filterrelease.dev/v1alpha1).",
        epilog=f"Settings come from the environment ({PREFIX}*), e.g. {PREFIX}PROMETHEUS_URL, "
        f"{PREFIX}LEADER_ELECTION, {PREFIX}NAMESPACES; the README lists them all.",
    )
    v = build_versions()
    parser.add_argument(
        "--version",
        action="version",
        version=f"filterrelease {v.version} (Python {v.python}, kopf {v.kopf})",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    parse_args(sys.argv[1:] if argv is None else argv)
    settings = Settings.from_env()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    quiet = max(logging.WARNING, logging.getLogger().level)
    # kopf logs every successful handler call at INFO: one line per watch event is noise.
    logging.getLogger("kopf.objects").setLevel(quiet)
    # aiohttp logs every admission request (one per pod created in a meshed namespace).
    logging.getLogger("aiohttp.access").setLevel(quiet)
    # The election loop logs each failed attempt of a follower (every retry period).
    logging.getLogger("kubernetes.aio.leaderelection").setLevel(quiet)
    registry = kopf.OperatorRegistry()
    register(registry, settings)
    kopf.run(
        registry=registry,
        # kopf's own peering would pause every replica but one, webhook included; our Lease
        # (leadership.py) stops only the reconciles, so followers keep serving admissions.
        standalone=True,
        # kopf would otherwise name itself from getpass.getuser(), which fails for a UID with
        # no passwd entry (any runAsUser a pod may be given).
        identity=Identity(settings.identity),
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        # Our probes (health.py) replace kopf's liveness endpoint: they also say readiness.
        liveness_endpoint=None,
    )


if __name__ == "__main__":
    main()
