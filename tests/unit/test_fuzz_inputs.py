"""Fuzzed site configs and job files: whatever arrives, the answer is a plain GlideinError naming
the file, never another exception (which would reach the user as a traceback)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from glidein_client.site.config import parse_site_config
from glidein_client.user.jobfile import check_all, parse_jobfile
from glidein_client.wire.errors import GlideinError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SITE_KEYS = ["name", "server_url", "token_file", "ca_file", "scheduler", "scratch_dir", "cycle_s"]
PILOT_KEYS = ["cpus", "memory", "gpus", "disk", "walltime", "idle_timeout", "whole_node"]
JOB_KEYS = [
    "argv",
    "script",
    "env",
    "cpus",
    "memory",
    "gpus",
    "disk",
    "walltime",
    "inputs",
    "outputs",
    "labels",
    "sites",
    "priority",
    "max_retries",
    "count",
    "colour",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["2G", "10m", "-1", "../x", "/etc/passwd", "local", "1e9"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6,
)


def section(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(keys) | st.text(max_size=8), values, max_size=len(keys))


site_configs = st.fixed_dictionaries(
    {},
    optional={
        "site": section(SITE_KEYS) | values,
        "pilot": section(PILOT_KEYS) | values,
        "limits": section(["max_pilots", "max_idle_pilots", "max_submit_per_cycle", "max_queued_s"]) | values,
        "batch": section(["partition", "account", "qos", "constraint", "extra_directives", "env_setup"]) | values,
        "other": values,
    },
)


@settings(max_examples=300, deadline=None)
@given(site_configs)
def test_any_site_config_is_accepted_or_refused_plainly(raw: dict[str, Any]) -> None:
    try:
        parse_site_config(raw, "site_configs/fuzz.toml")
    except GlideinError as exc:
        assert "fuzz.toml" in str(exc)
        assert "Traceback" not in str(exc)


job_files = st.fixed_dictionaries(
    {},
    optional={
        "defaults": section(JOB_KEYS) | values,
        "job": st.lists(section(JOB_KEYS) | values, max_size=3) | values,
        "other": values,
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(job_files)
def test_any_job_file_is_accepted_or_refused_plainly(tmp_path: Path, raw: dict[str, Any]) -> None:
    try:
        check_all(parse_jobfile(raw, source="jobs.toml", base_dir=tmp_path))
    except GlideinError as exc:
        assert "jobs.toml" in str(exc) or "job" in str(exc)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_text_as_a_site_config_file_is_refused_plainly(text: str) -> None:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return  # load_site_config turns this into a ConfigError naming the file (tested elsewhere)
    try:
        parse_site_config(raw, "site_configs/fuzz.toml")
    except GlideinError:
        pass


VALID_SITE: dict[str, dict[str, Any]] = {
    "site": {
        "name": "hpc1",
        "server_url": "https://glidein.example.org",
        "token_file": "/t",
        "scheduler": "slurm",
        "scratch_dir": "/scratch/glidein",
        "cycle_s": 30,
    },
    "pilot": {"cpus": 4, "memory": "8G", "gpus": 0, "disk": "10G", "walltime": "2h", "idle_timeout": "5m"},
    "limits": {"max_pilots": 10, "max_idle_pilots": 2, "max_submit_per_cycle": 5, "max_queued_s": "1d"},
    "batch": {"partition": "short", "extra_directives": ["--exclude=n1"], "env_setup": ["module load x"]},
}
VALID_JOB: dict[str, Any] = {
    "argv": ["python3", "a.py"],
    "cpus": 2,
    "memory": "1G",
    "walltime": "10m",
    "outputs": ["out.txt"],
    "labels": {"dataset": "d"},
    "max_retries": 1,
}


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([(t, k) for t, keys in VALID_SITE.items() for k in keys]), values)
def test_one_bad_value_in_a_good_site_config_is_named(where: tuple[str, str], value: Any) -> None:
    table, key = where
    raw = {t: dict(v) for t, v in VALID_SITE.items()}
    raw[table][key] = value
    try:
        parse_site_config(raw, "site_configs/fuzz.toml")
    except GlideinError as exc:
        assert "fuzz.toml" in str(exc)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from([*VALID_JOB, "script", "env", "inputs", "sites", "priority", "count", "gpus", "disk"]), values)
def test_one_bad_value_in_a_good_job_is_named(tmp_path: Path, key: str, value: Any) -> None:
    job = dict(VALID_JOB, **{key: value})
    try:
        check_all(parse_jobfile({"job": [job]}, source="jobs.toml", base_dir=tmp_path))
    except GlideinError as exc:
        assert str(exc)
