"""What this pilot may use: cores, memory, GPUs, scratch disk, and when it must be gone.

Detection is split in two: :func:`detect` gathers raw facts (environment, CPU affinity,
small files, the output of ``nvidia-smi`` and ``squeue``), and the pure :func:`resolve`
turns :class:`Facts` into :class:`Detected`; the parsers it uses live in
:mod:`.resource_parsers`.

Numbers given explicitly (by the site config or the command line) override what is
detected; that is how a site caps a pilot, or offers more slots than cores. Every
resource gets one note saying where its number came from.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from glidein_client.pilot.resource_parsers import (
    batch_id,
    batch_system,
    cgroup_memory_files,
    condor_gpu_ids,
    format_ids,
    needs_nvidia_smi,
    parse_cgroup_limit_mb,
    parse_classad,
    parse_int,
    parse_nvidia_smi,
    parse_squeue_end,
    parse_visible_devices,
    pbs_cpus,
    slurm_cpus,
    slurm_memory_mb,
)
from glidein_client.wire.errors import ConfigError

log = logging.getLogger(__name__)

COMMAND_TIMEOUT_S = 5.0
NVIDIA_SMI = ("nvidia-smi", "--query-gpu=index,uuid", "--format=csv,noheader")
_MB = 1024 * 1024


@dataclass(frozen=True)
class Detected:
    slots: int  # cpus to hand out
    core_ids: tuple[int, ...]  # physical cores this pilot may pin jobs to
    memory_mb: int
    gpu_ids: tuple[str, ...]
    disk_mb: int
    end_time: float | None  # epoch seconds when the pilot must be gone, if known
    batch_system: str  # "slurm" | "pbs" | "htcondor" | "local"
    batch_id: str
    notes: tuple[str, ...]  # one line per resource saying where its number came from


@dataclass(frozen=True)
class Facts:
    """Raw inputs of detection; ``None`` means not available (file absent, command missing)."""

    env: Mapping[str, str]
    affinity: tuple[int, ...]
    physical_mb: int
    disk_free_mb: int
    now: float
    pid: int = 0
    hostname: str = ""
    cgroup_mb: int | None = None
    machine_ad: str | None = None  # text of the file named by _CONDOR_MACHINE_AD
    job_ad: str | None = None  # text of the file named by _CONDOR_JOB_AD
    pbs_nodefile: str | None = None  # text of the file named by PBS_NODEFILE
    nvidia_smi: str | None = None  # output of NVIDIA_SMI
    squeue_end: str | None = None  # output of `squeue -h -j JOBID -o %e`


# --- pure combination -------------------------------------------------------------------------


def _check_override(name: str, value: int | None, minimum: int) -> None:
    if value is not None and value < minimum:
        raise ConfigError(
            f"The pilot was told to use {value} for {name}, which is less than {minimum}.",
            hint=f"Give {name} as {minimum} or more, or leave it out to use what is detected.",
            field=name,
        )


def resolve(
    facts: Facts,
    *,
    cpus: int | None = None,
    memory_mb: int | None = None,
    gpus: int | None = None,
    disk_mb: int | None = None,
    walltime_s: int | None = None,
    fallback_walltime_s: int | None = None,
) -> Detected:
    """Combine raw facts and explicit numbers into what the pilot offers."""
    for name, value, minimum in (
        ("cpus", cpus, 1),
        ("memory_mb", memory_mb, 1),
        ("gpus", gpus, 0),
        ("disk_mb", disk_mb, 0),
        ("walltime_s", walltime_s, 1),
    ):
        _check_override(name, value, minimum)
    env = facts.env
    system = batch_system(env)
    ad = parse_classad(facts.machine_ad) if facts.machine_ad is not None else {}
    notes: list[str] = []

    slots, core_ids, batch_cpus = _cores(facts, system, ad, cpus, notes)
    mem = _memory(facts, system, ad, batch_cpus or len(core_ids), memory_mb)
    notes.append(mem[1])
    gpu_ids = _gpus(facts, ad, gpus, notes)
    if disk_mb is not None:
        notes.append(f"disk: {disk_mb} MB as configured")
    else:
        notes.append(f"disk: {facts.disk_free_mb} MB free in scratch")
    end_time: float | None = None
    if walltime_s is not None:
        end_time = facts.now + walltime_s
        notes.append(f"end time: in {walltime_s} s, as configured")
    elif (end := parse_squeue_end(facts.squeue_end)) is not None:
        end_time = end
        notes.append(f"end time: in {max(0, end - facts.now):.0f} s, from squeue")
    elif fallback_walltime_s is not None:
        end_time = facts.now + fallback_walltime_s
        notes.append(f"end time: in {fallback_walltime_s} s, the site's pilot walltime (the batch system did not say)")
    else:
        notes.append("end time: unknown; give a walltime to stop taking jobs that cannot finish")
    return Detected(
        slots=slots,
        core_ids=core_ids,
        memory_mb=mem[0],
        gpu_ids=gpu_ids,
        disk_mb=disk_mb if disk_mb is not None else facts.disk_free_mb,
        end_time=end_time,
        batch_system=system,
        batch_id=batch_id(env, facts.job_ad, facts.pid),
        notes=tuple(notes),
    )


def _on_cores(core_ids: Sequence[int]) -> str:
    return f"{len(core_ids)} core{'s' if len(core_ids) != 1 else ''} ({format_ids(core_ids)})"


def _cores(
    facts: Facts, system: str, ad: Mapping[str, str], cpus: int | None, notes: list[str]
) -> tuple[int, tuple[int, ...], int | None]:
    allowed = tuple(sorted(facts.affinity)) or (0,)
    said: tuple[int, str] | None = None
    if system == "slurm":
        said = slurm_cpus(facts.env)
    elif system == "pbs":
        said = pbs_cpus(facts.env, facts.pbs_nodefile, facts.hostname)
    elif (n := parse_int(ad.get("cpus"))) is not None and n > 0:
        said = n, f"Cpus = {n} in the HTCondor machine ad"
    core_ids = allowed
    where = f"the CPU affinity of this process ({format_ids(allowed)})"
    if said is not None and said[0] < len(allowed):
        core_ids = allowed[: said[0]]
        where = f"{said[1]}, within the CPU affinity {format_ids(allowed)}"
    elif said is not None:
        where += f"; {said[1]}"
    batch_cpus = said[0] if said else None
    if cpus is None:
        notes.append(f"cpus: {len(core_ids)} on {_on_cores(core_ids)}, from {where}")
        return len(core_ids), core_ids, batch_cpus
    detected = f"detected {len(core_ids)} from {where}"
    if cpus <= len(core_ids):
        core_ids = core_ids[:cpus]
        notes.append(f"cpus: {cpus} as configured, on {_on_cores(core_ids)}; {detected}")
    else:
        notes.append(f"cpus: {cpus} as configured, oversubscribing {_on_cores(core_ids)}; {detected}")
    return cpus, core_ids, batch_cpus


def _memory(facts: Facts, system: str, ad: Mapping[str, str], cpus: int, memory_mb: int | None) -> tuple[int, str]:
    found: list[tuple[int, str]] = [(facts.physical_mb, "physical memory")]
    if facts.cgroup_mb is not None:
        found.append((facts.cgroup_mb, "the cgroup memory limit"))
    if system == "slurm" and (slurm := slurm_memory_mb(facts.env, cpus)) is not None:
        found.append(slurm)
    if (n := parse_int(ad.get("memory"))) is not None and n > 0:
        found.append((n, f"Memory = {n} in the HTCondor machine ad"))
    mb, where = min(found, key=lambda item: item[0])
    if memory_mb is not None:
        return memory_mb, f"memory: {memory_mb} MB as configured (detected {mb} MB from {where})"
    return mb, f"memory: {mb} MB from {where}"


def _detected_gpus(facts: Facts, ad: Mapping[str, str], explicit: bool) -> tuple[tuple[str, ...], str]:
    visible = parse_visible_devices(facts.env.get("CUDA_VISIBLE_DEVICES"))
    if visible is not None:
        return visible, f"CUDA_VISIBLE_DEVICES={facts.env['CUDA_VISIBLE_DEVICES']!r}"
    if ad.get("assignedgpus"):
        return condor_gpu_ids(ad["assignedgpus"]), "AssignedGPUs in the HTCondor machine ad"
    system = batch_system(facts.env)
    if system != "local" and not explicit:
        # nvidia-smi would also list GPUs of the node that the batch system gave to others
        return (), f"the {system} job was given none (no CUDA_VISIBLE_DEVICES)"
    if facts.nvidia_smi is not None:
        return parse_nvidia_smi(facts.nvidia_smi), "nvidia-smi"
    return (), "no CUDA_VISIBLE_DEVICES and no nvidia-smi"


def _gpus(facts: Facts, ad: Mapping[str, str], gpus: int | None, notes: list[str]) -> tuple[str, ...]:
    ids, where = _detected_gpus(facts, ad, explicit=gpus is not None)
    if gpus is None:
        notes.append(f"gpus: {len(ids)} ({','.join(ids)}) from {where}" if ids else f"gpus: none; {where}")
        return ids
    if gpus <= len(ids):
        notes.append(f"gpus: {gpus} as configured ({len(ids)} detected from {where})")
        return ids[:gpus]
    made_up = tuple(str(i) for i in range(gpus))
    notes.append(
        f"gpus: {gpus} as configured, but only {len(ids)} detected ({where}); offering ids {','.join(made_up)}"
    )
    return made_up


# --- gathering facts (I/O) --------------------------------------------------------------------


def _read_text(path: str | Path | None) -> str | None:
    if not path:
        return None
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return None


def _cgroup_limit_mb() -> int | None:
    own = _read_text("/proc/self/cgroup")
    if own is None:
        return None
    limits = []
    for path in cgroup_memory_files(own):
        text = _read_text(path)
        if text is not None and (mb := parse_cgroup_limit_mb(text)) is not None:
            limits.append(mb)
    return min(limits) if limits else None


def _disk_free_mb(scratch: Path) -> int:
    path = scratch.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free // _MB


@dataclass(frozen=True)
class _FileFacts:
    physical_mb: int
    cgroup_mb: int | None
    machine_ad: str | None
    job_ad: str | None
    pbs_nodefile: str | None
    disk_free_mb: int


def _gather_files(scratch: Path, env: Mapping[str, str], want_disk: bool) -> _FileFacts:
    return _FileFacts(
        physical_mb=int(psutil.virtual_memory().total) // _MB,
        cgroup_mb=_cgroup_limit_mb(),
        machine_ad=_read_text(env.get("_CONDOR_MACHINE_AD")),
        job_ad=_read_text(env.get("_CONDOR_JOB_AD")),
        pbs_nodefile=_read_text(env.get("PBS_NODEFILE")),
        disk_free_mb=_disk_free_mb(scratch) if want_disk else 0,
    )


async def run_text(
    argv: Sequence[str], *, env: Mapping[str, str] | None = None, timeout_s: float = COMMAND_TIMEOUT_S
) -> str | None:
    """Stdout of a command, or ``None`` if it is missing, fails or takes longer than ``timeout_s``."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=None if env is None else dict(env),
        )
    except OSError:
        return None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        log.warning("%s did not answer within %.0f s; going on without it", argv[0], timeout_s)
        return None
    return out.decode(errors="replace") if proc.returncode == 0 else None


async def _nothing() -> None:
    return None


async def detect(
    scratch: Path,
    *,
    cpus: int | None = None,
    memory_mb: int | None = None,
    gpus: int | None = None,
    disk_mb: int | None = None,
    walltime_s: int | None = None,
    fallback_walltime_s: int | None = None,
    env: Mapping[str, str] | None = None,
    now: float | None = None,
) -> Detected:
    """Detect what this pilot may use; explicit numbers override what is found."""
    env = dict(os.environ if env is None else env)
    now = time.time() if now is None else now
    affinity = tuple(sorted(os.sched_getaffinity(0)))
    files = await asyncio.to_thread(_gather_files, scratch, env, disk_mb is None)
    slurm_job = env.get("SLURM_JOB_ID")
    smi, squeue = await asyncio.gather(
        run_text(NVIDIA_SMI, env=env) if needs_nvidia_smi(env, files.machine_ad, gpus) else _nothing(),
        run_text(["squeue", "-h", "-j", slurm_job, "-o", "%e"], env=env)
        if slurm_job and walltime_s is None
        else _nothing(),
    )
    facts = Facts(
        env=env,
        affinity=affinity,
        now=now,
        pid=os.getpid(),
        hostname=socket.gethostname(),
        nvidia_smi=smi,
        squeue_end=squeue,
        physical_mb=files.physical_mb,
        disk_free_mb=files.disk_free_mb,
        cgroup_mb=files.cgroup_mb,
        machine_ad=files.machine_ad,
        job_ad=files.job_ad,
        pbs_nodefile=files.pbs_nodefile,
    )
    detected = resolve(
        facts,
        cpus=cpus,
        memory_mb=memory_mb,
        gpus=gpus,
        disk_mb=disk_mb,
        walltime_s=walltime_s,
        fallback_walltime_s=fallback_walltime_s,
    )
    for note in detected.notes:
        log.info("detected %s", note)
    return detected
