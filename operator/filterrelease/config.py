"""Operator settings: one frozen model, read from the environment once at start-up."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PREFIX = "FILTERRELEASE_"
DEFAULT_HOME_NAMESPACE = "filterrelease-system"  # deploy/operator/namespace.yaml


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
    # -- Registry TLS (providers/registry.py) --
    # A PEM bundle of CAs trusted for registries and https module URLs in addition to the
    # system's (a private registry's CA, mounted into the pod); empty: the system CAs only.
    registry_ca_file: str = ""
    # Registries (host[:port] as written in module URLs, comma-separated; "*" for all) whose
    # TLS certificate is not verified: istio-agent's WASM_INSECURE_REGISTRIES, which the proxies
    # need set the same way. Plain-http registries need no listing, there as here: a registry
    # that answers TLS with plain HTTP is used over HTTP.
    insecure_registries: tuple[str, ...] = ()
    # -- end of registry TLS --
    # Load each new module/pluginConfig pair into a real Envoy before release, when an Envoy
    # binary is available (the `envoy` extra, or envoy_binary / $FILTERRELEASE_ENVOY).
    dry_run: bool = True
    envoy_binary: str = ""
    # Dry runs keep one Envoy per module loaded (providers/dryrun_pool.py), so a new pluginConfig
    # is checked in milliseconds; this bounds their own memory (about 72 MiB each), least
    # recently used first out. 0: a fresh Envoy for every check (about 1.5 s each).
    dry_run_pool_mib: int = Field(default=256, ge=0)
    log_level: str = "INFO"
    # Where canary analysis queries Istio's metrics; empty: every measurement is an Error, so
    # a rollout with analysis holds rather than promote unmeasured.
    prometheus_url: str = ""
    # How often that Prometheus scrapes the proxies (Istio's sample: 15s); analysis windows are
    # at least two scrapes long, so a rate() always has two samples.
    prometheus_scrape_seconds: float = Field(default=15.0, gt=0)
    # Per Prometheus query or pod log read during analysis.
    analysis_timeout_seconds: float = Field(default=5.0, gt=0)
    # Read what each selected proxy runs (its Envoy's ECDS, over pods/portforward) and count a
    # release, a canary step and a promotion only once they run it (core/confirmation.py).
    # Off: the written WasmPlugins are trusted, as before (no pods/portforward permission).
    proxy_confirmation: bool = True
    proxy_read_concurrency: int = Field(default=8, ge=1, le=256)
    proxy_read_timeout_seconds: float = Field(default=3.0, gt=0)

    # The pod admission webhook that puts new pods of a split release on its stable track
    # (admission.py). Off only where no release is ever split: without it a pod created during
    # a canary rollout would be selected by no WasmPlugin.
    webhook_enabled: bool = True
    webhook_address: str = "0.0.0.0"  # noqa: S104  (the API server calls the pod's own IP)
    webhook_port: int = Field(default=9443, gt=0, le=65535)
    # The name the API server calls the webhook by (URL and self-signed certificate); empty:
    # the Service's DNS name when webhook_service is set, else webhook_address.
    webhook_host: str = ""
    # "namespace/name" of the Service in front of the webhook (port 443): the API server then
    # calls it through the Service, which works where the API server cannot resolve cluster DNS.
    webhook_service: str = ""
    # The URL the API server calls instead of the Service or this replica's own address: a
    # load balancer in front of every replica outside the cluster's Service network (the local
    # cluster's failover test). Its host is named in the self-signed certificate too.
    webhook_url: str = ""
    # A certificate of your own (e.g. cert-manager's Secret, mounted); empty: a self-signed one
    # is made at every start. The CA file is what the API server trusts (default: the cert).
    webhook_cert_file: str = ""
    webhook_key_file: str = ""
    webhook_ca_file: str = ""
    # Fail: no pod of a meshed namespace is created unlabelled while the webhook is unreachable.
    webhook_failure_policy: Literal["Fail", "Ignore"] = "Fail"
    # Only namespaces with these labels (comma-separated key=value) go through the webhook:
    # WasmPlugins only act on pods with a sidecar, so the rest of the cluster need not wait on it.
    webhook_namespace_selector: str = "istio-injection=enabled"
    webhook_configuration_name: str = "pod-tracks.filterrelease.dev"
    # Where the operator runs: never sent through its own webhook (a Fail webhook must not
    # stop its own server from being recreated), and owner of the webhook configuration, so
    # deleting the namespace (uninstalling) removes it too.
    operator_namespace: str = ""

    # High availability: every replica watches and serves the pod admission webhook; only the
    # holder of a coordination.k8s.io Lease reconciles and writes. Off: this process acts alone
    # (never run two replicas that way). The timings are controller-runtime's defaults: a
    # follower takes over at most lease_duration (+ one retry) after the leader last renewed;
    # a leader that cannot renew for renew_deadline stops writing, before anyone else can start.
    leader_election: bool = True
    lease_name: str = "filterrelease-operator"
    # Empty: the operator's namespace (operator_namespace), else DEFAULT_HOME_NAMESPACE.
    lease_namespace: str = ""
    lease_duration_seconds: float = Field(default=15.0, ge=1)
    lease_renew_deadline_seconds: float = Field(default=10.0, ge=1)
    lease_retry_period_seconds: float = Field(default=2.0, ge=1)
    # This replica's identity in the Lease: the pod name (a restarted container of the same
    # pod takes its Lease back at once); empty: the host name, which is the pod name in a pod.
    pod_name: str = ""
    # Where replicas share the webhook's self-signed certificate (in the home namespace), so
    # that the API server trusts every replica behind the Service with one caBundle.
    webhook_secret_name: str = "filterrelease-webhook-tls"  # noqa: S105  (a name, not a secret)

    @model_validator(mode="after")
    def _lease_timings(self) -> Settings:
        # The library's own rule (kubernetes.aio.leaderelection.electionconfig), said up front
        # as a settings error instead of a crash at the first election.
        if not (
            self.lease_duration_seconds
            > self.lease_renew_deadline_seconds
            > 1.2 * self.lease_retry_period_seconds
        ):
            raise ValueError(
                "leader election needs lease duration > renew deadline > 1.2 x retry period "
                f"(got {self.lease_duration_seconds:g} s, {self.lease_renew_deadline_seconds:g} s,"
                f" {self.lease_retry_period_seconds:g} s)"
            )
        return self

    @property
    def home_namespace(self) -> str:
        """Where the operator keeps its own objects (Lease, webhook certificate Secret)."""
        return self.operator_namespace or DEFAULT_HOME_NAMESPACE

    @property
    def identity(self) -> str:
        return self.pod_name or socket.gethostname()

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
