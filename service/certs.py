"""`faceguard certs dev`: a local CA, a server certificate and one client certificate per role.

Client identity lives in the certificate's subject alternative names as URIs, so a
certificate can be checked by any TLS library and carries nothing but identity:

- `faceguard://role/<role>`: one per role the client holds (kiosk, enrollment, admin,
  investigator: a 1:N search below the operating threshold, audited; analyst: reads the
  fraud records and works the REVIEW queue);
- `faceguard://device/<device id>`: a kiosk's device id, bound to its key.

The common name is a readable client name (`kiosk-K-001`) used in logs and rate limits.
Development only: production certificates come from the bank's PKI with the same SANs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

ROLES = ("kiosk", "enrollment", "admin", "investigator", "analyst")
URI_PREFIX = "faceguard://"
ROLE_URI = URI_PREFIX + "role/"
DEVICE_URI = URI_PREFIX + "device/"
_VALID_DAYS = 365


@dataclass(frozen=True)
class ClientSpec:
    """A client certificate to issue: its name, roles and (for kiosks) device id."""

    name: str
    roles: tuple[str, ...]
    device_id: str | None = None


DEV_CLIENTS = (
    ClientSpec("kiosk-K-001", ("kiosk",), "K-001"),
    ClientSpec("kiosk-K-002", ("kiosk",), "K-002"),
    ClientSpec("enrollment-desk", ("enrollment",)),
    ClientSpec("admin", ("admin",)),
    ClientSpec("investigator", ("investigator",)),
    ClientSpec("analyst", ("analyst",)),
)


@dataclass(frozen=True)
class Issued:
    cert_pem: bytes
    key_pem: bytes


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _builder(subject: str, issuer: x509.Name, public_key: object) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_VALID_DAYS))
    )


class DevCA:
    """A self-signed CA that issues server and client certificates."""

    def __init__(self, name: str = "faceguard development CA") -> None:
        self.key = _key()
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            _builder(name, self.name, self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def _issue(
        self, name: str, sans: list[x509.GeneralName], usage: x509.ObjectIdentifier
    ) -> Issued:
        key = _key()
        cert = (
            _builder(name, self.name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))

    def server(self, hosts: tuple[str, ...] = ("localhost", "127.0.0.1")) -> Issued:
        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        return self._issue("faceguard server", sans, ExtendedKeyUsageOID.SERVER_AUTH)

    def client(self, spec: ClientSpec) -> Issued:
        unknown = set(spec.roles) - set(ROLES)
        if unknown:
            raise ValueError(f"unknown roles {sorted(unknown)}; roles are {ROLES}")
        if "kiosk" in spec.roles and not spec.device_id:
            raise ValueError("a kiosk certificate needs a device id")
        uris = [ROLE_URI + role for role in spec.roles]
        if spec.device_id:
            uris.append(DEVICE_URI + spec.device_id)
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
        return self._issue(spec.name, sans, ExtendedKeyUsageOID.CLIENT_AUTH)


def _write(path: Path, data: bytes, private: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    with os.fdopen(os.open(path, flags, 0o600 if private else 0o644), "wb") as f:
        f.write(data)


def write_dev_pki(
    out: Path, hosts: tuple[str, ...], clients: tuple[ClientSpec, ...] = DEV_CLIENTS
) -> list[Path]:
    """Write ca.pem, server.pem/.key and <client>.pem/.key into `out`; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    ca = DevCA()
    written = []
    _write(out / "ca.pem", ca.cert_pem, private=False)
    written.append(out / "ca.pem")
    for name, issued in (("server", ca.server(hosts)), *((c.name, ca.client(c)) for c in clients)):
        _write(out / f"{name}.pem", issued.cert_pem, private=False)
        _write(out / f"{name}.key", issued.key_pem, private=True)
        written += [out / f"{name}.pem", out / f"{name}.key"]
    return written


def parse_client(text: str) -> ClientSpec:
    """NAME:ROLE[+ROLE...][:DEVICE], e.g. kiosk-K-009:kiosk:K-009."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"--client {text!r}: expected NAME:ROLE[+ROLE][:DEVICE]")
    device = parts[2] if len(parts) == 3 else None
    return ClientSpec(parts[0], tuple(parts[1].split("+")), device)


def run_certs_dev(args: argparse.Namespace) -> int:
    hosts = tuple(args.host) or ("localhost", "127.0.0.1")
    try:
        extra = tuple(parse_client(text) for text in args.client)
        paths = write_dev_pki(args.out, hosts, DEV_CLIENTS + extra)
    except ValueError as exc:
        log.error("%s", exc)
        return 1
    for path in paths:
        log.info("wrote %s", path)
    log.warning("DEVELOPMENT certificates: production uses the bank's PKI with the same SANs")
    return 0
