"""Site config of firewalled sites: ``site.network`` and the ``[relay]``, ``[mailbox]`` and ``[staging]`` sections.

- ``network = "direct"`` (default): pilots reach the server themselves; inputs and outputs
  travel inside the job. None of the three sections is used.
- ``network = "relay"``: pilots reach only the login node, where the client runs a relay
  (``[relay]``); inputs and outputs are staged by the client (``[staging]``).
- ``network = "none"``: pilots reach nothing; they exchange messages with the client as files
  in ``[mailbox]``; inputs and outputs are staged by the client (``[staging]``).

Every key is documented in ``site_configs/firewalled.toml``.
"""

from __future__ import annotations

import os
from typing import Annotated, TypeVar

import msgspec
from msgspec import Meta, Struct

from glidein_client.wire.errors import ConfigError
from glidein_client.wire.staging import Network

_EXAMPLE = "See site_configs/firewalled.toml."


class _Section(Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    pass


class RelaySection(_Section, kw_only=True, frozen=True):
    """Where the client's relay listens on the login node (``network = "relay"``)."""

    address: Annotated[str, Meta(min_length=1)]
    port: Annotated[int, Meta(ge=1, le=65535)] = 8322
    url: Annotated[str, Meta(pattern=r"^https?://")] | None = None

    @property
    def pilot_url(self) -> str:
        """The URL the pilots use to reach the relay."""
        if self.url:
            return self.url
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}"


class MailboxSection(_Section, kw_only=True, frozen=True):
    """The mailbox directory on the shared filesystem (``network = "none"``)."""

    dir: Annotated[str, Meta(min_length=1)]
    poll_s: Annotated[float, Meta(ge=0.01, le=10)] = 0.2
    stale_after: str | int = "1h"


class StagingSection(_Section, kw_only=True, frozen=True):
    """The staging area on the shared filesystem (``network = "relay"`` or ``"none"``)."""

    dir: Annotated[str, Meta(min_length=1)]
    quota: str | int = "100G"
    max_jobs: Annotated[int, Meta(ge=1)] = 1000
    concurrency: Annotated[int, Meta(ge=1, le=256)] = 8
    batch: Annotated[int, Meta(ge=1, le=10_000)] = 200
    poll_s: Annotated[float, Meta(ge=0.1)] = 5.0


def check_network(
    network: Network,
    relay: RelaySection | None,
    mailbox: MailboxSection | None,
    staging: StagingSection | None,
    *,
    remote: bool,
    path: str,
) -> tuple[RelaySection | None, MailboxSection | None, StagingSection | None]:
    """The sections that ``network`` needs, with "~" in their paths expanded; a plain error otherwise."""
    where = f"Site config {path}"
    if network is Network.DIRECT:
        extra = [
            name
            for name, section in (("relay", relay), ("mailbox", mailbox), ("staging", staging))
            if section is not None
        ]
        if extra:
            raise ConfigError(
                f'{where}: [{"], [".join(extra)}] only apply to firewalled sites, but site.network is "direct".',
                hint='Set site.network = "relay" or "none", or remove those sections. ' + _EXAMPLE,
                field="site.network",
            )
        return None, None, None
    if remote:
        raise ConfigError(
            f'{where}: site.network = "{network.value}" needs the client on the login node itself (it stages '
            "files and serves the pilots' messages there), but [ssh] drives the login node from afar.",
            hint="Run glidein-client on the login node (`glidein-client deploy` installs it there) without [ssh].",
            field="site.network",
        )
    if staging is None:
        raise ConfigError(
            f'{where}: site.network = "{network.value}" needs a [staging] section: the staging area on the '
            "filesystem shared with the worker nodes.",
            hint=_EXAMPLE,
            field="staging",
        )
    if network is Network.RELAY and relay is None:
        raise ConfigError(
            f'{where}: site.network = "relay" needs a [relay] section: the address and port on the login node '
            "that the worker nodes reach.",
            hint=_EXAMPLE,
            field="relay",
        )
    if network is Network.NONE and mailbox is None:
        raise ConfigError(
            f'{where}: site.network = "none" needs a [mailbox] section: a directory on the filesystem shared '
            "with the worker nodes.",
            hint=_EXAMPLE,
            field="mailbox",
        )
    staging = _expanded(staging, "staging.dir", where)
    if mailbox is not None:
        mailbox = _expanded(mailbox, "mailbox.dir", where)
    return (relay if network is Network.RELAY else None, mailbox if network is Network.NONE else None, staging)


_S = TypeVar("_S", MailboxSection, StagingSection)


def _expanded(section: _S, field: str, where: str) -> _S:
    value = os.path.expanduser(section.dir)
    if not os.path.isabs(value):
        raise ConfigError(
            f"{where}: {field} must be an absolute path on the shared filesystem (it is {value!r}).",
            hint=_EXAMPLE,
            field=field,
        )
    return msgspec.structs.replace(section, dir=value)
