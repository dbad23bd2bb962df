"""TLS by default: `glidein-server init` makes a CA and a server certificate; pilots and the CLI trust it.

A real pilot process and the `glidein` CLI work against an HTTPS server through the CA file;
a client with the wrong CA, or reaching the server under a name its certificate lacks, gets a
plain message. Plain HTTP needs an explicit setting and stays on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from cryptography import x509

from glidein_client.wire.api import ApiClient
from glidein_client.wire.errors import ConfigError, TlsError
from glidein_client.wire.schema import JobSpec, Role
from glidein_server import tls
from glidein_server.cli import _dispatch, _parser
from glidein_server.server import Server, mint_token
from glidein_server.settings import StateDir

from ..conftest import LiveServer


async def init(root: Path, *args: str) -> None:
    """`glidein-server init ROOT --json ARGS` in this process (its output goes to capsys)."""
    assert await _dispatch(_parser().parse_args(["init", str(root), "--port", "0", "--json", *args])) == 0


@pytest.fixture
async def https_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> AsyncIterator[LiveServer]:
    await init(tmp_path / "server")
    out = json.loads(capsys.readouterr().out)
    async with Server(str(tmp_path / "server")) as srv:
        live = LiveServer(
            url=srv.url,
            state_dir=tmp_path / "server",
            operator_token=out["operator_token"],
            server=srv,
            tmp=tmp_path,
            ca_file=out["ca_file"],
        )
        try:
            yield live
        finally:
            for proc in live.pilots:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    await proc.wait()


async def test_init_makes_a_ca_and_a_certificate_for_the_server_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "server"
    await init(root, "--public-url", "https://glidein.example.org:8443", "--tls-name", "10.1.2.3")
    out = json.loads(capsys.readouterr().out)
    settings = StateDir(root).load()
    assert out["url"] == "https://glidein.example.org:8443"
    assert out["ca_file"] == str(root / "tls" / "ca.pem")
    assert settings.tls_cert and settings.tls_key and not settings.insecure_http
    names = tls.cert_names((root / settings.tls_cert).read_bytes())
    assert {"127.0.0.1", "localhost", "glidein.example.org", "10.1.2.3"} <= set(names)
    ca = x509.load_pem_x509_certificate((root / settings.tls_ca).read_bytes())
    cert = x509.load_pem_x509_certificate((root / settings.tls_cert).read_bytes())
    assert cert.issuer == ca.subject
    for secret in (
        root / "tls" / "ca.key",
        root / settings.tls_key,
        root / settings.totp_key_file,
        root / settings.database,
    ):
        assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600, secret
    assert out["totp_uri"].startswith("otpauth://totp/")


async def test_a_real_pilot_and_the_cli_work_over_https_with_the_generated_ca(https_server: LiveServer) -> None:
    live = https_server
    assert live.url.startswith("https://") and live.ca_file
    user = await live.token(Role.USER, "alice")
    env = {**os.environ, "GLIDEIN_URL": live.url, "GLIDEIN_TOKEN": user, "GLIDEIN_CA_FILE": live.ca_file}
    env.pop("GLIDEIN_CONFIG", None)

    async def glidein(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "glidein_client.user.cli",
            *args,
            env=env,
            cwd=live.tmp,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode or 0, out.decode()

    rc, out = await glidein(
        "submit", "--json", "--walltime", "1m", "-o", "hello.txt", "--", "sh", "-c", "echo over TLS > hello.txt"
    )
    assert rc == 0, out
    (job_id,) = json.loads(out)["ids"]
    await live.start_pilot(cpus=1)  # given --ca-file
    rc, out = await glidein("wait", "--timeout", "50s")
    assert rc == 0, out + live.pilot_logs()
    rc, out = await glidein("fetch", str(job_id), "-d", str(live.tmp / "out"))
    assert rc == 0, out
    assert (live.tmp / "out" / str(job_id) / "hello.txt").read_text() == "over TLS\n"


async def test_a_wrong_ca_is_refused_with_a_plain_message(https_server: LiveServer, tmp_path: Path) -> None:
    live = https_server
    user = await live.token(Role.USER, "alice")
    _, other_ca = tls.make_ca("some other CA")
    wrong = tmp_path / "other-ca.pem"
    wrong.write_bytes(other_ca)
    async with ApiClient(live.url, user, ca_file=str(wrong)) as api:
        with pytest.raises(TlsError, match="did not sign") as err:
            await api.submit([JobSpec(argv=["true"])])
    assert "tls/ca.pem" in str(err.value)
    async with ApiClient(live.url, user) as api:  # no CA file: the system's CAs do not know this one
        with pytest.raises(TlsError, match="does not trust"):
            await api.list_jobs()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "glidein_client.user.cli",
        "status",
        env={**os.environ, "GLIDEIN_URL": live.url, "GLIDEIN_TOKEN": user, "GLIDEIN_CA_FILE": str(wrong)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err_text = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode != 0
    assert "did not sign" in err_text.decode() and "Traceback" not in err_text.decode()
    with pytest.raises(ConfigError, match="does not exist"):
        async with ApiClient(live.url, user, ca_file=str(tmp_path / "missing.pem")):
            pass


async def test_a_host_name_missing_from_the_certificate_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "server"
    await init(root)
    out = json.loads(capsys.readouterr().out)
    tls.issue(root, tls.default_files(), ["glidein.example.org"])  # a certificate without 127.0.0.1
    async with Server(str(root)) as srv, ApiClient(srv.url, out["operator_token"], ca_file=out["ca_file"]) as api:
        with pytest.raises(TlsError, match="not valid for the host name '127.0.0.1'") as err:
            await api.summary()
    assert "tls renew --tls-name 127.0.0.1" in str(err.value)


async def test_plain_http_needs_the_flag_and_stays_on_loopback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError, match="loopback"):
        await init(tmp_path / "a", "--insecure-http", "--host", "0.0.0.0")
    await init(tmp_path / "b", "--insecure-http")
    out = json.loads(capsys.readouterr().out)
    assert out["url"].startswith("http://127.0.0.1") and out["ca_file"] is None
    async with Server(str(tmp_path / "b")) as srv:
        assert srv.url.startswith("http://")
        async with ApiClient(srv.url, out["operator_token"]) as api:
            assert (await api.health())["ok"]
    with pytest.raises(ConfigError, match="loopback"):
        async with Server(str(tmp_path / "b"), host="0.0.0.0"):
            pass
    state = StateDir(tmp_path / "b")
    settings = state.load()
    state.write(msgspec.structs.replace(settings, insecure_http=False))
    with pytest.raises(ConfigError, match="no TLS certificate"):
        async with Server(str(tmp_path / "b")):
            pass
    # `tls renew` turns TLS on for a server made without it.
    assert await _dispatch(_parser().parse_args(["--dir", str(tmp_path / "b"), "tls", "renew", "--json"])) == 0
    renewed = json.loads(capsys.readouterr().out)
    async with Server(str(tmp_path / "b")) as srv:
        assert srv.url.startswith("https://")
        async with ApiClient(srv.url, await mint_token(srv.store, Role.USER, "u"), ca_file=renewed["ca_file"]) as api:
            assert (await api.summary()).jobs == {}
