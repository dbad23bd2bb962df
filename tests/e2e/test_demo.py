"""The README's first command, end to end: `python -m glidein_demo.demo` (what `make demo` runs)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]


def test_demo_runs_mixed_jobs_and_verifies_every_output() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "glidein_demo.demo", "--jobs", "30", "--keep"],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    out = proc.stdout
    kept = re.search(r"\(kept (.+)\)", out)
    assert kept, out + proc.stderr
    root = Path(kept.group(1))
    try:
        assert proc.returncode == 0, out + proc.stderr
        assert "All jobs done and verified." in out
        assert re.search(r"jobs\s+30 done, 0 failed", out)
        assert re.search(r"outputs\s+30 verified, 0 wrong", out)
        occupancy = re.search(r"occupancy\s+(\d+)%", out)
        assert occupancy is not None and 0 < int(occupancy.group(1)) <= 100
        assert "Traceback" not in out + proc.stderr
        assert re.search(r"server\s+https://", out), "the demo serves HTTPS with the CA made by init"
        # No secret in any log: the user's and the site's token. Each pilot removed its own token file
        # once it had read it, so no job (and no log) could find it on disk.
        assert list(root.glob("site/pilots-meta/*")) and not list(root.glob("site/pilots-meta/*/token"))
        secrets = [p.read_text().strip() for p in [root / "user.token", root / "site.token"]]
        assert all(secrets)
        logs = [
            out,
            proc.stderr,
            *(p.read_text(errors="replace") for p in root.glob("*.log")),
            *(p.read_text(errors="replace") for p in root.glob("site/local-batch/*/std*")),
        ]
        for secret in secrets:
            assert not any(secret in text for text in logs)
    finally:
        shutil.rmtree(root, ignore_errors=True)
