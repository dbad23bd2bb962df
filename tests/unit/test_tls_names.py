"""The names a server certificate is made for, and the certificate itself."""

from __future__ import annotations

import socket

from glidein_server import tls


def test_names_cover_the_bind_host_loopback_and_the_public_url() -> None:
    names = tls.server_names("10.0.0.5", "https://Glidein.Example.org:8443/", ["extra.example.org"])
    assert names[:3] == ["10.0.0.5", "glidein.example.org", "extra.example.org"]
    assert {"localhost", "127.0.0.1", "::1"} <= set(names)
    assert len(names) == len(set(names))


def test_a_wildcard_bind_stands_for_this_machines_names() -> None:
    names = tls.server_names("0.0.0.0")
    assert socket.gethostname().lower() in names and "0.0.0.0" not in names


def test_a_certificate_carries_dns_names_and_addresses() -> None:
    ca_key, ca_cert = tls.make_ca("test CA")
    _, cert = tls.make_server_cert(ca_key, ca_cert, ["glidein.example.org", "127.0.0.1", "::1"])
    assert set(tls.cert_names(cert)) == {"glidein.example.org", "127.0.0.1", "::1"}


def test_loopback() -> None:
    assert tls.is_loopback("127.0.0.1") and tls.is_loopback("::1") and tls.is_loopback("localhost")
    assert not tls.is_loopback("0.0.0.0") and not tls.is_loopback("glidein.example.org")
