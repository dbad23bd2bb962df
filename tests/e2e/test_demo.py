"""The README's first command, end to end: `python -m glidein_server.demo` (what `make demo` runs)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow]


def test_demo_runs_mixed_jobs_and_verifies_every_output() -> None:
    proc = subprocess.run([sys.executable, "-m", "glidein_server.demo", "--jobs", "30"], capture_output=True,
                          text=True, timeout=110, check=False)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "All jobs done and verified." in out
    assert re.search(r"jobs\s+30 done, 0 failed", out)
    assert re.search(r"outputs\s+30 verified, 0 wrong", out)
    occupancy = re.search(r"occupancy\s+(\d+)%", out)
    assert occupancy is not None and 0 < int(occupancy.group(1)) <= 100
    assert "Traceback" not in out + proc.stderr
