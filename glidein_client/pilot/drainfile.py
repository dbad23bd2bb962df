"""A file that asks a pilot to drain (``--drain-file``): ``glidein-client drain`` writes it into the
pilot's directory.

The pilot then takes no more jobs, lets every running job finish and leaves. It works alike under
every batch system that shares the pilot's directory with the login node, over SSH too, and needs
no signal the batch system may not pass on.
"""

from __future__ import annotations

import os
from pathlib import Path


class DrainFile:
    """Looks for the file at most every ``every_s`` seconds (a stat, in the pilot's main loop)."""

    def __init__(self, path: Path | None, every_s: float = 1.0) -> None:
        self.path = path
        self.every_s = every_s
        self._next = 0.0

    def asked(self, mono: float) -> bool:
        if self.path is None or mono < self._next:
            return False
        self._next = mono + self.every_s
        return os.path.exists(self.path)
