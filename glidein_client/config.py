"""Site configuration: one TOML file per site, validated before anything runs.

Every key is documented in ``site_configs/local.toml``. A bad config raises a
:class:`ConfigError` naming the file, the key and what is expected.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from .errors import ConfigError, ValidationError
from .schema import Name, PilotShape, convert
from .units import parse_duration_s, parse_memory_mb

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SchedulerName = Literal["local", "slurm", "pbs", "htcondor"]


class _Section(Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    pass


class SiteSection(_Section, kw_only=True, frozen=True):
    name: Name
    server_url: Annotated[str, Meta(pattern=r"^https?://")]
    token_file: str
    ca_file: str | None = None
    scheduler: SchedulerName = "local"
    scratch_dir: str
    cycle_s: Annotated[float, Meta(ge=1)] = 30.0


class PilotSection(_Section, kw_only=True, frozen=True):
    cpus: Annotated[int, Meta(ge=1)] = 1
    memory: str | int = "2G"
    gpus: Annotated[int, Meta(ge=0)] = 0
    disk: str | int = "10G"
    walltime: str | int = "1h"
    idle_timeout: str | int = "2m"
    whole_node: bool = False


class LimitsSection(_Section, kw_only=True, frozen=True):
    max_pilots: Annotated[int, Meta(ge=0)] = 10
    max_idle_pilots: Annotated[int, Meta(ge=0)] = 2
    max_submit_per_cycle: Annotated[int, Meta(ge=0)] = 5
    max_queued_s: str | int = "1d"


class BatchSection(_Section, kw_only=True, frozen=True):
    """Scheduler-specific settings (partition, account, ...): used by the batch backends."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    extra_directives: list[str] = []
    env_setup: list[str] = []
    python: str | None = None


class SiteFile(_Section, kw_only=True, frozen=True):
    site: SiteSection
    pilot: PilotSection = PilotSection()
    limits: LimitsSection = LimitsSection()
    batch: BatchSection = BatchSection()


class SiteConfig(Struct, frozen=True, kw_only=True):
    """A validated site config with units resolved."""

    path: str
    site: SiteSection
    limits: LimitsSection
    batch: BatchSection
    shape: PilotShape
    idle_timeout_s: int
    whole_node: bool
    max_queued_s: int

    @property
    def name(self) -> str:
        return self.site.name

    def read_token(self) -> str:
        return read_secret_file(self.site.token_file, what="site token", config=f"{self.path} as site.token_file")


def read_secret_file(path: str, *, what: str, config: str | None = None) -> str:
    """Read a secret; refuse files that others can read."""
    where = f" (named in {config})" if config else ""
    try:
        st = os.stat(path)
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"Cannot read the {what} file {path}{where}: {exc.strerror}.",
            hint="Check the path; `glidein-server site add NAME` prints a new site token.",
        ) from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"The {what} file {path}{where} can be read by other users.",
            hint=f"Run: chmod 600 {path}",
        )
    if not text:
        raise ConfigError(f"The {what} file {path}{where} is empty.")
    return text


def load_site_config(path: str | Path) -> SiteConfig:
    path = str(path)
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"Site config {path} does not exist.", hint="See site_configs/local.toml.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"Site config {path} is not valid TOML: {exc}.") from None
    return parse_site_config(raw, path)


def parse_site_config(raw: dict[str, Any], path: str = "<config>") -> SiteConfig:
    try:
        data = convert(raw, SiteFile, what=f"site config {path}")
        pilot = data.pilot
        shape = PilotShape(
            cpus=pilot.cpus,
            memory_mb=parse_memory_mb(pilot.memory, field="pilot.memory"),
            gpus=pilot.gpus,
            disk_mb=parse_memory_mb(pilot.disk, field="pilot.disk"),
            walltime_s=parse_duration_s(pilot.walltime, field="pilot.walltime"),
        )
        idle = parse_duration_s(pilot.idle_timeout, field="pilot.idle_timeout")
        max_queued = parse_duration_s(data.limits.max_queued_s, field="limits.max_queued_s")
    except ValidationError as exc:
        msg, hint = exc.message, exc.hint
        if msg.startswith("The site config"):  # from the schema layer, whose hint speaks of requests
            hint = None
        else:
            msg = f"Site config {path}: {msg}"
        raise ConfigError(msg, hint=hint or "See site_configs/local.toml for every key.", **exc.fields) from None
    except msgspec.ValidationError as exc:  # pragma: no cover - convert() wraps these
        raise ConfigError(f"Site config {path}: {exc}") from None
    if shape.memory_mb < 1 or shape.walltime_s < 60:
        raise ConfigError(
            f"Site config {path}: pilot.walltime must be at least 1 minute and pilot.memory positive.",
            field="pilot.walltime",
        )
    site = msgspec.structs.replace(  # "~" in paths means the home directory of the client's user
        data.site,
        token_file=os.path.expanduser(data.site.token_file),
        ca_file=os.path.expanduser(data.site.ca_file) if data.site.ca_file else None,
        scratch_dir=os.path.expanduser(data.site.scratch_dir),
    )
    return SiteConfig(
        path=path,
        site=site,
        limits=data.limits,
        batch=data.batch,
        shape=shape,
        idle_timeout_s=idle,
        whole_node=pilot.whole_node,
        max_queued_s=max_queued,
    )
