"""The pod admission webhook's pure parts: its configuration, names and certificate."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from pydantic import ValidationError

from filterrelease.admission import (
    HANDLER_ID,
    parse_labels,
    server_names,
    webhook_configuration,
)
from filterrelease.admission_tls import self_signed_certificate
from filterrelease.config import Settings

CA = base64.b64encode(b"-----BEGIN CERTIFICATE-----\n...").decode()
LOCAL = {"url": "https://127.0.0.1:9443", "caBundle": CA}


def webhook(config: Settings, client_config: dict[str, Any] = LOCAL) -> dict[str, Any]:
    doc = webhook_configuration(config, client_config)
    assert doc["kind"] == "MutatingWebhookConfiguration"
    (hook,) = doc["webhooks"]
    return dict(hook)


def test_defaults_cover_meshed_namespaces_fail_closed() -> None:
    hook = webhook(Settings())
    assert hook["name"] == "pod-tracks.filterrelease.dev"
    assert hook["failurePolicy"] == "Fail"
    assert hook["sideEffects"] == "None"
    assert hook["rules"] == [
        {
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "operations": ["CREATE"],
            "scope": "Namespaced",
        }
    ]
    assert hook["namespaceSelector"] == {
        "matchLabels": {"istio-injection": "enabled"},
        "matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system"]}
        ],
    }
    assert hook["clientConfig"] == {"url": f"https://127.0.0.1:9443/{HANDLER_ID}", "caBundle": CA}
    # Longer than the wait for the start-up list, within the API server's maximum of 30.
    assert 5 < hook["timeoutSeconds"] <= 30


def test_in_cluster_through_the_service_owned_by_the_operators_namespace() -> None:
    config = Settings(
        webhook_service="filterrelease-system/filterrelease-webhook",
        operator_namespace="filterrelease-system",
        namespaces=("shop", "cart"),
        webhook_namespace_selector="istio.io/rev=canary, team=web",
        webhook_failure_policy="Ignore",
    )
    doc = webhook_configuration(
        config, {"url": "https://x.svc:9443", "caBundle": CA}, owner_uid="u-1"
    )
    assert doc["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Namespace", "name": "filterrelease-system", "uid": "u-1"}
    ]
    hook = doc["webhooks"][0]
    assert hook["clientConfig"] == {
        "service": {
            "namespace": "filterrelease-system",
            "name": "filterrelease-webhook",
            "port": 443,
            "path": f"/{HANDLER_ID}",
        },
        "caBundle": CA,
    }
    assert hook["failurePolicy"] == "Ignore"
    assert hook["namespaceSelector"] == {
        "matchLabels": {"istio.io/rev": "canary", "team": "web"},
        "matchExpressions": [
            {
                "key": "kubernetes.io/metadata.name",
                "operator": "NotIn",
                "values": ["filterrelease-system", "kube-system"],
            },
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["cart", "shop"]},
        ],
    }


def test_an_empty_selector_covers_every_namespace_but_the_exempt_ones() -> None:
    hook = webhook(Settings(webhook_namespace_selector=""))
    assert "matchLabels" not in hook["namespaceSelector"]


@pytest.mark.parametrize("text", ["istio-injection", "=enabled", "a=b,c"])
def test_bad_namespace_selectors_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="key=value"):
        parse_labels(text)


def test_parse_labels() -> None:
    assert parse_labels(" a=b ,, c = d ") == {"a": "b", "c": "d"}
    assert parse_labels("") == {}


@pytest.mark.parametrize(
    ("settings", "names"),
    [
        ({}, ["127.0.0.1"]),
        ({"webhook_address": "::"}, ["::1"]),
        ({"webhook_address": "127.0.0.1", "webhook_host": "127.0.0.1"}, ["127.0.0.1"]),
        (
            {"webhook_service": "ops/hook"},
            ["hook.ops.svc", "hook.ops.svc.cluster.local", "127.0.0.1"],
        ),
        ({"webhook_host": "op.example", "webhook_address": "10.0.0.5"}, ["op.example", "10.0.0.5"]),
    ],
)
def test_server_names(settings: dict[str, Any], names: list[str]) -> None:
    assert server_names(Settings(**settings)) == names


def test_bad_service_reference() -> None:
    with pytest.raises(ValueError, match="namespace/name"):
        server_names(Settings(webhook_service="hook"))


def test_self_signed_certificate(tmp_path: Path) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    certfile, keyfile, ca_pem = self_signed_certificate(
        ["hook.ops.svc", "127.0.0.1"], tmp_path, now
    )
    ca = x509.load_pem_x509_certificate(ca_pem)
    cert = x509.load_pem_x509_certificate(certfile.read_bytes())
    cert.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["hook.ops.svc"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.not_valid_before_utc < now < cert.not_valid_after_utc
    assert keyfile.stat().st_mode & 0o077 == 0  # the key is readable by its owner only
    assert b"PRIVATE KEY" in keyfile.read_bytes()
    assert b"PRIVATE KEY" not in ca_pem


def test_webhook_settings_from_the_environment() -> None:
    env = {
        "FILTERRELEASE_WEBHOOK_ENABLED": "false",
        "FILTERRELEASE_WEBHOOK_PORT": "8443",
        "FILTERRELEASE_WEBHOOK_FAILURE_POLICY": "Ignore",
    }
    config = Settings.from_env(env)
    assert (config.webhook_enabled, config.webhook_port) == (False, 8443)
    assert config.webhook_failure_policy == "Ignore"
    with pytest.raises(ValidationError):
        Settings.from_env({"FILTERRELEASE_WEBHOOK_FAILURE_POLICY": "Open"})
