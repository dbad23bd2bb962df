"""The server's private CA and its TLS certificate, made by ``glidein-server init``.

The CA signs one server certificate whose names (SAN) are the hosts clients use to reach
the server. Clients, pilots and the CLI trust the CA through a file (``ca_file`` in their
config, ``--ca-file``, ``GLIDEIN_CA_FILE``); the CA key stays on the server host and can
issue a new server certificate later (``glidein-server tls renew``).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from glidein_client.wire.errors import ConfigError

TLS_DIR = "tls"
CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"
SERVER_KEY = "server.key"
CA_DAYS = 3650
SERVER_DAYS = 825  # the longest lifetime common TLS clients accept for a server certificate
_ANY = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the PEM files, relative to the state directory."""

    ca_cert: str
    ca_key: str
    cert: str
    key: str


def default_files() -> TlsFiles:
    return TlsFiles(
        ca_cert=f"{TLS_DIR}/{CA_CERT}",
        ca_key=f"{TLS_DIR}/{CA_KEY}",
        cert=f"{TLS_DIR}/{SERVER_CERT}",
        key=f"{TLS_DIR}/{SERVER_KEY}",
    )


def server_names(host: str, public_url: str = "", extra: Iterable[str] = ()) -> list[str]:
    """The names the server certificate is valid for: the bind host, loopback, the public URL's host.

    A wildcard bind address (0.0.0.0, ::) stands for this machine's host names.
    """
    names: list[str] = []
    if host in _ANY:
        names += [socket.gethostname(), socket.getfqdn()]
    else:
        names.append(host)
    if public_url:
        public_host = urlsplit(public_url).hostname
        if public_host:
            names.append(public_host)
    names += [*extra, "localhost", "127.0.0.1", "::1"]
    return list(dict.fromkeys(n.strip().lower() for n in names if n and n.strip()))


def _san(names: Iterable[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_ca(common_name: str) -> tuple[bytes, bytes]:
    """A new CA: (key PEM, certificate PEM)."""
    key = _key()
    name = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "glidein"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _key_pem(key), cert.public_bytes(serialization.Encoding.PEM)


def make_server_cert(ca_key_pem: bytes, ca_cert_pem: bytes, names: list[str]) -> tuple[bytes, bytes]:
    """A server certificate for ``names`` signed by the CA: (key PEM, certificate PEM)."""
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ConfigError("The CA key is not an EC key made by glidein-server init.")
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    key = _key()
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SERVER_DAYS))
        .add_extension(_san(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                key_cert_sign=False,
                crl_sign=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return _key_pem(key), cert.public_bytes(serialization.Encoding.PEM)


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file with mode 0600 from the start (never readable by others, even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def create(root: Path, names: list[str]) -> TlsFiles:
    """Create the CA and a server certificate for ``names`` under ``root``; keys are 0600."""
    files = default_files()
    ca_key, ca_cert = make_ca(f"glidein CA {names[0]}")
    write_private(root / files.ca_key, ca_key)
    (root / files.ca_cert).write_bytes(ca_cert)
    issue(root, files, names)
    return files


def issue(root: Path, files: TlsFiles, names: list[str]) -> None:
    """(Re)issue the server certificate from the existing CA."""
    try:
        ca_key = (root / files.ca_key).read_bytes()
        ca_cert = (root / files.ca_cert).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"Cannot read the server's CA ({exc.filename}): {exc.strerror}.",
            hint=f"The CA is made by `glidein-server init`; its files live in the state directory's {TLS_DIR}/ folder.",
        ) from None
    key, cert = make_server_cert(ca_key, ca_cert, names)
    write_private(root / files.key, key)
    (root / files.cert).write_bytes(cert)


def cert_names(cert_pem: bytes) -> list[str]:
    cert = x509.load_pem_x509_certificate(cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(n) for n in san.get_values_for_type(x509.DNSName)] + [
        str(n) for n in san.get_values_for_type(x509.IPAddress)
    ]


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The server's TLS settings: TLS 1.2 or newer, with its certificate and key."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"Cannot load the server's TLS certificate {cert} and key {key}: {exc}.",
            hint="Check tls_cert and tls_key in config.toml, or issue a new certificate with "
            "`glidein-server tls renew`.",
        ) from None
    return ctx


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
