"""``glidein-server admin``: the operator's actions on a running server from elsewhere, as subprocesses.

A real server runs; each operator has a token and a TOTP enrolment made by the local commands,
and the codes are those an authenticator app shows (each accepted once, so each operator here
uses at most two, and no test waits for the clock).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyotp
import pytest

from glidein_client.wire.schema import Role
from glidein_server import totp
from glidein_server.commands.common import open_state_store
from glidein_server.commands.subjects import save_secret
from glidein_server.http.admin import mint
from glidein_server.settings import StateDir

from .test_server_cli import free_port, server


@dataclass
class Operator:
    token_file: Path
    totp: pyotp.TOTP
    last_step: int = 0

    def code(self) -> str:
        """The next code an authenticator app would show, never one this operator used before."""
        now = time.time()
        step = int(now // 30)
        lowest = step - 1 if now % 30 < 15 else step  # a margin for the check that follows
        self.last_step = max(self.last_step + 1, lowest)
        assert self.last_step <= step + 1, "more than two codes per operator would wait for the clock"
        return str(self.totp.at(self.last_step * 30))


@dataclass
class Remote:
    state: Path
    url: str
    tmp: Path
    operators: dict[str, Operator] = field(default_factory=dict)

    def operator(self, name: str) -> Operator:
        """A further operator with its own token and TOTP (each code is accepted once per operator);
        made in this process, as `token add --role operator` and `operator totp-enrol` would."""
        token = self.tmp / f"{name}.token"

        async def enrol() -> str:
            state = StateDir(self.state)
            settings = state.load()
            key = totp.load_or_create_key(state.root / settings.totp_key_file)
            async with open_state_store(state, settings) as store:
                save_secret(str(token), (await mint(store, Role.OPERATOR, name)).token)
                return (await totp.enrol(store, key, name))[0]

        return Operator(token, pyotp.TOTP(asyncio.run(enrol())))

    def admin(
        self, op: Operator | None, *args: str, code: str | None = None, stdin: str = ""
    ) -> subprocess.CompletedProcess[str]:
        """``glidein-server admin ...`` from a host that does not see the state directory."""
        options = ["--url", self.url, "--token-file", str(op.token_file if op else self.tmp / "operator.token")]
        if code is not None:
            options += ["--totp", code]
        proc = subprocess.run(
            [sys.executable, "-m", "glidein_server.cli", "admin", *options, *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.tmp,
            env={k: v for k, v in os.environ.items() if not k.startswith("GLIDEIN_")},
        )
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[Remote]:
    state, port = tmp_path / "srv", free_port()
    made = server("init", str(state), "--port", str(port), "--insecure-http", "--json")
    assert made.returncode == 0, made.stderr
    init = json.loads(made.stdout)
    token = tmp_path / "operator.token"
    token.write_text(init["operator_token"] + "\n")
    token.chmod(0o600)
    with open(tmp_path / "serve.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "glidein_server.cli", "serve", "--dir", str(state)],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    try:
        assert proc.stdout is not None and "listening on" in proc.stdout.readline()
        r = Remote(state, f"http://127.0.0.1:{port}", tmp_path)
        r.operators["operator"] = Operator(token, pyotp.parse_uri(init["totp_uri"]))
        yield r
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stdout:
            proc.stdout.close()


def test_admin_adds_a_user_once_and_revoking_nobody_fails(remote: Remote) -> None:
    op = remote.operators["operator"]
    d = ["--dir", str(remote.state)]
    saved = remote.tmp / "carol.token"
    added = remote.admin(op, "user", "add", "carol", "--save", str(saved), code=op.code())
    assert added.returncode == 0, added.stderr
    assert f"for user 'carol' saved in {saved} (mode 0600)" in added.stdout
    assert saved.stat().st_mode & 0o777 == 0o600 and len(saved.read_text().strip()) > 20

    twice = remote.admin(op, "user", "add", "carol", code=op.code())
    assert twice.returncode == 1
    assert "error: The user 'carol' already has an active token" in twice.stderr and "--another" in twice.stderr
    assert server("user", "list", *d).stdout.splitlines()[1].split()[:2] == ["carol", "1"]

    other = remote.operator("op2")
    nobody = remote.admin(other, "user", "revoke", "nobody", code=other.code())
    assert nobody.returncode == 1
    assert nobody.stderr.startswith("error: No user 'nobody' has an active token; nothing was revoked.")

    valid = {other.totp.at(time.time() + 30 * k) for k in (-1, 0, 1)}
    wrong = next(c for c in ("000000", "111111", "222222", "333333") if c not in valid)
    refused = remote.admin(other, "user", "revoke", "carol", code=wrong)
    assert refused.returncode == 1
    assert (
        refused.stderr == "error: The one-time code is wrong or expired. Give the code your authenticator app "
        "shows now (--totp CODE).\n"
    )
    no_code = remote.admin(other, "user", "revoke", "carol")  # stdin is not a terminal: nothing to ask
    assert no_code.returncode == 1 and "Pass --totp CODE, or --totp - to read it from stdin." in no_code.stderr

    summary = remote.admin(None, "summary")  # no code needed
    assert summary.returncode == 0 and summary.stdout.startswith("jobs     none\npilots   none\n"), summary.stdout


def test_admin_drains_and_caps_a_site_and_mints_lists_and_revokes_tokens(remote: Remote) -> None:
    d = ["--dir", str(remote.state)]
    op = remote.operator("op3")
    drained = remote.admin(op, "site", "drain", "hpc1", code=op.code())
    assert drained.returncode == 0, drained.stderr
    assert drained.stdout.startswith("site hpc1: draining.\n")
    capped = remote.admin(op, "site", "cap", "hpc1", "8", "--totp", "-", stdin=op.code() + "\n")
    assert capped.returncode == 0, capped.stderr
    shown = server("site", "show", "hpc1", "--json", *d)  # what the server host sees
    assert json.loads(shown.stdout) | {"mode": "draining", "max_cpus": 8} == json.loads(shown.stdout)

    op4 = remote.operator("op4")
    minted = remote.admin(
        op4, "token", "add", "--role", "user", "--subject", "dan", "--expires-in", "2d", "--json", code=op4.code()
    )
    assert minted.returncode == 0, minted.stderr
    token_id = json.loads(minted.stdout)["id"]
    listed = server("token", "list", "--subject", "dan", *d).stdout.splitlines()
    assert "CREATED" in listed[0] and "EXPIRES" in listed[0] and "expires in 47h59m" in listed[1]
    revoked = remote.admin(op4, "token", "revoke", token_id, code=op4.code())
    assert revoked.returncode == 0 and revoked.stdout.startswith(f"Revoked token {token_id}"), revoked.stderr

    op5 = remote.operator("op5")
    table = remote.admin(op5, "token", "list", "--subject", "dan", "--revoked", code=op5.code())
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split()[:6] == ["ID", "ROLE", "SUBJECT", "SCOPES", "CREATED", "EXPIRES"]
    assert row.startswith(token_id) and row.endswith("revoked")
