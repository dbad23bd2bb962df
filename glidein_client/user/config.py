"""Where the ``glidein`` command finds its server and token.

Three layers, each overriding the one before:

1. the config file ``~/.config/glidein/config.toml`` (``$XDG_CONFIG_HOME/glidein/config.toml``
   when that is set), or the file named by ``$GLIDEIN_CONFIG``::

       url = "https://glidein.example.org"
       token_file = "~/.config/glidein/token"   # or: token = "..." (then chmod 600 the config)
       ca_file = "/etc/pki/glidein-ca.pem"       # optional: a private CA for the server's TLS

   Relative paths in the file are read relative to the file's own directory.
2. the environment: ``GLIDEIN_URL``, ``GLIDEIN_TOKEN`` (wins over ``GLIDEIN_TOKEN_FILE``),
   ``GLIDEIN_TOKEN_FILE``, ``GLIDEIN_CA_FILE``;
3. the command line: ``--url`` (or ``--server-url``), ``--token-file``, ``--ca-file``.

A token, in a file or in the config, must not be readable by other users.
"""

from __future__ import annotations

import difflib
import os
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glidein_client.wire.errors import ConfigError
from glidein_client.wire.secrets import read_secret_file

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

KEYS = ("url", "token", "token_file", "ca_file")


@dataclass(frozen=True)
class UserConfig:
    url: str
    token: str = field(repr=False)
    ca_file: str | None = None
    #: Where the token came from, in words, for hints when the server refuses it.
    token_source: str = ""


def config_path(environ: Mapping[str, str]) -> tuple[Path, bool]:
    """The config file to read, and whether it was named explicitly (then it must exist)."""
    if environ.get("GLIDEIN_CONFIG"):
        return Path(environ["GLIDEIN_CONFIG"]).expanduser(), True
    base = environ.get("XDG_CONFIG_HOME") or str(Path("~/.config").expanduser())
    return Path(base) / "glidein" / "config.toml", False


def read_config_file(path: Path, *, required: bool) -> dict[str, str]:
    """Read and check the user config file; a missing default file is simply empty."""
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if required:
            raise ConfigError(
                f"The config file {path} (named by GLIDEIN_CONFIG) does not exist.",
                hint="Create it, or unset GLIDEIN_CONFIG to use ~/.config/glidein/config.toml.",
            ) from None
        return {}
    except OSError as exc:
        raise ConfigError(f"Cannot read the config file {path}: {exc.strerror}.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"The config file {path} is not valid TOML: {exc}.") from None
    out: dict[str, str] = {}
    for key, value in raw.items():
        if key not in KEYS:
            close = difflib.get_close_matches(key, KEYS, n=1)
            raise ConfigError(
                f"The config file {path} has an unknown key {key!r}"
                + (f" (did you mean {close[0]!r}?)." if close else "."),
                hint=f"Known keys: {', '.join(KEYS)}.",
                field=key,
            )
        if not isinstance(value, str) or not value:
            raise ConfigError(
                f"The config file {path}: {key} must be a non-empty string, got {value!r}.",
                field=key,
            )
        out[key] = value
    if "token" in out and "token_file" in out:
        raise ConfigError(
            f"The config file {path} sets both token and token_file.", hint="Keep one of them.", field="token"
        )
    if "token" in out and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"The config file {path} holds a token and can be read by other users.",
            hint=f"Run: chmod 600 {path}",
        )
    for key in ("token_file", "ca_file"):
        if key in out:
            out[key] = str(path.parent / Path(out[key]).expanduser())
    return out


def resolve(
    file_values: Mapping[str, str],
    environ: Mapping[str, str],
    *,
    config_file: str = "~/.config/glidein/config.toml",
    url: str | None = None,
    token_file: str | None = None,
    ca_file: str | None = None,
) -> UserConfig:
    """Combine file, environment and flags (later wins) and read the token."""
    server = url or environ.get("GLIDEIN_URL") or file_values.get("url")
    if not server:
        raise ConfigError(
            "No glidein server URL is set.",
            hint=(
                "Pass --url https://SERVER, set GLIDEIN_URL=https://SERVER, "
                f'or add url = "https://SERVER" to {config_file}.'
            ),
        )
    if not server.startswith(("http://", "https://")):
        raise ConfigError(
            f"The server URL {server!r} does not start with http:// or https://.",
            hint="Give the full URL, e.g. https://glidein.example.org.",
        )
    token: str | None = None
    if token_file:
        source = f"--token-file {token_file}"
    elif environ.get("GLIDEIN_TOKEN"):
        token, source = environ["GLIDEIN_TOKEN"].strip(), "GLIDEIN_TOKEN"
    elif environ.get("GLIDEIN_TOKEN_FILE"):
        token_file, source = (
            environ["GLIDEIN_TOKEN_FILE"],
            f"GLIDEIN_TOKEN_FILE={environ['GLIDEIN_TOKEN_FILE']}",
        )
    elif file_values.get("token"):
        token, source = file_values["token"].strip(), f"token in {config_file}"
    elif file_values.get("token_file"):
        token_file, source = file_values["token_file"], f"token_file in {config_file}"
    else:
        raise ConfigError(
            "No token is set.",
            hint=(
                "Put your token in a file only you can read (chmod 600) and set GLIDEIN_TOKEN_FILE to it, "
                f'pass --token-file FILE, or add token_file = "FILE" to {config_file}.'
            ),
        )
    if token is None:
        assert token_file is not None
        token_file = str(Path(token_file).expanduser())
        if not os.path.exists(token_file):
            raise ConfigError(
                f"The token file {token_file} (from {source}) does not exist.",
                hint="Check the path; your operator gives you a token to put in that file.",
            )
        token = read_secret_file(token_file, what="token", config=None)
    ca_file = ca_file or environ.get("GLIDEIN_CA_FILE") or file_values.get("ca_file")
    return UserConfig(url=server.rstrip("/"), token=token, ca_file=ca_file, token_source=source)


def load(
    *,
    url: str | None = None,
    token_file: str | None = None,
    ca_file: str | None = None,
    environ: Mapping[str, Any] | None = None,
) -> UserConfig:
    """Read the config file, the environment and the given flags into one :class:`UserConfig`."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    path, explicit = config_path(env)
    values = read_config_file(path, required=explicit)
    return resolve(values, env, config_file=str(path), url=url, token_file=token_file, ca_file=ca_file)
