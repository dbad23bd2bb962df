"""Pilots that fail at start, for real: a Slurm site whose `batch.python` cannot run. The client
reads the tail of the failed pilot's error output through its runner and names the pilot, the
reason and the config key, in its log, in `glidein-client status` and in the server's summary."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from pathlib import Path

import pytest

from glidein_client.site.client import SiteClient
from glidein_client.site.config import parse_site_config
from glidein_client.site.runners.local import LocalRunner
from glidein_client.site.schedulers.slurm import SlurmScheduler
from glidein_client.wire.schema import JobSpec, Role
from tests.conftest import LiveServer
from tests.infra import slurm as slurm_infra
from tests.infra.slurm import SlurmCluster
from tests.integration.test_slurm_pilots import end_pilots, shared_dir

pytestmark = [pytest.mark.slurm]
slurm_cluster = slurm_infra.slurm_cluster
__all__ = ["shared_dir"]


async def test_a_pilot_that_cannot_start_is_explained_with_the_key_to_check(
    live_server: LiveServer, slurm_cluster: SlurmCluster, shared_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    live = live_server
    name = f"f{uuid.uuid4().hex[:8]}"
    token = live.write_secret(f"{name}.token", await live.token(Role.SITE, name))
    python = shared_dir / "python3"
    python.write_text("#!/bin/sh\n")
    python.chmod(0o644)  # there, but not executable: "Permission denied"
    scratch = shared_dir / "scratch"
    scratch.mkdir(mode=0o755)
    raw = {
        "site": {
            "name": name,
            "server_url": live.url,
            "token_file": str(token),
            "scratch_dir": str(scratch),
            "scheduler": "slurm",
        },
        "pilot": {"cpus": 1, "memory": "256M", "disk": "100M", "walltime": "10m", "idle_timeout": "3s"},
        "limits": {"max_pilots": 1, "max_idle_pilots": 1, "max_submit_per_cycle": 1},
        "batch": {"python": str(python)},
    }
    config = parse_site_config(raw, str(shared_dir / f"{name}.toml"))
    async with live.api(await live.token(Role.USER, "alice")) as user:
        await user.submit([JobSpec(argv=["true"], cpus=1, memory_mb=64, disk_mb=1, walltime_s=60)])
    scheduler = SlurmScheduler(config, LocalRunner(), env=slurm_cluster.env)
    caplog.set_level(logging.WARNING, logger="glidein_client.site.client")
    try:
        async with SiteClient(config, runner=LocalRunner(), scheduler=scheduler) as client:
            deadline = time.monotonic() + 60
            while client.last_failure is None:
                assert time.monotonic() < deadline, caplog.text
                await client.cycle()
                await asyncio.sleep(1)
            failure = client.last_failure
            assert failure.key == "batch.python" and "Permission denied" in failure.reason
            assert failure.pilot.startswith(f"glidein-{name}-")
            status = await SiteClient(config, runner=LocalRunner(), scheduler=scheduler).__aenter__()
            try:
                shown = (await status.status()).failure
            finally:
                await status.__aexit__(None, None, None)
    finally:
        await end_pilots(scheduler)
    logged = caplog.text
    assert f"pilot {failure.pilot} failed at start" in logged and "check batch.python in" in logged
    assert shown is not None and "check batch.python" in shown and "Permission denied" in shown
    async with live.api(live.operator_token) as op:
        [site] = [s for s in (await op.summary()).sites if s.name == name]
    assert site.pilot_failure is not None and f"pilot {failure.pilot} failed at start" in site.pilot_failure
