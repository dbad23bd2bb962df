"""Golden files of rendered templates (``tests/golden``); GLIDEIN_UPDATE_GOLDEN=1 rewrites them."""

from __future__ import annotations

import os
from pathlib import Path

GOLDEN = Path(__file__).resolve().parent / "golden"


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("GLIDEIN_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"golden file {path} is missing; run with GLIDEIN_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"rendered text differs from {path}"
