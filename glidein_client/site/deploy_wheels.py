"""The wheels ``glidein-client deploy`` copies: glidein and its dependencies, built on this host from its checkout.

A wheel's fingerprint is the sha256 of its RECORD (which lists every file's hash), so rebuilding an
unchanged checkout gives the same fingerprint and a second deploy copies nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shlex
import shutil
import sys
import sysconfig
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from glidein_client.site.runners.local import LocalRunner
from glidein_client.wire.errors import ConfigError, GlideinError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger("glidein_client.site.deploy")

_BUILD_IGNORE = (
    ".git",
    ".venv",
    "venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    ".hypothesis",
    "tests",
    "benchmarks",
    "site_configs",
    "examples",
    "packaging",
)


@dataclass(frozen=True)
class Wheels:
    """Wheels of glidein and its dependencies, built on this host."""

    directory: Path
    files: tuple[Path, ...]
    fingerprints: dict[str, str]  # file name -> sha256 of its RECORD (first 16 hex digits)
    version: str  # of glidein
    python: str  # "3.11 linux-x86_64": what the wheels were built for

    @property
    def fingerprint(self) -> str:
        """One fingerprint for the whole set."""
        text = "\n".join(f"{name} {fp}" for name, fp in sorted(self.fingerprints.items()))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def checkout_dir() -> Path:
    """The source checkout this glidein runs from (where ``pyproject.toml`` names the project)."""
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    try:
        project = tomllib.loads(pyproject.read_text()).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        project = {}
    if project.get("name") != "glidein":
        raise ConfigError(
            "deploy builds glidein from its source checkout, and this installation has none.",
            hint="Run glidein-client deploy from a checkout (`pip install -e .` there), or pass --source DIR.",
        )
    return root


async def build_wheels(dest: Path, *, source: Path | None = None) -> Wheels:
    """Build the wheels of ``source`` (default: :func:`checkout_dir`) and its dependencies into ``dest``."""
    source = source or checkout_dir()
    await asyncio.to_thread(dest.mkdir, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="glidein-build-") as tmp:
        # Built from a copy, so the checkout gets no build/ or *.egg-info from it.
        copy = Path(tmp) / "src"
        await asyncio.to_thread(shutil.copytree, source, copy, ignore=shutil.ignore_patterns(*_BUILD_IGNORE))
        argv = [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--disable-pip-version-check",
            "-w",
            str(dest),
            str(copy),
        ]
        log.info("building the wheels of %s and its dependencies", source)
        result = await LocalRunner().run(argv, timeout_s=900)
    if result.returncode != 0:
        lines = [ln for ln in result.stderr.splitlines() if ln.strip() and "is ignored" not in ln]
        raise GlideinError(
            f"Building the wheels failed: {(lines or ['exit code ' + str(result.returncode)])[-1].strip()}",
            hint="pip needs the dependencies of glidein from an index or its cache; run "
            f"`{shlex.join(argv[:4])} -w DIR {source}` to see the whole output.",
            command=argv,
            exit_code=result.returncode,
            stderr=result.stderr,
        )
    files, fingerprints = await asyncio.to_thread(_scan, dest)
    main = [f for f in files if f.name.startswith("glidein-")]
    if not main:
        raise GlideinError(f"pip built no glidein wheel into {dest}.")
    version = main[0].name.split("-")[1]
    python = f"{sys.version_info[0]}.{sys.version_info[1]} {sysconfig.get_platform()}"
    return Wheels(dest, files, fingerprints, version, python)


def _scan(dest: Path) -> tuple[tuple[Path, ...], dict[str, str]]:
    files = tuple(sorted(dest.glob("*.whl")))
    return files, {f.name: _fingerprint(f) for f in files}


def _fingerprint(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as zf:
        records = [n for n in zf.namelist() if n.endswith(".dist-info/RECORD")]
        data = zf.read(records[0]) if records else wheel.read_bytes()
    return hashlib.sha256(data).hexdigest()[:16]
