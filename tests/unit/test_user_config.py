from __future__ import annotations

import os
from pathlib import Path

import pytest

from glidein_client.user import config as user_config
from glidein_client.wire.errors import ConfigError


def secret(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    os.chmod(path, 0o600)
    return path


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """An environment whose default config file lives under tmp_path/.config."""
    (tmp_path / ".config" / "glidein").mkdir(parents=True)
    return {"XDG_CONFIG_HOME": str(tmp_path / ".config")}


def config_file(env: dict[str, str], text: str, mode: int = 0o600) -> Path:
    path = Path(env["XDG_CONFIG_HOME"]) / "glidein" / "config.toml"
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_file_only(home: dict[str, str], tmp_path: Path) -> None:
    secret(tmp_path / ".config" / "glidein" / "token", "file-token")
    config_file(home, 'url = "https://file.example/"\ntoken_file = "token"\nca_file = "ca.pem"\n')
    cfg = user_config.load(environ=home)
    assert cfg.url == "https://file.example"
    assert cfg.token == "file-token"
    assert cfg.ca_file == str(tmp_path / ".config" / "glidein" / "ca.pem")
    assert "token_file in" in cfg.token_source
    assert "file-token" not in repr(cfg)


def test_environment_overrides_file(home: dict[str, str], tmp_path: Path) -> None:
    config_file(home, 'url = "https://file.example"\ntoken = "file-token"\nca_file = "/file/ca.pem"\n')
    env_token = secret(tmp_path / "env-token", "env-token")
    env = {
        **home,
        "GLIDEIN_URL": "https://env.example",
        "GLIDEIN_TOKEN_FILE": str(env_token),
        "GLIDEIN_CA_FILE": "/env/ca.pem",
    }
    cfg = user_config.load(environ=env)
    assert (cfg.url, cfg.token, cfg.ca_file) == ("https://env.example", "env-token", "/env/ca.pem")
    assert cfg.token_source.startswith("GLIDEIN_TOKEN_FILE=")


def test_token_variable_wins_over_token_file_variable(home: dict[str, str], tmp_path: Path) -> None:
    env_token = secret(tmp_path / "env-token", "from-file")
    env = {**home, "GLIDEIN_URL": "http://x", "GLIDEIN_TOKEN": "direct", "GLIDEIN_TOKEN_FILE": str(env_token)}
    assert user_config.load(environ=env).token == "direct"


def test_flags_override_environment_and_file(home: dict[str, str], tmp_path: Path) -> None:
    config_file(home, 'url = "https://file.example"\ntoken = "file-token"\n')
    flag_token = secret(tmp_path / "flag-token", "flag-token")
    env = {**home, "GLIDEIN_URL": "https://env.example", "GLIDEIN_TOKEN": "env-token"}
    cfg = user_config.load(url="https://flag.example", token_file=str(flag_token), environ=env)
    assert (cfg.url, cfg.token) == ("https://flag.example", "flag-token")
    assert cfg.token_source == f"--token-file {flag_token}"


def test_glidein_config_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "other.toml"
    path.write_text('url = "https://other.example"\ntoken = "t"\n')
    os.chmod(path, 0o600)
    cfg = user_config.load(environ={"GLIDEIN_CONFIG": str(path)})
    assert cfg.url == "https://other.example"
    with pytest.raises(ConfigError, match="does not exist"):
        user_config.load(environ={"GLIDEIN_CONFIG": str(tmp_path / "missing.toml")})


def test_missing_url_says_what_to_set(home: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as err:
        user_config.load(environ={**home, "GLIDEIN_TOKEN": "t"})
    assert err.value.message == "No glidein server URL is set."
    assert err.value.hint is not None
    for what in ("--url", "GLIDEIN_URL", "url =", "config.toml"):
        assert what in err.value.hint


def test_missing_token_says_what_to_set(home: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as err:
        user_config.load(environ={**home, "GLIDEIN_URL": "https://x"})
    assert err.value.message == "No token is set."
    assert err.value.hint is not None
    for what in ("GLIDEIN_TOKEN_FILE", "--token-file", "token_file", "chmod 600"):
        assert what in err.value.hint


def test_token_file_readable_by_others_is_refused(home: dict[str, str], tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t\n")
    os.chmod(token, 0o644)
    with pytest.raises(ConfigError, match="can be read by other users") as err:
        user_config.load(environ={**home, "GLIDEIN_URL": "https://x", "GLIDEIN_TOKEN_FILE": str(token)})
    assert err.value.hint == f"Run: chmod 600 {token}"


def test_missing_token_file(home: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"token file .*gone.* does not exist"):
        user_config.load(url="https://x", token_file=str(tmp_path / "gone"), environ=home)


def test_config_with_token_readable_by_others_is_refused(home: dict[str, str]) -> None:
    config_file(home, 'url = "https://x"\ntoken = "t"\n', mode=0o644)
    with pytest.raises(ConfigError, match="holds a token and can be read by other users"):
        user_config.load(environ=home)


def test_config_without_token_may_be_world_readable(home: dict[str, str]) -> None:
    config_file(home, 'url = "https://x"\n', mode=0o644)
    assert user_config.load(environ={**home, "GLIDEIN_TOKEN": "t"}).url == "https://x"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('uri = "https://x"\n', "unknown key 'uri' \\(did you mean 'url'\\?\\)"),
        ("url = 5\n", "url must be a non-empty string"),
        ('token = "a"\ntoken_file = "b"\n', "both token and token_file"),
        ("url = \n", "not valid TOML"),
    ],
)
def test_bad_config_file(home: dict[str, str], text: str, match: str) -> None:
    path = config_file(home, text)
    with pytest.raises(ConfigError, match=match) as err:
        user_config.load(environ=home)
    assert str(path) in err.value.message


def test_bad_url(home: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="does not start with http"):
        user_config.load(environ={**home, "GLIDEIN_URL": "glidein.example.org", "GLIDEIN_TOKEN": "t"})
