"""``glidein-server`` as a subprocess: one server per state directory and port, plain errors, token commands."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


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


def test_glidein_rides_out_a_server_that_is_restarting(state: Path, tmp_path: Path) -> None:
    token = tmp_path / "ann.token"
    assert server("user", "add", "ann", "--save", str(token), "--dir", str(state)).returncode == 0
    port = next(ln for ln in (state / "config.toml").read_text().splitlines() if ln.startswith("port ="))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLIDEIN_")}
    env.update(
        GLIDEIN_URL=f"http://127.0.0.1:{port.split('=')[1].strip()}",
        GLIDEIN_TOKEN_FILE=str(token),
        XDG_CONFIG_HOME=str(tmp_path / "no-config"),
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
