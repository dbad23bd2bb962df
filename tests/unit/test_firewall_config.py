"""Site configs of firewalled sites: the example documents every key; a bad combination names what is missing."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import msgspec
import pytest

from glidein_client.sharedfs import mailbox as mb
from glidein_client.site.client import pilot_command
from glidein_client.site.config import SiteSection, load_site_config, parse_site_config
from glidein_client.site.firewall.config import MailboxSection, RelaySection, StagingSection
from glidein_client.wire.errors import ConfigError
from glidein_client.wire.staging import Network

EXAMPLE = Path(__file__).resolve().parents[2] / "site_configs" / "firewalled.toml"


@pytest.mark.parametrize(
    "table, section",
    [("site", SiteSection), ("relay", RelaySection), ("mailbox", MailboxSection), ("staging", StagingSection)],
)
def test_example_documents_every_key(table: str, section: type[msgspec.Struct]) -> None:
    body = EXAMPLE.read_text().split(f"[{table}]\n", 1)[1].split("\n[", 1)[0]
    for field in msgspec.structs.fields(section):
        match = re.search(rf"^(# )?{field.encode_name} = ", body, re.MULTILINE)
        assert match, f"site_configs/firewalled.toml does not document {table}.{field.encode_name}"
        assert body[: match.start()].rstrip("\n").splitlines()[-1].startswith("#"), f"{table}.{field.name}"


def test_example_parses_into_a_relay_site() -> None:
    site = load_site_config(EXAMPLE)
    assert site.network is Network.RELAY
    assert site.relay is not None and site.relay.pilot_url == "http://10.1.0.1:8322"
    assert site.staging is not None and site.staging_quota_mb == 500 * 1024
    assert site.mailbox is None  # documented in the example, used only by network = "none"
    argv = pilot_command(site, "/shared/glidein-hpc2/pilots-meta/glidein-hpc2-7")
    options = dict(zip(argv[4::2], argv[5::2], strict=True))
    assert options["--channel"] == "relay" and options["--url"] == "http://10.1.0.1:8322"
    assert options["--staging-dir"] == "/shared/glidein-hpc2/staging"


BASE = {"name": "hpc2", "server_url": "https://glidein.example.org", "token_file": "/t", "scratch_dir": "/s"}


def config(network: str, **sections: dict[str, object]) -> dict[str, object]:
    return {"site": {**BASE, "network": network}, **sections}


def test_mailbox_site_gives_each_pilot_its_own_box() -> None:
    site = parse_site_config(config("none", staging={"dir": "/shared/staging"}, mailbox={"dir": "/shared/mb"}))
    argv = pilot_command(site, "/s/pilots-meta/glidein-hpc2-12")
    options = dict(zip(argv[4::2], argv[5::2], strict=True))
    assert options["--channel"] == "mailbox" and options["--mailbox-dir"] == "/shared/mb/glidein-hpc2-12"
    assert options["--url"] == "https://glidein.example.org"  # unused by the pilot, kept for its logs


def test_direct_site_has_no_network_options() -> None:
    argv = pilot_command(parse_site_config(config("direct")), "/s/pilots-meta/glidein-hpc2-1")
    assert "--channel" not in argv and "--staging-dir" not in argv


@pytest.mark.parametrize(
    "raw, field, words",
    [
        (config("relay", staging={"dir": "/x"}), "relay", "needs a [relay] section"),
        (config("none", staging={"dir": "/x"}), "mailbox", "needs a [mailbox] section"),
        (config("relay", relay={"address": "10.0.0.1"}), "staging", "needs a [staging] section"),
        (config("direct", staging={"dir": "/x"}), "site.network", "only apply to firewalled sites"),
        (config("none", staging={"dir": "staging"}, mailbox={"dir": "/m"}), "staging.dir", "absolute path"),
        (config("none", staging={"dir": "/x", "quota": "lots"}, mailbox={"dir": "/m"}), "staging.quota", "size"),
        (
            {
                **config("relay", staging={"dir": "/x"}, relay={"address": "10.0.0.1"}),
                "ssh": {"host": "login"},
                "batch": {"python": "/p"},
            },
            "site.network",
            "on the login node",
        ),
    ],
)
def test_bad_combinations_are_refused_by_name(raw: dict[str, object], field: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_site_config(raw, "site.toml")
    assert words in str(err.value) and err.value.fields.get("field") == field, str(err.value)
    assert "site.toml" in err.value.message


def test_unknown_network_is_refused() -> None:
    with pytest.raises(ConfigError) as err:
        parse_site_config(config("carrier-pigeon"), "site.toml")
    assert "site.network" in str(err.value)


def test_mailbox_sweep_removes_stale_files_and_empty_boxes(tmp_path: Path) -> None:
    old, new = tmp_path / mb.box_name("s", 1), tmp_path / mb.box_name("s", 2)
    for box in (old, new):
        box.mkdir()
        mb.write_message(mb.request_path(box, "1"), mb.MailRequest(id="1", op="sync"))
    hour_ago = time.time() - 3600
    for path in (*old.iterdir(), old):
        os.utime(path, (hour_ago, hour_ago))
    assert mb.sweep(tmp_path, "s", stale_s=600) == 1
    assert not old.exists() and len(mb.requests_in(new)) == 1
    mb.ring(new, "2")
    names, rings = mb.rung(tmp_path)
    assert names == {new.name} and len(rings) == 1
