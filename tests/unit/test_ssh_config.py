"""Remote mode's [ssh] section, the TOTP secret file, and the pure parts of the SSH runner and deploy."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import msgspec
import pyotp
import pytest

from glidein_client.site.client import make_runner
from glidein_client.site.config import SshSection, load_site_config, tomllib
from glidein_client.site.deploy_config import _toml, remote_config_text
from glidein_client.site.deploy_service import cron_line, unit_name, unit_text
from glidein_client.site.runners.local import LocalRunner
from glidein_client.site.runners.ssh import SshRunner, remote_command
from glidein_client.site.runners.ssh_codes import CodeLedger, read_totp_secret
from glidein_client.wire.errors import ConfigError
from glidein_client.wire.secrets import read_secret_file
from tests.golden_files import check_golden

EXAMPLE = Path(__file__).resolve().parents[2] / "site_configs" / "remote-slurm.toml"

GOOD = """\
[site]
name = "hpc1"
server_url = "https://glidein.example.org"
token_file = "{token}"
scratch_dir = "/scratch/glidein"
scheduler = "slurm"

[batch]
python = "/home/glidein/glidein/venv/bin/python"

[ssh]
host = "login.example.org"
port = 2222
user = "glidein"
key_file = "~/.ssh/id_glidein"
totp_secret_file = "{secret}"
"""


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    token = tmp_path / "site.token"
    token.write_text("secret-token\n")
    token.chmod(0o600)
    secret = tmp_path / "hpc1.totp"
    secret.write_text(pyotp.random_base32() + "\n")
    secret.chmod(0o600)
    return {"token": token, "secret": secret}


def write(tmp_path: Path, files: dict[str, Path], old: str = "", new: str = "") -> Path:
    text = GOOD.format(**files)
    assert old in text
    path = tmp_path / "site.toml"
    path.write_text(text.replace(old, new, 1))
    return path


def test_shipped_example_parses() -> None:
    site = load_site_config(EXAMPLE)
    assert site.ssh is not None
    assert site.ssh.host == "login.hpc1.example.org"
    assert site.ssh.key_file == os.path.expanduser("~/.ssh/glidein_hpc1_ed25519")  # this host's path
    assert site.site.scratch_dir == "/scratch/glidein-hpc1"  # the login node's path, untouched


def test_shipped_example_documents_every_ssh_key() -> None:
    body = EXAMPLE.read_text().split("[ssh]\n", 1)[1]
    for field in msgspec.structs.fields(SshSection):
        match = re.search(rf"^(# )?{field.encode_name} = ", body, re.MULTILINE)
        assert match, f"site_configs/remote-slurm.toml does not document ssh.{field.name}"
        before = body[: match.start()].rstrip("\n").splitlines()
        assert before and before[-1].startswith("#"), f"ssh.{field.name} has no comment"


def test_good_section_resolves_local_paths(tmp_path: Path, files: dict[str, Path]) -> None:
    site = load_site_config(write(tmp_path, files))
    assert site.ssh is not None
    assert site.ssh.port == 2222
    assert site.ssh.key_file == os.path.expanduser("~/.ssh/id_glidein")
    assert site.ssh.known_hosts == os.path.expanduser("~/.ssh/known_hosts")
    assert site.ssh.remote_dir == "glidein" and site.ssh.cron_minutes == 5
    assert isinstance(make_runner(site), SshRunner)  # constructing it does no I/O


def test_local_scheduler_cannot_work_through_ssh(tmp_path: Path, files: dict[str, Path]) -> None:
    site = load_site_config(write(tmp_path, files, 'scheduler = "slurm"', 'scheduler = "local"'))
    with pytest.raises(ConfigError) as info:
        make_runner(site)
    assert info.value.fields["field"] == "site.scheduler" and "glidein-client deploy" in str(info.value)


def test_no_section_is_local_mode(tmp_path: Path, files: dict[str, Path]) -> None:
    text = GOOD.format(**files).split("[ssh]")[0]
    path = tmp_path / "local.toml"
    path.write_text(text)
    site = load_site_config(path)
    assert site.ssh is None
    assert isinstance(make_runner(site), LocalRunner)


BAD = [
    # (case, old text, new text, what the message must name)
    ("unknown-key", 'user = "glidein"', 'user = "glidein"\npassword = "hunter2"', ["`ssh`", "`password`"]),
    ("port-zero", "port = 2222", "port = 0", ["ssh.port"]),
    ("port-too-big", "port = 2222", "port = 70000", ["ssh.port"]),
    ("port-string", "port = 2222", 'port = "ssh"', ["ssh.port"]),
    ("host-option", 'host = "login.example.org"', 'host = "-oProxyCommand=x"', ["ssh.host"]),
    ("no-host", 'host = "login.example.org"\n', "", ["`ssh`", "`host`"]),
    ("bad-jump", 'user = "glidein"', 'user = "glidein"\njump_host = "a b"', ["ssh.jump_host"]),
    ("keepalive-zero", 'user = "glidein"', 'user = "glidein"\nkeepalive_s = 0', ["ssh.keepalive_s"]),
    ("cron-60", 'user = "glidein"', 'user = "glidein"\ncron_minutes = 60', ["ssh.cron_minutes"]),
    ("relative-scratch", 'scratch_dir = "/scratch/glidein"', 'scratch_dir = "~/scratch"', ["site.scratch_dir"]),
    ("no-python", 'python = "/home/glidein/glidein/venv/bin/python"', "", ["batch.python"]),
]


@pytest.mark.parametrize(("old", "new", "names"), [pytest.param(*case[1:], id=case[0]) for case in BAD])
def test_bad_section_names_file_and_key(
    tmp_path: Path, files: dict[str, Path], old: str, new: str, names: list[str]
) -> None:
    path = write(tmp_path, files, old, new)
    with pytest.raises(ConfigError) as info:
        load_site_config(path)
    message = str(info.value)
    assert str(path) in message
    for name in names:
        assert name in message, message


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_totp_secret_readable_by_others_is_refused(files: dict[str, Path], mode: int) -> None:
    secret = files["secret"]
    secret.chmod(mode)
    with pytest.raises(ConfigError) as info:
        read_totp_secret(str(secret), config="site.toml")
    message = str(info.value)
    assert str(secret) in message and "ssh.totp_secret_file" in message
    assert f"chmod 600 {secret}" in message


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_totp_secret_private_is_read(files: dict[str, Path], mode: int) -> None:
    files["secret"].chmod(mode)
    expected = pyotp.TOTP(files["secret"].read_text().strip())
    assert read_totp_secret(str(files["secret"])).at(1_700_000_000) == expected.at(1_700_000_000)


def test_totp_secret_forms(tmp_path: Path) -> None:
    secret = pyotp.random_base32()
    for text in (
        f"{secret.lower()}\n",
        f'{secret[:8]} {secret[8:]}\n" TOTP_AUTH\n',
        pyotp.TOTP(secret).provisioning_uri(name="glidein@hpc1", issuer_name="hpc1"),
    ):
        path = tmp_path / "s"
        path.write_text(text)
        path.chmod(0o600)
        assert read_totp_secret(str(path)).at(1_700_000_000) == pyotp.TOTP(secret).at(1_700_000_000)
    path.write_text("not base32!\n")
    with pytest.raises(ConfigError, match="neither a base32 secret"):
        read_totp_secret(str(path))
    with pytest.raises(ConfigError, match="Cannot read"):
        read_totp_secret(str(tmp_path / "absent"))


@pytest.mark.parametrize(("secret", "bits"), [("JBSWY3DPEHPK3PXP", 80), ("JBSWY3DPEHPK3PXPJBSW", 96)])
def test_a_too_short_totp_secret_names_the_file_and_the_fix(tmp_path: Path, secret: str, bits: int) -> None:
    path = tmp_path / "totp"
    for text in (secret, f"otpauth://totp/hpc1:glidein%40hpc1?secret={secret}&issuer=hpc1"):
        path.write_text(text + "\n")
        path.chmod(0o600)
        with pytest.raises(ConfigError) as info:
            read_totp_secret(str(path), config="/etc/glidein/site.toml")
        message = str(info.value)
        assert f"The TOTP secret in {path}" in message and f"is {bits} bits long" in message
        assert "/etc/glidein/site.toml as ssh.totp_secret_file" in message
        assert "at least 112 bits" in message and "Enrol the login again" in message
        assert "ValueError" not in message and "unexpected" not in message.lower()


def test_secret_files_that_are_empty_or_not_text_say_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_bytes(b"\xff\xfe\x00binary")
    path.chmod(0o600)
    with pytest.raises(ConfigError) as info:
        read_secret_file(str(path), what="site token", config="site.toml as site.token_file")
    assert "is not text" in str(info.value) and "glidein-server site add" in str(info.value)
    path.write_text("\n")
    with pytest.raises(ConfigError) as info:
        read_totp_secret(str(path), config="site.toml")
    assert "is empty" in str(info.value) and "Put the secret shown when the login was enrolled" in str(info.value)
    with pytest.raises(ConfigError) as info:
        read_secret_file(str(tmp_path), what="site token", config="site.toml as site.token_file")
    assert f"Cannot read the site token file {tmp_path}" in str(info.value)
    assert "Check the path in site.toml as site.token_file" in str(info.value)


def test_code_ledger_never_hands_out_a_window_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(CodeLedger, "_used", {})  # this process's record, restored afterwards
    state = str(tmp_path / ".secret.used")
    first, wait1 = CodeLedger.reserve("u@h:1", 30, state)
    second, wait2 = CodeLedger.reserve("u@h:1", 30, state)
    assert second == first + 1 and 0 < wait2 <= 30.2
    other, wait3 = CodeLedger.reserve("u@h:2", 30, state)  # another login target: its own windows
    assert wait3 == 0 and other == first
    monkeypatch.setattr(CodeLedger, "_used", {})  # as another process: only the file remembers
    third, _ = CodeLedger.reserve("u@h:1", 30, state)
    assert third == second + 1
    assert os.stat(state).st_mode & 0o777 == 0o600


def test_remote_command_quotes_each_word() -> None:
    argv = ["sbatch", "--parsable", "/scratch/my dir/it's;rm -rf ~/pilot.sbatch", "$(whoami)"]
    command = remote_command(argv)
    assert shlex.split(command) == argv
    with_env = remote_command(["squeue", "--me"], {"SLURM_CONF": "/etc/slurm x/slurm.conf"})
    assert shlex.split(with_env) == ["env", "SLURM_CONF=/etc/slurm x/slurm.conf", "squeue", "--me"]
    with pytest.raises(ValueError):
        remote_command(["true"], {"A;B": "1"})
    with pytest.raises(ValueError):
        remote_command([])


def test_remote_config_drops_ssh_and_points_at_the_copied_token(tmp_path: Path, files: dict[str, Path]) -> None:
    site = load_site_config(write(tmp_path, files))
    text = remote_config_text(site, "/home/glidein/glidein/site.token")
    raw = tomllib.loads(text)
    assert "ssh" not in raw
    assert raw["site"]["token_file"] == "/home/glidein/glidein/site.token"
    assert raw["batch"]["python"] == "/home/glidein/glidein/venv/bin/python"
    remote = tmp_path / "remote.toml"
    remote.write_text(text)
    assert load_site_config(remote).ssh is None  # a valid local-mode config on the login node


def test_toml_writer_round_trips_awkward_values() -> None:
    raw = {
        "site": {"name": 'a"b\\c\n\t\x7f\x01 é', "n": 3, "f": 0.5, "ok": True, "inf": float("inf")},
        "batch": {"extra_directives": ["#SBATCH --x='y'", ""], "env_setup": []},
        "a b": {"nested": {"k": "v"}},
    }
    assert tomllib.loads(_toml(raw)) == raw


def test_cron_line(tmp_path: Path, files: dict[str, Path]) -> None:
    site = load_site_config(write(tmp_path, files, 'user = "glidein"', 'user = "glidein"\ncron_minutes = 10'))
    marker, line = cron_line(site, "/home/glidein/gl 100%")
    assert marker == "# glidein-client deploy: site hpc1 in /home/glidein/gl 100%"
    fields = line.split(" ", 5)
    assert fields[:5] == ["*/10", "*", "*", "*", "*"]
    assert "\\%" in fields[5]  # cron turns a bare % into a newline
    assert shlex.split(fields[5].replace("\\%", "%")) == [
        "/home/glidein/gl 100%/venv/bin/glidein-client",
        "once",
        "/home/glidein/gl 100%/site.toml",
        ">>/home/glidein/gl 100%/cron.log",
        "2>&1",
    ]


def test_systemd_unit_golden_and_its_words_kept_literal(tmp_path: Path, files: dict[str, Path]) -> None:
    site = load_site_config(write(tmp_path, files, 'user = "glidein"', 'user = "glidein"\nservice = "systemd"'))
    assert site.ssh is not None and site.ssh.service == "systemd" and unit_name(site) == "glidein-client-hpc1.service"
    text = unit_text(site, "/home/glidein/glidein")
    check_golden("glidein-client.service", text.replace(site.path, "SITE_CONFIG"))
    # % is a specifier, $ a variable, a quote ends a word: each stays what the path says.
    odd = unit_text(site, '/home/g l/100%$HOME"x')
    [exec_start] = [ln for ln in odd.splitlines() if ln.startswith("ExecStart=")]
    word = '"/home/g l/100%%$$HOME\\"x'
    assert exec_start == f'ExecStart={word}/venv/bin/glidein-client" "run" {word}/site.toml"'
    with pytest.raises(ConfigError) as info:
        unit_text(site, "/home/g\nl")
    assert info.value.fields["field"] == "ssh.remote_dir"


def test_service_must_be_cron_or_systemd(tmp_path: Path, files: dict[str, Path]) -> None:
    with pytest.raises(ConfigError) as info:
        load_site_config(write(tmp_path, files, 'user = "glidein"', 'user = "glidein"\nservice = "upstart"'))
    assert "ssh.service" in info.value.message


def test_systemd_analyze_accepts_the_unit(tmp_path: Path, files: dict[str, Path]) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    site = load_site_config(write(tmp_path, files, 'user = "glidein"', 'user = "glidein"\nservice = "systemd"'))
    remote = tmp_path / "remote 100%"
    (remote / "venv" / "bin").mkdir(parents=True)
    shutil.copy("/bin/true", remote / "venv" / "bin" / "glidein-client")  # ExecStart must name a program
    unit = tmp_path / unit_name(site)
    unit.write_text(unit_text(site, str(remote)))
    checked = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0 and checked.stderr == "", checked.stderr
    unit.write_text(unit.read_text().replace("Restart=on-failure", "Restart=on-failure\nRestrat=always"))
    typo = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert "Unknown key 'Restrat'" in typo.stderr  # the check is real
