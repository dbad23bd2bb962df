"""Fake ``systemctl --user`` and ``loginctl`` of systemd 252 (Debian 12), for the deploy tests.

No systemd runs as PID 1 on the test machines, so a user instance cannot run there (the real
``systemctl --user`` answers "Failed to connect to bus"; a test uses that too). These fakes keep
what a user manager would: unit files are read from ``~/.config/systemd/user`` as systemd does,
``daemon-reload`` loads them, ``enable`` links them into ``default.target.wants``, ``start`` runs
the loaded unit's ``ExecStart`` as a detached process (its output goes to ``<unit>.log`` in the
state directory, as the journal would hold it), ``stop`` ends it with SIGTERM (SIGKILL after
10 s). Messages, stdout/stderr and exit codes are those of systemd 252: ``is-enabled`` prints
enabled/disabled (exit 0/1), ``is-active`` active/inactive (exit 0/3); a unit changed on disk
without ``daemon-reload`` keeps running its old definition, with systemd's warning. Every call
is appended to ``calls.jsonl`` in the state directory ``~/.local/state/fake-systemd``.
``loginctl show-user --property=Linger --value USER`` prints ``$FAKE_SYSTEMD_LINGER`` (yes).

Only the Python standard library is used.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HOME = Path(os.path.expanduser("~"))
UNITS = HOME / ".config" / "systemd" / "user"
WANTS = UNITS / "default.target.wants"
STATE = HOME / ".local" / "state" / "fake-systemd"


def _loaded() -> dict[str, str]:
    try:
        data: dict[str, str] = json.loads((STATE / "loaded.json").read_text())
        return data
    except (OSError, ValueError):
        return {}


def _definition(unit: str) -> str | None:
    """The unit as the manager knows it: as last loaded, else (never loaded) from disk."""
    loaded = _loaded()
    path = UNITS / unit
    if unit in loaded:
        if path.exists() and path.read_text() != loaded[unit]:
            sys.stderr.write(
                f"Warning: The unit file, source configuration file or drop-ins of {unit} changed on "
                "disk. Run 'systemctl --user daemon-reload' to reload units.\n"
            )
        return loaded[unit]
    return path.read_text() if path.exists() else None


def _exec_start(text: str) -> list[str]:
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif section == "Service" and line.startswith("ExecStart="):
            words = shlex.split(line[len("ExecStart=") :])  # double-quoted words, backslash escapes
            return [w.replace("%%", "%").replace("$$", "$") for w in words]
    raise SystemExit(f"fake systemctl: no ExecStart in [Service] of {text!r}")


def _pid(unit: str) -> int | None:
    try:
        pid = int((STATE / f"{unit}.pid").read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    try:  # a zombie is not running: the fake's children are reaped by init, not by us
        if Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z"):
            return None
    except (OSError, IndexError):
        return None
    return pid


def _start(unit: str) -> int:
    text = _definition(unit)
    if text is None:
        sys.stderr.write(f"Failed to start {unit}: Unit {unit} not found.\n")
        return 5
    if _pid(unit) is not None:
        return 0
    log = open(STATE / f"{unit}.log", "ab")  # handed to the child
    proc = subprocess.Popen(
        _exec_start(text), stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, cwd=HOME
    )
    (STATE / f"{unit}.pid").write_text(str(proc.pid))
    with open(STATE / "starts.jsonl", "a") as f:
        f.write(json.dumps({"unit": unit, "pid": proc.pid, "argv": _exec_start(text)}) + "\n")
    return 0


def _stop(unit: str) -> int:
    pid = _pid(unit)
    if pid is None:
        return 0
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while _pid(unit) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    if _pid(unit) is not None:
        os.killpg(pid, signal.SIGKILL)
    return 0


def _show_environment(units: list[str], now: bool) -> int:
    print(f"HOME={HOME}\nPATH={os.environ.get('PATH', '')}\nXDG_RUNTIME_DIR=/run/user/{os.getuid()}")
    return 0


def _daemon_reload(units: list[str], now: bool) -> int:
    loaded = {p.name: p.read_text() for p in UNITS.glob("*.service")} if UNITS.is_dir() else {}
    (STATE / "loaded.json").write_text(json.dumps(loaded))
    return 0


def _is_enabled(units: list[str], now: bool) -> int:
    unit = units[0]
    if not (UNITS / unit).exists():
        sys.stderr.write(f"Failed to get unit file state for {unit}: No such file or directory\n")
        return 1
    enabled = (WANTS / unit).is_symlink()
    print("enabled" if enabled else "disabled")
    return 0 if enabled else 1


def _is_active(units: list[str], now: bool) -> int:
    active = _pid(units[0]) is not None
    print("active" if active else "inactive")
    return 0 if active else 3


def _enable(units: list[str], now: bool) -> int:
    unit = units[0]
    if not (UNITS / unit).exists():
        sys.stderr.write(f"Failed to enable unit: Unit file {unit} does not exist.\n")
        return 1
    if not (WANTS / unit).is_symlink():
        WANTS.mkdir(parents=True, exist_ok=True)
        (WANTS / unit).symlink_to(UNITS / unit)
        sys.stderr.write(f"Created symlink {WANTS / unit} \u2192 {UNITS / unit}.\n")
    return _start(unit) if now else 0


def _disable(units: list[str], now: bool) -> int:
    unit = units[0]
    if (WANTS / unit).is_symlink():
        (WANTS / unit).unlink()
        sys.stderr.write(f'Removed "{WANTS / unit}".\n')
    return _stop(unit) if now else 0


def _restart(units: list[str], now: bool) -> int:
    _stop(units[0])
    return _start(units[0])


_VERBS: dict[str, Callable[[list[str], bool], int]] = {
    "show-environment": _show_environment,
    "daemon-reload": _daemon_reload,
    "is-enabled": _is_enabled,
    "is-active": _is_active,
    "enable": _enable,
    "disable": _disable,
    "start": lambda units, now: _start(units[0]),
    "stop": lambda units, now: _stop(units[0]),
    "restart": _restart,
}


def systemctl(args: list[str]) -> int:
    if not args or args[0] != "--user":
        sys.stderr.write("fake systemctl: only --user is emulated\n")
        return 1
    verb, rest = (args[1], args[2:]) if len(args) > 1 else ("list-units", [])
    handler = _VERBS.get(verb)
    if handler is None:
        sys.stderr.write(f"fake systemctl: {verb!r} is not emulated\n")
        return 1
    return handler([a for a in rest if not a.startswith("-")], "--now" in rest)


def loginctl(args: list[str]) -> int:
    if args[:1] == ["show-user"] and "--property=Linger" in args and "--value" in args:
        print(os.environ.get("FAKE_SYSTEMD_LINGER", "yes"))
        return 0
    sys.stderr.write(f"fake loginctl: {args!r} is not emulated\n")
    return 1


def main(command: str, args: list[str]) -> int:
    STATE.mkdir(parents=True, exist_ok=True)
    with open(STATE / "calls.jsonl", "a") as f:
        f.write(json.dumps([command, *args]) + "\n")
    return systemctl(args) if command == "systemctl" else loginctl(args)
