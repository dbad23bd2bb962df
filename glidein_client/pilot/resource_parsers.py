"""What batch systems and tools say about a pilot's resources, read by plain functions over text.

Each parser takes the text of an environment variable, a small file or a command's output and
returns numbers or ids; none does I/O, so each is tested on the exact text the tool prints.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
_NO_GPUS = frozenset({"", "-1", "none", "nodevfiles", "void"})
_MB = 1024 * 1024


def parse_int(text: str | None) -> int | None:
    if text is None:
        return None
    text = text.strip()
    return int(text) if text.isdigit() else None


def expand_slurm_counts(text: str) -> list[int]:
    """Expand Slurm's per-node counts: ``"4(x2),2"`` -> ``[4, 4, 2]``; ``[]`` if unreadable."""
    out: list[int] = []
    for part in text.strip().split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:\(x(\d+)\))?\s*", part)
        if not m:
            return []
        out.extend([int(m.group(1))] * int(m.group(2) or 1))
    return out


def slurm_cpus(env: Mapping[str, str]) -> tuple[int, str] | None:
    """Cpus Slurm gave this job on this node, and the variable that said so."""
    n = parse_int(env.get("SLURM_CPUS_ON_NODE"))
    if n:
        return n, f"SLURM_CPUS_ON_NODE={n}"
    raw = env.get("SLURM_JOB_CPUS_PER_NODE")
    if raw:
        counts = expand_slurm_counts(raw)
        node = parse_int(env.get("SLURM_NODEID")) or 0
        if counts:
            n = counts[node] if node < len(counts) else counts[0]
            return n, f"SLURM_JOB_CPUS_PER_NODE={raw}"
    n = parse_int(env.get("SLURM_CPUS_PER_TASK"))
    if n:
        return n, f"SLURM_CPUS_PER_TASK={n}"
    return None


def pbs_cpus(env: Mapping[str, str], nodefile: str | None, hostname: str) -> tuple[int, str] | None:
    """Cpus PBS gave this job on this host: NCPUS, PBS_NUM_PPN, or this host's lines in PBS_NODEFILE."""
    for var in ("NCPUS", "PBS_NUM_PPN"):
        n = parse_int(env.get(var))
        if n:
            return n, f"{var}={n}"
    if nodefile is not None and hostname:
        short = hostname.split(".")[0]
        n = sum(1 for line in nodefile.splitlines() if line.strip() and line.strip().split(".")[0] == short)
        if n:
            return n, f"{n} lines for {short} in PBS_NODEFILE"
    return None


def parse_classad(text: str) -> dict[str, str]:
    """``Key = value`` lines of an HTCondor ad; keys lower-cased, string values unquoted."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", key):
            continue
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        out[key.lower()] = value
    return out


def condor_gpu_ids(assigned: str) -> tuple[str, ...]:
    """HTCondor AssignedGPUs (``"CUDA0,GPU-ab12"``) as CUDA_VISIBLE_DEVICES ids (``0``, ``GPU-ab12``)."""
    ids = []
    for item in re.split(r"[,\s]+", assigned.strip()):
        if item:
            m = re.fullmatch(r"CUDA(\d+)", item)
            ids.append(m.group(1) if m else item)
    return tuple(ids)


def parse_visible_devices(value: str | None) -> tuple[str, ...] | None:
    """CUDA_VISIBLE_DEVICES as ids; ``None`` when unset, ``()`` when it hides every GPU."""
    if value is None:
        return None
    if value.strip().lower() in _NO_GPUS:
        return ()
    ids: list[str] = []
    for item in value.split(","):
        item = item.strip()
        if not item or item == "-1":
            break  # CUDA ignores everything from the first invalid entry on
        ids.append(item)
    return tuple(ids)


def parse_nvidia_smi(text: str) -> tuple[str, ...]:
    """GPU ids from ``nvidia-smi --query-gpu=index,uuid --format=csv,noheader``.

    UUIDs are preferred: nvidia-smi numbers GPUs in PCI order, CUDA by default fastest first,
    so an index could name a different GPU than intended.
    """
    ids: list[str] = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2 and parts[1].startswith(("GPU-", "MIG-")):
            ids.append(parts[1])
        elif parts and parts[0].isdigit():
            ids.append(parts[0])
    return tuple(ids)


def cgroup_memory_files(proc_self_cgroup: str, root: Path = CGROUP_ROOT) -> list[Path]:
    """Memory limit files of this process's cgroup and its ancestors (v2 and v1), own first."""
    files: list[Path] = []
    for line in proc_self_cgroup.splitlines():
        hid, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if not path.startswith("/"):
            continue
        if hid == "0" and controllers == "":
            base, name = root, "memory.max"
        elif "memory" in controllers.split(","):
            base, name = root / "memory", "memory.limit_in_bytes"
        else:
            continue
        parts = [p for p in path.split("/") if p and p not in (".", "..")]
        for depth in range(len(parts), -1, -1):
            files.append(base.joinpath(*parts[:depth], name))
    return files


def parse_cgroup_limit_mb(text: str) -> int | None:
    """A cgroup memory limit in MB; ``None`` for ``max`` or v1's "unlimited" huge number."""
    value = parse_int(text)
    if value is None or value >= 2**60:
        return None
    return value // _MB


def parse_slurm_mb(text: str | None) -> int | None:
    """Slurm memory variables are MB, sometimes with a unit suffix (``4G``)."""
    if not text:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)B?\s*", text, re.IGNORECASE)
    if not m:
        return None
    scale = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024**2}[m.group(2).upper()]
    return int(int(m.group(1)) * scale) or None


def slurm_memory_mb(env: Mapping[str, str], cpus: int) -> tuple[int, str] | None:
    per_node = parse_slurm_mb(env.get("SLURM_MEM_PER_NODE"))
    if per_node:
        return per_node, f"SLURM_MEM_PER_NODE={env['SLURM_MEM_PER_NODE']}"
    per_cpu = parse_slurm_mb(env.get("SLURM_MEM_PER_CPU"))
    if per_cpu:
        return per_cpu * cpus, f"SLURM_MEM_PER_CPU={env['SLURM_MEM_PER_CPU']} x {cpus} cpus"
    return None


def parse_squeue_end(text: str | None) -> float | None:
    """``squeue -o %e`` (ISO time in local time) as epoch seconds; ``None`` for N/A or junk."""
    if not text:
        return None
    line = text.strip().splitlines()[0].strip() if text.strip() else ""
    try:
        return datetime.fromisoformat(line).timestamp()
    except ValueError:
        return None


def batch_system(env: Mapping[str, str]) -> str:
    if env.get("SLURM_JOB_ID"):
        return "slurm"
    if env.get("PBS_JOBID"):
        return "pbs"
    if env.get("_CONDOR_MACHINE_AD") or env.get("_CONDOR_JOB_AD"):
        return "htcondor"
    return "local"


def batch_id(env: Mapping[str, str], job_ad: str | None, pid: int) -> str:
    for var in ("SLURM_JOB_ID", "PBS_JOBID"):
        if env.get(var):
            return env[var]
    if job_ad is not None:
        ad = parse_classad(job_ad)
        if "clusterid" in ad:
            return f"{ad['clusterid']}.{ad.get('procid', '0')}"
    return f"local-{pid}"


def format_ids(ids: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    out: list[str] = []
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        out.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(out)


def needs_nvidia_smi(env: Mapping[str, str], machine_ad: str | None, gpus: int | None) -> bool:
    """Ask nvidia-smi only when GPUs are wanted and nothing else names them.

    Inside a batch job, GPUs come from what the batch system assigned, unless the number of
    GPUs is given explicitly: there nvidia-smi sees every GPU of the node, others' too.
    """
    if gpus == 0 or "CUDA_VISIBLE_DEVICES" in env:
        return False
    if machine_ad is not None and parse_classad(machine_ad).get("assignedgpus"):
        return False
    return gpus is not None or batch_system(env) == "local"
