"""Jobs are hostile: each attack a job can try on its pilot and on other users' jobs, tried for real.

A real server, real pilots started as an unprivileged Unix user created here (``gl-pilot-a``;
a second one, ``gl-pilot-b``, plays another local user), real bubblewrap. Each test runs the
attack as a job script and shows it refused, with isolation ``bwrap`` and, where the defence
does not depend on it, also with ``none``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from glidein_client.wire.api import ApiClient
from glidein_client.wire.schema import InputFile, JobSpec, JobState, Role

from ..conftest import LiveServer

USERS = ("gl-pilot-a", "gl-pilot-b")
FINAL = {JobState.DONE, JobState.FAILED, JobState.CANCELLED}

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="creates Unix users: run as root (CI does)"),
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed (.ci/run installs it)"),
]


def _ensure_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True, timeout=30)
        return pwd.getpwnam(name)


@contextlib.contextmanager
def _traversable(path: str) -> Iterator[None]:
    """Let every user pass through the directories above ``path`` (the pilot's Python may live
    under /root); their modes are restored afterwards."""
    changed: list[tuple[str, int]] = []
    for parent in Path(path).parents:
        mode = os.stat(parent).st_mode
        if not mode & stat.S_IXOTH:
            changed.append((str(parent), mode))
            os.chmod(parent, stat.S_IMODE(mode) | stat.S_IXOTH)
    try:
        yield
    finally:
        for parent, mode in reversed(changed):
            os.chmod(parent, stat.S_IMODE(mode))


@dataclass
class Site:
    """A worker node's view: a scratch directory and a pilot-meta directory owned by the pilot user."""

    root: Path
    user: pwd.struct_passwd
    other: pwd.struct_passwd

    def as_user(self, argv: list[str], user: pwd.struct_passwd | None = None) -> list[str]:
        who = user or self.user
        return ["setpriv", f"--reuid={who.pw_uid}", f"--regid={who.pw_gid}", "--clear-groups", *argv]

    def own(self, path: Path) -> None:
        os.chown(path, self.user.pw_uid, self.user.pw_gid)


@pytest.fixture
def site() -> Iterator[Site]:
    users = [_ensure_user(name) for name in USERS]
    root = Path(tempfile.mkdtemp(prefix="glidein-pilot-site-"))
    os.chmod(root, 0o755)
    try:
        with _traversable(os.path.realpath(sys.executable)), _traversable(sys.executable):
            yield Site(root, users[0], users[1])
    finally:
        subprocess.run(["pkill", "-KILL", "-u", users[0].pw_name], check=False, timeout=30)
        shutil.rmtree(root, ignore_errors=True)
        for name in USERS:
            subprocess.run(["userdel", name], check=False, capture_output=True, timeout=30)


@dataclass
class RunningPilot:
    proc: asyncio.subprocess.Process
    token: str
    token_file: Path
    scratch: Path
    log: Path


async def start_pilot(
    live: LiveServer, site: Site, isolation: str, *, idle_timeout_s: float = 4.0, cpus: int = 1, name: str = "p"
) -> RunningPilot:
    site_token = await live.token(Role.SITE, "local")
    async with live.api(site_token) as api:
        grant = await api.new_pilot("local")
    meta = site.root / "pilots-meta" / name
    meta.mkdir(parents=True)
    token_file = meta / "token"
    token_file.write_text(grant.token + "\n")
    token_file.chmod(0o600)
    for path in (site.root / "pilots-meta", meta, token_file):
        site.own(path)
    scratch = site.root / "scratch"
    scratch.mkdir(exist_ok=True)
    site.own(scratch)
    log = site.root / f"{name}.log"
    argv = [
        sys.executable,
        "-m",
        "glidein_client.pilot",
        "run",
        *("--server-url", live.url, "--token-file", str(token_file), "--site", "local"),
        *("--cpus", str(cpus), "--memory-mb", "2000", "--disk-mb", "1000", "--walltime-s", "300"),
        *("--idle-timeout-s", str(idle_timeout_s), "--scratch", str(scratch), "--isolation", isolation),
    ]
    out = open(log, "wb")  # noqa: ASYNC230 - handed to the child
    proc = await asyncio.create_subprocess_exec(
        *site.as_user(argv),
        stdout=out,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
        cwd=site.root,
        env={**os.environ, "HOME": str(site.root)},
    )
    out.close()
    live.pilots.append(proc)
    return RunningPilot(proc, grant.token, token_file, scratch, log)


@pytest.fixture
async def alice(live_server: LiveServer) -> AsyncIterator[ApiClient]:
    async with live_server.api(await live_server.token(Role.USER, "alice")) as api:
        yield api


async def finished(api: ApiClient, ids: list[int], timeout_s: float = 60.0) -> dict[int, JobState]:
    deadline = time.monotonic() + timeout_s
    while True:
        states = {j.id: j.state for j in (await api.list_jobs(ids=ids, limit=len(ids))).jobs}
        if all(s in FINAL for s in states.values()):
            return states
        assert time.monotonic() < deadline, f"jobs not finished in time: {states}"
        await asyncio.sleep(0.2)


def script_job(script: str, **spec: object) -> JobSpec:
    fields: dict[str, object] = {"cpus": 1, "memory_mb": 500, "walltime_s": 60, "max_retries": 0, **spec}
    return JobSpec(script="#!/bin/sh\n" + script, **fields)  # type: ignore[arg-type]


def processes_with(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found


# --- 1. a job acting as its pilot ---------------------------------------------------------------

STEAL = r"""
# Every --token-file named on any command line this job can see, and the files themselves.
for f in /proc/[0-9]*/cmdline; do
    tr '\0' '\n' < "$f" 2>/dev/null | grep -A1 -- '--token-file' | tail -n 1
done > paths.txt
echo "$OTHER_TOKEN" >> paths.txt
while read -r p; do cat "$p"; done < paths.txt > stolen.txt 2>/dev/null
# The pilot's memory and environment, through /proc.
for pid in $(grep -l 'glidein_client[.]pilot' /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3); do
    if cat "/proc/$pid/environ" >> stolen.txt 2>/dev/null; then echo "environ of $pid readable" >> report.txt; fi
    if head -c 1 "/proc/$pid/mem" >/dev/null 2>&1; then echo "mem of $pid readable" >> report.txt; fi
    ls "/proc/$pid/fd" >/dev/null 2>&1 && echo "fds of $pid listed" >> report.txt
done
echo "pilot processes seen: $(grep -l 'glidein_client[.]pilot' /proc/[0-9]*/cmdline 2>/dev/null | wc -l)" >> report.txt
# An output that is a link to the token: never uploaded.
ln -s "$(head -n 1 paths.txt)" link.txt
"""


@pytest.mark.parametrize("isolation", ["bwrap", "none"])
async def test_a_job_cannot_get_its_pilots_token(
    live_server: LiveServer, site: Site, alice: ApiClient, isolation: str
) -> None:
    # Another pilot of this site, still queued: its token waits on disk for it.
    other = site.root / "pilots-meta" / "queued" / "token"
    other.parent.mkdir(parents=True)
    other.write_text("queued-pilot-secret\n")
    other.chmod(0o600)
    for path in (other.parent, other):
        site.own(path)
    pilot = await start_pilot(live_server, site, isolation)
    spec = script_job(STEAL, env={"OTHER_TOKEN": str(other)}, outputs=["stolen.txt", "report.txt"])
    link = script_job(STEAL, env={"OTHER_TOKEN": str(other)}, outputs=["link.txt"])
    ids = await alice.submit([spec, link])
    states = await finished(alice, ids)
    logs = pilot.log.read_text()
    assert states[ids[0]] is JobState.DONE, logs
    assert not pilot.token_file.exists(), "the pilot left its token on disk"
    stolen = (await alice.fetch_output(ids[0], "stolen.txt")).decode(errors="replace")
    report = (await alice.fetch_output(ids[0], "report.txt")).decode()
    assert pilot.token not in stolen
    assert "environ of" not in report and "mem of" not in report and "fds of" not in report, report
    if isolation == "bwrap":
        assert "queued-pilot-secret" not in stolen  # other pilots' directories are not in the sandbox
        assert "pilot processes seen: 0" in report  # nor is any process but the job's own
    else:
        assert "pilot processes seen: 0" not in report  # visible, yet its memory and environment are not
    # The link is refused, not followed.
    assert states[ids[1]] is JobState.FAILED
    job = await alice.get_job(ids[1])
    assert not job.outputs
    reasons = [a.reason or "" for a in await alice.attempts(ids[1])]
    assert any("link.txt is a symbolic link" in r for r in reasons), reasons
    assert f"isolates its jobs with {isolation}" in logs


# --- 3. processes that outlive their job --------------------------------------------------------

ESCAPE = """
# Double fork into sessions of their own; one ignores SIGTERM.
setsid -f sleep {marker}1
( setsid sh -c 'trap "" TERM; exec sleep {marker}2' & )
sh -c 'setsid -f sleep {marker}3; exit 0'
sleep 0.3
{tail}
"""


@pytest.mark.parametrize("isolation", ["bwrap", "none"])
@pytest.mark.parametrize("end", ["exit", "walltime"])
async def test_nothing_a_job_started_survives_it(
    live_server: LiveServer, site: Site, alice: ApiClient, isolation: str, end: str
) -> None:
    marker = f"{4000 + os.getpid() % 1000}.{len(isolation)}{len(end)}"
    tail = "exit 0" if end == "exit" else "sleep 100"
    pilot = await start_pilot(live_server, site, isolation, idle_timeout_s=30)
    [job_id] = await alice.submit([script_job(ESCAPE.format(marker=marker, tail=tail), walltime_s=3)])
    await finished(alice, [job_id], timeout_s=60)
    assert (await alice.get_job(job_id)).state is (JobState.DONE if end == "exit" else JobState.FAILED)
    await asyncio.sleep(1.0)
    survivors = processes_with(f"sleep {marker}")
    assert survivors == [], f"still running after the job ended: {survivors}\n{pilot.log.read_text()}"
    assert pilot.proc.returncode is None  # the pilot itself carries on


# --- memory that cannot be escaped --------------------------------------------------------------


@pytest.mark.parametrize("isolation", ["bwrap", "none"])
async def test_a_short_peak_over_the_request_is_over_memory(
    live_server: LiveServer, site: Site, alice: ApiClient, isolation: str
) -> None:
    await start_pilot(live_server, site, isolation)
    touch = f"{sys.executable} -c \"x = b'1' * (300 << 20)\"\n"  # 300 MB for a moment, well under a second
    ids = await alice.submit([script_job(touch, memory_mb=100), script_job(touch, memory_mb=600)])
    await finished(alice, ids)
    over = await alice.attempts(ids[0])  # the first attempt; a retry at the measured peak may follow
    assert over[0].outcome == "memory", over
    assert "more than its 100 MB" in (over[0].reason or "")
    assert (await alice.get_job(ids[1])).state is JobState.DONE


# --- 4. an input changed for the next user ------------------------------------------------------

POISON = """
cat in.txt > first.txt
echo POISONED > in.txt
for f in "$GLIDEIN_SANDBOX"/../cache/*; do chmod u+w "$f" 2>/dev/null; echo POISONED > "$f" 2>/dev/null; done
"""


@pytest.mark.parametrize("isolation", ["bwrap", "none"])
async def test_a_job_cannot_change_the_next_jobs_input(
    live_server: LiveServer, site: Site, alice: ApiClient, isolation: str, tmp_path: Path
) -> None:
    data = tmp_path / "data.txt"
    data.write_text("the real data\n")
    up = await alice.upload_file(data)
    inp = InputFile(name="in.txt", sha256=up.sha256, size=up.size)
    await start_pilot(live_server, site, isolation, idle_timeout_s=10)
    [first] = await alice.submit([script_job(POISON, inputs=[inp], outputs=["first.txt"])])
    await finished(alice, [first])
    async with live_server.api(await live_server.token(Role.USER, "bob")) as bob:
        bob_data = tmp_path / "bob.txt"
        bob_data.write_text("the real data\n")
        assert (await bob.upload_file(bob_data)).sha256 == up.sha256
        [second] = await bob.submit([script_job("cat in.txt > seen.txt\n", inputs=[inp], outputs=["seen.txt"])])
        assert (await finished(bob, [second]))[second] is JobState.DONE
        seen = await bob.fetch_output(second, "seen.txt")
    assert seen == b"the real data\n"
    assert hashlib.sha256(seen).hexdigest() == up.sha256


# --- 7. files readable by other local users -----------------------------------------------------


async def test_sandboxes_and_cache_are_the_pilot_users_only(
    live_server: LiveServer, site: Site, alice: ApiClient, tmp_path: Path
) -> None:
    data = tmp_path / "data.txt"
    data.write_text("private data\n")
    up = await alice.upload_file(data)
    inp = InputFile(name="in.txt", sha256=up.sha256, size=up.size)
    pilot = await start_pilot(live_server, site, "none", idle_timeout_s=10)
    [job_id] = await alice.submit([script_job("touch out.txt; sleep 5\n", inputs=[inp])])
    deadline = time.monotonic() + 30
    sandboxes: list[Path] = []
    while not sandboxes:
        assert time.monotonic() < deadline, pilot.log.read_text()
        await asyncio.sleep(0.2)
        sandboxes = [p for p in pilot.scratch.glob("pilot-*/job-*") if (p / "out.txt").exists()]
    workdir = sandboxes[0].parent
    for path in (workdir, workdir / "cache", sandboxes[0]):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    for path in (sandboxes[0] / "in.txt", sandboxes[0] / "out.txt", next((workdir / "cache").iterdir())):
        assert path.stat().st_mode & 0o077 == 0, path
    # Another local user tries to read them.
    for path in (sandboxes[0] / "in.txt", next((workdir / "cache").iterdir())):
        code, err = await run_as(site, site.other, ["cat", str(path)])
        assert code != 0 and b"Permission denied" in err
    code, err = await run_as(site, site.other, ["ls", str(workdir)])
    assert code != 0 and b"Permission denied" in err


async def run_as(site: Site, user: pwd.struct_passwd, argv: list[str]) -> tuple[int, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *site.as_user(argv, user), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, err
