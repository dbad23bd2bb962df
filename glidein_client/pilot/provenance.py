"""Where and how an attempt ran: the node's facts, the job's cores and inputs, its CPU time.

The node's facts (host, Python, OS, CPU model, the pilot's release) are read once per pilot;
an attempt adds the cores and GPUs it was pinned to, the sha256 of its inputs, its start and
end on the wall clock and the CPU time of its process tree.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import importlib.metadata
import platform
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from glidein_client.pilot.executor import RunResult
from glidein_client.pilot.resources import Detected
from glidein_client.wire.schema import FileDigest, InputFile, Provenance

_CHUNK = 1 << 20


@dataclass(frozen=True)
class NodeFacts:
    host: str
    pilot_version: str
    python: str
    os: str
    cpu_model: str


def cpu_model(cpuinfo: str) -> str:
    """The CPU's model name from the text of ``/proc/cpuinfo`` (x86 ``model name``, Arm/POWER fallbacks)."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip():
            fields.setdefault(key.strip().lower(), value.strip())
    for key in ("model name", "cpu", "processor", "hardware"):
        value = fields.get(key, "")
        if value and not value.isdigit():
            return value
    return platform.processor() or platform.machine()


def os_release(text: str) -> str:
    """``PRETTY_NAME`` from the text of ``/etc/os-release``, or ''."""
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "PRETTY_NAME":
            return value.strip().strip('"')
    return ""


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


@functools.cache
def node_facts() -> NodeFacts:
    try:
        version = importlib.metadata.version("glidein")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    distro = os_release(_read("/etc/os-release"))
    kernel = f"{platform.system()} {platform.release()}"
    return NodeFacts(
        host=socket.getfqdn(),
        pilot_version=version,
        python=f"{platform.python_implementation()} {platform.python_version()}",
        os=f"{distro} ({kernel})" if distro else kernel,
        cpu_model=cpu_model(_read("/proc/cpuinfo")),
    )


def _sha256_of(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


async def input_digests(inputs: Sequence[InputFile], sandbox: Path) -> list[FileDigest]:
    """The sha256 of every input as placed in the sandbox: stored ones are addressed by their sha256
    (and verified on download); files fetched from a URL without one are hashed here."""
    out = []
    for inp in inputs:
        if inp.sha256 is not None:
            out.append(FileDigest(name=inp.name, sha256=inp.sha256, size=inp.size))
            continue
        try:
            sha, size = await asyncio.to_thread(_sha256_of, sandbox / inp.name)
        except OSError:
            continue
        out.append(FileDigest(name=inp.name, sha256=sha, size=size))
    return out


def record(
    res: Detected,
    cores: Iterable[int],
    gpus: Sequence[str],
    inputs: Sequence[FileDigest],
    result: RunResult,
    *,
    isolation: str = "",
) -> Provenance:
    """The provenance of one attempt run by a pilot with resources ``res``."""
    node = node_facts()
    started = result.started_at
    return Provenance(
        host=node.host,
        batch_system=res.batch_system,
        batch_id=res.batch_id,
        pilot_version=node.pilot_version,
        python=node.python,
        os=node.os,
        cpu_model=node.cpu_model,
        cores=sorted(cores),
        gpus=list(gpus),
        inputs=list(inputs),
        started_at=started,
        ended_at=None if started is None else started + result.wall_s,
        cpu_user_s=round(result.cpu_user_s, 3),
        cpu_system_s=round(result.cpu_system_s, 3),
        isolation=isolation,
    )
