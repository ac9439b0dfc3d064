"""Which redirects are followed and where credentials may go (providers/registry_http.py), and
the TLS settings the client is built with, pure (no request is sent)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from filterrelease.config import Settings
from filterrelease.core.module import ModuleProblem, OciRef, Reason
from filterrelease.providers.registry import Credentials, RegistryClient
from filterrelease.providers.registry_http import (
    RedirectRefused,
    next_hop,
    origin,
    redact,
    tls_contexts,
    without_userinfo,
)
from localcluster.pki import CertificateAuthority

REGISTRY = "https://registry.example.com/v2/team/filter/blobs/sha256:ab"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://Registry.Example.com/v2/", ("https", "registry.example.com", 443)),
        ("https://registry.example.com:443/v2/", ("https", "registry.example.com", 443)),
        ("http://registry.example.com/v2/", ("http", "registry.example.com", 80)),
        ("http://127.0.0.1:5000/v2/", ("http", "127.0.0.1", 5000)),
        ("https://[::1]:8443/x", ("https", "::1", 8443)),
        ("https://user:pw@registry.example.com/", ("https", "registry.example.com", 443)),
    ],
)
def test_origin_fills_in_the_default_port(url: str, expected: tuple[str, str, int]) -> None:
    assert origin(url) == expected


@pytest.mark.parametrize("url", ["ftp://host/x", "file:///etc/passwd", "/relative", "https:///x"])
def test_origin_of_a_non_http_url_is_an_error(url: str) -> None:
    with pytest.raises(ValueError, match="not an http"):
        origin(url)


@pytest.mark.parametrize(
    ("location", "keeps_credentials"),
    [
        # The registry's own origin, however written.
        ("/v2/team/filter/blobs/uploads/x", True),
        ("https://registry.example.com:443/other", True),
        ("https://REGISTRY.example.com/other", True),
        # Another host, a subdomain, another port, another scheme: all other origins.
        ("https://bucket.s3.amazonaws.com/data?X-Amz-Signature=abc", False),
        ("https://cdn.registry.example.com/data", False),
        ("https://registry.example.com:8443/data", False),
        ("https://127.0.0.2/data", False),
    ],
)
def test_credentials_follow_only_to_the_same_origin(location: str, keeps_credentials: bool) -> None:
    target = next_hop(REGISTRY, location)
    assert (origin(target) == origin(REGISTRY)) is keeps_credentials


def test_same_host_other_port_is_another_origin() -> None:
    frm = "http://127.0.0.1:5000/v2/x/blobs/sha256:ab"
    assert origin(next_hop(frm, "http://127.0.0.1:5001/data")) != origin(frm)
    assert origin(next_hop(frm, "http://127.0.0.2:5000/data")) != origin(frm)
    assert origin(next_hop(frm, "/data")) == origin(frm)


def test_plain_http_upgrading_to_https_is_followed_as_another_origin() -> None:
    frm = "http://registry.example.com/v2/x"
    target = next_hop(frm, "https://registry.example.com/v2/x")
    assert target == "https://registry.example.com/v2/x"
    assert origin(target) != origin(frm)


def test_https_to_http_is_refused() -> None:
    with pytest.raises(RedirectRefused, match="plain http") as caught:
        next_hop(REGISTRY, "http://bucket.example.com/data?X-Amz-Signature=SIGNATURE")
    assert "SIGNATURE" not in caught.value.message  # the query is never quoted


@pytest.mark.parametrize(
    "location", ["ftp://bucket.example.com/data", "file:///etc/passwd", "javascript:alert(1)"]
)
def test_non_http_redirects_are_refused(location: str) -> None:
    with pytest.raises(RedirectRefused, match="not an http"):
        next_hop(REGISTRY, location)


def test_userinfo_in_a_location_is_dropped() -> None:
    target = next_hop(REGISTRY, "https://evil:stolen@bucket.example.com/data")
    assert target == "https://bucket.example.com/data"


def test_redact_drops_userinfo_query_and_fragment() -> None:
    url = "https://user:hunter2@bucket.example.com:8443/a/b?X-Amz-Signature=zzz#frag"
    assert redact(url) == "https://bucket.example.com:8443/a/b?…"
    assert redact("http://[::1]:5000/v2/") == "http://[::1]:5000/v2/"
    assert redact("http://host:notaport/x") == "http://host/x"
    assert redact("http://[broken/x") == "<unparsable URL>"


def test_without_userinfo_decodes_user_and_password() -> None:
    assert without_userinfo("https://u%40x:p%3Aw@host/m.wasm") == (
        "https://host/m.wasm",
        ("u@x", "p:w"),
    )
    assert without_userinfo("https://host/m.wasm") == ("https://host/m.wasm", None)


# -- TLS settings -----------------------------------------------------------------------------


def test_ca_file_is_trusted_in_addition_to_the_system_cas(tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(CertificateAuthority("extra-ca").pair.cert_pem)
    system = ssl.create_default_context().cert_store_stats()["x509_ca"]
    verifying, insecure = tls_contexts(str(ca_file))
    assert verifying.cert_store_stats()["x509_ca"] == system + 1
    assert verifying.verify_mode == ssl.CERT_REQUIRED
    assert verifying.check_hostname
    assert insecure.verify_mode == ssl.CERT_NONE
    assert not insecure.check_hostname


def test_unreadable_ca_file_fails_at_start_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cannot load the registry CA bundle .*missing\.crt"):
        RegistryClient(ca_file=str(tmp_path / "missing.crt"))
    garbage = tmp_path / "garbage.crt"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ValueError, match=r"garbage\.crt"):
        RegistryClient(ca_file=str(garbage))


def test_settings_read_the_registry_tls_block_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "FILTERRELEASE_REGISTRY_CA_FILE": "/etc/registry-ca/ca.crt",
            "FILTERRELEASE_INSECURE_REGISTRIES": "localhost:5000, registry.local ,",
        }
    )
    assert settings.registry_ca_file == "/etc/registry-ca/ca.crt"
    assert settings.insecure_registries == ("localhost:5000", "registry.local")
    assert Settings.from_env({}).insecure_registries == ()
    assert Settings.from_env({}).registry_ca_file == ""


def test_unusable_addresses_are_refused_before_any_request() -> None:
    client = RegistryClient(timeout=1)
    ref = OciRef(registry="registry.example.com:https", repository="team/filter", tag="v1")
    with pytest.raises(ModuleProblem, match="not a valid registry host") as caught:
        client.manifest(ref, Credentials("robot", "hunter2"))
    assert caught.value.reason == Reason.NOT_FOUND
    with pytest.raises(ModuleProblem, match="is not an http") as caught:
        client.download("ftp://robot:hunter2@example.com/m.wasm")
    assert "hunter2" not in caught.value.message
    with pytest.raises(ModuleProblem, match="is not an http"):
        client.download("http://robot:hunter2@[broken/m.wasm")
