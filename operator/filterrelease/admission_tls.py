"""The pod admission webhook's serving certificate, when none is mounted: a throw-away CA and a
server certificate it signed, in the plain shape of a private PKI that every TLS client verifies
the same way. The replicas share one (admission.py keeps it in a Secret), so the API server trusts
whichever replica the webhook Service picks with a single caBundle.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Long enough never to expire under a running operator; replaced earlier when RENEW_BEFORE says.
VALIDITY = timedelta(days=3650)
# A shared certificate this close to its end, or not naming every name the API server may call
# us by, is replaced at the next start.
RENEW_BEFORE = timedelta(days=30)

# Keys of the Secret (kubernetes.io/tls's own, plus the CA the webhook configuration trusts).
CERT_KEY, KEY_KEY, CA_KEY = "tls.crt", "tls.key", "ca.crt"


@dataclass(frozen=True)
class ServingCertificate:
    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes  # the caBundle; the CA's key is never kept

    def as_secret_data(self) -> dict[str, bytes]:
        return {CERT_KEY: self.cert_pem, KEY_KEY: self.key_pem, CA_KEY: self.ca_pem}

    @classmethod
    def from_secret_data(cls, data: dict[str, bytes]) -> ServingCertificate | None:
        if not all(data.get(k) for k in (CERT_KEY, KEY_KEY, CA_KEY)):
            return None
        return cls(data[CERT_KEY], data[KEY_KEY], data[CA_KEY])

    def serves(self, names: list[str], now: datetime) -> bool:
        """Whether it can be used as is: it parses, the CA signed it, it names every one of
        `names` and it is valid well beyond `now`."""
        try:
            cert = x509.load_pem_x509_certificate(self.cert_pem)
            ca = x509.load_pem_x509_certificate(self.ca_pem)
            cert.verify_directly_issued_by(ca)
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except (ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
            return False
        named = {str(v) for v in sans.get_values_for_type(x509.DNSName)}
        named |= {str(v) for v in sans.get_values_for_type(x509.IPAddress)}
        wanted = {str(as_ip(n) or n) for n in names}
        return wanted <= named and now + RENEW_BEFORE < cert.not_valid_after_utc

    def write(self, directory: Path) -> tuple[Path, Path]:
        """The certificate and key files kopf's webhook server loads."""
        certfile, keyfile = directory / "tls.crt", directory / "tls.key"
        certfile.write_bytes(self.cert_pem)
        keyfile.touch(mode=0o600)  # private before the key is in it
        keyfile.write_bytes(self.key_pem)
        return certfile, keyfile


def self_signed_certificate(
    names: list[str], directory: Path, now: datetime
) -> tuple[Path, Path, bytes]:
    """issue() written to `directory`: (certificate file, key file, CA certificate)."""
    issued = issue(names, now)
    certfile, keyfile = issued.write(directory)
    return certfile, keyfile, issued.ca_pem


def as_ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def issue(names: list[str], now: datetime) -> ServingCertificate:
    """A new CA and a server certificate it signed for `names` (the first is the subject).
    The CA's key is never written anywhere and is gone when this returns."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "filterrelease webhook CA")])
    not_before = now - timedelta(minutes=5)  # clock skew between us and the API server
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for name in names:
        ip = as_ip(name)
        sans.append(x509.IPAddress(ip) if ip is not None else x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return ServingCertificate(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        ca_pem=ca_cert.public_bytes(serialization.Encoding.PEM),
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )
