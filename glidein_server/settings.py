"""The server's state directory: config.toml, the SQLite database and stored files."""

from __future__ import annotations

import difflib
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

from glidein_client.wire.errors import ConfigError, GlideinError
from glidein_client.wire.units import parse_duration_s, parse_memory_mb

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_NAME = "config.toml"


class ServerSettings(Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8321
    public_url: str = ""  # how clients and pilots reach this server; default http(s)://host:port
    database: str = "glidein.db"
    files_dir: str = "files"
    retention_days: Annotated[float, Meta(ge=0)] = 30.0  # finished jobs older than this are purged; 0: never
    retention_interval_s: Annotated[float, Meta(ge=1)] = 3600.0  # how often the server purges
    lease_s: Annotated[float, Meta(ge=1)] = 60.0  # an attempt without news for this long is requeued
    heartbeat_s: Annotated[float, Meta(ge=0.1)] = 10.0  # pilots report at least this often
    pilot_timeout_s: Annotated[float, Meta(ge=1)] = 180.0  # a silent pilot is considered lost
    max_request_mb: Annotated[int, Meta(ge=1)] = 64
    max_file_mb: Annotated[int, Meta(ge=1)] = 4096
    retry_memory_factor: Annotated[float, Meta(ge=1)] = 1.5  # a job killed for memory retries with this much more
    retry_max_memory_mb: Annotated[int, Meta(ge=1)] = 256 * 1024
    retry_walltime_factor: Annotated[float, Meta(ge=1)] = 1.5  # ... and one killed for walltime with this much more
    retry_max_walltime_s: Annotated[int, Meta(ge=1)] = 7 * 86400
    tls_cert: str = ""  # PEM certificate; TLS is on when both tls_cert and tls_key are set
    tls_key: str = ""
    tls_ca: str = ""  # the CA that signed tls_cert (made by init); clients trust this file
    insecure_http: bool = False  # serve plain HTTP without TLS: only with this set, on loopback only
    insecure_http_any_host: bool = False  # ... and on other addresses too (traffic and tokens in clear text)
    totp_key_file: str = "totp.key"  # key that encrypts operators' TOTP secrets; 0600, apart from the database
    pilot_token_grace_s: Annotated[float, Meta(ge=60)] = 3600.0  # pilot tokens outlive queue wait + walltime by this
    pilot_token_max_s: Annotated[float, Meta(ge=3600)] = 30 * 86400.0  # longest lifetime of a pilot token
    # Requests per second and burst, per token (anonymous: per address); 0 per second: no limit.
    rate_operator_per_s: Annotated[float, Meta(ge=0)] = 50.0
    rate_operator_burst: Annotated[int, Meta(ge=1)] = 500
    rate_user_per_s: Annotated[float, Meta(ge=0)] = 50.0
    rate_user_burst: Annotated[int, Meta(ge=1)] = 500
    rate_site_per_s: Annotated[float, Meta(ge=0)] = 20.0
    rate_site_burst: Annotated[int, Meta(ge=1)] = 1000
    rate_pilot_per_s: Annotated[float, Meta(ge=0)] = 100.0
    rate_pilot_burst: Annotated[int, Meta(ge=1)] = 1000
    rate_anonymous_per_s: Annotated[float, Meta(ge=0)] = 20.0
    rate_anonymous_burst: Annotated[int, Meta(ge=1)] = 200
    metrics: bool = True  # serve GET /metrics (Prometheus) to operator tokens with the metrics scope
    dataset_label: Annotated[str, Meta(min_length=1, max_length=64)] = "dataset"  # the job label naming a dataset
    client_dead_after_s: Annotated[float, Meta(ge=1)] = 90.0  # a site client silent this long is shown as down
    dashboard_sample_s: Annotated[float, Meta(ge=0.1)] = 10.0  # the web dashboard's plots sample this often
    # Bounded reservations: a multicore job idle this long gets one pilot that lets its cores drain
    # until the job fits, for at most reservation_max_hold_s; 0 for either: no reservations.
    reservation_after_s: Annotated[float, Meta(ge=0)] = 1800.0
    reservation_max_hold_s: Annotated[float, Meta(ge=0)] = 3600.0
    reservation_per_owner: Annotated[int, Meta(ge=0)] = 4  # pilots holding for one owner's jobs at once; 0: no limit
    # Fair share of the cores between users ([server.shares] in config.toml: name = share);
    # a user not named there has default_share. A job's priority orders only its owner's jobs.
    default_share: Annotated[float, Meta(gt=0)] = 1.0
    shares: dict[str, Annotated[float, Meta(gt=0)]] = {}


class StateDir:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_NAME

    def load(self) -> ServerSettings:
        if not self.config_path.exists():
            raise ConfigError(
                f"{self.root} is not a glidein server state directory (no {CONFIG_NAME}).",
                hint=f"Create one with: glidein-server init {self.root}",
            )
        try:
            raw: dict[str, Any] = tomllib.loads(self.config_path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{self.config_path} is not valid TOML: {exc}.") from None
        return settings_from_toml(raw, self.config_path)

    def database(self, s: ServerSettings) -> Path:
        return self.root / s.database

    def files(self, s: ServerSettings) -> Path:
        return self.root / s.files_dir

    def ca_file(self, s: ServerSettings) -> Path | None:
        """The CA file clients trust for this server, when init made one."""
        return self.root / s.tls_ca if s.tls_ca else None

    def url(self, s: ServerSettings) -> str:
        if s.public_url:
            return s.public_url
        scheme = "https" if s.tls_cert and s.tls_key else "http"
        return f"{scheme}://{s.host}:{s.port}"

    def write(self, s: ServerSettings) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        lines = [
            "# glidein server settings: every key, with what it does. Restart the server after a change.",
            '# Durations take units ("90s", "10m", "2h", "7d") or plain seconds; sizes "512M", "4G" or plain MB.',
            "[server]",
        ]
        for field in s.__struct_fields__:
            value = getattr(s, field)
            doc = KEY_DOCS.get(field)
            if doc:
                lines.append(f"# {doc}")
            lines.append(f"{field} = {toml_value(value)}")
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.config_path)


def _toml_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


KEY_DOCS: dict[str, str] = {
    "host": "Address to listen on (127.0.0.1: this machine only; 0.0.0.0: every address).",
    "port": "Port to listen on (0: any free port).",
    "public_url": "The URL clients and pilots use (server_url is accepted too); empty: http(s)://host:port.",
    "database": "SQLite database file, relative to this directory.",
    "files_dir": "Uploaded inputs and outputs, relative to this directory.",
    "retention_days": 'Finished jobs older than this many days ("30d" too) leave with their attempts and outputs; '
    "0: never.",
    "retention_interval_s": "How often the server purges jobs past retention_days.",
    "lease_s": "An attempt without news from its pilot for this long is requeued.",
    "heartbeat_s": "Pilots report at least this often.",
    "pilot_timeout_s": "A pilot silent for this long is considered lost.",
    "max_request_mb": "Largest API request body.",
    "max_file_mb": "Largest uploaded file.",
    "retry_memory_factor": "A job killed for its memory is retried with this much more (at least its measured peak).",
    "retry_max_memory_mb": "... but never more than this.",
    "retry_walltime_factor": "A job killed for its walltime is retried with this much more walltime.",
    "retry_max_walltime_s": "... but never more than this.",
    "tls_cert": "PEM certificate (relative to this directory); TLS is on when tls_cert and tls_key are set.",
    "tls_key": "Its private key.",
    "tls_ca": "The CA that signed tls_cert (made by init); users, sites and pilots trust this file.",
    "insecure_http": "Serve plain HTTP without TLS, on loopback addresses only (for trying glidein out).",
    "insecure_http_any_host": "... and on other addresses too (behind a TLS proxy): tokens travel in clear text.",
    "totp_key_file": "Key that encrypts operators' TOTP secrets; mode 0600, kept apart from the database.",
    "pilot_token_grace_s": "Pilot tokens outlive queue wait plus walltime by this much.",
    "pilot_token_max_s": "Longest lifetime of a pilot token.",
    "reservation_after_s": "A multicore job idle this long gets one pilot that keeps its free cores for it (its other "
    "jobs drain until the job fits), so a stream of single-core jobs cannot starve it; 0: no reservations.",
    "reservation_max_hold_s": "A pilot keeps cores for such a job at most this long, then fills them again for as long "
    "before it may hold again; 0: no reservations.",
    "reservation_per_owner": "At most this many pilots hold cores for one user's jobs at once (whatever their shapes), "
    "so one user's many large jobs cannot keep many pilots idle while others' jobs wait; 0: no such limit.",
    "default_share": "Fair share of the cores of a user not named in shares (priority orders only a user's own jobs).",
    "shares": 'Fair shares per user, e.g. { "alice" = 3.0 }; set with `glidein-server user share NAME N`.',
    "metrics": "Serve GET /metrics (Prometheus) and the web dashboard /ui; false: neither, and no counts kept.",
    "dataset_label": "The job label that names a job's dataset in the metrics and the dashboard.",
    "client_dead_after_s": "A site client silent for this long is shown as down (3 of its cycles).",
    "dashboard_sample_s": "The web dashboard's plot of cores in use per site takes a sample this often.",
}
for _role in ("operator", "user", "site", "pilot", "anonymous"):
    KEY_DOCS[f"rate_{_role}_per_s"] = f"Requests per second per {_role} token (anonymous: per address); 0: no limit."
    KEY_DOCS[f"rate_{_role}_burst"] = f"Requests a {_role} may send in a burst above that rate."

#: Old or alternative spellings of keys, accepted as they are.
ALIASES = {"server_url": "public_url"}


def settings_from_toml(raw: dict[str, Any], path: Path) -> ServerSettings:
    """Check and convert the parsed config file, with plain messages that name the file and the key."""
    fields = ServerSettings.__struct_fields__
    for table in raw:
        if table != "server":
            close = difflib.get_close_matches(table, ["server"], n=1)
            what = f"table [{table}]" if isinstance(raw[table], dict) else f"key {table!r} outside [server]"
            raise ConfigError(
                f"{path}: unknown {what}" + (f"; did you mean [{close[0]}]?" if close else "."),
                hint="Every setting lives in the [server] table.",
                field=table,
            )
    section = raw.get("server", {})
    values: dict[str, Any] = {}
    for key, value in section.items():
        name = ALIASES.get(key, key)
        if name not in fields:
            close = difflib.get_close_matches(key, [*fields, *ALIASES], n=1)
            raise ConfigError(
                f"{path}: [server] has no key {key!r}" + (f"; did you mean {close[0]!r}?" if close else "."),
                hint="The keys, each explained, are in the file `glidein-server init` writes.",
                field=key,
            )
        values[name] = _with_units(path, name, value)
    try:
        return msgspec.convert(values, type=ServerSettings, strict=True)
    except msgspec.ValidationError as exc:
        text, _, at = str(exc).partition(" - at `$.")
        key = re.split(r"\W", at, maxsplit=1)[0] or "?"  # of "shares[...]", the table's key
        doc = KEY_DOCS.get(key, "")
        shown = section.get(key, values.get(key))
        raise ConfigError(
            f"{path}: [server] {key} = {toml_value(shown)} is not valid: {_plain(text)}"
            + (" (in each entry)." if "[" in at else "."),
            hint=f"{key}: {doc}" if doc else "Fix that value; the server did not start.",
            field=key,
        ) from None


def _with_units(path: Path, key: str, value: Any) -> Any:
    """``"60s"`` for a ``*_s`` key, ``"30d"`` for a ``*_days`` key and ``"4G"`` for a ``*_mb`` key, as site
    configs take them."""
    if not isinstance(value, str):
        return value
    try:
        if key.endswith("_s") and not key.startswith("rate_"):
            return parse_duration_s(value, field=key)
        if key.endswith("_days"):
            number = value.strip()
            return float(number) if number.replace(".", "", 1).isdigit() else parse_duration_s(value, field=key) / 86400
        if key.endswith("_mb"):
            return parse_memory_mb(value, field=key)
    except GlideinError as exc:
        hint = 'Write a number of days, or a duration such as "30d" or "12h".' if key.endswith("_days") else exc.hint
        raise ConfigError(f"{path}: [server] {exc.message}", hint=hint, field=key) from None
    return value


_TYPES = {
    "int": "a whole number",
    "float": "a number",
    "str": "text in quotes",
    "bool": "true or false",
    "object": "a table such as { name = 1 }",
    "array": "a list",
    "null": "nothing",
}


def _plain(text: str) -> str:
    """msgspec's "Expected `int`, got `str`" in the words of a config file."""
    text = re.sub(r"Expected `(\w+)`", lambda m: f"expected {_TYPES.get(m[1], m[1])}", text)
    return re.sub(r"got `(\w+)`", lambda m: f"got {_TYPES.get(m[1], m[1])}", text)


def toml_value(value: Any) -> str:
    """``value`` as it is written in a TOML file."""
    if isinstance(value, str):
        return f'"{_toml_escape(value)}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):  # an inline table, names quoted
        items = ", ".join(f'"{_toml_escape(str(k))}" = {toml_value(v)}' for k, v in sorted(value.items()))
        return f"{{ {items} }}" if items else "{}"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return str(value)
