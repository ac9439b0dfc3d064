"""Operator settings: one frozen model, read from the environment once at start-up."""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

PREFIX = "FILTERRELEASE_"


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True)

    # Namespaces to watch; empty means the whole cluster.
    namespaces: tuple[str, ...] = ()
    # Every release is reconciled at least this often, so a missed watch event is repaired.
    resync_seconds: float = Field(default=300.0, gt=0)
    # Port of the Prometheus /metrics endpoint; 0 turns it off.
    metrics_port: int = Field(default=9090, ge=0, le=65535)
    metrics_address: str = "0.0.0.0"  # noqa: S104  (a pod serves its metrics on its own IP)
    # kopf's liveness endpoint; empty turns it off.
    liveness_endpoint: str = "http://0.0.0.0:8080/healthz"
    field_manager: str = "filterrelease"
    # Per request to an OCI registry or module URL during pre-flight.
    registry_timeout_seconds: float = Field(default=10.0, gt=0)
    # Load each new module/pluginConfig pair into a real Envoy before release, when an Envoy
    # binary is available (the `envoy` extra, or envoy_binary / $FILTERRELEASE_ENVOY).
    dry_run: bool = True
    envoy_binary: str = ""
    log_level: str = "INFO"
    # Where canary analysis queries Istio's metrics; empty: every measurement is an Error, so
    # a rollout with analysis holds rather than promote unmeasured.
    prometheus_url: str = ""
    # How often that Prometheus scrapes the proxies (Istio's sample: 15s); analysis windows are
    # at least two scrapes long, so a rate() always has two samples.
    prometheus_scrape_seconds: float = Field(default=15.0, gt=0)
    # Per Prometheus query or pod log read during analysis.
    analysis_timeout_seconds: float = Field(default=5.0, gt=0)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        raw: dict[str, object] = {}
        for name, field in cls.model_fields.items():
            value = env.get(PREFIX + name.upper())
            if value is None:
                continue
            if field.annotation == tuple[str, ...]:
                raw[name] = tuple(v.strip() for v in value.split(",") if v.strip())
            else:
                raw[name] = value
        return cls.model_validate(raw)
