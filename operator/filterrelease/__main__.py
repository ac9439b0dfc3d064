"""`python -m filterrelease` / `filterrelease`: run the operator against the current kubeconfig."""

from __future__ import annotations

import logging

import kopf

from filterrelease.config import Settings
from filterrelease.handlers import register


def main() -> None:
    settings = Settings.from_env()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # kopf logs every successful handler call at INFO: one line per watch event is noise.
    logging.getLogger("kopf.objects").setLevel(max(logging.WARNING, logging.getLogger().level))
    # aiohttp logs every admission request (one per pod created in a meshed namespace).
    logging.getLogger("aiohttp.access").setLevel(max(logging.WARNING, logging.getLogger().level))
    registry = kopf.OperatorRegistry()
    register(registry, settings)
    kopf.run(
        registry=registry,
        # One replica acts; a second one would need leader election (not yet implemented).
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=list(settings.namespaces),
        liveness_endpoint=settings.liveness_endpoint or None,
    )


if __name__ == "__main__":
    main()
