"""Linux network namespaces that model the worker nodes of a firewalled site, for tests.

:func:`netns_site` (a fixture) yields a factory: ``make("none")`` creates a worker namespace
with nothing but its own loopback -- no route anywhere; ``make("relay")`` adds a veth pair
whose root end (the root namespace plays the login node) and worker end get private test
addresses made here, ``10.250.N.1/30`` and ``10.250.N.2/30``: the worker's only route is that
link. Nothing is ever sent to any other address. The shared filesystem is the machine's own:
namespaces change the network, not the files.

Processes run in the worker namespace through ``ip netns exec NAME``; :class:`NetnsScheduler`
is the local scheduler with each pilot started that way. Teardown kills what still runs in
the namespace and deletes it (which deletes its veth); namespaces left by a crashed run of
this module (named after a process that no longer exists) are removed at the next start.

Needs root and iproute2. Without root and without ``CI`` the tests skip with one line; with
``CI`` set a missing piece fails them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from glidein_client.site.schedulers.base import PilotLaunch
from glidein_client.site.schedulers.local import LocalScheduler

PREFIX = "glns"
_CMD_TIMEOUT_S = 15.0
_counter = itertools.count(1)


def _ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["ip", "netns", "exec", netns, "ip", *args] if netns else ["ip", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=_CMD_TIMEOUT_S, check=check)


@dataclass(frozen=True)
class WorkerNamespace:
    """A worker node's network: ``name`` is the namespace; ``login_address`` the root end of its link (or None)."""

    name: str
    mode: str
    login_address: str | None = None
    worker_address: str | None = None
    veth: str | None = None

    def argv(self, *command: str) -> list[str]:
        """``command`` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *command]

    def connect(self, host: str, port: int, timeout_s: float = 2.0) -> str:
        """Try a TCP connection from inside the namespace: "ok", or the error it got."""
        code = (
            "import socket, sys\n"
            "s = socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)\n"
            f"s.settimeout({timeout_s})\n"
            "try:\n    s.connect((sys.argv[1], int(sys.argv[2])))\n    print('ok')\n"
            "except OSError as e:\n    print(type(e).__name__, e)\n"
        )
        proc = subprocess.run(
            self.argv(sys.executable, "-c", code, host, str(port)),
            capture_output=True,
            text=True,
            timeout=timeout_s + _CMD_TIMEOUT_S,
        )
        return (proc.stdout or proc.stderr).strip()

    def inode(self) -> int:
        """The namespace's inode, as ``readlink /proc/self/ns/net`` shows it inside."""
        return os.stat(f"/run/netns/{self.name}").st_ino

    def routes(self) -> str:
        return _ip("-o", "route", "show", "table", "all", netns=self.name).stdout


class NetnsScheduler(LocalScheduler):
    """The local scheduler, with every pilot started inside a worker namespace."""

    def __init__(self, *args: object, netns: str, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.netns = netns

    async def submit(self, launch: PilotLaunch) -> str:
        wrapped = ("ip", "netns", "exec", self.netns, *launch.pilot_argv)
        return await super().submit(dataclasses.replace(launch, pilot_argv=wrapped))


def _free_subnet() -> ipaddress.IPv4Network:
    used = _ip("-o", "-4", "addr", "show").stdout
    for n in range(256):
        net = ipaddress.IPv4Network(f"10.250.{(os.getpid() + n) % 256}.0/30")
        if f" {net.network_address + 1}/" not in used and f" {net.network_address + 2}/" not in used:
            return net
    raise RuntimeError("no free 10.250.x.0/30 test subnet")


def _create(mode: str) -> WorkerNamespace:
    name = f"{PREFIX}{os.getpid()}n{next(_counter)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=_CMD_TIMEOUT_S)
    try:
        _ip("link", "set", "lo", "up", netns=name)
        if mode == "none":
            return WorkerNamespace(name, mode)
        net = _free_subnet()
        login, worker = str(net.network_address + 1), str(net.network_address + 2)
        veth = f"glv{os.getpid() % 100000}{name[-2:]}"[:13]
        _ip("link", "add", f"{veth}a", "type", "veth", "peer", "name", f"{veth}b")
        _ip("link", "set", f"{veth}b", "netns", name)
        _ip("addr", "add", f"{login}/30", "dev", f"{veth}a")
        _ip("link", "set", f"{veth}a", "up")
        _ip("addr", "add", f"{worker}/30", "dev", f"{veth}b", netns=name)
        _ip("link", "set", f"{veth}b", "up", netns=name)
        return WorkerNamespace(name, mode, login, worker, veth)
    except BaseException:
        _delete(name)
        raise


def _delete(name: str, veth: str | None = None) -> None:
    pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, timeout=_CMD_TIMEOUT_S)
    for pid in pids.stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=_CMD_TIMEOUT_S)
    if veth:  # normally gone with the namespace
        subprocess.run(["ip", "link", "delete", f"{veth}a"], capture_output=True, timeout=_CMD_TIMEOUT_S)


def remove_leftovers() -> None:
    """Delete namespaces of this module whose creating process is gone."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=_CMD_TIMEOUT_S)
    for line in listing.stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        if not name.startswith(PREFIX) or "n" not in name[len(PREFIX) :]:
            continue
        pid = name[len(PREFIX) :].split("n")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not os.path.exists(f"/proc/{pid}"):
            _delete(name)


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "network-namespace tests need root (they create namespaces and veth pairs)"
    if shutil.which("ip") is None:
        return "iproute2 is not installed (no `ip` command): apt-get install iproute2"
    return None


@pytest.fixture
def netns_site() -> Iterator[Callable[[str], WorkerNamespace]]:
    """A factory of worker namespaces ("none" or "relay"), all deleted after the test."""
    reason = _skip_reason()
    if reason is not None:
        if os.environ.get("CI") or os.geteuid() == 0:
            pytest.fail(f"{reason}.", pytrace=False)
        pytest.skip(reason)
    remove_leftovers()
    made: list[WorkerNamespace] = []

    def make(mode: str) -> WorkerNamespace:
        if mode not in ("none", "relay"):
            raise ValueError(f"unknown worker network {mode!r}")
        ns = _create(mode)
        made.append(ns)
        return ns

    try:
        yield make
    finally:
        for ns in made:
            _delete(ns.name, ns.veth)
