"""The executor against real processes: pinning, limits, kills, logs, environment."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
from pathlib import Path

import psutil
import pytest

from glidein_client.pilot.executor import JobProcess, RunResult
from glidein_client.pilot.isolation import bubblewrap
from glidein_client.pilot.launch import SCRIPT_NAME, STDOUT_NAME, JobRun, read_tail
from glidein_client.pilot.proctree import descendant_pids, own_peak_rss_mb, tree_rss_mb
from glidein_client.wire.schema import LOG_TAIL_BYTES, JobSpec, Outcome

PY = sys.executable


def make_run(
    tmp_path: Path,
    *,
    argv: list[str] | None = None,
    script: str | None = None,
    cores: frozenset[int] = frozenset(),
    gpus: tuple[str, ...] = (),
    **spec: object,
) -> JobRun:
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir(exist_ok=True)
    return JobRun(
        attempt_id=7,
        job_id=3,
        spec=JobSpec(argv=argv, script=script, **spec),  # type: ignore[arg-type]
        sandbox=sandbox,
        cores=cores,
        gpus=gpus,
    )


async def run_job(run: JobRun, **kwargs: object) -> RunResult:
    proc = JobProcess(run, **kwargs)  # type: ignore[arg-type]
    await proc.start()
    return await proc.wait()


def gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


async def wait_gone(pid: int, timeout_s: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        await asyncio.sleep(0.02)
    return gone(pid)


async def test_success_with_logs(tmp_path: Path) -> None:
    code = "import sys; print('hello out'); print('hello err', file=sys.stderr)"
    result = await run_job(make_run(tmp_path, argv=[PY, "-c", code]))
    assert result.outcome is Outcome.DONE
    assert (result.exit_code, result.reason) == (0, None)
    assert result.stdout_tail == "hello out\n"
    assert result.stderr_tail == "hello err\n"
    assert 0 < result.wall_s < 5
    # A peak at or below the pilot's own says nothing: a spawned job shares the pilot's memory until it execs.
    assert result.max_rss_mb == 0.0


async def test_a_peak_between_samples_is_measured_at_exit(tmp_path: Path) -> None:
    peak_mb = int(own_peak_rss_mb()) + 100
    code = f"x = b'1' * ({peak_mb} << 20)"
    result = await run_job(make_run(tmp_path, argv=[PY, "-c", code], memory_mb=peak_mb + 200))
    assert result.outcome is Outcome.DONE
    assert peak_mb <= result.max_rss_mb < peak_mb + 100  # from the exit's resource usage, though never sampled
    over = await run_job(make_run(tmp_path, argv=[PY, "-c", code], memory_mb=peak_mb // 2))
    assert over.outcome is Outcome.MEMORY
    assert over.reason is not None and f"more than its {peak_mb // 2} MB" in over.reason


async def test_nonzero_exit(tmp_path: Path) -> None:
    result = await run_job(make_run(tmp_path, argv=["sh", "-c", "echo oops >&2; exit 3"]))
    assert result.outcome is Outcome.FAILED
    assert result.exit_code == 3
    assert result.reason == "exited with code 3"
    assert result.stderr_tail == "oops\n"


async def test_killed_by_a_signal(tmp_path: Path) -> None:
    result = await run_job(make_run(tmp_path, argv=["sh", "-c", "kill -SEGV $$"]))
    assert result.outcome is Outcome.FAILED
    assert result.reason == "killed by signal SIGSEGV"
    assert result.exit_code == -11


async def test_long_output_keeps_the_tail(tmp_path: Path) -> None:
    code = "import sys; sys.stdout.write('a' * 100000 + 'é' * 20000 + 'END')"
    result = await run_job(make_run(tmp_path, argv=[PY, "-c", code]))
    assert result.outcome is Outcome.DONE
    assert len(result.stdout_tail.encode()) <= LOG_TAIL_BYTES
    assert result.stdout_tail.endswith("é" * 20000 + "END")
    assert "\ufffd" not in result.stdout_tail


def test_read_tail_drops_a_split_character(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_bytes("xé".encode() * 10)
    assert read_tail(path, size=4) == "xé"  # b"\xa9x\xc3\xa9": the split byte is dropped
    assert read_tail(tmp_path / "missing") == ""


async def test_missing_command(tmp_path: Path) -> None:
    result = await run_job(make_run(tmp_path, argv=["glidein-no-such-command", "x"]))
    assert result.outcome is Outcome.FAILED
    assert result.reason == "command 'glidein-no-such-command' was not found"
    assert result.exit_code is None


async def test_command_not_executable(tmp_path: Path) -> None:
    data = tmp_path / "data.txt"
    data.write_text("not a program")
    data.chmod(0o644)
    result = await run_job(make_run(tmp_path, argv=[str(data)]))
    assert result.outcome is Outcome.FAILED
    assert result.reason == f"command {str(data)!r} could not be run: permission denied"


async def test_missing_sandbox_is_not_the_jobs_fault(tmp_path: Path) -> None:
    run = make_run(tmp_path, argv=["true"])
    run.sandbox.rmdir()
    result = await run_job(run)
    assert result.outcome is Outcome.INTERRUPTED
    assert str(run.sandbox) in (result.reason or "")


async def test_script_job(tmp_path: Path) -> None:
    run = make_run(tmp_path, script='set -e\necho "in $(pwd)"\necho done >result.txt\n')
    result = await run_job(run)
    assert result.outcome is Outcome.DONE
    assert result.stdout_tail == f"in {run.sandbox}\n"
    assert (run.sandbox / "result.txt").read_text() == "done\n"
    assert (run.sandbox / SCRIPT_NAME).exists()


async def test_script_with_a_shebang_runs_its_interpreter(tmp_path: Path) -> None:
    result = await run_job(make_run(tmp_path, script=f"#!{PY}\nimport sys\nprint(sys.version_info[0])\n"))
    assert result.outcome is Outcome.DONE
    assert result.stdout_tail == "3\n"
    with_argument = await run_job(make_run(tmp_path, script=f"#!/usr/bin/env {PY}\nprint('via env')\n"))
    assert with_argument.stdout_tail == "via env\n"
    missing = await run_job(make_run(tmp_path, script="#!/no/such/interpreter\nexit 0\n"))
    assert missing.outcome is Outcome.FAILED
    assert "#!/no/such/interpreter" in (missing.reason or "")


async def test_environment(tmp_path: Path) -> None:
    base = {"PATH": os.environ["PATH"], "HOME": "/home/x", "GLIDEIN_TOKEN": "secret", "GLIDEIN_TOKEN_FILE": "/t"}
    code = "import json, os; print(json.dumps(dict(os.environ)))"
    run = make_run(tmp_path, argv=[PY, "-c", code], env={"MY_VAR": "1"}, cpus=2, memory_mb=512, gpus=("GPU-a", "GPU-b"))
    result = await run_job(run, base_env=base)
    env = json.loads(result.stdout_tail)
    assert env["HOME"] == "/home/x" and env["MY_VAR"] == "1"
    assert not [k for k in env if k.startswith("GLIDEIN_TOKEN")]
    assert env["GLIDEIN_JOB_ID"] == "3" and env["GLIDEIN_ATTEMPT_ID"] == "7"
    assert env["GLIDEIN_CPUS"] == "2" and env["GLIDEIN_MEMORY_MB"] == "512"
    assert env["GLIDEIN_SANDBOX"] == str(run.sandbox)
    assert env["OMP_NUM_THREADS"] == "2"
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-a,GPU-b"


async def test_environment_without_gpus_and_job_overrides(tmp_path: Path) -> None:
    run = make_run(
        tmp_path,
        argv=["sh", "-c", 'printf "%s|%s" "$CUDA_VISIBLE_DEVICES" "$OMP_NUM_THREADS"'],
        env={"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "9"},
        cpus=4,
    )
    result = await run_job(run)
    assert result.stdout_tail == "|1"  # the job may tune its threads, never claim other GPUs


async def test_affinity_is_honoured(tmp_path: Path) -> None:
    mine = sorted(os.sched_getaffinity(0))
    core = mine[-1]
    result = await run_job(
        make_run(
            tmp_path, argv=[PY, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"], cores=frozenset({core})
        )
    )
    assert result.stdout_tail == f"[{core}]\n"
    assert sorted(os.sched_getaffinity(0)) == mine  # the pilot's own mask is back
    proc_status = await run_job(
        make_run(tmp_path, argv=["grep", "Cpus_allowed_list", "/proc/self/status"], cores=frozenset({core}))
    )
    assert proc_status.stdout_tail.split() == ["Cpus_allowed_list:", str(core)]


async def test_walltime_kills_the_whole_tree(tmp_path: Path) -> None:
    run = make_run(tmp_path, argv=["sh", "-c", "sleep 60 & echo $!; setsid sleep 60 & echo $!; sleep 60"], walltime_s=1)
    t0 = time.monotonic()
    result = await run_job(run, poll_s=0.1, grace_s=1.0)
    assert result.outcome is Outcome.WALLTIME
    assert result.reason == "exceeded its walltime of 1 s"
    assert 0.9 < result.wall_s < 3 and time.monotonic() - t0 < 3
    pids = [int(line) for line in (run.sandbox / STDOUT_NAME).read_text().split()]
    assert len(pids) == 2
    for pid in pids:  # the one in the job's group and the one that left it with setsid
        assert await wait_gone(pid), f"process {pid} survived"


async def test_term_ignored_then_killed_after_grace(tmp_path: Path) -> None:
    run = make_run(tmp_path, argv=["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done"])
    proc = JobProcess(run, grace_s=0.3)
    await proc.start()
    await asyncio.sleep(0.3)
    t0 = time.monotonic()
    proc.kill(Outcome.CANCELLED, "cancelled by its owner")
    result = await proc.wait()
    assert 0.25 < time.monotonic() - t0 < 2
    assert result.outcome is Outcome.CANCELLED
    assert result.reason == "cancelled by its owner"
    assert result.exit_code == -9


async def test_memory_limit(tmp_path: Path) -> None:
    code = "import time; b = bytearray(300 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096]); time.sleep(30)"
    result = await run_job(make_run(tmp_path, argv=[PY, "-c", code], memory_mb=100), poll_s=0.1, grace_s=1.0)
    assert result.outcome is Outcome.MEMORY
    assert result.reason is not None and result.reason.endswith("MB, more than its 100 MB")
    assert result.max_rss_mb > 100
    assert result.wall_s < 4


async def test_memory_of_children_counts(tmp_path: Path) -> None:
    child = "import time; b = bytearray(80 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096]); time.sleep(30)"
    script = f"'{PY}' -c \"{child}\" &\n'{PY}' -c \"{child}\" &\nwait\n"
    result = await run_job(make_run(tmp_path, script=script, memory_mb=120), poll_s=0.1, grace_s=1.0)
    assert result.outcome is Outcome.MEMORY


async def test_kill_interrupted_mid_run(tmp_path: Path) -> None:
    proc = JobProcess(make_run(tmp_path, argv=["sleep", "30"]), grace_s=1.0)
    await proc.start()
    assert proc.pid is not None
    waiter = asyncio.ensure_future(proc.wait())
    await asyncio.sleep(0.2)
    assert not waiter.done()
    proc.kill(Outcome.INTERRUPTED, "the pilot is stopping")
    proc.kill(Outcome.CANCELLED, "a second word does not count")
    result = await asyncio.wait_for(waiter, 3)
    assert result.outcome is Outcome.INTERRUPTED
    assert result.reason == "the pilot is stopping"
    assert result.exit_code == -15
    assert gone(proc.pid)
    assert await proc.wait() is result


async def test_kill_before_start_never_spawns(tmp_path: Path) -> None:
    proc = JobProcess(make_run(tmp_path, argv=["sleep", "30"]))
    proc.kill(Outcome.CANCELLED, "cancelled by its owner")
    await proc.start()
    assert proc.pid is None
    result = await proc.wait()
    assert (result.outcome, result.reason, result.exit_code) == (Outcome.CANCELLED, "cancelled by its owner", None)


async def test_kill_after_exit_keeps_the_real_result(tmp_path: Path) -> None:
    proc = JobProcess(make_run(tmp_path, argv=["true"]))
    await proc.start()
    result = await proc.wait()
    proc.kill(Outcome.CANCELLED, "too late")
    assert result.outcome is Outcome.DONE
    assert await proc.wait() is result


async def test_leftover_background_processes_are_cleaned_up(tmp_path: Path) -> None:
    run = make_run(tmp_path, argv=["sh", "-c", "sleep 60 & echo $!"])
    result = await run_job(run)
    assert result.outcome is Outcome.DONE
    assert await wait_gone(int(result.stdout_tail))


async def test_wait_before_start_is_a_programming_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="start"):
        await JobProcess(make_run(tmp_path, argv=["true"])).wait()


async def test_tree_helpers() -> None:
    proc = await asyncio.create_subprocess_exec("sh", "-c", "sleep 5 & sleep 5")
    try:
        await asyncio.sleep(0.2)
        kids = descendant_pids(proc.pid)
        assert len(kids) == 2
        assert tree_rss_mb(proc.pid) > 0
    finally:
        for pid in [proc.pid, *descendant_pids(proc.pid)]:
            os.kill(pid, 9)
        await proc.wait()


async def test_many_short_jobs_in_parallel(tmp_path: Path) -> None:
    cores = sorted(os.sched_getaffinity(0))

    async def one(i: int) -> RunResult:
        sandbox = tmp_path / f"s{i}"
        sandbox.mkdir()
        run = JobRun(i, i, JobSpec(argv=["true"]), sandbox, frozenset({i % len(cores)}), ())
        return await run_job(run)

    t0 = time.monotonic()
    results = await asyncio.gather(*(one(i) for i in range(200)))
    assert all(r.outcome is Outcome.DONE for r in results)
    assert time.monotonic() - t0 < 4


async def test_without_pidfd_it_polls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pidfd(pid: int, flags: int = 0) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    result = await run_job(make_run(tmp_path, argv=["sh", "-c", "echo hi; exit 4"]))
    assert (result.outcome, result.exit_code, result.stdout_tail) == (Outcome.FAILED, 4, "hi\n")
    killed = JobProcess(make_run(tmp_path, argv=["sleep", "30"]), grace_s=1.0)
    await killed.start()
    killed.kill(Outcome.INTERRUPTED, "the pilot is stopping")
    assert (await killed.wait()).exit_code == -15


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")
async def test_a_missing_command_in_a_bwrap_sandbox_is_named(tmp_path: Path) -> None:
    box = await bubblewrap(str(tmp_path))
    assert not isinstance(box, str), box
    missing = await run_job(make_run(tmp_path, argv=["no-such-command-here"]), isolation=box)
    assert (missing.outcome, missing.reason) == (Outcome.FAILED, "command 'no-such-command-here' was not found")
    script = await run_job(make_run(tmp_path, script="#!/usr/bin/no-such-shell\necho hi\n"), isolation=box)
    assert script.reason == "the interpreter in the script's first line (#!/usr/bin/no-such-shell) was not found"
    ok = await run_job(make_run(tmp_path, argv=["sh", "-c", "echo inside"]), isolation=box)
    assert (ok.outcome, ok.stdout_tail) == (Outcome.DONE, "inside\n")
