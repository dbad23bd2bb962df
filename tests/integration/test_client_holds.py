"""A real client cycle against HTCondor's command formats (fake condor_* tools, HTCondor 23 output):
held pilots are released or removed by the cycle, and the server learns the batch states."""

from __future__ import annotations

from pathlib import Path

from glidein_client.site.client import SiteClient
from glidein_client.site.config import parse_site_config
from glidein_client.site.runners.local import LocalRunner
from glidein_client.site.schedulers.htcondor import HTCondorScheduler
from glidein_client.wire.schema import JobSpec, Role
from tests.fakes import FakeBatch, fakebatch

from ..conftest import LiveServer


async def test_cycle_releases_transient_holds_and_removes_the_rest(live_server: LiveServer, tmp_path: Path) -> None:
    site_token = await live_server.token(Role.SITE, "condor")
    site = parse_site_config(
        {
            "site": {
                "name": "condor",
                "server_url": live_server.url,
                "scheduler": "htcondor",
                "token_file": str(live_server.write_secret("condor.token", site_token)),
                "scratch_dir": str(tmp_path / "scratch"),
            },
            "pilot": {"cpus": 1, "memory": "1G", "walltime": "1h"},
            "limits": {"max_pilots": 3, "max_idle_pilots": 3, "max_submit_per_cycle": 3},
        },
        "site_configs/condor.toml",
    )
    fake = FakeBatch(tmp_path / "batch")
    sched = HTCondorScheduler(site, LocalRunner(), env=fake.env)
    async with live_server.api(await live_server.token(Role.USER, "alice")) as user:
        await user.submit([JobSpec(argv=["true"], walltime_s=60) for _ in range(3)])
    async with SiteClient(site, scheduler=sched) as client:
        first = await client.cycle()
        assert len(first.submitted) == 3
        transfer, by_hand, often = first.submitted
        fake.condor_hold(transfer, 13, "Transfer input files failure")
        fake.condor_hold(by_hand, 1, "held by the admin")
        fake.condor_hold(often, 12, "Transfer output files failure")
        with fakebatch.locked_state(str(fake.dir)) as state:
            state["condor"]["queue"][transfer].update(NumHolds=1, EnteredCurrentStatus=0)  # held long ago
            state["condor"]["queue"][often]["NumHolds"] = 9
        second = await client.cycle()
    assert [c[1:] for c in fake.calls("condor_release")] == [[transfer]]
    assert [c[1:] for c in fake.calls("condor_rm")] == [[by_hand, often]]
    assert set(second.removed) == {by_hand, often}
    assert any(f"releasing pilot {transfer}" in r for r in second.reasons)
