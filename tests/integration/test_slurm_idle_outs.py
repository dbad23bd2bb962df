"""A site whose pilots keep leaving idle while jobs wait says why instead of churning, through
`glidein-client once` and `status` against a REAL Slurm.

The misconfiguration is a real one: ``batch.extra_directives`` gives the pilots less memory
(``--mem=500M``, the later directive wins) than ``pilot.memory`` tells the server (2G), so the
server counts a 1G job for the site while no pilot can take it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from glidein_client.site.config import load_site_config
from glidein_client.site.runners.local import LocalRunner
from glidein_client.site.schedulers.slurm import SlurmScheduler
from glidein_client.wire.schema import JobSpec, JobState, Role
from tests.conftest import LiveServer
from tests.infra import slurm as slurm_infra
from tests.infra.slurm import SlurmCluster
from tests.integration.test_slurm_pilots import end_pilots
from tests.integration.test_slurm_signal_grace import client_cli, pilot_logs, shared_dir

pytestmark = pytest.mark.slurm
slurm_cluster = slurm_infra.slurm_cluster
__all__ = ["shared_dir"]  # the fixture


def write_config(live: LiveServer, shared: Path, name: str, token: Path) -> Path:
    scratch = shared / "scratch"
    scratch.mkdir(mode=0o755, exist_ok=True)
    path = shared / f"{name}.toml"
    path.write_text(
        f"""[site]
name = "{name}"
url = "{live.url}"
token_file = "{token}"
scratch_dir = "{scratch}"
scheduler = "slurm"

[pilot]
cpus = 1
memory = "2G"
disk = "1G"
walltime = "10m"
idle_timeout = "2s"
isolation = "none"

[limits]
max_pilots = 1
max_idle_pilots = 1

[batch]
extra_directives = ["--mem=500M"]
"""
    )
    return path


async def test_pilots_that_keep_leaving_idle_make_the_client_back_off_and_say_why(
    live_server: LiveServer, slurm_cluster: SlurmCluster, shared_dir: Path
) -> None:
    live = live_server
    name = f"i{uuid.uuid4().hex[:8]}"
    config = write_config(live, shared_dir, name, live.write_secret(f"{name}.token", await live.token(Role.SITE, name)))
    scheduler = SlurmScheduler(load_site_config(config), LocalRunner(), env=slurm_cluster.env)
    meta = shared_dir / "scratch" / "pilots-meta"
    submitted: list[str] = []
    try:
        async with live.api(await live.token(Role.USER, "alice")) as api:
            (job,) = await api.submit([JobSpec(argv=["true"], cpus=1, memory_mb=1024, walltime_s=60)])
            deadline = time.monotonic() + 90
            while True:  # cron-like: one `once` a second
                report = await client_cli(slurm_cluster, shared_dir, "once", str(config))
                submitted += report["submitted"]  # type: ignore[arg-type]
                reasons = " ".join(report["reasons"])  # type: ignore[arg-type]
                if "3 pilots in a row left idle without a job" in reasons:
                    break
                assert time.monotonic() < deadline, f"{report}\n{pilot_logs(meta)}"
                await asyncio.sleep(1.0)
            assert report["demand_pilots"] == 1  # the job still waits and counts
            assert len(submitted) == 3, submitted  # not one more pilot than it took to notice
            assert "; one probe pilot in 1" in reasons, reasons  # about 2 min after the third
            assert (await api.get_job(job)).state is JobState.IDLE

            status = await client_cli(slurm_cluster, shared_dir, "status", str(config))
            note = str(status["idle_outs"])
            assert note.startswith("3 pilots in a row left idle without claiming a job"), status
            assert "(1 core(s), 2048 MB, " in note and f"pilot.memory and pilot.walltime in {config}" in note
            text = await client_cli(slurm_cluster, shared_dir, "status", str(config), json_output=False)
            assert f"  idling     {note}" in str(text["text"])
    finally:
        await end_pilots(scheduler)
