"""``glidein-server`` as a subprocess: one server per state directory and port, plain errors, token commands."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from glidein_server.settings import ServerSettings


def server(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "glidein_server.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={k: v for k, v in os.environ.items() if not k.startswith("GLIDEIN_")},
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def state(tmp_path: Path) -> Path:
    root = tmp_path / "srv"
    assert server("init", str(root), "--port", str(free_port()), "--insecure-http").returncode == 0
    return root


@pytest.fixture
def serving(state: Path, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    with open(tmp_path / "serve.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "glidein_server.cli", "serve", "--dir", str(state)],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on 127.0.0.1:" in line, line
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stdout:
            proc.stdout.close()


def test_a_second_server_on_one_state_dir_is_refused_naming_the_first(
    state: Path, serving: subprocess.Popen[str]
) -> None:
    for extra in ([], ["--port", str(free_port())]):
        again = server("--dir", str(state), "serve", *extra)
        assert again.returncode == 1
        assert f"Another glidein server already serves the state directory {state}" in again.stderr
        assert f"pid {serving.pid}, listening on 127.0.0.1:" in again.stderr


def test_a_taken_port_is_one_plain_line(state: Path, serving: subprocess.Popen[str], tmp_path: Path) -> None:
    port = (state / "serve.lock").read_text().rpartition(":")[2]
    other = tmp_path / "other"
    assert server("init", str(other), "--port", port, "--insecure-http").returncode == 0
    started = time.monotonic()
    taken = server("serve", "--dir", str(other))
    assert taken.returncode == 1 and time.monotonic() - started < 30
    assert f"error: Cannot listen on 127.0.0.1:{port}: address already in use." in taken.stderr
    assert "--port N" in taken.stderr


def test_an_address_this_host_lacks_is_named_with_the_fix(tmp_path: Path) -> None:
    root = tmp_path / "tls"
    assert server("init", str(root), "--port", "0").returncode == 0  # TLS: any address may be asked for
    foreign = server("serve", "--dir", str(root), "--host", "192.0.2.1")  # TEST-NET-1, on no host
    assert foreign.returncode == 1
    assert "error: Cannot listen on 192.0.2.1:0: cannot assign requested address." in foreign.stderr
    assert "not one of this host's" in foreign.stderr and "holds that port" not in foreign.stderr


def test_user_tokens_are_not_minted_twice_by_accident_and_revoking_nobody_fails(state: Path) -> None:
    d = ["--dir", str(state)]
    assert server("user", "add", "ann", *d).returncode == 0
    twice = server("user", "add", "ann", *d)
    assert twice.returncode == 1 and "already has an active token" in twice.stderr and "--another" in twice.stderr
    assert server("user", "add", "ann", "--another", "--expires-in", "2d", *d).returncode == 0
    listed = server("user", "list", *d).stdout.splitlines()
    assert listed[0].split() == ["USER", "TOKENS", "CREATED", "NEXT", "EXPIRY"]
    assert listed[1].split()[:2] == ["ann", "2"]
    tokens = server("token", "list", *d).stdout.splitlines()
    assert "CREATED" in tokens[0] and "EXPIRES" in tokens[0] and any("expires in 47h59m" in t for t in tokens)
    nobody = server("user", "revoke", "nobody", *d)
    assert nobody.returncode == 1
    assert "No user 'nobody' has an active token; nothing was revoked. Known users: ann." in nobody.stderr
    assert server("site", "list", *d).stdout.strip() == "No sites with active tokens. (--revoked lists the others)"


def test_config_mistakes_are_named_with_the_fix_and_durations_take_units(state: Path) -> None:
    config = state / "config.toml"
    original = config.read_text()
    assert "# An attempt without news from its pilot for this long is requeued.\nlease_s = 60.0" in original
    d = ["--dir", str(state)]

    config.write_text(
        original.replace("lease_s = 60.0", 'lease_s = "90s"').replace("max_file_mb = 4096", 'max_file_mb = "2G"')
    )
    assert server("token", "list", *d).returncode == 0

    for old, new, message in (
        ("lease_s = 60.0", "leese_s = 60.0", "[server] has no key 'leese_s'; did you mean 'lease_s'?"),
        ("[server]", "[servr]", "unknown table [servr]; did you mean [server]?"),
        ("lease_s = 60.0", 'lease_s = "soon"', "[server] lease_s: cannot read 'soon' as a duration."),
    ):
        config.write_text(original.replace(old, new))
        bad = server("serve", *d)
        assert bad.returncode == 1 and bad.stderr.startswith(f"error: {config}: {message}"), bad.stderr
        assert "send it again" not in bad.stderr and "TLS" not in bad.stderr


def test_every_key_is_explained_in_the_file_init_writes_and_wrong_types_are_named_plainly(state: Path) -> None:
    config = state / "config.toml"
    original = config.read_text()
    lines = original.splitlines()
    keys = [i for i, ln in enumerate(lines) if re.match(r"^\w+ = ", ln)]
    assert {lines[i].split()[0] for i in keys} == set(ServerSettings.__struct_fields__)
    assert not [lines[i] for i in keys if not lines[i - 1].startswith("# ")], "keys without a comment above"
    d = ["--dir", str(state)]
    config.write_text(original.replace("retention_days = 30.0", 'retention_days = "2d"'))
    assert server("token", "list", *d).returncode == 0
    for old, new, message in (
        ("port = ", 'port = "x" #', '[server] port = "x" is not valid: expected a whole number, got text in quotes.'),
        ("insecure_http = true", 'insecure_http = "yes"', "expected true or false, got text in quotes."),
        ("shares = {}", 'shares = { "ann" = -1 }', 'shares = { "ann" = -1 } is not valid: expected a number > 0'),
        ("retention_days = 30.0", 'retention_days = "2w"', "[server] retention_days: cannot read '2w'"),
        ("[server]", "[server]\n[tls]\ncert = 1", "unknown table [tls]. Every setting lives in the [server] table."),
    ):
        config.write_text(original.replace(old, new, 1))
        bad = server("serve", *d)
        assert bad.returncode == 1 and bad.stderr.startswith(f"error: {config}: "), bad.stderr
        assert message in bad.stderr and "Expected" not in bad.stderr and "`str`" not in bad.stderr, bad.stderr


def test_serve_says_the_address_it_bound_and_the_public_url_apart(tmp_path: Path) -> None:
    root = tmp_path / "srv"
    url = "https://glidein.example.org:443"
    assert server("init", str(root), "--port", "0", "--insecure-http", "--server-url", url).returncode == 0
    with open(tmp_path / "serve.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "glidein_server.cli", "serve", "--dir", str(root)],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stdout and proc.stdout.close()
    bound = re.fullmatch(r"glidein server listening on 127\.0\.0\.1:(\d+); clients use (\S+)\n", line)
    assert bound and int(bound[1]) > 0 and bound[2] == url, line
    logged = (tmp_path / "serve.log").read_text()
    assert f"listening on 127.0.0.1:{bound[1]}, clients use {url}" in logged


def test_summary_prints_one_screen_from_the_database(state: Path) -> None:
    out = server("summary", "--dir", str(state))
    assert out.returncode == 0 and out.stdout.splitlines()[1] == "jobs     none", out.stdout
    assert "site " in out.stdout and "client" in out.stdout


def test_glidein_rides_out_a_server_that_is_restarting(state: Path, tmp_path: Path) -> None:
    token = tmp_path / "ann.token"
    assert server("user", "add", "ann", "--save", str(token), "--dir", str(state)).returncode == 0
    port = next(ln for ln in (state / "config.toml").read_text().splitlines() if ln.startswith("port ="))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLIDEIN_")}
    env.update(
        GLIDEIN_URL=f"http://127.0.0.1:{port.split('=')[1].strip()}",
        GLIDEIN_TOKEN_FILE=str(token),
        XDG_CONFIG_HOME=str(tmp_path / "no-config"),
        XDG_STATE_HOME=str(tmp_path / "state"),
    )
    status = subprocess.Popen(
        [sys.executable, "-m", "glidein_client.user.cli", "status"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(3)  # refused meanwhile: the server is down
    with open(tmp_path / "serve.log", "w") as log:
        serve = subprocess.Popen(
            [sys.executable, "-m", "glidein_server.cli", "serve", "--dir", str(state)], stdout=log, stderr=log
        )
    try:
        out, err = status.communicate(timeout=90)
    finally:
        serve.terminate()
        serve.wait(timeout=30)
        if status.poll() is None:
            status.kill()
    assert status.returncode == 0 and out == "No jobs.\n", out + err
    (line,) = err.splitlines()
    assert line.startswith("The server is not answering (") and line.endswith("trying again for up to 120 s.")
