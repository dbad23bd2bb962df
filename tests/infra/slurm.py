"""A real single-node Slurm cluster on loopback, for integration tests.

:class:`SlurmCluster` starts its own ``munged`` (own key and socket), ``slurmctld`` and
``slurmd`` from the Debian packages (``tests/infra/install_slurm.sh``), each with a private
state directory under ``/tmp`` and private ports, so several clusters (and other tests) can
run at once. Everything listens on 127.0.0.1 only.

The cluster has one node, ``localhost``, with the CPU layout ``slurmd -C`` reports, and two
partitions: ``debug`` (the default, no time limit) and ``short`` (at most one minute, with
partition limits enforced at submission). Commands reach it through :attr:`SlurmCluster.env`
(``SLURM_CONF`` set)::

    with SlurmCluster() as cluster:
        subprocess.run(["sinfo"], env={**os.environ, **cluster.env}, check=True, timeout=10)

The session-scoped pytest fixture :func:`slurm_cluster` yields a started cluster. Make it
visible to a test module with ``slurm_cluster = tests.infra.slurm.slurm_cluster`` (or import
it in a conftest.py). It skips when not root
or when Slurm is not installed -- except when the ``CI`` environment variable is set, where a
missing Slurm fails the tests instead of hiding them.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

import pytest

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENT_COMMANDS = ("sbatch", "squeue", "scancel", "sinfo", "scontrol")
#: Debian packages that provide the daemons and commands (see install_slurm.sh).
PACKAGES = "slurmctld slurmd slurm-client munge"
NODE = "localhost"
DEFAULT_PARTITION = "debug"
SHORT_PARTITION = "short"  # MaxTime=1 minute
#: Upper bound on the node's RealMemory (MB): jobs are scheduled against it, never enforced.
MAX_REAL_MEMORY_MB = 8192

_CMD_TIMEOUT_S = 15.0
_PR_SET_PDEATHSIG = 1


def missing_binaries() -> list[str]:
    """The Slurm and munge programs that are not on PATH."""
    return [name for name in (*DAEMONS, *CLIENT_COMMANDS) if shutil.which(name) is None]


def _die_with_parent() -> None:
    """In a daemon, before exec: SIGKILL when the test process dies, so no daemon outlives it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _node_layout() -> dict[str, int]:
    """CPU layout and memory of this host as ``slurmd -C`` reports it."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=_CMD_TIMEOUT_S, check=True).stdout
    layout: dict[str, int] = {}
    for key in ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory"):
        m = re.search(rf"\b{key}=(\d+)", out)
        if m:
            layout[key] = int(m.group(1))
    if "CPUs" not in layout:
        raise RuntimeError(f"`slurmd -C` printed no CPU count: {out!r}")
    layout["RealMemory"] = max(256, min(layout.get("RealMemory", 1024), MAX_REAL_MEMORY_MB))
    return layout


class SlurmCluster:
    """One private Slurm cluster (munged + slurmctld + slurmd) on 127.0.0.1.

    The constructor only chooses paths; :meth:`start` starts the daemons and returns once
    the node is idle; :meth:`stop` cancels every job, stops the daemons and removes the
    state directory. Use it as a context manager to get both.
    """

    def __init__(self, parent_dir: str | os.PathLike[str] = "/tmp", *, keep_dir: bool = False) -> None:
        self._parent_dir = Path(parent_dir)
        self._keep_dir = keep_dir
        self.base_dir = Path()
        self.conf_path = ""
        self.ctld_port = 0
        self.slurmd_port = 0
        self.user = pwd.getpwuid(os.geteuid()).pw_name
        self.startup_s: float | None = None
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._started = False

    # ------------------------------------------------------------------ paths and env

    @property
    def env(self) -> dict[str, str]:
        """Environment additions that point Slurm commands at this cluster."""
        return {"SLURM_CONF": self.conf_path}

    @property
    def munge_socket(self) -> str:
        return str(self.base_dir / "munge" / "munge.socket")

    def log_path(self, daemon: str) -> Path:
        """``<daemon>.log`` (the daemon's own log) or ``<daemon>.stdout.log`` (what it printed)."""
        return self.base_dir / "log" / f"{daemon}.log"

    def log_tail(self, daemon: str, lines: int = 20) -> str:
        try:
            text = self.log_path(daemon).read_text(errors="replace")
        except OSError:
            return f"(no {daemon} log)"
        return "\n".join(text.splitlines()[-lines:])

    def command_env(self) -> dict[str, str]:
        """The full environment for a subprocess that talks to this cluster."""
        return {**os.environ, **self.env}

    def run(self, argv: list[str], *, timeout_s: float = _CMD_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        """Run a Slurm command against this cluster (no check on the exit code)."""
        return subprocess.run(argv, capture_output=True, text=True, env=self.command_env(), timeout=timeout_s)

    # ------------------------------------------------------------------ lifecycle

    def start(self, *, timeout_s: float = 30.0, attempts: int = 3) -> None:
        """Start the daemons and wait until the node is idle.

        The ports are chosen free just before the daemons bind them; should another process
        take one in between, the daemon exits and the start is tried again with new ports.
        """
        if self._started:
            return
        missing = missing_binaries()
        if missing:
            raise RuntimeError(
                f"Slurm is not installed (missing {', '.join(missing)}); run tests/infra/install_slurm.sh as root."
            )
        began = time.monotonic()
        for attempt in range(1, attempts + 1):
            self._started = True
            atexit.register(self.stop)
            try:
                self._start_once(timeout_s)
            except _DaemonExited:
                self.stop()
                if attempt == attempts:
                    raise
                continue
            except BaseException:
                self.stop()
                raise
            break
        self.startup_s = time.monotonic() - began

    def _start_once(self, timeout_s: float) -> None:
        self._make_dirs()
        self._write_munge_key()
        self._write_conf()
        self._spawn("munged", self._munged_argv())
        self._wait_for(lambda: self._check_alive() and os.path.exists(self.munge_socket), "munged", timeout_s)
        self._spawn("slurmctld", ["slurmctld", "-D", "-f", self.conf_path])
        self._spawn("slurmd", ["slurmd", "-D", "-f", self.conf_path, "-N", NODE])
        self._wait_for(self._node_idle, f"node {NODE} to become idle", timeout_s)

    def stop(self) -> None:
        """Cancel all jobs, stop the daemons (process groups) and clean up. Safe to call twice."""
        if not self._started:
            return
        self._started = False
        atexit.unregister(self.stop)
        if self._alive("slurmctld"):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                self._cancel_all_jobs()
        for name in reversed(DAEMONS):
            self._terminate(name)
        self._kill_job_leftovers()
        if not self._keep_dir and self.base_dir != Path():
            shutil.rmtree(self.base_dir, ignore_errors=True)
        self._procs.clear()

    def __enter__(self) -> SlurmCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ start helpers

    def _make_dirs(self) -> None:
        # munged needs every directory above its socket to be world-executable, and slurmd's
        # spool dir must be 0755 for jobs of other users: not under pytest's 0700 tmp_path.
        self.base_dir = Path(tempfile.mkdtemp(prefix="glidein-slurm-", dir=self._parent_dir))
        os.chmod(self.base_dir, 0o755)
        for sub in ("munge", "log", "state", "spool", "etc"):
            (self.base_dir / sub).mkdir(mode=0o755, exist_ok=True)
            os.chmod(self.base_dir / sub, 0o755)
        self.conf_path = str(self.base_dir / "etc" / "slurm.conf")

    def _write_munge_key(self) -> None:
        key = self.base_dir / "munge" / "munge.key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "wb") as fh:
            fh.write(os.urandom(1024))

    def _munged_argv(self) -> list[str]:
        d = self.base_dir / "munge"
        return [
            "munged",
            "--foreground",
            f"--socket={self.munge_socket}",
            f"--key-file={d / 'munge.key'}",
            f"--pid-file={d / 'munged.pid'}",
            f"--seed-file={d / 'munged.seed'}",
            f"--log-file={self.log_path('munged')}",
        ]

    def conf_text(self) -> str:
        layout = _node_layout()
        node_keys = " ".join(
            f"{k}={layout[k]}"
            for k in ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory")
            if k in layout
        )
        b = self.base_dir
        lines = [
            f"ClusterName=glidein{self.ctld_port}",
            "SlurmctldHost=localhost(127.0.0.1)",
            f"SlurmctldPort={self.ctld_port}",
            f"SlurmdPort={self.slurmd_port}",
            f"SlurmUser={self.user}",
            f"SlurmdUser={self.user}",
            "CommunicationParameters=NoCtldInAddrAny,NoInAddrAny",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={b / 'state'}",
            f"SlurmdSpoolDir={b / 'spool'}",
            f"SlurmctldPidFile={b / 'state' / 'slurmctld.pid'}",
            f"SlurmdPidFile={b / 'spool' / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.log_path('slurmctld')}",
            f"SlurmdLogFile={self.log_path('slurmd')}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/filetxt",
            f"JobCompLoc={b / 'log' / 'jobcomp.txt'}",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "DefMemPerCPU=256",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=batch_sched_delay=0",
            "EnforcePartLimits=ALL",
            "MpiDefault=none",
            "MailProg=/bin/true",
            "ReturnToService=2",
            "KillWait=5",
            "MinJobAge=300",
            "InactiveLimit=0",
            "OverTimeLimit=0",
            "Waittime=0",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=30",
            f"NodeName={NODE} NodeAddr=127.0.0.1 {node_keys} State=UNKNOWN",
            f"PartitionName={DEFAULT_PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP",
            f"PartitionName={SHORT_PARTITION} Nodes={NODE} Default=NO MaxTime=1 State=UP",
        ]
        return "\n".join(lines) + "\n"

    def _write_conf(self) -> None:
        self.ctld_port = _free_port()
        self.slurmd_port = _free_port()
        while self.slurmd_port == self.ctld_port:
            self.slurmd_port = _free_port()
        Path(self.conf_path).write_text(self.conf_text())
        os.chmod(self.conf_path, 0o644)

    def _spawn(self, name: str, argv: list[str]) -> None:
        with open(self.log_path(f"{name}.stdout"), "wb") as out:
            self._procs[name] = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.command_env(),
                start_new_session=True,  # own process group: stop() kills the whole group
                # PDEATHSIG is per creating thread: only safe to ask for from the main thread.
                preexec_fn=_die_with_parent if threading.current_thread() is threading.main_thread() else None,
            )

    def _alive(self, name: str) -> bool:
        proc = self._procs.get(name)
        return proc is not None and proc.poll() is None

    def _check_alive(self) -> bool:
        for name in DAEMONS:
            proc = self._procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise _DaemonExited(
                    f"{name} exited with code {proc.returncode} while the test cluster started:\n"
                    f"{self.log_tail(name)}\n{self.log_tail(name + '.stdout')}"
                )
        return True

    def _node_idle(self) -> bool:
        self._check_alive()
        try:
            res = self.run(["sinfo", "--noheader", f"--nodes={NODE}", "--format=%t"], timeout_s=5)
        except subprocess.TimeoutExpired:
            return False
        return res.returncode == 0 and res.stdout.strip() == "idle"

    def _wait_for(self, ready: Callable[[], bool], what: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {d}:\n{self.log_tail(d)}" for d in DAEMONS)
                raise RuntimeError(f"Timed out after {timeout_s:.0f} s waiting for {what}.\n{logs}")
            time.sleep(0.1)

    # ------------------------------------------------------------------ stop helpers

    def _cancel_all_jobs(self) -> None:
        res = self.run(["squeue", "--noheader", "--states=active", "--format=%A"], timeout_s=5)
        ids = res.stdout.split()
        if not ids:
            return
        self.run(["scancel", *ids], timeout_s=5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            res = self.run(["squeue", "--noheader", "--states=active", "--format=%A"], timeout_s=5)
            if res.returncode != 0 or not res.stdout.strip():
                return
            time.sleep(0.2)

    def _terminate(self, name: str) -> None:
        proc = self._procs.pop(name, None)
        if proc is None:
            return
        for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=wait_s)
        # Children that left the group (a daemon's helpers) go with their group too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)

    def _kill_job_leftovers(self) -> None:
        """Kill slurmstepd and job processes of this cluster that outlived slurmd."""
        marker = f"SLURM_CONF={self.conf_path}".encode()
        me = os.getpid()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if marker in environ.split(b"\0"):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(entry.name), signal.SIGKILL)


class _DaemonExited(RuntimeError):
    """A daemon ended while the cluster started (e.g. its port was taken meanwhile)."""


def _skip_reason() -> str | None:
    """Why the real-Slurm tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "real-Slurm tests need root (the fixture starts munged, slurmctld and slurmd)"
    missing = missing_binaries()
    if missing:
        return f"Slurm is not installed (missing {', '.join(missing)}): run tests/infra/install_slurm.sh as root"
    return None


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A started single-node Slurm cluster for the whole test session."""
    reason = _skip_reason()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {reason}.", pytrace=False)
        pytest.skip(reason)
    cluster = SlurmCluster()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
