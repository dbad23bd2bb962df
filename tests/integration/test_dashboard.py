"""The web dashboard in a real headless Chromium (Debian's package), driven over the DevTools protocol.

An operator logs in with a token, opens every page while a real pilot runs jobs, the plots draw
(SVG polylines and bars in the page), user strings such as a ``<script>`` label or argv stay text,
and each page's screenshot is kept under the test's tmp directory (``screenshots/``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from glidein_client.wire.schema import JobSpec, Role
from glidein_server.server import Server, mint_token
from glidein_server.settings import ServerSettings, StateDir

from ..conftest import LiveServer
from .test_pilot import wait_jobs

CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="needs the chromium package (apt-get install chromium)"),
]
EVIL = "<script>alert(1)</script>"


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[LiveServer]:
    """A real server whose dashboard samples every half second, so that its plots fill quickly."""
    state = StateDir(tmp_path / "server")
    state.write(ServerSettings(port=0, heartbeat_s=1.0, insecure_http=True, dashboard_sample_s=0.5))
    async with Server(str(state.root)) as srv:
        op = await mint_token(srv.store, Role.OPERATOR, "operator")
        live = LiveServer(url=srv.url, state_dir=state.root, operator_token=op, server=srv, tmp=tmp_path)
        try:
            yield live
        finally:
            for proc in live.pilots:
                if proc.returncode is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    await proc.wait()


class Browser:
    """One page of a headless Chromium, over the DevTools protocol."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0
        self.session = ""

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if self.session:
            msg["sessionId"] = self.session
        await self.ws.send_json(msg)
        while True:
            reply = await asyncio.wait_for(self.ws.receive_json(), 30)
            if reply.get("id") == self.next_id:
                assert "error" not in reply, (method, reply)
                result: dict[str, Any] = reply["result"]
                return result

    async def eval(self, expr: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expr, returnByValue=True)
        return result["result"].get("value")

    async def open(self, url: str) -> None:
        await self.call("Page.navigate", url=url)
        await self.loaded(url.split("://", 1)[1].split("/", 1)[1])

    async def loaded(self, path: str) -> None:
        deadline = time.monotonic() + 20
        while True:
            state = await self.eval("[document.readyState, location.pathname]")
            if state == ["complete", "/" + path]:
                return
            assert time.monotonic() < deadline, f"page /{path} did not load: {state}"
            await asyncio.sleep(0.1)

    async def screenshot(self, path: Path) -> None:
        data = (await self.call("Page.captureScreenshot", format="png"))["data"]
        await asyncio.to_thread(path.write_bytes, base64.b64decode(data))


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Browser]:
    assert CHROMIUM is not None
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--remote-debugging-port=0",
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--window-size=1280,900",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert proc.stderr is not None
        ws_url = ""
        deadline = time.monotonic() + 30
        while not ws_url:
            line = (await asyncio.wait_for(proc.stderr.readline(), max(0.1, deadline - time.monotonic()))).decode()
            assert line or proc.returncode is None, "chromium exited before it listened"
            if m := re.search(r"DevTools listening on (ws://\S+)", line):
                ws_url = m.group(1)
        drain = asyncio.create_task(proc.stderr.read())  # keep its pipe from filling
        async with aiohttp.ClientSession() as session, session.ws_connect(ws_url, max_msg_size=0) as ws:
            b = Browser(ws)
            target = (await b.call("Target.createTarget", url="about:blank"))["targetId"]
            b.session = (await b.call("Target.attachToTarget", targetId=target, flatten=True))["sessionId"]
            await b.call("Page.enable")
            yield b
        drain.cancel()
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


async def test_an_operator_sees_every_page_drawn_and_user_strings_stay_text(
    live: LiveServer, browser: Browser, tmp_path: Path
) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    async with live.api(await live.token(Role.USER, "eve")) as api:
        ids = await api.submit(
            [
                JobSpec(argv=["sh", "-c", f"sleep 3; echo '{EVIL}'"], cpus=c, memory_mb=100, walltime_s=60,
                        labels={"dataset": EVIL if i % 2 else "run7"})
                for i, c in enumerate((1, 2, 1))
            ]
        )  # fmt: skip
        await live.start_pilot(cpus=4, memory_mb=2000, idle_timeout_s=20)

        # Without a token: the login page, and nothing else.
        async with aiohttp.ClientSession() as plain:
            async with plain.get(f"{live.url}/ui/sites") as r:
                assert r.status == 401 and "Log in" in await r.text()
                assert "script-src" not in r.headers["Content-Security-Policy"]  # no script may run at all
        # A user's token is refused; the operator's is taken.
        await browser.open(f"{live.url}/ui/login")
        login = "document.querySelector('input[name=token]').value = {}; document.forms[0].submit(); true"
        await browser.eval(login.format(json.dumps(await live.token(Role.USER, "eve"))))
        deadline = time.monotonic() + 20  # the answer to the form replaces the page
        while "needs a operator token" not in (await browser.eval("document.body && document.body.innerText") or ""):
            assert time.monotonic() < deadline, "a user's token was not refused with a plain message"
            await asyncio.sleep(0.1)
        await browser.eval(login.format(json.dumps(live.operator_token)))
        await browser.loaded("ui")

        # While the jobs run, the overview's plot of cores in use by site fills.
        deadline = time.monotonic() + 30
        while True:
            await browser.open(f"{live.url}/ui")
            peak = await browser.eval(
                "Math.max(0, ...[...document.querySelectorAll('svg.plot polyline.series')]"
                ".flatMap(p => p.getAttribute('points').trim().split(' ')).map(xy => 200 - +xy.split(',')[1]))"
            )
            if peak and peak > 15:  # a point well above the zero line: cores were in use
                break
            assert time.monotonic() < deadline, "the plot of cores in use never rose"
            await asyncio.sleep(0.5)
        assert await browser.eval("document.querySelectorAll('svg.plot rect.bar').length") >= 1
        assert await browser.eval("[...document.querySelectorAll('svg.plot text')].some(t => t.textContent == 'local')")
        await browser.screenshot(shots / "overview.png")

        await browser.open(f"{live.url}/ui/sites")
        text = await browser.eval("document.body.innerText")
        assert "local" in text and "cores in use" in text
        await browser.screenshot(shots / "sites.png")

        await wait_jobs(api, ids)
        await browser.open(f"{live.url}/ui/datasets")
        assert await browser.eval("document.querySelectorAll('script').length") == 0
        text = await browser.eval("document.body.innerText")
        assert EVIL in text and "run7" in text  # the label shows as text and did not run
        assert re.search(r"run7\t0\t0\t2\t0\t0\t0\t0\t\d+%", text), text  # ... cancelled, held, cores
        await browser.screenshot(shots / "datasets.png")

        await browser.open(f"{live.url}/ui/jobs/{ids[1]}")
        assert await browser.eval("document.querySelectorAll('script').length") == 0
        text = await browser.eval("document.body.innerText")
        assert EVIL in text  # in the argv, the label and the stdout-free table
        assert "done" in text and "local" in text and "Python" in text
        await browser.screenshot(shots / "job.png")

    for name in ("overview", "sites", "datasets", "job"):
        png = (shots / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 5000, name
