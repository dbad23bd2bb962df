"""Remote mode over MFA SSH: logins per hour of daemon operation, and the added latency per command.

Run with `python -m benchmarks.ssh_latency` (as root; needs `tests/infra/install_sshd.sh` and
`tests/infra/install_slurm.sh`). It starts, from the test fixtures, a real sshd (key + TOTP through
PAM google-authenticator) whose sessions reach a real single-node Slurm, and an in-process glidein
server, then measures:

1. **Logins of a daemon**: `SiteClient.run_forever` in remote mode (Slurm backend over SSH) for
   `--daemon-s` seconds with `cycle_s = --cycle-s`; logins are counted in sshd's own log.
2. **Latency per command**: `true` run `--n` times one after the other (a) as a local subprocess,
   (b) over the runner's shared connection, (c) over a fresh connection per command (connect, key +
   TOTP login, one command, close). (c) reuses a TOTP code within its 30 s window, which this test
   sshd allows (DISALLOW_REUSE off) and glidein itself never does: with DISALLOW_REUSE a site allows
   one such login per 30 s window, so (c) is the best case of a login-per-command design.

Prints a table and writes benchmarks/results/ssh_latency.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncssh
import msgspec

from glidein_client.site.client import SiteClient
from glidein_client.site.config import SshSection, load_site_config
from glidein_client.site.deploy_config import _toml
from glidein_client.site.runners.local import LocalRunner
from glidein_client.site.runners.ssh import SshRunner
from glidein_client.wire.schema import Role
from glidein_server.server import Server, mint_token
from glidein_server.settings import ServerSettings, StateDir
from tests.infra.slurm import SlurmCluster
from tests.infra.sshd import SshServer, shared_remote_python

RESULTS = Path(__file__).resolve().parent / "results"


async def timed(n: int, fn: Callable[[], Awaitable[object]]) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def stats(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)
    return {
        "n": len(ms),
        "mean_ms": statistics.fmean(ms),
        "p50_ms": ordered[len(ordered) // 2],
        "p95_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))],
    }


async def fresh_login_command(server: SshServer) -> None:
    """Connect, log in with key + the current TOTP code, run `true`, close."""
    totp = server.totp()

    class Client(asyncssh.SSHClient):
        def kbdint_auth_requested(self) -> str:
            return ""

        def kbdint_challenge_received(self, name: str, instructions: str, lang: str, prompts: Any) -> list[str]:
            return [totp.now() for _ in prompts]

    conn, _ = await asyncssh.create_connection(
        Client,
        server.host,
        server.port,
        username=server.user,
        client_keys=[str(server.client_key)],
        known_hosts=str(server.known_hosts),
        agent_path=None,
        config=None,
        preferred_auth="publickey,keyboard-interactive",
    )
    async with conn:
        await conn.run("true", check=True)


async def latency(server: SshServer, n: int) -> dict[str, dict[str, float]]:
    settings = msgspec.convert(server.ssh_section(), SshSection)
    local = LocalRunner()
    async with SshRunner(settings) as runner:
        await runner.run(["true"])  # log in first: the shared connection's cost per command is what counts
        shared = await timed(n, lambda: runner.run(["true"]))
        sftp = await timed(n, lambda: runner.write_file(str(server.user_dir / "probe"), b"x" * 4096))
    return {
        "local subprocess": stats(await timed(n, lambda: local.run(["true"]))),
        "ssh, shared connection": stats(shared),
        "ssh, fresh connection + login": stats(await timed(n, lambda: fresh_login_command(server))),
        "sftp write 4 KiB, shared": stats(sftp),
    }


async def daemon_logins(server: SshServer, seconds: float, cycle_s: float, tmp: Path) -> dict[str, Any]:
    state = StateDir(tmp / "server")
    state.write(ServerSettings(port=0, insecure_http=True))  # loopback only
    async with Server(str(state.root)) as srv:
        token = tmp / "site.token"
        token.write_text(await mint_token(srv.store, Role.SITE, "bench"))
        token.chmod(0o600)
        raw = {
            "site": {
                "name": "bench",
                "server_url": srv.url,
                "token_file": str(token),
                "scheduler": "slurm",
                "scratch_dir": str(server.user_dir / "scratch"),
                "cycle_s": cycle_s,
            },
            "batch": {"python": shared_remote_python()},
            "ssh": server.ssh_section(),
        }
        path = tmp / "bench.toml"
        path.write_text(_toml(raw))
        site = load_site_config(path)
        cycles = 0

        class Counter(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                nonlocal cycles
                cycles += "site bench: demand" in record.getMessage()

        handler = Counter()
        logging.getLogger("glidein_client.site.client").addHandler(handler)
        logging.getLogger("glidein_client.site.client").setLevel(logging.INFO)
        before = server.logins()
        try:
            async with SiteClient(site) as client:
                stop = asyncio.Event()
                task = asyncio.create_task(client.run_forever(stop=stop))
                await asyncio.sleep(seconds)
                stop.set()
                await task
        finally:
            logging.getLogger("glidein_client.site.client").removeHandler(handler)
        logins = server.logins() - before
    relogins = logins - 1
    return {
        "seconds": seconds,
        "cycle_s": cycle_s,
        "cycles": cycles,
        "logins": logins,
        "relogins_after_the_first": relogins,
        "relogins_per_hour": relogins * 3600 / seconds,
        "logins_per_hour_if_one_per_cycle": 3600 / cycle_s,
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    with (
        SlurmCluster() as cluster,
        SshServer(setenv=cluster.env) as server,
        tempfile.TemporaryDirectory(prefix="glidein-bench-") as tmp,
    ):
        lat = await latency(server, args.n)
        daemon = await daemon_logins(server, args.daemon_s, args.cycle_s, Path(tmp))
    return {"machine": platform.node(), "python": platform.python_version(), "latency": lat, "daemon": daemon}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=50, help="commands per latency row (default 50)")
    p.add_argument("--daemon-s", type=float, default=90.0, help="seconds of daemon operation (default 90)")
    p.add_argument("--cycle-s", type=float, default=2.0, help="the daemon's cycle_s (default 2)")
    p.add_argument("--out", type=Path, default=RESULTS / "ssh_latency.json")
    args = p.parse_args()
    result = asyncio.run(main_async(args))
    lat = result["latency"]
    print(f"{'command `true`, one after the other':<36} {'n':>4} {'mean ms':>9} {'p50 ms':>8} {'p95 ms':>8}")
    for name, row in lat.items():
        print(f"{name:<36} {row['n']:>4} {row['mean_ms']:>9.1f} {row['p50_ms']:>8.1f} {row['p95_ms']:>8.1f}")
    added = lat["ssh, fresh connection + login"]["mean_ms"] - lat["ssh, shared connection"]["mean_ms"]
    print(
        f"a fresh login per command adds {added:.1f} ms to each command "
        f"({lat['ssh, shared connection']['mean_ms'] - lat['local subprocess']['mean_ms']:.1f} ms is what the "
        "shared connection adds over a local subprocess)"
    )
    d = result["daemon"]
    print(
        f"daemon: {d['logins']} login(s) in {d['seconds']:.0f} s, {d['cycles']} cycles at cycle_s={d['cycle_s']:g}; "
        f"re-logins after the first: {d['relogins_after_the_first']} ({d['relogins_per_hour']:.0f}/h); "
        f"one login per cycle would be {d['logins_per_hour_if_one_per_cycle']:.0f}/h"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
