"""Site configs: the shipped example parses and documents every key; bad configs name file and key."""

from __future__ import annotations

import os
import re
from pathlib import Path

import msgspec
import pytest

from glidein_client.site.config import (
    BatchSection,
    LimitsSection,
    PilotSection,
    SiteConfig,
    SiteSection,
    load_site_config,
)
from glidein_client.wire.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "site_configs" / "local.toml"

GOOD = """\
[site]
name = "hpc1"
server_url = "https://glidein.example.org"
token_file = "{token}"
scratch_dir = "/scratch/glidein"
scheduler = "slurm"

[pilot]
cpus = 8
memory = "16G"
walltime = "12h"

[limits]
max_pilots = 50
"""


def write(tmp_path: Path, text: str, name: str = "site.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
def token(tmp_path: Path) -> Path:
    path = tmp_path / "site.token"
    path.write_text("secret-token\n")
    path.chmod(0o600)
    return path


def test_shipped_example_parses() -> None:
    site = load_site_config(EXAMPLE)
    assert site.name == "local"
    assert site.site.scheduler == "local"
    assert site.site.server_url == "http://127.0.0.1:8321"
    # "~" is the home directory of the client's user
    assert site.site.token_file == os.path.expanduser("~/.config/glidein/site-local.token")
    assert not site.site.scratch_dir.startswith("~")
    assert site.shape.memory_mb == 2048
    assert site.shape.walltime_s == 7200
    assert site.idle_timeout_s == 120
    assert site.max_queued_s == 86400


@pytest.mark.parametrize("section", [SiteSection, PilotSection, LimitsSection, BatchSection])
def test_shipped_example_documents_every_key(section: type[msgspec.Struct]) -> None:
    text = EXAMPLE.read_text()
    table = {SiteSection: "site", PilotSection: "pilot", LimitsSection: "limits", BatchSection: "batch"}[section]
    body = text.split(f"[{table}]\n", 1)[1].split("\n[", 1)[0]
    for field in msgspec.structs.fields(section):
        match = re.search(rf"^(# )?{field.encode_name} = ", body, re.MULTILINE)
        assert match, f"site_configs/local.toml does not document {table}.{field.encode_name}"
        # the line before the key (or before its commented example) is a comment describing it
        before = body[: match.start()].rstrip("\n").splitlines()
        assert before and before[-1].startswith("#"), f"{table}.{field.name} has no comment"


def test_good_config_resolves_units(tmp_path: Path, token: Path) -> None:
    site = load_site_config(write(tmp_path, GOOD.format(token=token)))
    assert isinstance(site, SiteConfig)
    assert site.shape.cpus == 8
    assert site.shape.memory_mb == 16 * 1024
    assert site.shape.walltime_s == 12 * 3600
    assert site.limits.max_pilots == 50
    assert site.read_token() == "secret-token"


BAD = [
    # (case, old text, new text, what the message must name)
    ("unknown-key", "[pilot]\n", "[pilot]\ncolour = 'red'\n", ["`pilot`", "`colour`"]),
    ("unknown-section", "[limits]\n", "[sites]\nname = 'x'\n[limits]\n", ["`sites`"]),
    ("wrong-type", "cpus = 8", 'cpus = "eight"', ["pilot.cpus"]),
    ("bad-memory-unit", 'memory = "16G"', 'memory = "16Q"', ["pilot.memory", "16Q"]),
    ("bad-duration", "max_pilots = 50", 'max_queued_s = "soon"', ["limits.max_queued_s", "soon"]),
    ("negative-limit", "max_pilots = 50", "max_pilots = -1", ["limits.max_pilots"]),
    ("bad-scheduler", 'scheduler = "slurm"', 'scheduler = "sge"', ["site.scheduler", "sge"]),
    ("bad-url", 'server_url = "https://', 'server_url = "ftp://', ["site.url"]),
]


@pytest.mark.parametrize(("old", "new", "names"), [pytest.param(*case[1:], id=case[0]) for case in BAD])
def test_bad_config_names_file_and_key(tmp_path: Path, token: Path, old: str, new: str, names: list[str]) -> None:
    good = GOOD.format(token=token)
    assert old in good
    path = write(tmp_path, good.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_site_config(path)
    message = str(info.value)
    assert str(path) in message
    for name in names:
        assert name in message, message
    assert "send it again" not in message  # request wording has no place in a config error


def test_missing_site_name(tmp_path: Path, token: Path) -> None:
    path = write(tmp_path, GOOD.format(token=token).replace('name = "hpc1"\n', ""))
    with pytest.raises(ConfigError) as info:
        load_site_config(path)
    message = str(info.value)
    assert str(path) in message
    assert "`site`" in message and "`name`" in message, message
    assert info.value.fields.get("field") == "site"


def test_missing_site_section(tmp_path: Path) -> None:
    path = write(tmp_path, "[pilot]\ncpus = 2\n")
    with pytest.raises(ConfigError) as info:
        load_site_config(path)
    assert str(path) in str(info.value)
    assert "`site`" in str(info.value)


def test_short_walltime_is_refused(tmp_path: Path, token: Path) -> None:
    path = write(tmp_path, GOOD.format(token=token).replace('walltime = "12h"', 'walltime = "30s"'))
    with pytest.raises(ConfigError) as info:
        load_site_config(path)
    assert str(path) in str(info.value)
    assert "pilot.walltime" in str(info.value)


def test_token_file_readable_by_others_is_refused(tmp_path: Path, token: Path) -> None:
    token.chmod(0o644)
    path = write(tmp_path, GOOD.format(token=token))
    site = load_site_config(path)  # the token is read when the client starts, not at parse time
    with pytest.raises(ConfigError) as info:
        site.read_token()
    message = str(info.value)
    assert str(path) in message
    assert "site.token_file" in message
    assert str(token) in message
    assert f"chmod 600 {token}" in message


def test_missing_token_file(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.format(token=tmp_path / "nope.token"))
    with pytest.raises(ConfigError) as info:
        load_site_config(path).read_token()
    assert str(path) in str(info.value)
    assert "site.token_file" in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_site_config(tmp_path / "absent.toml")


def test_invalid_toml_names_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[site\nname = 1\n")
    with pytest.raises(ConfigError) as info:
        load_site_config(path)
    assert str(path) in str(info.value)
    assert "not valid TOML" in str(info.value)


BATCH_EXAMPLES = ["slurm", "pbs", "htcondor", "lsf"]


@pytest.mark.parametrize("name", BATCH_EXAMPLES)
@pytest.mark.parametrize("section", [SiteSection, PilotSection, LimitsSection, BatchSection])
def test_batch_examples_document_every_key(name: str, section: type[msgspec.Struct]) -> None:
    text = (EXAMPLE.parent / f"{name}.toml").read_text()
    table = {SiteSection: "site", PilotSection: "pilot", LimitsSection: "limits", BatchSection: "batch"}[section]
    body = text.split(f"[{table}]\n", 1)[1].split("\n[", 1)[0]
    for field in msgspec.structs.fields(section):
        match = re.search(rf"^(# )?{field.encode_name} = ", body, re.MULTILINE)
        assert match, f"site_configs/{name}.toml does not document {table}.{field.encode_name}"
        assert body[: match.start()].rstrip("\n").splitlines()[-1].startswith("#")


@pytest.mark.parametrize("name", BATCH_EXAMPLES)
def test_batch_examples_render_a_pilot_script(name: str) -> None:
    """Each example is accepted by its own backend, which renders the pilot job from it."""
    from glidein_client.site.client import pilot_command
    from glidein_client.site.runners.local import LocalRunner
    from glidein_client.site.schedulers import make_scheduler
    from glidein_client.site.schedulers.base import PilotLaunch
    from glidein_client.site.schedulers.htcondor import HTCondorScheduler
    from glidein_client.site.schedulers.pbs import PbsScheduler

    site = load_site_config(EXAMPLE.parent / f"{name}.toml")
    assert site.site.scheduler == name
    sched = make_scheduler(site, LocalRunner())
    if isinstance(sched, PbsScheduler):
        sched = PbsScheduler(site, LocalRunner(), flavour="pro")
    workdir = f"{site.site.scratch_dir}/pilots-meta/glidein-{site.name}-7"
    launch = PilotLaunch(
        pilot_id=7, site=site, workdir=workdir, token_file=f"{workdir}/token", pilot_argv=pilot_command(site, workdir)
    )
    script = sched.render(launch)
    if isinstance(sched, HTCondorScheduler):
        script += sched.render_wrapper(launch)  # HTCondor's executable holds the pilot command
    assert f"glidein-{site.name}-7" in script
    assert "--fallback-walltime " in script and "--cpus " not in script  # the allocation decides
