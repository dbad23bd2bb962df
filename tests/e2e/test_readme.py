"""Every command in the README's shell blocks runs as written, on one machine as ``make demo`` does
(server on SQLite, the local scheduler's pilots), in a fresh home directory.

The commands run in a private network namespace, so the README's fixed port (8321) cannot meet
another server on this machine. Only the block of ``make demo`` / ``make test`` is left out: the
demo has its own test (tests/e2e/test_demo.py) and ``make test`` is this suite.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
NOT_RUN_HERE = {"make demo", "make test"}


def shell_blocks(text: str) -> list[list[str]]:
    """The commands of each ```sh block: one per line, comments and blank lines dropped."""
    blocks = []
    for body in re.findall(r"^```sh\n(.*?)^```", text, flags=re.S | re.M):
        lines = [line.split("  #")[0].strip() for line in body.splitlines()]
        blocks.append([line for line in lines if line and not line.startswith("#")])
    return blocks


def test_the_readme_has_commands_and_only_the_make_block_is_left_out() -> None:
    blocks = shell_blocks((REPO / "README.md").read_text())
    skipped = [b for b in blocks if {c.split("  ")[0].strip() for c in b} <= NOT_RUN_HERE]
    assert [set(b) for b in skipped] == [NOT_RUN_HERE]
    assert sum(len(b) for b in blocks if b not in skipped) >= 15


def _kill_ours(marker: str) -> None:
    """Processes the README started (the local scheduler's pilots run in their own sessions)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            environ = (proc / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline or f"HOME={marker}" in environ:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_every_readme_command_runs_as_written(tmp_path: Path) -> None:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare(1) for a private network namespace")
    blocks = [b for b in shell_blocks((REPO / "README.md").read_text()) if not set(b) <= NOT_RUN_HERE]
    home = tmp_path / "home"
    work = home / "work"
    work.mkdir(parents=True)
    for tree in ("examples", "site_configs"):
        shutil.copytree(REPO / tree, work / tree)
    script = ["set -e", "ip link set lo up"]
    for block in blocks:
        for command in block:
            script += [f"echo '+ {command.replace(chr(39), '')}'", command]
    (tmp_path / "readme.sh").write_text("\n".join(script) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLIDEIN_")}
    env.update(HOME=str(home), PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}")
    env.pop("XDG_CONFIG_HOME", None)
    env.pop("XDG_STATE_HOME", None)
    proc = subprocess.Popen(
        ["unshare", "-n", "bash", str(tmp_path / "readme.sh")],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=420)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        _kill_ours(str(home))
    logs = "".join(f"\n--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in work.glob("*.log"))
    assert proc.returncode == 0, out + logs
    assert "Traceback" not in out and "unexpected" not in out, out
    assert "Submitted 1 job: 1" in out and "Submitted 11 jobs: 2-12" in out
    assert re.search(r"^1[12] jobs: 1[12] done$", out, flags=re.M), out + logs  # the last submit's, and any active
    results = work / "examples" / "out"
    assert (results / "1" / "result.txt").read_text().startswith("NEUTRINO MUON PILOT")
    assert (results / "12" / "summary.txt").is_file()
    assert "job 13: cancelled" in out
