"""Why pilots failed at start: the tail of a failed pilot's error output, read through the runner
(so over SSH too), turned into one line that names the pilot, the reason and the config key to check.

The pure part (:func:`explain`) reads text; :func:`read_failure` fetches the text of one pilot.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from glidein_client.site.config import SiteConfig
from glidein_client.site.runners.local import Runner

#: Where backends put a pilot's error output and output, in its own directory (first found wins).
OUTPUT_FILES = ("pilot.err", "stderr", "pilot.out", "stdout")
TAIL_BYTES = 4096

#: (pattern in the pilot's output, the config key to check, what to do), first match wins.
_CAUSES: tuple[tuple[re.Pattern[str], str, str], ...] = (
    (
        re.compile(r"CA file|certificate verify failed|CERTIFICATE_VERIFY_FAILED|self.signed", re.I),
        "site.ca_file",
        "name the server's CA (tls/ca.pem in its state directory); the client copies it to each pilot",
    ),
    (
        re.compile(r"permission denied|no such file or directory|not found|cannot execute", re.I),
        "batch.python",
        "name a Python with glidein installed that the worker nodes can run",
    ),
    (
        re.compile(r"no module named|modulenotfounderror", re.I),
        "batch.python",
        "that Python lacks glidein: name the deployed one (<ssh.remote_dir>/venv/bin/python) or install it",
    ),
    (
        re.compile(r"cannot reach|connection refused|timed out|name or service not known|unreachable", re.I),
        "site.url",
        "the worker nodes cannot reach the server: check the URL, or give the site a [network] relay or mailbox",
    ),
    (
        re.compile(r"token", re.I),
        "site.token_file",
        "the pilot's token was refused or unreadable: check the site's token",
    ),
)


@dataclass(frozen=True)
class PilotFailure:
    pilot: str  # glidein-<site>-<id>
    reason: str  # the telling line of its output
    key: str  # the config key to check
    fix: str

    def text(self, config: str) -> str:
        return f"pilot {self.pilot} failed at start: {self.reason} (check {self.key} in {config}: {self.fix})"


def explain(pilot: str, output: str) -> PilotFailure | None:
    """The failure one pilot's output tells of; None when it says nothing useful."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    if not lines:
        return None
    for pattern, key, fix in _CAUSES:
        for line in reversed(lines):
            if pattern.search(line):
                return PilotFailure(pilot, line[:300], key, fix)
    errors = [ln for ln in lines if "error" in ln.lower()] or lines
    return PilotFailure(pilot, errors[-1][:300], "the pilot's output", "read the file named above")


async def read_failure(runner: Runner, site: SiteConfig, pilot_id: int) -> PilotFailure | None:
    """Read the tail of pilot ``pilot_id``'s error output through ``runner`` and explain it."""
    name = f"glidein-{site.name}-{pilot_id}"
    workdir = posixpath.join(site.site.scratch_dir, "pilots-meta", name)
    for filename in OUTPUT_FILES:
        try:
            data = await runner.read_file(posixpath.join(workdir, filename))
        except OSError:
            continue
        found = explain(name, data[-TAIL_BYTES:].decode(errors="replace"))
        if found is not None:
            return found
    return None
