"""Firewalled sites: out-of-job staging throughput and the mailbox's round trip, each against the direct path.

Run with ``python -m benchmarks.staging``. One in-process server (SQLite) on 127.0.0.1 holds
1,000 files of 1 MB and 10 files of 100 MB. In the same run -- the transfers twice, staged
first and then direct first, the table showing the mean -- it measures:

- staged: the site client's staging pass for the files' jobs (server -> staging area, checked,
  flushed to disk, marked, jobs reported staged), ``staging.concurrency`` at a time;
- direct: a pilot of a direct site, having claimed the same jobs, downloads every file from the
  server into a sandbox as in a job (``DirectChannel.fetch_input``, checked against its sha256),
  ``concurrency`` at a time;
- pilot copy: a pilot's copy of the staged files into a sandbox (checked again);
- the round trip of a sync that claims one job: direct, through the login-node relay, and
  through the shared-filesystem mailbox (back to back, and spaced so that the client's polling
  has slowed down to ``mailbox.poll_s``).

Prints a table and writes benchmarks/results/staging.json. Needs about 8 GB of free disk.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from glidein_client.pilot.channels.base import DirectChannel
from glidein_client.pilot.channels.mailbox import MailboxTransport
from glidein_client.pilot.channels.staged import RelayTransport
from glidein_client.sharedfs.staging_area import StagingArea, input_key
from glidein_client.site.config import SiteConfig, parse_site_config
from glidein_client.site.firewall.forwarder import PilotForwarder, PilotTokens
from glidein_client.site.firewall.mailbox_service import HOT_S, MailboxService
from glidein_client.site.firewall.relay import Relay
from glidein_client.site.firewall.stager import Stager
from glidein_client.wire.api import ApiClient
from glidein_client.wire.schema import Finish, InputFile, JobSpec, Outcome, PilotRegister, Resources, Role, SyncRequest
from glidein_client.wire.staging import Network
from glidein_server.server import Server, mint_token
from glidein_server.settings import ServerSettings, StateDir

RESULTS = Path(__file__).resolve().parent / "results"
MB = 1 << 20


def site_config(tmp: Path, name: str, url: str, token_file: Path, concurrency: int, poll_s: float) -> SiteConfig:
    raw = {
        "site": {
            "name": name,
            "server_url": url,
            "token_file": str(token_file),
            "scratch_dir": str(tmp / name),
            "network": "none",
        },
        "pilot": {"cpus": 1, "memory": "1G", "disk": "1G", "walltime": "1h"},
        "staging": {
            "dir": str(tmp / name / "staging"),
            "quota": "1T",
            "max_jobs": 5000,
            "batch": 5000,
            "concurrency": concurrency,
        },
        "mailbox": {"dir": str(tmp / name / "mailbox"), "poll_s": poll_s},
    }
    return parse_site_config(raw, f"<benchmark {name}>")


def make_files(directory: Path, count: int, size: int) -> list[Path]:
    directory.mkdir(parents=True)
    paths = []
    for i in range(count):
        path = directory / f"f{i}.bin"
        with open(path, "wb") as fh:
            for _ in range(size // MB):
                fh.write(os.urandom(MB))
        paths.append(path)
    return paths


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def upload(api: ApiClient, paths: list[Path]) -> list[InputFile]:
    out = []
    for path in paths:
        sha = await asyncio.to_thread(sha256_of, path)
        fh = await asyncio.to_thread(open, path, "rb")
        try:
            async with api.session.put(f"{api.url}/api/v1/files/{sha}", data=fh) as resp:
                assert resp.status == 201, await resp.text()
        finally:
            fh.close()
        out.append(InputFile(name="in.bin", sha256=sha, size=path.stat().st_size))
    return out


async def timed(n_bytes: int, work: Callable[[], Awaitable[object]]) -> dict[str, float]:
    t0 = time.perf_counter()
    await work()
    seconds = time.perf_counter() - t0
    return {"seconds": round(seconds, 3), "mb_per_s": round(n_bytes / MB / seconds, 1)}


async def direct_download(url: str, token: str, inputs: list[InputFile], dest: Path, concurrency: int) -> None:
    await asyncio.to_thread(dest.mkdir, parents=True)
    slots = asyncio.Semaphore(concurrency)
    async with DirectChannel(url, token) as channel:

        async def one(i: int, inp: InputFile) -> None:
            async with slots:
                await channel.fetch_input(inp, dest / f"{i}.bin")

        await asyncio.gather(*(one(i, inp) for i, inp in enumerate(inputs)))


async def pilot_copy(area: StagingArea, inputs: list[InputFile], dest: Path, concurrency: int) -> None:
    await asyncio.to_thread(dest.mkdir, parents=True)
    slots = asyncio.Semaphore(concurrency)

    async def one(i: int, inp: InputFile) -> None:
        async with slots:
            await asyncio.to_thread(area.copy_input, input_key(inp), inp.sha256, dest / f"{i}.bin")

    await asyncio.gather(*(one(i, inp) for i, inp in enumerate(inputs)))


async def claiming_pilot(srv: Server, site: str, jobs: int) -> tuple[str, list[Any]]:
    """A pilot of ``site`` that has claimed ``jobs`` jobs (so that it may read their inputs); its token and claims."""
    async with ApiClient(srv.url, await mint_token(srv.store, Role.SITE, site)) as site_api:
        grant = await site_api.new_pilot(site)
    free = Resources(cpus=jobs, memory_mb=1 << 30, disk_mb=1 << 30)
    async with DirectChannel(srv.url, grant.token) as pilot:
        await pilot.register(PilotRegister(resources=free, end_time=time.time() + 3600))
        claims = (await pilot.sync(SyncRequest(free=free, lifetime_s=3000))).jobs
    assert len(claims) == jobs, len(claims)
    return grant.token, claims


async def release(srv: Server, token: str, claims: list[Any]) -> None:
    """The pilot gives its claims back: the jobs are idle again (not their fault)."""
    free = Resources(cpus=len(claims), memory_mb=1 << 30, disk_mb=1 << 30)
    async with DirectChannel(srv.url, token) as pilot:
        await pilot.sync(
            SyncRequest(
                free=free,
                lifetime_s=3000,
                draining=True,
                finished=[Finish(attempt_id=c.attempt_id, lease=c.lease, outcome=Outcome.INTERRUPTED) for c in claims],
            )
        )


async def one_round(
    srv: Server, tmp: Path, name: str, inputs: list[InputFile], concurrency: int, direct_first: bool
) -> dict[str, Any]:
    """Direct download, staging pass and pilot copy of the inputs of fresh jobs, in the order asked."""
    total = sum(inp.size or 0 for inp in inputs)
    async with ApiClient(srv.url, await mint_token(srv.store, Role.USER, "bench")) as api:
        # Each job may run at the firewalled site or at a direct one.
        await api.submit(
            [
                JobSpec(argv=["true"], inputs=[inp], sites=[name, f"{name}-d"], memory_mb=64, disk_mb=1, walltime_s=60)
                for inp in inputs
            ]
        )
    token_file = tmp / f"{name}.token"
    token_file.write_text(await mint_token(srv.store, Role.SITE, name))
    token_file.chmod(0o600)
    site = site_config(tmp, name, srv.url, token_file, concurrency, 0.2)
    out: dict[str, Any] = {}

    async def direct() -> None:
        # A pilot of the direct site claims the jobs and downloads their inputs, as in a job.
        token, claims = await claiming_pilot(srv, f"{name}-d", len(inputs))
        out["direct"] = await timed(
            total, lambda: direct_download(srv.url, token, inputs, tmp / f"{name}-direct", concurrency)
        )
        await asyncio.to_thread(shutil.rmtree, tmp / f"{name}-direct")
        await release(srv, token, claims)

    async def staged() -> None:
        async with ApiClient(srv.url, token_file.read_text()) as site_api:
            await site_api.set_site_network(name, Network.NONE)
            await site_api.demand(name, site.shape)
            async with Stager(site, site_api) as stager:
                out["staged"] = await timed(total, stager.run_pass)
                report = stager.last
        assert report is not None and report.staged == len(inputs) == report.downloaded, report

    for step in (direct, staged) if direct_first else (staged, direct):
        await step()
    area = StagingArea(site.staging.dir if site.staging else "")
    out["pilot_copy_from_staging"] = await timed(
        total, lambda: pilot_copy(area, inputs, tmp / f"{name}-sandbox", concurrency)
    )
    await asyncio.to_thread(shutil.rmtree, tmp / name)
    await asyncio.to_thread(shutil.rmtree, tmp / f"{name}-sandbox")
    return out


async def transfers(srv: Server, tmp: Path, name: str, count: int, size: int, concurrency: int) -> dict[str, Any]:
    """``count`` files of ``size`` bytes: two rounds, staged first and then direct first; their mean."""
    files = await asyncio.to_thread(make_files, tmp / f"{name}-src", count, size)
    async with ApiClient(srv.url, await mint_token(srv.store, Role.USER, "bench")) as api:
        inputs = await upload(api, files)
    await asyncio.to_thread(shutil.rmtree, tmp / f"{name}-src")
    rounds = [await one_round(srv, tmp, f"{name}{i}", inputs, concurrency, direct_first=i == 1) for i in range(2)]
    total = count * size
    result: dict[str, Any] = {"files": count, "file_mb": size // MB, "concurrency": concurrency, "rounds": rounds}
    for kind in ("direct", "staged", "pilot_copy_from_staging"):
        seconds = statistics.mean(r[kind]["seconds"] for r in rounds)
        result[kind] = {"seconds": round(seconds, 3), "mb_per_s": round(total / MB / seconds, 1)}
    result["staged_vs_direct"] = round(result["direct"]["seconds"] / result["staged"]["seconds"], 2)
    return result


async def claim_rtts(srv: Server, tmp: Path, rounds: int, spaced: int, poll_s: float) -> dict[str, Any]:
    """Round trip of a sync that claims one job: direct, relay, mailbox (back to back and spaced)."""
    user = await mint_token(srv.store, Role.USER, "bench")
    results: dict[str, Any] = {"rounds": rounds, "spaced_rounds": spaced, "mailbox_poll_s": poll_s}
    token_file = tmp / "rtt.token"
    token_file.write_text(await mint_token(srv.store, Role.SITE, "rtt"))
    token_file.chmod(0o600)
    site = site_config(tmp, "rtt", srv.url, token_file, 8, poll_s)
    assert site.mailbox is not None and site.staging is not None
    area = StagingArea(site.staging.dir)
    async with ApiClient(srv.url, user) as api:  # jobs without inputs, for the firewalled and a direct site
        await api.submit(
            [
                JobSpec(argv=["true"], sites=["rtt", "rtt-d"], memory_mb=64, disk_mb=1, walltime_s=60)
                for _ in range(3 * rounds + spaced + 10)
            ]
        )
    async with ApiClient(srv.url, token_file.read_text()) as site_api:
        await site_api.set_site_network("rtt", Network.NONE)
        await site_api.demand("rtt", site.shape)
        async with Stager(site, site_api) as stager:  # the firewalled site claims only staged jobs
            await stager.run_pass()
        grants = [await site_api.new_pilot("rtt") for _ in range(2)]
    async with ApiClient(srv.url, await mint_token(srv.store, Role.SITE, "rtt-d")) as direct_site:
        await direct_site.demand("rtt-d", site.shape)
        grants.insert(0, await direct_site.new_pilot("rtt-d"))

        async def measure(
            kind: str, sync: Callable[[SyncRequest], Awaitable[Any]], n: int, gap_s: float, jitter_s: float = 0.0
        ) -> None:
            rtts = []
            for _ in range(n):
                if gap_s:
                    await asyncio.sleep(gap_s + random.uniform(0, jitter_s))
                t0 = time.perf_counter()
                resp = await sync(SyncRequest(free=Resources(cpus=1, memory_mb=1024, disk_mb=1024), lifetime_s=3000))
                rtts.append((time.perf_counter() - t0) * 1000)
                assert len(resp.jobs) == 1, (kind, resp)
            results[kind] = {
                "median_ms": round(statistics.median(rtts), 2),
                "p95_ms": round(sorted(rtts)[int(0.95 * (len(rtts) - 1))], 2),
                "max_ms": round(max(rtts), 2),
            }

        register = PilotRegister(
            resources=Resources(cpus=4 * rounds, memory_mb=1 << 20, disk_mb=1 << 20), end_time=time.time() + 3600
        )
        async with DirectChannel(srv.url, grants[0].token) as direct:
            await direct.register(register)
            await measure("direct", direct.sync, rounds, 0)
        tokens = PilotTokens(tmp / "rtt" / "pilots-meta", "rtt")
        for g in grants[1:]:
            tokens.add(g.pilot_id, g.token)
        async with PilotForwarder(srv.url, area) as forwarder:
            async with Relay("rtt", "127.0.0.1", 0, tokens, forwarder) as relay:
                relay_channel = RelayTransport(relay.url, grants[1].token)
                async with relay_channel:
                    await relay_channel.register(register)
                    await measure("relay", relay_channel.sync, rounds, 0)
            service = MailboxService(site.mailbox.dir, "rtt", tokens, forwarder, poll_s=poll_s)
            stop = asyncio.Event()
            task = asyncio.create_task(service.run(stop))
            box = await service.prepare(grants[2].pilot_id)
            async with MailboxTransport(box) as mailbox:
                await mailbox.register(register)
                await measure("mailbox", mailbox.sync, rounds, 0)
                # Spaced: the client has slowed down to looking every poll_s when the claim comes, at a random
                # moment of its polling.
                await measure("mailbox_spaced", mailbox.sync, spaced, HOT_S + 2 * poll_s, jitter_s=poll_s)
            stop.set()
            await task
    return results


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="glidein-bench-staging-", dir=args.tmp) as tmp_name:
        tmp = Path(tmp_name)
        state = StateDir(tmp / "server")
        # Plain HTTP on loopback; no rate limits: this measures the transfer paths, not the server's policy
        # (with the default rate_site_per_s, staging many small files runs at that many files per second).
        state.write(
            ServerSettings(
                port=0, heartbeat_s=5.0, insecure_http=True, rate_user_per_s=0, rate_site_per_s=0, rate_pilot_per_s=0
            )
        )
        async with Server(str(state.root)) as srv:
            small = await transfers(srv, tmp, "small", args.small_files, MB, args.concurrency)
            large = await transfers(srv, tmp, "large", args.large_files, 100 * MB, args.concurrency)
            rtt = await claim_rtts(srv, tmp, args.rounds, args.spaced_rounds, args.poll_s)
    return {
        "benchmark": "firewalled-sites-staging",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "note": (
            "server, client, staging area and sandboxes on one machine's disk (page cache warm); "
            "plain HTTP on loopback; server rate limits off"
        ),
        "transfers": [small, large],
        "claim_round_trip": rtt,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small-files", type=int, default=1000, help="files of 1 MB (default 1000)")
    p.add_argument("--large-files", type=int, default=10, help="files of 100 MB (default 10)")
    p.add_argument("--concurrency", type=int, default=8, help="transfers at once, both paths (default 8)")
    p.add_argument("--rounds", type=int, default=200, help="claims per round-trip measurement (default 200)")
    p.add_argument("--spaced-rounds", type=int, default=20, help="spaced mailbox claims (default 20)")
    p.add_argument("--poll-s", type=float, default=0.2, help="mailbox.poll_s of the client (default 0.2)")
    p.add_argument("--tmp", help="where to put the temporary files (default: the system's temp dir)")
    p.add_argument("--out", type=Path, default=RESULTS / "staging.json")
    args = p.parse_args()
    result = asyncio.run(main_async(args))
    rows = []
    for t in result["transfers"]:
        what = f"{t['files']} x {t['file_mb']} MB"
        rows.append(
            (
                f"{what}: direct (server -> sandbox)",
                f"{t['direct']['mb_per_s']:.0f} MB/s",
                f"{t['direct']['seconds']:.2f} s",
            )
        )
        rows.append(
            (
                f"{what}: staged (server -> staging area)",
                f"{t['staged']['mb_per_s']:.0f} MB/s",
                f"{t['staged']['seconds']:.2f} s",
            )
        )
        rows.append(
            (
                f"{what}: pilot copy (staging area -> sandbox)",
                f"{t['pilot_copy_from_staging']['mb_per_s']:.0f} MB/s",
                f"{t['pilot_copy_from_staging']['seconds']:.2f} s",
            )
        )
    rtt = result["claim_round_trip"]
    for kind, label in (
        ("direct", "claim round trip: direct"),
        ("relay", "claim round trip: relay"),
        ("mailbox", "claim round trip: mailbox, back to back"),
        ("mailbox_spaced", f"claim round trip: mailbox, spaced (poll_s {rtt['mailbox_poll_s']})"),
    ):
        rows.append((label, f"median {rtt[kind]['median_ms']:.1f} ms", f"p95 {rtt[kind]['p95_ms']:.1f} ms"))
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'rate':>18}  time")
    for name, a, b in rows:
        print(f"{name:<{width}}  {a:>18}  {b}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
