"""Site configuration: one TOML file per site, validated before anything runs.

Every key is documented in ``site_configs/local.toml``. A bad config raises a
:class:`ConfigError` naming the file, the key and what is expected.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import msgspec
from msgspec import Meta, Struct

from glidein_client.site.firewall.config import MailboxSection, RelaySection, StagingSection, check_network
from glidein_client.wire.codec import convert
from glidein_client.wire.errors import ConfigError, ValidationError
from glidein_client.wire.schema import Name, PilotShape
from glidein_client.wire.secrets import read_secret_file
from glidein_client.wire.staging import Network
from glidein_client.wire.units import parse_duration_s, parse_memory_mb

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SchedulerName = Literal["local", "slurm", "pbs", "htcondor", "lsf"]
Isolation = Literal["auto", "none", "bwrap", "apptainer"]  # how pilots keep jobs apart (pilot/isolation.py)


class _Section(Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    pass


class SiteSection(_Section, kw_only=True, frozen=True):
    name: Name
    #: ``url`` in the file (``server_url``, its older name, is read as ``url``).
    server_url: Annotated[str, Meta(pattern=r"^https?://")] = msgspec.field(name="url")
    token_file: str
    ca_file: str | None = None
    scheduler: SchedulerName = "local"
    scratch_dir: str
    cycle_s: Annotated[float, Meta(ge=1)] = 30.0
    network: Network = Network.DIRECT


class PilotSection(_Section, kw_only=True, frozen=True):
    cpus: Annotated[int, Meta(ge=1)] = 1
    memory: str | int = "2G"
    gpus: Annotated[int, Meta(ge=0)] = 0
    disk: str | int = "10G"
    walltime: str | int = "2h"
    idle_timeout: str | int = "2m"
    signal_grace: str | int = 0  # the batch system's warning signal comes this long before the walltime
    whole_node: bool = False
    isolation: Isolation = "auto"
    apptainer_image: str | None = None


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
    shared_filesystem: bool = True  # the worker nodes see site.scratch_dir (HTCondor: else files travel with the job)


#: ``[user@]host[:port]``; an IPv6 address goes in brackets: ``user@[2001:db8::1]:2222``.
_JUMP_HOST = r"^([A-Za-z0-9._][A-Za-z0-9._-]*@)?([A-Za-z0-9_][A-Za-z0-9._-]*|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?$"


class SshSection(_Section, kw_only=True, frozen=True):
    """Remote mode: drive the site's login node over SSH (key + one-time code); see site_configs/remote-slurm.toml."""

    host: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_:][A-Za-z0-9._:-]*$")]
    port: Annotated[int, Meta(ge=1, le=65535)] = 22
    user: Annotated[str, Meta(pattern=r"^[A-Za-z0-9._][A-Za-z0-9._-]*$")] | None = None
    key_file: str | None = None
    known_hosts: str = "~/.ssh/known_hosts"
    totp_secret_file: str | None = None
    jump_host: Annotated[str, Meta(pattern=_JUMP_HOST)] | None = None
    keepalive_s: Annotated[float, Meta(ge=1)] = 30.0
    connect_timeout_s: Annotated[float, Meta(ge=1)] = 30.0
    remote_dir: Annotated[str, Meta(min_length=1)] = "glidein"
    remote_python: Annotated[str, Meta(min_length=1)] = "python3"
    cron_minutes: Annotated[int, Meta(ge=1, le=59)] = 5
    service: Literal["cron", "systemd"] = "cron"  # how deploy keeps the client running on the login node


class SiteFile(_Section, kw_only=True, frozen=True):
    site: SiteSection
    pilot: PilotSection = PilotSection()
    limits: LimitsSection = LimitsSection()
    batch: BatchSection = BatchSection()
    ssh: SshSection | None = None
    relay: RelaySection | None = None
    mailbox: MailboxSection | None = None
    staging: StagingSection | None = None


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
    #: Remote mode: the login node is reached over SSH (None: this host is the login node).
    ssh: SshSection | None = None
    #: Firewalled sites (site.network "relay" or "none"): see :mod:`glidein_client.site.firewall.config`.
    relay: RelaySection | None = None
    mailbox: MailboxSection | None = None
    staging: StagingSection | None = None
    staging_quota_mb: int = 0
    mailbox_stale_s: int = 3600
    isolation: Isolation = "auto"
    apptainer_image: str | None = None
    #: Seconds between the batch system's warning signal (SIGTERM) and the end of the walltime (0: none).
    signal_grace_s: int = 0

    @property
    def network(self) -> Network:
        return self.site.network

    @property
    def name(self) -> str:
        return self.site.name

    def read_token(self) -> str:
        return read_secret_file(self.site.token_file, what="site token", config=f"{self.path} as site.token_file")

    def read_ca(self) -> bytes | None:
        """The server's CA named by ``site.ca_file`` (None when the server's certificate is publicly trusted)."""
        path = self.site.ca_file
        if not path:
            return None
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise ConfigError(
                f"Cannot read the server's CA {path} (site.ca_file in {self.path}): {exc.strerror or exc}.",
                hint="Copy ca.pem from the server's state directory (tls/ca.pem) to this host and name it there.",
                field="site.ca_file",
            ) from None
        if b"-----BEGIN CERTIFICATE-----" not in data:
            raise ConfigError(
                f"{path} (site.ca_file in {self.path}) holds no PEM certificate.",
                hint="Name the server's CA: tls/ca.pem in the server's state directory.",
                field="site.ca_file",
            )
        return data


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


#: The longest warning before the walltime: what ``sbatch --signal=B:TERM@SECONDS`` takes.
SIGNAL_GRACE_MAX_S = 65535


def _check_choice(raw: dict[str, Any], path: str, section: str, key: str, choices: tuple[str, ...]) -> None:
    """A value outside its choices, named with every valid one."""
    table = raw.get(section)
    value = table.get(key) if isinstance(table, dict) else None
    if isinstance(value, str) and value not in choices:
        raise ConfigError(
            f"Site config {path}: {section}.{key} is {value!r}, which glidein does not know.",
            hint=f"Choose one of: {', '.join(choices)}.",
            field=f"{section}.{key}",
        )


#: Older names of keys, read as the current ones: (section, old name, name).
ALIASES = (("site", "server_url", "url"),)


def _renamed(raw: dict[str, Any], path: str) -> dict[str, Any]:
    """``raw`` with the older key names read as the current ones; both names at once is an error."""
    out = dict(raw)
    for section, old, new in ALIASES:
        table = out.get(section)
        if not isinstance(table, dict) or old not in table:
            continue
        if new in table:
            raise ConfigError(
                f"Site config {path}: [{section}] has both {new} and {old}, two names for one key.",
                hint=f"Keep {section}.{new} ({old} is its older name).",
                field=f"{section}.{new}",
            )
        out[section] = {(new if k == old else k): v for k, v in table.items()}
    return out


def parse_site_config(raw: dict[str, Any], path: str = "<config>") -> SiteConfig:
    raw = _renamed(raw, path)
    _check_choice(raw, path, "site", "scheduler", get_args(SchedulerName))
    _check_choice(raw, path, "pilot", "isolation", get_args(Isolation))
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
        signal_grace = parse_duration_s(pilot.signal_grace, field="pilot.signal_grace")
        max_queued = parse_duration_s(data.limits.max_queued_s, field="limits.max_queued_s")
        quota_mb = parse_memory_mb(data.staging.quota, field="staging.quota") if data.staging else 0
        stale_s = parse_duration_s(data.mailbox.stale_after, field="mailbox.stale_after") if data.mailbox else 3600
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
    if signal_grace and not 0 < signal_grace <= min(shape.walltime_s // 2, SIGNAL_GRACE_MAX_S):
        raise ConfigError(
            f"Site config {path}: pilot.signal_grace ({signal_grace} s) must be at most half of pilot.walltime "
            f"({shape.walltime_s} s) and at most {SIGNAL_GRACE_MAX_S} s (what Slurm's --signal takes).",
            hint='It is the warning before the walltime ends, e.g. "5m"; 0 turns the warning off.',
            field="pilot.signal_grace",
        )
    if pilot.isolation == "apptainer" and not pilot.apptainer_image:
        raise ConfigError(
            f'Site config {path}: pilot.isolation = "apptainer" needs pilot.apptainer_image.',
            hint="Name the image jobs run in (a .sif file or an unpacked image on /cvmfs).",
            field="pilot.apptainer_image",
        )
    ssh = _check_ssh(data, path) if data.ssh is not None else None
    relay, mailbox, staging = check_network(
        data.site.network, data.relay, data.mailbox, data.staging, remote=ssh is not None, path=path
    )
    site = msgspec.structs.replace(  # "~" in paths means the home directory of the client's user
        data.site,
        token_file=os.path.expanduser(data.site.token_file),
        ca_file=os.path.expanduser(data.site.ca_file) if data.site.ca_file else None,
        scratch_dir=os.path.expanduser(data.site.scratch_dir) if ssh is None else data.site.scratch_dir,
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
        ssh=ssh,
        relay=relay,
        mailbox=mailbox,
        staging=staging,
        staging_quota_mb=quota_mb,
        mailbox_stale_s=stale_s,
        isolation=pilot.isolation,
        apptainer_image=pilot.apptainer_image,
        signal_grace_s=signal_grace,
    )


def _check_ssh(data: SiteFile, path: str) -> SshSection:
    """Remote-mode rules; local paths of the [ssh] section resolved ("~": this user's home)."""
    ssh = data.ssh
    assert ssh is not None
    hint = "In remote mode, paths in [site] and [batch] are on the login node. See site_configs/remote-slurm.toml."
    if not data.site.scratch_dir.startswith("/"):
        raise ConfigError(
            f"Site config {path}: site.scratch_dir must be an absolute path on the login node when [ssh] is set "
            f"(it is {data.site.scratch_dir!r}).",
            hint=hint,
            field="site.scratch_dir",
        )
    if not data.batch.python:
        raise ConfigError(
            f"Site config {path}: batch.python must name the Python on the site's nodes when [ssh] is set.",
            hint="After `glidein-client deploy`, that is <ssh.remote_dir>/venv/bin/python, as an absolute path. "
            + hint,
            field="batch.python",
        )

    def local(value: str | None) -> str | None:
        return os.path.expanduser(value) if value else None

    return msgspec.structs.replace(
        ssh,
        key_file=local(ssh.key_file),
        known_hosts=os.path.expanduser(ssh.known_hosts),
        totp_secret_file=local(ssh.totp_secret_file),
    )
