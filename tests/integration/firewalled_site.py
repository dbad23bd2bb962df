"""Helpers of the firewalled-site tests: a site config, users' files and jobs, waiting."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import time
from pathlib import Path

from glidein_client.site.config import SiteConfig, load_site_config
from glidein_client.wire.api import ApiClient
from glidein_client.wire.schema import InputFile, JobSpec, JobState, Role
from tests.conftest import LiveServer

FINAL = {JobState.DONE, JobState.FAILED, JobState.CANCELLED}


async def firewalled_site(
    live: LiveServer,
    tmp_path: Path,
    name: str,
    network: str,
    *,
    relay: str = "",
    staging: str = "",
    mailbox_poll_s: float = 0.02,
    cpus: int = 2,
    concurrency: int = 4,
) -> SiteConfig:
    """A site config of ``network`` ("relay" or "none") whose shared directories live under ``tmp_path``."""
    token = live.write_secret(f"site-{name}.token", await live.token(Role.SITE, name))
    shared = tmp_path / "shared"
    text = f"""\
[site]
name = "{name}"
server_url = "{live.url}"
token_file = "{token}"
scratch_dir = "{shared / "scratch"}"
cycle_s = 1
network = "{network}"

[pilot]
cpus = {cpus}
memory = "1G"
disk = "500M"
walltime = "10m"
idle_timeout = "4s"

[limits]
max_pilots = 2
max_idle_pilots = 2
max_submit_per_cycle = 2

[staging]
dir = "{shared / "staging"}"
concurrency = {concurrency}
poll_s = 0.3
{staging}
"""
    if network == "relay":
        text += f"\n[relay]\n{relay}\n"
    else:
        text += f'\n[mailbox]\ndir = "{shared / "mailbox"}"\npoll_s = {mailbox_poll_s}\nstale_after = "10m"\n'
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return load_site_config(path)


async def upload(api: ApiClient, path: Path, size: int) -> InputFile:
    """A file of ``size`` random bytes, uploaded (streamed: aiohttp warns of big bodies); the InputFile naming it."""
    data = os.urandom(size)
    _write(path, data)
    sha = sha256_of(data)
    async with api.session.put(f"{api.url}/api/v1/files/{sha}", data=io.BytesIO(data)) as resp:
        assert resp.status == 201, await resp.text()
    return InputFile(name=path.name, sha256=sha, size=size)


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def jobs_with_inputs(
    inputs: list[InputFile], site: str, script: str = "true", outputs: list[str] | None = None, **kw: object
) -> list[JobSpec]:
    return [
        JobSpec(
            script=script,
            inputs=[inp],
            outputs=outputs or [],
            sites=[site],
            cpus=1,
            memory_mb=64,
            disk_mb=10,
            walltime_s=60,
            **kw,
        )
        for inp in inputs
    ]  # type: ignore[arg-type]


async def wait_jobs(
    api: ApiClient, ids: list[int], timeout_s: float = 60.0, states: set[JobState] = FINAL
) -> dict[int, JobState]:
    deadline = time.monotonic() + timeout_s
    while True:
        got = {j.id: j.state for j in (await api.list_jobs(ids=ids, limit=len(ids))).jobs}
        if all(s in states for s in got.values()):
            return got
        assert time.monotonic() < deadline, f"jobs not finished in time: {got}"
        await asyncio.sleep(0.2)


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pilot_logs(site: SiteConfig) -> str:
    base = Path(site.site.scratch_dir) / "local-batch"
    return "\n".join(f"--- {p}\n{p.read_text(errors='replace')}" for p in sorted(base.glob("*/std*")))
