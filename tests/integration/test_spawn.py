"""Starting job processes (posix_spawn from the sandbox): the job's own PATH, cwd, descriptors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from glidein_client.pilot import spawn as spawn_module
from glidein_client.pilot.spawn import spawn

PY = sys.executable


def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None, **kw: object) -> tuple[int, str, str]:
    """Spawn, wait, and return (exit code, stdout, stderr)."""
    out = os.open(cwd / "out", os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    err = os.open(cwd / "err", os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    nul = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        pid = spawn(
            argv,
            cwd=str(cwd),
            env=env if env is not None else dict(os.environ),
            stdin=nul,
            stdout=out,
            stderr=err,
            **kw,
        )  # type: ignore[arg-type]
        _, status = os.waitpid(pid, 0)
    finally:
        for fd in (out, err, nul):
            os.close(fd)
    return os.waitstatus_to_exitcode(status), (cwd / "out").read_text(), (cwd / "err").read_text()


def test_runs_in_its_sandbox_in_a_session_of_its_own_and_the_pilot_keeps_its_cwd(tmp_path: Path) -> None:
    here = os.getcwd()
    code = "import os; print(os.getcwd()); print(os.getsid(0) == os.getpid())"
    rc, out, _ = run([PY, "-c", code], tmp_path)
    assert rc == 0 and out.split() == [str(tmp_path), "True"]
    assert os.getcwd() == here


def test_only_stdin_stdout_and_stderr_reach_the_job(tmp_path: Path) -> None:
    # A fresh process that was handed an inheritable descriptor, as a batch system may do.
    code = f"""
import os, sys
from glidein_client.pilot.spawn import spawn
given = os.dup2(os.open(os.devnull, os.O_RDONLY), 50)  # inheritable, above what ls opens
out = os.open({str(tmp_path / "fds")!r}, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
pid = spawn(["ls", "/proc/self/fd"], cwd={str(tmp_path)!r}, env=dict(os.environ), stdin=0, stdout=out, stderr=2)
os.waitpid(pid, 0)
print(given)
"""
    given = subprocess.run([PY, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    seen = {int(fd) for fd in (tmp_path / "fds").read_text().split()}
    assert int(given) > 2
    # ls itself opens the directory it lists: that one descriptor shows besides 0-2.
    assert int(given) not in seen and len(seen - {0, 1, 2}) <= 1, (given, seen)


def test_logs_on_descriptors_below_three_still_reach_the_job(tmp_path: Path) -> None:
    saved = os.dup(1)
    log = os.open(tmp_path / "log", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.dup2(log, 1, inheritable=False)  # the log is now descriptor 1 itself, close-on-exec
        pid = spawn(["echo", "to fd one"], cwd=str(tmp_path), env=dict(os.environ), stdin=0, stdout=1, stderr=2)
        os.waitpid(pid, 0)
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(log)
    assert (tmp_path / "log").read_text() == "to fd one\n"


def test_commands_are_found_on_the_jobs_path_not_the_pilots(tmp_path: Path) -> None:
    tools = tmp_path / "tools"
    tools.mkdir()
    tool = tools / "glidein-test-tool"
    tool.write_text("#!/bin/sh\necho from tools\n")
    tool.chmod(0o755)
    env = {**os.environ, "PATH": f"{tools}:/usr/bin:/bin"}
    assert shutil.which("glidein-test-tool") is None
    assert run(["glidein-test-tool"], tmp_path, env)[:2] == (0, "from tools\n")
    with pytest.raises(FileNotFoundError) as missing:
        run(["glidein-test-tool"], tmp_path)  # the pilot's PATH
    assert missing.value.filename == "glidein-test-tool"


def test_a_relative_path_entry_is_taken_from_the_sandbox(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    local = tmp_path / "bin" / "glidein-local-tool"
    local.write_text("#!/bin/sh\npwd\n")
    local.chmod(0o755)
    env = {**os.environ, "PATH": "bin:/usr/bin:/bin"}
    assert run(["glidein-local-tool"], tmp_path, env)[:2] == (0, f"{tmp_path}\n")
    assert not any(name == "glidein-local-tool" for name, _ in spawn_module._FOUND)  # never cached


def test_a_command_that_moved_is_looked_up_again(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    for folder, word in ((first, "first"), (second, "second")):
        folder.mkdir()
        tool = folder / "glidein-moving-tool"
        tool.write_text(f"#!/bin/sh\necho {word}\n")
        tool.chmod(0o755)
    env = {**os.environ, "PATH": f"{first}:{second}"}
    assert run(["glidein-moving-tool"], tmp_path, env)[1] == "first\n"
    (first / "glidein-moving-tool").unlink()
    assert run(["glidein-moving-tool"], tmp_path, env)[1] == "second\n"


def test_a_file_on_the_path_that_is_not_executable_is_permission_denied(tmp_path: Path) -> None:
    (tmp_path / "glidein-data-file").write_text("data")
    env = {**os.environ, "PATH": str(tmp_path)}
    with pytest.raises(PermissionError):
        run(["glidein-data-file"], tmp_path, env)


def test_pinned_to_its_cores_and_the_pilot_keeps_its_mask(tmp_path: Path) -> None:
    mine = os.sched_getaffinity(0)
    core = min(mine)
    rc, out, _ = run([PY, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"], tmp_path, cores=frozenset({core}))
    assert rc == 0 and out == f"[{core}]\n"
    assert os.sched_getaffinity(0) == mine
