from __future__ import annotations

import argparse
import hashlib
import io
import json
from pathlib import Path

import pytest

from glidein_client.user import cli, lastsubmit, render
from glidein_client.user.commands import fetch, status, submit
from glidein_client.user.jobfile import LocalFiles
from glidein_client.wire.errors import ValidationError
from glidein_client.wire.schema import InputFile, JobList, JobSpec, JobState, JobView

SHA_DATA = "a" * 64


# --- ids -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("words", "ids"),
    [
        (["7"], [7]),
        (["1-5"], [1, 2, 3, 4, 5]),
        (["1-3,7", "5"], [1, 2, 3, 7, 5]),
        (["3", "1-4"], [3, 1, 2, 4]),
        (["2-2"], [2]),
        (["1,,2,"], [1, 2]),
    ],
)
def test_parse_ids(words: list[str], ids: list[int]) -> None:
    assert cli.parse_ids(words) == ids


@pytest.mark.parametrize("word", ["0", "5-3", "a", "1-", "-3", "1-2-3", "1.5", "1-2000000"])
def test_parse_ids_rejects(word: str) -> None:
    with pytest.raises(ValueError):
        cli.parse_ids([word])


def test_ids_round_trip_through_compressed_form() -> None:
    ids = [1, 2, 3, 5, 7, 8, 9, 20]
    text = render.compress_ids(ids)
    assert text == "1-3,5,7-9,20"
    assert cli.parse_ids([text]) == ids
    assert render.compress_ids(range(1, 121)) == "1-120"
    assert render.compress_ids([]) == ""


def test_bad_ids_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.parse_args(["status", "9-3"])
    assert exit_.value.code == 2
    assert "not a valid range" in capsys.readouterr().err


def test_ids_flatten_and_dedupe() -> None:
    args = cli.parse_args(["cancel", "1-3", "2", "7,8"])
    assert args.ids == [1, 2, 3, 7, 8]


# --- submit ----------------------------------------------------------------------------------

EXAMPLE = (
    "submit --cpus 4 --memory 2G --walltime 10m --gpus 0 --disk 1G -i data.txt -o result.txt "
    "--label dataset=run42 --site NAME --priority 3 --max-retries 5 --env K=V -- python3 analyse.py data.txt"
).split()


def test_submit_example_builds_the_right_spec(tmp_path: Path) -> None:
    args = cli.parse_args(EXAMPLE)
    (draft,) = submit.submit_drafts(args, tmp_path)
    files = LocalFiles(digests={tmp_path / "data.txt": (SHA_DATA, 123)})
    assert draft.resolve(files) == JobSpec(
        argv=["python3", "analyse.py", "data.txt"],
        cpus=4,
        memory_mb=2048,
        walltime_s=600,
        gpus=0,
        disk_mb=1024,
        inputs=[InputFile(name="data.txt", sha256=SHA_DATA, size=123)],
        outputs=["result.txt"],
        labels={"dataset": "run42"},
        sites=["NAME"],
        priority=3,
        max_retries=5,
        env={"K": "V"},
    )


def test_submit_command_keeps_its_own_options() -> None:
    args = cli.parse_args(["submit", "--cpus", "2", "--", "grep", "--count", "-e", "x", "--", "f"])
    assert args.argv == ["grep", "--count", "-e", "x", "--", "f"]
    assert args.cpus == 2


def test_submit_defaults(tmp_path: Path) -> None:
    (draft,) = submit.submit_drafts(cli.parse_args(["submit", "--", "true"]), tmp_path)
    assert draft.resolve(LocalFiles()) == JobSpec(argv=["true"])


def test_submit_inputs_urls_and_renames(tmp_path: Path) -> None:
    args = cli.parse_args(
        ["submit", "-i", "https://example.org/d/x.dat?v=1", "-i", "sub/a.txt:in/a.txt", "-i", "/abs/b", "--", "ls"]
    )
    (draft,) = submit.submit_drafts(args, tmp_path)
    assert draft.spec.inputs == [
        InputFile(name="x.dat", url="https://example.org/d/x.dat?v=1"),
        InputFile(name="in/a.txt"),
        InputFile(name="b"),
    ]
    assert [li.path for li in draft.local_inputs] == [tmp_path / "sub" / "a.txt", Path("/abs/b")]


def test_submit_script(tmp_path: Path) -> None:
    args = cli.parse_args(["submit", "--script", "run.sh", "--walltime", "1:00:00"])
    (draft,) = submit.submit_drafts(args, tmp_path)
    assert draft.script_path == tmp_path / "run.sh"
    spec = draft.resolve(LocalFiles(scripts={tmp_path / "run.sh": "echo hi\n"}))
    assert spec.script == "echo hi\n" and spec.argv is None and spec.walltime_s == 3600


def test_submit_script_and_command_conflict(tmp_path: Path) -> None:
    args = cli.parse_args(["submit", "--script", "run.sh", "--", "true"])
    with pytest.raises(ValidationError, match="exactly one of a command"):
        submit.submit_drafts(args, tmp_path)


def test_submit_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="Nothing to submit"):
        submit.submit_drafts(cli.parse_args(["submit", "--cpus", "2"]), tmp_path)


def test_submit_job_file_with_flags_is_refused(tmp_path: Path) -> None:
    args = cli.parse_args(["submit", "jobs.toml", "--cpus", "2", "-i", "x"])
    with pytest.raises(ValidationError, match=r"Options --cpus, -i cannot be combined with the job file"):
        submit.submit_drafts(args, tmp_path)


def test_submit_job_file(tmp_path: Path) -> None:
    (tmp_path / "jobs.toml").write_text('[[job]]\nargv = ["true"]\ncount = 3\n')
    args = cli.parse_args(["submit", str(tmp_path / "jobs.toml")])
    assert len(submit.submit_drafts(args, Path("/elsewhere"))) == 3


def test_submit_bad_output(tmp_path: Path) -> None:
    args = cli.parse_args(["submit", "-o", "../x", "--", "true"])
    with pytest.raises(ValidationError, match=r"command line: outputs\[0\]: '../x' points outside"):
        submit.submit_drafts(args, tmp_path)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["submit", "--memory", "2X", "--", "true"], "argument --memory: cannot read '2X' as a size"),
        (["submit", "--walltime", "soon", "--", "true"], "argument --walltime: cannot read 'soon'"),
        (["submit", "--cpus", "0", "--", "true"], "argument --cpus"),
        (["submit", "--env", "NOVALUE", "--", "true"], "'NOVALUE' is not KEY=VALUE"),
        (["submit", "--"], "nothing follows '--'"),
        (["status", "--state", "sleeping"], "invalid choice"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.parse_args(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


# --- global options --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--json", "--url", "https://x", "--token-file", "t", "status"],
        ["status", "--json", "--url", "https://x", "--token-file", "t"],
        ["--url", "https://x", "status", "--token-file", "t", "--json"],
    ],
)
def test_global_options_anywhere(argv: list[str]) -> None:
    args = cli.parse_args(argv)
    assert (args.json, args.url, args.token_file) == (True, "https://x", "t")


def test_global_options_default() -> None:
    args = cli.parse_args(["wait", "1-3", "--timeout", "10m", "--label", "dataset=run42"])
    assert (args.json, args.url, args.token_file) == (False, None, None)
    assert (args.ids, args.timeout, args.label) == ([1, 2, 3], 600, ["dataset=run42"])


def test_submit_split_skips_global_option_values() -> None:
    args = cli.parse_args(["--url", "https://submit", "submit", "--", "echo", "hi"])
    assert args.argv == ["echo", "hi"]


# --- error handling at the edge ------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("GLIDEIN_URL", "GLIDEIN_TOKEN", "GLIDEIN_TOKEN_FILE", "GLIDEIN_CA_FILE", "GLIDEIN_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("GLIDEIN_DEBUG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))


@pytest.mark.usefixtures("clean_env")
def test_missing_url_is_a_plain_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(["status"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: No glidein server URL is set.\nhint: ")
    assert "GLIDEIN_URL" in err and "Traceback" not in err


@pytest.mark.usefixtures("clean_env")
def test_unexpected_errors_are_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    async def boom(args: argparse.Namespace) -> int:
        raise RuntimeError("boom")

    monkeypatch.setattr(status, "cmd_status", boom)
    assert cli.run(["status"]) == 1
    assert capsys.readouterr().err == "error: unexpected RuntimeError: boom (set GLIDEIN_DEBUG=1 for details)\n"
    monkeypatch.setenv("GLIDEIN_DEBUG", "1")
    with pytest.raises(RuntimeError):
        cli.run(["status"])


@pytest.mark.usefixtures("clean_env")
def test_interrupt_exits_130_quietly(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    async def interrupted(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(status, "cmd_status", interrupted)
    assert cli.run(["status"]) == 130
    assert capsys.readouterr().err == ""


# --- rendering -------------------------------------------------------------------------------


def test_progress_line() -> None:
    line = render.progress_line({"done": 60, "failed": 2, "running": 38}, 100, width=10)
    assert line == "[######----] 60/100 done 2 failed 38 running"
    assert render.progress_line({}, 0, width=4) == "[####] 0/0 done"


def test_counts_and_table() -> None:
    assert render.format_counts({"idle": 1, "done": 3, "failed": 0}) == "3 done, 1 idle"
    job = JobView(
        id=12,
        owner="ann",
        state=JobState.IDLE,
        spec=JobSpec(argv=["true"], cpus=64, memory_mb=2048),
        submitted_at=1000.0,
        note="no site has pilots with 64 cpus",
    )
    text = render.jobs_table([job], now=1030.0)
    header, row = text.splitlines()
    assert header.split() == ["ID", "STATE", "CPUS", "MEM", "SITE", "AGE/TOOK", "EXIT", "NOTE"]
    assert row.split()[:7] == ["12", "idle", "64", "2G", "-", "30s", "-"]
    assert row.endswith("no site has pilots with 64 cpus")


# --- fetch safety ----------------------------------------------------------------------------


class FakeOutputs:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.calls = 0

    async def fetch_output(self, job_id: int, name: str) -> bytes:
        self.calls += 1
        return self.data


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_fetch_writes_under_job_dir_and_skips_fresh_copies(tmp_path: Path) -> None:
    api = FakeOutputs(b"result")
    path, fresh = await fetch.fetch_one(api, tmp_path, 7, "sub/r.txt", sha(b"result"))  # type: ignore[arg-type]
    assert (path, fresh) == (tmp_path / "7" / "sub" / "r.txt", True)
    assert path.read_bytes() == b"result"
    assert await fetch.fetch_one(api, tmp_path, 7, "sub/r.txt", sha(b"result")) == (path, False)  # type: ignore[arg-type]
    assert api.calls == 1


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../x", ""])
async def test_fetch_refuses_names_outside(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValidationError):
        await fetch.fetch_one(FakeOutputs(b""), tmp_path, 1, name, sha(b""))  # type: ignore[arg-type]


async def test_fetch_refuses_symlink_escape(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "link").symlink_to(tmp_path.parent)
    with pytest.raises(ValidationError, match="outside"):
        await fetch.fetch_one(FakeOutputs(b""), tmp_path, 1, "link/x", sha(b""))  # type: ignore[arg-type]


async def test_fetch_checks_sha256(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="sha256"):
        await fetch.fetch_one(FakeOutputs(b"corrupt"), tmp_path, 1, "r.txt", sha(b"good"))  # type: ignore[arg-type]
    assert not (tmp_path / "1" / "r.txt").exists()


# --- status paging ---------------------------------------------------------------------------


class FakeListing:
    """The server's job list over ``n`` idle jobs; the calls are recorded."""

    def __init__(self, n: int) -> None:
        self.jobs = [
            JobView(id=i, owner="ann", state=JobState.IDLE, spec=JobSpec(argv=["true"]), submitted_at=0.0)
            for i in range(1, n + 1)
        ]
        self.calls: list[dict[str, object]] = []

    async def list_jobs(
        self,
        *,
        state: str | None = None,
        label: str | None = None,
        limit: int = 1000,
        offset: int = 0,
        after: int | None = None,
        newest_first: bool = False,
        counts: bool = True,
        ids: list[int] | None = None,
    ) -> JobList:
        self.calls.append({"state": state, "limit": limit, "offset": offset, "after": after, "ids": ids})
        jobs = [j for j in self.jobs if state in (None, j.state.value) and (ids is None or j.id in ids)]
        total = len(jobs)
        jobs = jobs[::-1] if newest_first else jobs
        if after is not None:
            jobs = [j for j in jobs if (j.id < after if newest_first else j.id > after)]
        return JobList(jobs=jobs[offset : offset + limit], counts={"idle": total} if counts and total else {})


@pytest.mark.parametrize(("flags", "first", "shown"), [([], 71, 50), (["--all"], 1, 120), (["--json"], 1, 120)])
async def test_status_shows_newest_rows_unless_all(flags: list[str], first: int, shown: int) -> None:
    args = cli.parse_args(["status", *flags])
    result = await status.status_list(FakeListing(120), args)  # type: ignore[arg-type]
    assert (result.jobs[0].id, len(result.jobs), result.counts) == (first, shown, {"idle": 120})


async def test_plain_status_of_a_long_queue_asks_a_few_pages_not_every_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    lastsubmit.remember("http://x", [99_990, 99_999])
    api = FakeListing(100_000)
    result, scope = await status.recent_status(api, cli.parse_args(["status"]), "http://x")  # type: ignore[arg-type]
    assert [j.id for j in result.jobs] == list(range(99_951, 100_001)) and result.counts == {"idle": 100_000}
    assert scope == ""
    assert len(api.calls) <= 4 and all(c["offset"] == 0 and c["limit"] <= 50 for c in api.calls), api.calls
    api.calls.clear()
    result = await status.status_list(api, cli.parse_args(["status", "--all"]))  # type: ignore[arg-type]
    assert len(result.jobs) == 100_000 and len(api.calls) == 101 and all(c["offset"] == 0 for c in api.calls)
    assert [c["after"] for c in api.calls[:3]] == [None, 1000, 2000]


def test_progress_without_terminal_prints_lines_sparingly() -> None:
    stream = io.StringIO()
    progress = render.Progress(stream)
    progress.show("[--] 0/2 done 2 idle")
    progress.show("[#-] 1/2 done 1 idle")  # too soon for another line
    progress.message("note: 1 job (2): waiting")
    progress.close()
    assert stream.getvalue() == "[--] 0/2 done 2 idle\nnote: 1 job (2): waiting\n"


def test_the_pilot_takes_human_units_and_its_old_spellings() -> None:
    from glidein_client.pilot.cli import _parser

    new = _parser().parse_args(
        "run --url u --token-file t --memory 2G --walltime 2h --disk 10G --idle-timeout 2m "
        "--fallback-walltime 1h --prefetch 3s --min-disk 1G --signal-grace 5m".split()
    )
    old = _parser().parse_args(
        "run --server-url u --token-file t --memory-mb 2048 --walltime-s 7200 --disk-mb 10240 "
        "--idle-timeout-s 120 --fallback-walltime-s 3600 --prefetch-s 3 --min-disk-mb 1024 "
        "--signal-grace-s 300".split()
    )
    for args in (new, old):
        assert args.url == "u"
        assert (args.memory_mb, args.walltime_s, args.disk_mb, args.idle_timeout_s) == (2048, 7200, 10240, 120.0)
        assert (args.fallback_walltime_s, args.prefetch_s, args.min_disk_mb, args.signal_grace_s) == (
            3600,
            3.0,
            1024,
            300.0,
        )


def test_the_pilot_help_shows_one_name_per_concept() -> None:
    from glidein_client.pilot.cli import _parser

    run = _parser()._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    text = run.format_help()
    for shown in ("--url", "--memory SIZE", "--walltime DURATION", "--signal-grace DURATION", "--min-disk SIZE"):
        assert shown in text
    for hidden in ("--server-url", "--memory-mb", "--walltime-s", "--signal-grace-s", "--min-disk-mb", "--prefetch-s"):
        assert hidden not in text


@pytest.mark.usefixtures("clean_env")
def test_json_errors_are_a_json_object_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(["status", "--json"]) == 1
    out, err = capsys.readouterr()
    error = json.loads(out)
    assert error["error"] == "No glidein server URL is set." and error["kind"] == "ConfigError" and error["hint"]
    assert err.startswith("error: No glidein server URL is set.")


def test_the_pilot_without_its_url_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    from glidein_client.pilot.cli import main as pilot_main

    with pytest.raises(SystemExit) as exited:
        pilot_main(["run", "--token-file", "t"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.endswith("glidein-pilot run: error: the following arguments are required: --url\n")
