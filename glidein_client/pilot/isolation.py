"""How a job is kept from its pilot and from the other jobs: ``none``, ``bwrap`` or ``apptainer``.

A site chooses with ``[pilot] isolation``; by default the pilot takes the strongest that works on
its node, and says which in its log.

- ``bwrap`` (bubblewrap): the job runs in new PID, IPC and UTS namespaces and a mount namespace
  that holds only read-only system directories (``/usr`` and the merged ``/bin``, ``/lib``…, a
  short list of ``/etc`` files as one copy the pilot keeps (:mod:`~glidein_client.pilot.etc_view`),
  ``/opt``, ``/cvmfs``, the Python the pilot runs on), its own
  ``/proc``, a minimal ``/dev``, an empty ``/tmp``, and its sandbox (read-write, at the same
  path). Neither the pilot's directories (its token, its cache, its logs) nor other sandboxes
  nor home directories exist in there, and it sees no process but its own. Its first process
  is the namespace's init: when it ends, the kernel ends every other process of the job.
- ``apptainer``: the job runs in the site's image through Apptainer's documented command line
  (``apptainer exec --contain --ipc --pid --bind SANDBOX --pwd SANDBOX IMAGE …``).
- ``none``: the job runs as the pilot's user with the pilot's view of the filesystem. Only for
  sites that trust every user whose jobs may land there.
"""

from __future__ import annotations

import asyncio
import glob
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from typing import Protocol

from glidein_client.pilot.etc_view import EtcView
from glidein_client.pilot.launch import JobRun
from glidein_client.wire.errors import ConfigError

log = logging.getLogger(__name__)

ISOLATIONS = ("none", "bwrap", "apptainer")
PROBE_TIMEOUT_S = 10.0
#: System directories a job may read; merged-/usr links among them are recreated as links.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt", "/cvmfs")
#: The files of /etc a program commonly needs. Not all of /etc: a site may keep secrets there.
ETC_ENTRIES = (
    "alternatives",
    "ca-certificates",
    "ca-certificates.conf",
    "crypto-policies",
    "debian_version",
    "gai.conf",
    "group",
    "host.conf",
    "hostname",
    "hosts",
    "inputrc",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "mime.types",
    "nsswitch.conf",
    "os-release",
    "passwd",
    "pki",
    "profile",
    "protocols",
    "resolv.conf",
    "services",
    "ssl",
    "timezone",
)


class Isolation(Protocol):
    @property
    def name(self) -> str: ...

    def argv(self, command: list[str], run: JobRun) -> list[str]:
        """The command line that runs ``command`` isolated as this isolation says."""
        ...

    def describe(self) -> str: ...

    def close(self) -> None:
        """Remove what the isolation keeps on disk, once no job runs any more."""
        ...


@dataclass(frozen=True)
class NoIsolation:
    name: str = "none"

    def argv(self, command: list[str], run: JobRun) -> list[str]:
        return command

    def close(self) -> None:
        return None

    def describe(self) -> str:
        return "none: jobs run as the pilot's user and can read whatever it can read"


@dataclass(frozen=True)
class Bubblewrap:
    bwrap: str  # absolute path of the bwrap program
    mounts: tuple[tuple[str, str, str], ...]  # (bwrap option, source, destination) for the system view
    etc: EtcView | None = None  # the job's /etc as one copy (else /etc files are among ``mounts``)
    name: str = "bwrap"

    def argv(self, command: list[str], run: JobRun) -> list[str]:
        return self.command(command, os.fspath(run.sandbox), gpus=bool(run.gpus))

    def command(self, command: list[str], sandbox: str, *, gpus: bool) -> list[str]:
        out = [
            self.bwrap,
            "--die-with-parent",
            "--new-session",
            "--unshare-pid",
            "--as-pid-1",  # no init of bwrap's own: bwrap then collects the job, and its peak memory with it
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
        ]
        # A fresh /tmp first, so that a system path below /tmp (a Python in /tmp/venv) is mounted over it, not hidden.
        out += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
        for option, src, dest in self.mounts:
            out += [option, src, dest]
        if self.etc is not None:
            out += ["--ro-bind", self.etc.path(), "/etc"]
        out += ["--dir", "/var/tmp"]
        if gpus:
            for node in _gpu_devices():
                out += ["--dev-bind", node, node]
        out += ["--bind", sandbox, sandbox, "--chdir", sandbox, "--setenv", "HOME", sandbox, "--", *command]
        return out

    def describe(self) -> str:
        return (
            f"bwrap ({self.bwrap}): each job sees its own sandbox, read-only system directories and its "
            "inputs; not the pilot's files, other sandboxes or other processes"
        )

    def close(self) -> None:
        if self.etc is not None:
            self.etc.close()


@dataclass(frozen=True)
class Apptainer:
    apptainer: str  # absolute path of the apptainer program
    image: str
    name: str = "apptainer"

    def argv(self, command: list[str], run: JobRun) -> list[str]:
        sandbox = os.fspath(run.sandbox)
        out = [self.apptainer, "exec", "--contain", "--ipc", "--pid", "--home", sandbox]
        out += ["--bind", sandbox, "--pwd", sandbox]
        if run.gpus:
            out.append("--nv")
        return [*out, self.image, *command]

    def close(self) -> None:
        return None

    def describe(self) -> str:
        return f"apptainer ({self.apptainer}, image {self.image}): each job sees its sandbox inside the image"


def _gpu_devices() -> list[str]:
    return sorted(glob.glob("/dev/nvidia*")) + sorted(glob.glob("/dev/dri/*"))


def system_mounts(extra: tuple[str, ...] = (), *, etc: bool = True) -> tuple[tuple[str, str, str], ...]:
    """The read-only view of the system this node offers a job: links kept as links, absent ones left
    out; without ``etc``, none of /etc (an :class:`EtcView` gives it)."""
    mounts: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    pythons = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    etc_files = (os.path.join("/etc", e) for e in ETC_ENTRIES) if etc else ()
    for path in (*SYSTEM_DIRS, *etc_files, *sorted(pythons), *extra):
        if path in seen or any(path.startswith(done + "/") for done in seen if done != "/etc"):
            continue
        seen.add(path)
        if os.path.islink(path) and path in SYSTEM_DIRS:
            mounts.append(("--symlink", os.readlink(path), path))
        elif os.path.exists(path):
            mounts.append(("--ro-bind", path, path))
    return tuple(mounts)


async def _probe(argv: list[str]) -> str | None:
    """None when ``argv`` runs and exits 0; else what went wrong, in its own words."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
    except OSError as exc:
        return exc.strerror or str(exc)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), PROBE_TIMEOUT_S)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return f"it did not finish within {PROBE_TIMEOUT_S:.0f} s"
    return None if proc.returncode == 0 else (err.decode(errors="replace").strip() or f"exit code {proc.returncode}")


async def bubblewrap(workdir: str | None = None) -> Bubblewrap | str:
    """Bubblewrap as it works on this node, or why it does not. Its copy of /etc goes into a private
    directory below ``workdir`` (the pilot's scratch; by default the system's temporary directory)."""
    path = shutil.which("bwrap")
    if path is None:
        return "bwrap is not installed (Debian/Ubuntu: apt-get install bubblewrap; RHEL: dnf install bubblewrap)"
    etc = EtcView(ETC_ENTRIES, tempfile.mkdtemp(prefix="glidein-etc-", dir=workdir))
    await asyncio.to_thread(etc.path)  # the first copy
    box = Bubblewrap(bwrap=path, mounts=system_mounts(etc=False), etc=etc)
    with tempfile.TemporaryDirectory(prefix="glidein-bwrap-probe-") as sandbox:
        failure = await _probe(box.command(["true"], sandbox, gpus=False))
    if failure is not None:
        etc.close()
        return (
            f"bwrap cannot make a sandbox here ({failure}); unprivileged user namespaces may be off "
            "(sysctl kernel.unprivileged_userns_clone=1 or user.max_user_namespaces > 0)"
        )
    return box


async def choose_isolation(
    setting: str, *, apptainer_image: str | None = None, workdir: str | None = None
) -> Isolation:
    """The isolation named by ``setting`` (``auto``: the strongest that works here), or a ConfigError.
    What it keeps on disk goes below ``workdir``; :meth:`Isolation.close` removes it."""
    if setting not in ("auto", *ISOLATIONS):
        raise ConfigError(f"Unknown isolation {setting!r}.", hint=f"Use one of auto, {', '.join(ISOLATIONS)}.")
    chosen: Isolation
    if setting == "none":
        chosen = NoIsolation()
    elif setting == "apptainer" or (setting == "auto" and apptainer_image and not shutil.which("bwrap")):
        chosen = _apptainer(apptainer_image)
    else:
        found = await bubblewrap(workdir)
        if isinstance(found, str):
            if setting == "bwrap":
                raise ConfigError(
                    f'isolation = "bwrap" was asked for, but {found}.',
                    hint='Fix that on the worker nodes, or set [pilot] isolation = "none" in the site config.',
                )
            log.warning("no isolation available (%s): jobs run as the pilot's user", found)
            chosen = NoIsolation()
        else:
            chosen = found
    log.info("isolation: %s", chosen.describe())
    return chosen


def _apptainer(image: str | None) -> Apptainer:
    path = shutil.which("apptainer") or shutil.which("singularity")
    if path is None:
        raise ConfigError(
            'isolation = "apptainer" was asked for, but apptainer is not installed on this node.',
            hint='Install Apptainer on the worker nodes, or choose isolation = "bwrap" or "none".',
        )
    if not image:
        raise ConfigError(
            'isolation = "apptainer" needs an image to run jobs in.',
            hint="Set [pilot] apptainer_image in the site config (a .sif file or a directory on /cvmfs).",
        )
    return Apptainer(apptainer=path, image=image)
