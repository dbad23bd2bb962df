"""Firewalled sites end to end: real pilots in a worker network namespace that cannot reach the server.

The root namespace plays the login node: the server listens on its 127.0.0.1, and the site
client (``glidein-client run``, in this process) stages inputs, serves the pilots and submits
them with the local scheduler into the worker namespace (tests/infra/netns.py). ``relay``:
the worker's only route is a veth link to the login node, where the client's relay listens.
``none``: the worker has no route at all; pilots and client share only the filesystem.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from glidein_client.sharedfs.staging_area import StagingArea
from glidein_client.site.client import SiteClient
from glidein_client.site.config import SiteConfig
from glidein_client.wire.schema import InputFile, JobSpec, JobState, Role
from tests.conftest import LiveServer
from tests.e2e.test_cli import Glidein
from tests.infra import netns as netns_infra
from tests.infra.netns import NetnsScheduler, WorkerNamespace

from .firewalled_site import firewalled_site, pilot_logs, sha256_of, upload, wait_jobs

pytestmark = pytest.mark.netns
netns_site = netns_infra.netns_site
MB = 1 << 20
# Each job checks its inputs, writes two outputs (one in a subdirectory) and reports where it ran.
SCRIPT = (
    "set -e; mkdir -p res; cat in/a.bin in/b.txt | sha256sum | cut -d' ' -f1 > out.txt; "
    "wc -c < in/a.bin >> out.txt; head -c 300000 in/a.bin > res/head.bin; readlink /proc/self/ns/net > net.txt"
)


@contextlib.asynccontextmanager
async def url_server(tmp_path: Path) -> AsyncIterator[tuple[str, bytes]]:
    """A web server on the login node's 127.0.0.1 serving one file: inputs given by URL."""
    body = b"served by URL to the login node only\n" * 100

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=body)

    app = web.Application()
    app.router.add_get("/b.txt", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/b.txt", body
    finally:
        await runner.cleanup()


async def run_site(
    site: SiteConfig,
    ns: WorkerNamespace,
    live: LiveServer,
    tmp_path: Path,
    n_jobs: int,
    checks: Callable[[SiteClient], object] | None = None,
) -> None:
    """Submit jobs for ``site``, run its client until they are done, and check every output."""
    async with url_server(tmp_path) as (url, url_body), live.api(await live.token(Role.USER, "alice")) as user:
        inputs = [await upload(user, tmp_path / f"a{i}.bin", MB + i) for i in range(n_jobs)]
        specs = [
            JobSpec(
                script=SCRIPT,
                inputs=[InputFile(name="in/a.bin", sha256=a.sha256, size=a.size), InputFile(name="in/b.txt", url=url)],
                outputs=["out.txt", "res/head.bin", "net.txt"],
                sites=[site.name],
                memory_mb=64,
                disk_mb=10,
                walltime_s=60,
            )
            for a in inputs
        ]
        ids = await user.submit(specs)
        # A job that fails after writing one of its outputs: that one comes back through the staging area too.
        failing = JobSpec(
            script="echo left behind > part.txt; exit 4",
            outputs=["part.txt", "never.txt"],
            sites=[site.name],
            memory_mb=64,
            disk_mb=10,
            walltime_s=60,
        )
        (failed,) = await user.submit([failing])
        stop = asyncio.Event()
        async with SiteClient(site, scheduler=NetnsScheduler(site, netns=ns.name)) as client:
            task = asyncio.create_task(client.run_forever(stop=stop))
            try:
                states = await wait_jobs(user, [*ids, failed], timeout_s=60)
                assert {states[i] for i in ids} == {JobState.DONE}, pilot_logs(site)
                assert states[failed] is JobState.FAILED, pilot_logs(site)
                if checks is not None:
                    result = checks(client)
                    if asyncio.iscoroutine(result):
                        await result
            finally:
                stop.set()
                await asyncio.wait_for(task, 30)
        for job_id, inp in zip(ids, inputs, strict=True):
            job = await user.get_job(job_id)
            bodies = {o.name: await user.fetch_output(job_id, o.name) for o in job.outputs}
            assert set(bodies) == {"out.txt", "res/head.bin", "net.txt"}
            for o in job.outputs:  # the checksums recorded match the bytes served
                assert o.sha256 == sha256_of(bodies[o.name]) and o.size == len(bodies[o.name])
            data = _read(tmp_path / f"a{ids.index(job_id)}.bin")
            assert bodies["out.txt"].decode().split() == [hashlib.sha256(data + url_body).hexdigest(), str(inp.size)]
            assert bodies["res/head.bin"] == data[:300000]
            # The job ran in the worker's network namespace.
            assert bodies["net.txt"].decode().strip() == f"net:[{ns.inode()}]"
            assert {a.site for a in await user.attempts(job_id)} == {site.name}
    await fetch_failed(live, tmp_path, failed)


async def fetch_failed(live: LiveServer, tmp_path: Path, job_id: int) -> None:
    """``glidein fetch`` of a job that failed brings back the output it left, and says it failed."""
    token_file = live.write_secret("alice-cli.token", await live.token(Role.USER, "alice"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLIDEIN_")}
    env.update(XDG_CONFIG_HOME=str(tmp_path / "no-config"), GLIDEIN_URL=live.url, GLIDEIN_TOKEN_FILE=str(token_file))
    dest = tmp_path / "fetched"
    r = await Glidein(tmp_path, env)("fetch", str(job_id), "-d", str(dest))
    assert r.rc == 0, r.out + r.err
    assert (dest / str(job_id) / "part.txt").read_text() == "left behind\n"
    assert f"job {job_id}: failed (exit code 4); these are the outputs it left (it left no never.txt)" in r.out


def _read(path: Path) -> bytes:
    return path.read_bytes()


def _pilot_scripts(site: SiteConfig) -> str:
    return " ".join(p.read_text() for p in Path(site.site.scratch_dir).glob("local-batch/*/pilot.sh"))


def _pilot_token(site: SiteConfig) -> str:
    """The token the site client minted for one of its pilots."""
    return next(Path(site.site.scratch_dir).glob(f"pilots-meta/glidein-{site.name}-*/client-token")).read_text().strip()


def free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def server_port(live: LiveServer) -> int:
    return int(live.url.rsplit(":", 1)[1])


async def test_relay_site_runs_jobs_with_staged_files(
    live_server: LiveServer, tmp_path: Path, netns_site: Callable[[str], WorkerNamespace]
) -> None:
    ns = netns_site("relay")
    assert ns.login_address is not None
    port = server_port(live_server)
    # The worker reaches the login node's address on its link, and nothing of the server.
    assert ns.connect("127.0.0.1", port) != "ok"
    assert ns.connect(ns.login_address, port) != "ok"
    relay_port = free_port(ns.login_address)
    site = await firewalled_site(
        live_server, tmp_path, "fw-relay", "relay", relay=f'address = "{ns.login_address}"\nport = {relay_port}'
    )

    async def relay_checks(client: SiteClient) -> None:
        assert ns.connect(ns.login_address or "", relay_port) == "ok"
        relay = f"http://{ns.login_address}:{relay_port}/api/v1"
        own_pilot = _pilot_token(site)
        foreign = {
            "no token": None,
            "a user's": await live_server.token(Role.USER, "alice"),
            "the site's": site.read_token(),
            "another pilot's": await live_server.token(Role.PILOT, "999999"),
        }
        async with aiohttp.ClientSession() as http:
            for what, token in foreign.items():
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                async with http.post(f"{relay}/pilot/sync", headers=headers, data=b"{}") as resp:
                    assert resp.status == 401, what
            own = {"Authorization": f"Bearer {own_pilot}"}
            async with http.get(f"{relay}/health", headers=own) as resp:
                assert resp.status == 200
            for method, route in (("GET", "/jobs"), ("POST", "/sites/fw-relay/pilots"), ("GET", "/summary")):
                async with http.request(method, f"{relay}{route}", headers=own) as resp:
                    assert resp.status == 404, route  # only the pilot API is forwarded

    await run_site(site, ns, live_server, tmp_path, n_jobs=4, checks=relay_checks)
    scripts = _pilot_scripts(site)
    assert f"--url http://{ns.login_address}:{relay_port}" in scripts and "--channel relay" in scripts
    assert "ip netns exec" in scripts
    await _staging_area_cleaned(site)


async def test_mailbox_site_runs_jobs_with_staged_files(
    live_server: LiveServer, tmp_path: Path, netns_site: Callable[[str], WorkerNamespace]
) -> None:
    ns = netns_site("none")
    # No route at all but its own loopback: not to the server, not to anything.
    assert all("dev lo" in line for line in ns.routes().splitlines())
    assert ns.connect("127.0.0.1", server_port(live_server)) != "ok"
    site = await firewalled_site(live_server, tmp_path, "fw-mailbox", "none")

    def mailbox_checks(client: SiteClient) -> None:
        assert client.firewall is not None and client.firewall.mailbox is not None
        assert client.firewall.mailbox.answered > 0

    await run_site(site, ns, live_server, tmp_path, n_jobs=4, checks=mailbox_checks)
    scripts = _pilot_scripts(site)
    assert "--channel mailbox" in scripts and "ip netns exec" in scripts
    await _staging_area_cleaned(site)


async def _staging_area_cleaned(site: SiteConfig) -> None:
    """After the jobs: no output waits in the area, and one more pass removes the inputs."""
    assert site.staging is not None
    area = StagingArea(site.staging.dir)
    assert [p for p in area.outputs.rglob("*") if p.is_file()] == []
    async with SiteClient(site) as client:
        assert client.firewall is not None
        await client.firewall.stager.run_pass()
        assert area.input_keys() == set()
        assert (await client.api.staging_view(site.name)).staged == []
