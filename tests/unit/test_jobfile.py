from __future__ import annotations

import asyncio
import hashlib
import textwrap
from pathlib import Path

import pytest

from glidein_client.user import drafts
from glidein_client.user.jobfile import LocalFiles, load_jobfile, read_local_files, upload_files
from glidein_client.wire.errors import ValidationError
from glidein_client.wire.rules import check_job
from glidein_client.wire.schema import InputFile, OutputFile


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


GOOD = """
    [defaults]
    cpus = 1
    memory = "1G"
    walltime = "10m"
    labels = { dataset = "run42" }

    [[job]]
    argv = ["python3", "analyse.py", "a.txt"]
    inputs = ["a.txt", "analyse.py", "https://example.org/x.dat", { path = "b.txt", name = "in/b.txt" }]
    outputs = ["result.txt"]
    cpus = 2
    memory = 512
    walltime = 90
    labels = { step = "one" }

    [[job]]
    script = "run.sh"
    disk = "2G"
    walltime = "01:00:00"
    gpus = 1
    sites = ["alpha", "beta"]
    priority = 5
    max_retries = 0
    env = { MODE = "fast" }
"""


def test_good_file(tmp_path: Path) -> None:
    path = write(tmp_path / "jobs.toml", GOOD)
    first, second = load_jobfile(path)

    assert first.spec.argv == ["python3", "analyse.py", "a.txt"]
    assert first.spec.cpus == 2
    assert first.spec.memory_mb == 512
    assert first.spec.walltime_s == 90
    assert first.spec.outputs == ["result.txt"]
    assert first.spec.labels == {"dataset": "run42", "step": "one"}
    assert [i.name for i in first.spec.inputs] == ["a.txt", "analyse.py", "x.dat", "in/b.txt"]
    assert first.spec.inputs[2] == InputFile(name="x.dat", url="https://example.org/x.dat")
    assert [(li.index, li.path) for li in first.local_inputs] == [
        (0, tmp_path / "a.txt"),
        (1, tmp_path / "analyse.py"),
        (3, tmp_path / "b.txt"),
    ]
    assert first.label == "job[0]" and first.index is None

    assert second.script_path == tmp_path / "run.sh"
    assert second.spec.argv is None
    assert second.spec.cpus == 1 and second.spec.memory_mb == 1024
    assert second.spec.disk_mb == 2048 and second.spec.walltime_s == 3600
    assert second.spec.gpus == 1 and second.spec.sites == ["alpha", "beta"]
    assert second.spec.priority == 5 and second.spec.max_retries == 0
    assert second.spec.env == {"MODE": "fast"}
    assert second.spec.labels == {"dataset": "run42"}


def test_example_file_parses() -> None:
    example = Path(__file__).parents[2] / "examples" / "jobs.toml"
    drafts = load_jobfile(example)
    assert len(drafts) == 11
    assert drafts[3].spec.argv == ["python3", "analyse.py", "part-3.txt"]
    assert drafts[-1].spec.labels == {"dataset": "run42", "step": "merge"}


def test_count_expands_index(tmp_path: Path) -> None:
    path = write(
        tmp_path / "jobs.toml",
        """
        [[job]]
        argv = ["analyse", "part-{index}.txt"]
        inputs = ["data/part-{index}.txt", "common.py"]
        outputs = ["out-{index}.txt"]
        env = { PART = "{index}" }
        labels = { keep = "{index}" }
        count = 3
        """,
    )
    drafts = load_jobfile(path)
    assert [d.index for d in drafts] == [0, 1, 2]
    assert [d.spec.argv for d in drafts] == [["analyse", f"part-{i}.txt"] for i in range(3)]
    assert [d.spec.outputs for d in drafts] == [[f"out-{i}.txt"] for i in range(3)]
    assert [d.spec.env for d in drafts] == [{"PART": str(i)} for i in range(3)]
    assert [d.spec.inputs[0].name for d in drafts] == ["part-0.txt", "part-1.txt", "part-2.txt"]
    assert drafts[2].local_inputs[0].path == tmp_path / "data" / "part-2.txt"
    # Only argv, inputs, outputs and env are expanded.
    assert drafts[1].spec.labels == {"keep": "{index}"}


def test_without_count_braces_stay(tmp_path: Path) -> None:
    path = write(tmp_path / "jobs.toml", '[[job]]\nargv = ["echo", "{index}"]\n')
    (draft,) = load_jobfile(path)
    assert draft.spec.argv == ["echo", "{index}"]


@pytest.mark.parametrize("count", [0, -1, "3", 1.5, True])
def test_bad_count(tmp_path: Path, count: object) -> None:
    value = f'"{count}"' if isinstance(count, str) else str(count).lower()
    path = write(tmp_path / "jobs.toml", f'[[job]]\nargv = ["true"]\ncount = {value}\n')
    with pytest.raises(ValidationError, match=r"job\[0\]\.count"):
        load_jobfile(path)


def test_unknown_key_names_file_job_and_key(tmp_path: Path) -> None:
    path = write(
        tmp_path / "jobs.toml",
        """
        [[job]]
        argv = ["true"]
        [[job]]
        argv = ["true"]
        ouputs = ["x"]
        """,
    )
    with pytest.raises(ValidationError) as err:
        load_jobfile(path)
    assert str(path) in err.value.message
    assert "job[1].ouputs" in err.value.message
    assert "did you mean 'outputs'" in err.value.message
    assert err.value.fields["field"] == "job[1].ouputs"


def test_unit_suffixed_key_points_at_plain_key(tmp_path: Path) -> None:
    path = write(tmp_path / "jobs.toml", '[[job]]\nargv = ["true"]\nmemory_mb = 100\n')
    with pytest.raises(ValidationError) as err:
        load_jobfile(path)
    assert "memory_mb" in err.value.message
    assert err.value.hint is not None and "memory = " in err.value.hint


def test_unknown_key_in_defaults(tmp_path: Path) -> None:
    path = write(tmp_path / "jobs.toml", '[defaults]\ncpu = 2\n[[job]]\nargv = ["true"]\n')
    with pytest.raises(ValidationError, match=r"defaults\.cpu: unknown key 'cpu' \(did you mean 'cpus'\?\)"):
        load_jobfile(path)


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = write(tmp_path / "jobs.toml", '[[jobs]]\nargv = ["true"]\n')
    with pytest.raises(ValidationError, match="did you mean 'job'"):
        load_jobfile(path)


def test_bad_memory_unit(tmp_path: Path) -> None:
    path = write(
        tmp_path / "jobs.toml",
        """
        [[job]]
        argv = ["true"]
        [[job]]
        argv = ["true"]
        [[job]]
        argv = ["true"]
        memory = "2X"
        """,
    )
    with pytest.raises(ValidationError) as err:
        load_jobfile(path)
    assert err.value.message.startswith(f"{path}: job[2].memory: cannot read '2X' as a size")
    assert err.value.fields["field"] == "job[2].memory"
    assert err.value.hint is not None and "2G" in err.value.hint


def test_bad_walltime_type_and_bounds(tmp_path: Path) -> None:
    path = write(tmp_path / "jobs.toml", '[[job]]\nargv = ["true"]\nwalltime = 0\n')
    with pytest.raises(ValidationError, match=r"job\[0\]\.walltime: Expected `int` >= 1 \(in seconds\)"):
        load_jobfile(path)
    path = write(tmp_path / "jobs.toml", '[[job]]\nargv = ["true"]\ncpus = "four"\n')
    with pytest.raises(ValidationError, match=r"job\[0\]\.cpus: Expected `int`, got `str`"):
        load_jobfile(path)


def test_relative_paths_resolve_against_file_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sub = tmp_path / "project"
    path = write(
        sub / "jobs.toml",
        """
        [[job]]
        script = "scripts/run.sh"
        inputs = ["data/a.txt", "/abs/b.txt", "c.txt:renamed.txt"]
        """,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (draft,) = load_jobfile(Path("..") / "project" / "jobs.toml")
    base = path.resolve().parent
    assert draft.script_path == base / "scripts" / "run.sh"
    assert [li.path for li in draft.local_inputs] == [base / "data" / "a.txt", Path("/abs/b.txt"), base / "c.txt"]
    assert [i.name for i in draft.spec.inputs] == ["a.txt", "b.txt", "renamed.txt"]


def test_output_escaping_sandbox_names_job_and_field(tmp_path: Path) -> None:
    path = write(
        tmp_path / "jobs.toml",
        """
        [[job]]
        argv = ["true"]
        outputs = ["ok.txt"]
        [[job]]
        argv = ["true"]
        outputs = ["ok.txt", "../escape.txt"]
        """,
    )
    with pytest.raises(ValidationError) as err:
        load_jobfile(path)
    assert err.value.message == f"{path}: job[1].outputs[1]: '../escape.txt' points outside the job's sandbox."
    assert err.value.fields["field"] == "job[1].outputs[1]"


def test_error_in_one_copy_names_its_index(tmp_path: Path) -> None:
    path = write(
        tmp_path / "jobs.toml",
        '[[job]]\nargv = ["true"]\ninputs = ["a.txt", "{index}.txt:a.txt"]\ncount = 2\n',
    )
    with pytest.raises(ValidationError, match=r"job\[0\]\.inputs\[1\]\.name: 'a.txt' is given twice.*index 0"):
        load_jobfile(path)


def test_job_needs_argv_or_script(tmp_path: Path) -> None:
    path = write(tmp_path / "jobs.toml", "[[job]]\ncpus = 2\n")
    with pytest.raises(ValidationError) as err:
        load_jobfile(path)
    assert "job[0].argv/script" in err.value.message
    assert err.value.hint is not None and "argv = [" in err.value.hint


def test_bad_input_table(tmp_path: Path) -> None:
    path = write(tmp_path / "jobs.toml", '[[job]]\nargv = ["true"]\ninputs = [{ path = "a", url = "https://x/y" }]\n')
    with pytest.raises(ValidationError, match=r"job\[0\]\.inputs\[0\]: an input table needs either path or url"):
        load_jobfile(path)


def test_not_toml_and_missing(tmp_path: Path) -> None:
    path = write(tmp_path / "run.sh", "#!/bin/sh\necho hi\n")
    with pytest.raises(ValidationError, match="not valid TOML") as err:
        load_jobfile(path)
    assert err.value.hint is not None and "--" in err.value.hint
    with pytest.raises(ValidationError, match="does not exist"):
        load_jobfile(tmp_path / "nope.toml")


def test_no_jobs(tmp_path: Path) -> None:
    path = write(tmp_path / "jobs.toml", "[defaults]\ncpus = 2\n")
    with pytest.raises(ValidationError, match="no jobs"):
        load_jobfile(path)


# --- reading and uploading -------------------------------------------------------------------


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_read_resolve_and_upload_dedupe(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"same")
    (tmp_path / "copy.txt").write_bytes(b"same")
    (tmp_path / "other.txt").write_bytes(b"other")
    (tmp_path / "run.sh").write_text("echo hi\n")
    path = write(
        tmp_path / "jobs.toml",
        """
        [[job]]
        argv = ["cat", "a.txt"]
        inputs = ["a.txt", "other.txt"]
        count = 20
        [[job]]
        script = "run.sh"
        inputs = ["copy.txt"]
        """,
    )
    drafts = load_jobfile(path)
    files = await read_local_files(drafts)
    assert files.digests[tmp_path / "a.txt"] == (sha(b"same"), 4)
    assert files.scripts[tmp_path / "run.sh"] == "echo hi\n"

    specs = [d.resolve(files) for d in drafts]
    for spec in specs:
        check_job(spec)
    assert specs[0].inputs[0] == InputFile(name="a.txt", sha256=sha(b"same"), size=4)
    assert specs[-1].script == "echo hi\n"
    assert specs[-1].inputs == [InputFile(name="copy.txt", sha256=sha(b"same"), size=4)]

    api = FakeApi()
    assert await upload_files(api, files) == 2  # type: ignore[arg-type]
    assert sorted(api.uploaded) == sorted([sha(b"same"), sha(b"other")])


async def test_upload_concurrency_is_bounded(tmp_path: Path) -> None:
    files = LocalFiles()
    for i in range(30):
        p = tmp_path / f"f{i}"
        p.write_text(str(i))
        files.digests[p] = (sha(str(i).encode()), len(str(i)))
    api = FakeApi(delay=0.01)
    assert await upload_files(api, files) == 30  # type: ignore[arg-type]
    assert api.peak <= drafts.UPLOAD_CONCURRENCY
    assert api.peak > 1


async def test_upload_detects_changed_file(tmp_path: Path) -> None:
    p = tmp_path / "a.txt"
    p.write_text("now")
    files = LocalFiles(digests={p: (sha(b"before"), 6)})
    with pytest.raises(ValidationError, match="changed while it was being uploaded"):
        await upload_files(FakeApi(), files)  # type: ignore[arg-type]


async def test_missing_input_names_job_and_field(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    path = write(
        tmp_path / "jobs.toml",
        '[[job]]\nargv = ["true"]\ninputs = ["a.txt"]\n[[job]]\nargv = ["true"]\ninputs = ["a.txt", "gone.txt"]\n',
    )
    with pytest.raises(ValidationError) as err:
        await read_local_files(load_jobfile(path))
    assert err.value.message.startswith(f"{path}: job[1].inputs[1]: cannot read {tmp_path / 'gone.txt'}")


class FakeApi:
    def __init__(self, delay: float = 0.0) -> None:
        self.uploaded: list[str] = []
        self.delay = delay
        self.active = 0
        self.peak = 0

    async def upload_file(self, path: Path) -> OutputFile:
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await asyncio.sleep(self.delay)
            data = await asyncio.to_thread(path.read_bytes)
            self.uploaded.append(sha(data))
            return OutputFile(name=sha(data), sha256=sha(data), size=len(data))
        finally:
            self.active -= 1


async def test_empty_script_is_refused(tmp_path: Path) -> None:
    (tmp_path / "run.sh").write_text("\n")
    path = write(tmp_path / "jobs.toml", '[[job]]\nscript = "run.sh"\n')
    with pytest.raises(ValidationError, match=r"job\[0\]\.script: .*run.sh is empty"):
        await read_local_files(load_jobfile(path))


def test_a_home_directory_of_an_unknown_user_is_a_plain_error(tmp_path: Path) -> None:
    path = write(
        tmp_path / "jobs.toml",
        """
        [[job]]
        argv = ["true"]
        inputs = ["~no-such-user-here/a.txt"]
        [[job]]
        script = "~no-such-user-here/run.sh"
        """,
    )
    with pytest.raises(ValidationError) as err:
        load_jobfile(path)
    assert "'~no-such-user-here'" in err.value.message
    assert "job[0].inputs[0]" in err.value.message and "job[1].script" in err.value.message
    one = write(tmp_path / "one.toml", '[[job]]\nargv = ["true"]\ninputs = ["~no-such-user-here/a.txt"]\n')
    with pytest.raises(ValidationError) as err:
        load_jobfile(one)
    assert "relative to the job file" in (err.value.hint or "")
