"""A real Prometheus (Debian's 2.42 package) scrapes a real server running jobs on a real pilot.

Every metric family the server exports and every query of the Grafana dashboard in
packaging/grafana/ is checked through Prometheus's HTTP API, so a renamed metric or a broken
panel query fails here.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from glidein_client.wire.schema import InputFile, JobSpec, JobState, Role, Scope
from glidein_server.http.admin import mint

from ..conftest import REPO, LiveServer
from .test_pilot import wait_jobs

PROMETHEUS = shutil.which("prometheus")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(PROMETHEUS is None, reason="needs the prometheus package (apt-get install prometheus)"),
]
DASHBOARD = REPO / "packaging" / "grafana" / "glidein.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prom:
    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.session = session

    async def query(self, expr: str) -> list[dict[str, Any]]:
        async with self.session.get(f"{self.url}/api/v1/query", params={"query": expr}) as r:
            body = await r.json()
        assert body["status"] == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def range(self, expr: str, seconds: float = 180.0) -> list[dict[str, Any]]:
        """What a dashboard panel over the last ``seconds`` draws: the series of a range query."""
        now = time.time()
        params = {"query": expr, "start": str(now - seconds), "end": str(now), "step": "1"}
        async with self.session.get(f"{self.url}/api/v1/query_range", params=params) as r:
            body = await r.json()
        assert body["status"] == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def until(self, expr: str, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """The first non-empty answer to ``expr`` within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = await self.query(expr)
            if result:
                return result
            assert time.monotonic() < deadline, f"Prometheus has no data for {expr}"
            await asyncio.sleep(0.5)


@pytest.fixture
async def prometheus(live_server: LiveServer, tmp_path: Path) -> AsyncIterator[Prom]:
    grant = await mint(live_server.server.store, Role.OPERATOR, "prometheus", scopes=[Scope.METRICS])
    token_file = live_server.write_secret("prometheus.token", grant.token)
    target = live_server.url.split("://", 1)[1].rstrip("/")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(  # YAML is a superset of JSON
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "glidein",
                        "scrape_interval": "1s",
                        "metrics_path": "/metrics",
                        "authorization": {"type": "Bearer", "credentials_file": str(token_file)},
                        "static_configs": [{"targets": [target]}],
                    }
                ],
            }
        )
    )
    port = _free_port()
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: ASYNC230 - handed to the child
    assert PROMETHEUS is not None
    proc = await asyncio.create_subprocess_exec(
        PROMETHEUS,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 30
            while True:
                try:
                    async with session.get(f"{url}/-/ready") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert proc.returncode is None, (tmp_path / "prometheus.log").read_text()
                assert time.monotonic() < deadline, "Prometheus did not become ready"
                await asyncio.sleep(0.2)
            yield Prom(url, session)
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except asyncio.TimeoutError:
                os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()


def _labels(result: list[dict[str, Any]], name: str) -> set[str]:
    return {r["metric"].get(name, "") for r in result}


async def test_prometheus_scrapes_every_family_and_every_dashboard_query(
    live_server: LiveServer, prometheus: Prom, tmp_path: Path
) -> None:
    data = tmp_path / "in.txt"
    data.write_bytes(b"x" * 4096)
    async with live_server.api(await live_server.token(Role.USER, "alice")) as api:
        up = await api.upload_file(data)
        specs = [
            JobSpec(argv=["sleep", "6"], cpus=cpus, memory_mb=100, walltime_s=60, labels={"dataset": ds})
            for ds, cpus in (("run1", 1), ("run1", 2), ("run2", 1))
        ]
        specs.append(JobSpec(argv=["false"], memory_mb=100, walltime_s=60, max_retries=0, labels={"dataset": "run2"}))
        inp = InputFile(name="in.txt", sha256=up.sha256, size=up.size)
        specs.append(
            JobSpec(script="cat in.txt > out.txt", memory_mb=100, walltime_s=60, inputs=[inp], outputs=["out.txt"])
        )
        # Larger than the site's pilots: stays idle, multicore pressure at the site.
        specs.append(JobSpec(argv=["true"], cpus=8, memory_mb=100, walltime_s=60, sites=["local"]))
        ids = await api.submit(specs)
        await live_server.start_pilot(cpus=4, memory_mb=2000, idle_timeout_s=30)
        assert (await prometheus.until('up{job="glidein"} == 1'))[0]["value"][1] == "1"

        running = await prometheus.until('max_over_time(glidein_running_cores{site="local"}[5m]) > 0')
        assert {"run1", "run2"} & _labels(running, "dataset")
        assert _labels(running, "type") <= {"single", "multicore"}
        await wait_jobs(api, ids[:5], timeout_s=60)
        states = {j.id: j.state for j in (await api.list_jobs(ids=ids)).jobs}
        assert states[ids[3]] is JobState.FAILED and states[ids[0]] is JobState.DONE

        # Values Prometheus stored agree with what happened.
        seen = await prometheus.until('max_over_time(glidein_running_cores{site="local", dataset="run1"}[2m])')
        assert max(float(r["value"][1]) for r in seen) >= 1
        await prometheus.until('sum(glidein_jobs{owner="alice", state="done"}) == 4')
        await prometheus.until('glidein_jobs{owner="alice", state="done", type="multicore"} == 1')
        await prometheus.until('glidein_attempts_total{site="local", outcome="failed"} >= 1')
        await prometheus.until('glidein_staging_bytes_total{direction="input"} >= 4096')
        await prometheus.until('glidein_staging_bytes_total{direction="output"} >= 4096')
        await prometheus.until('glidein_pilot_cores{site="local", state="allocated"} == 4')
        await prometheus.until('glidein_pilots{site="local", state="running"} == 1')
        await prometheus.until('glidein_multicore_pressure{site="local"} >= 1')
        await prometheus.until("glidein_claim_latency_seconds_count > 0")
        await prometheus.until("glidein_sync_latency_seconds_count > 0")
        for family in (
            "glidein_pilot_internal_efficiency",
            "glidein_demand_pilots",
            "glidein_demand_cores",
            "glidein_site_health",
            "glidein_site_backoff_seconds",
            "glidein_site_start_failures",
            "glidein_site_client_last_contact_timestamp_seconds",
            "glidein_site_client_up",
        ):
            assert _labels(await prometheus.until(f'{family}{{site="local"}}'), "site") == {"local"}

        # No job or pilot id ever becomes a label.
        names = await prometheus.query('{__name__=~"glidein_.*"}')
        assert names and all(not ({"job_id", "pilot_id", "id"} & set(r["metric"])) for r in names)

        # Every panel of the Grafana dashboard draws from data over its time range.
        dashboard = json.loads(DASHBOARD.read_text())
        exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
        assert len(exprs) >= 10
        for expr in exprs:
            concrete = expr.replace("$__rate_interval", "1m").replace("$site", ".*")
            deadline = time.monotonic() + 20  # a rate needs two scrapes of a new series
            while not await prometheus.range(concrete):
                assert time.monotonic() < deadline, f"the panel query {expr} has no data"
                await asyncio.sleep(0.5)
