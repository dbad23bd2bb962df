"""The local scheduler (embedded default): pilots run as detached processes on this host.

It behaves like a small batch system so that the client treats it like any other:

- ``submit`` creates ``<scratch_dir>/local-batch/<tag>/`` (mode 0700), writes the rendered
  ``pilot.sh`` there and starts ``/bin/sh pilot.sh`` in a new session, with stdin from
  ``/dev/null`` and stdout/stderr into files in that directory. The batch id is
  ``local-<pid>``.
- The script writes ``started`` (epoch seconds), runs the pilot under coreutils ``timeout``
  so that the walltime ends it as a batch system would, and writes ``exitcode`` atomically.
- ``status`` reads those files and the process table; ``cancel`` writes ``cancelled`` and
  sends TERM to the script's process group (the script passes it on to the pilot).
- Directories of pilots that ended more than ``keep_finished_s`` ago are removed by ``status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shlex
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from glidein_client.site.config import SiteConfig
from glidein_client.site.runners.local import Runner
from glidein_client.site.schedulers.base import (
    PilotJob,
    PilotLaunch,
    PilotState,
    StateTable,
    pilot_id_from_tag,
    render_template,
    warning_timer,
)
from glidein_client.wire.errors import SchedulerError

log = logging.getLogger(__name__)

SCRIPT = "pilot.sh"
#: A process whose start differs from its pid file's time by more than this is another
#: process that got the same pid after the pilot ended.
_PID_REUSE_SLACK_S = 120.0

#: Native states of the local scheduler (what the files in a pilot's directory say).
NATIVE_STATES = {
    "PENDING": PilotState.QUEUED,  # process alive, pilot not started yet
    "RUNNING": PilotState.RUNNING,
    "COMPLETED": PilotState.DONE,  # exit code 0
    "TIMEOUT": PilotState.TIMEOUT,  # ended by the walltime (exit code 124, or 137 after it)
    "CANCELLED": PilotState.CANCELLED,
    "FAILED": PilotState.FAILED,  # any other exit code
    "LOST": PilotState.FAILED,  # process gone without writing an exit code
}


@dataclass(frozen=True)
class _Entry:
    path: Path
    pilot_id: int
    pid: int
    native: str
    reason: str
    submitted_at: float | None
    finished_at: float | None  # None while the pilot lives


class LocalScheduler:
    """Starts pilots as detached processes on this host and tracks them through files.

    ``runner`` is accepted for the common backend signature; local pilots always run on
    the host of the client, so files and processes are handled here directly.
    """

    name = "local"

    def __init__(
        self,
        site: SiteConfig,
        runner: Runner | None = None,
        *,
        kill_after_s: int = 30,
        keep_finished_s: float = 3600.0,
    ) -> None:
        self.site = site
        self.runner = runner
        self.base = Path(site.site.scratch_dir) / "local-batch"
        self.kill_after_s = kill_after_s
        self.keep_finished_s = keep_finished_s
        self._states = StateTable("local", dict(NATIVE_STATES))

    def pilot_dir(self, tag: str) -> Path:
        return self.base / tag

    # --- Scheduler protocol ------------------------------------------------------------------

    def render(self, launch: PilotLaunch) -> str:
        seconds, kill_after_s = warning_timer(launch.site, self.kill_after_s)
        return render_template(
            "local.sh",
            {
                "tag": launch.tag,
                "batch_dir": str(self.pilot_dir(launch.tag)),
                "walltime_s": str(seconds),
                "kill_after_s": str(kill_after_s),
                "env_setup_lines": "\n".join(launch.site.batch.env_setup),
                "pilot_command_lines": shlex.join(launch.pilot_argv),
            },
        )

    async def submit(self, launch: PilotLaunch) -> str:
        script = self.render(launch)
        batch_id = await asyncio.to_thread(self._start, launch, script)
        log.debug("started pilot %s as %s", launch.tag, batch_id)
        return batch_id

    async def status(self) -> list[PilotJob]:
        entries = await asyncio.to_thread(self._scan, time.time())
        return [
            PilotJob(
                batch_id=f"local-{e.pid}",
                pilot_id=e.pilot_id,
                state=self._states.map(e.native),
                native_state=e.native,
                submitted_at=e.submitted_at,
                reason=e.reason,
            )
            for e in entries
        ]

    async def cancel(self, batch_ids: list[str]) -> None:
        if batch_ids:
            await asyncio.to_thread(self._cancel, set(batch_ids))

    # --- blocking helpers, run in a worker thread ----------------------------------------------

    def _start(self, launch: PilotLaunch, script: str) -> str:
        path = self.pilot_dir(launch.tag)
        try:
            self.base.mkdir(mode=0o700, parents=True, exist_ok=True)
            if path.exists():
                old = self._inspect(path, launch.pilot_id, time.time())
                if old is not None and old.finished_at is None:
                    raise SchedulerError(
                        f"Pilot {launch.tag} already runs as local-{old.pid}.",
                        hint="The server handed out a pilot id twice; check that the client talks to the right server.",
                    )
                shutil.rmtree(path)
            path.mkdir(mode=0o700)
            _write(path / SCRIPT, script.encode(), 0o700)
            meta = {
                "pilot_id": launch.pilot_id,
                "submitted_at": time.time(),
                "walltime_s": launch.site.shape.walltime_s,
            }
            _write(path / "job.json", json.dumps(meta).encode(), 0o600)
            pid = _spawn(["/bin/sh", str(path / SCRIPT)], path)
            try:
                _write(path / "pid", f"{pid}\n".encode(), 0o600)
            except OSError:
                with contextlib.suppress(OSError):  # untracked, it must not run
                    os.killpg(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                raise
        except OSError as exc:
            shutil.rmtree(path, ignore_errors=True)
            raise SchedulerError(
                f"Cannot start pilot {launch.tag} under {path}: {exc.strerror or exc}.",
                hint="Check that site.scratch_dir exists and is writable, and that /bin/sh is present.",
                command=["/bin/sh", str(path / SCRIPT)],
            ) from None
        return f"local-{pid}"

    def _scan(self, now: float) -> list[_Entry]:
        try:
            names = sorted(os.listdir(self.base))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise SchedulerError(
                f"Cannot list the local pilots under {self.base}: {exc.strerror}.",
                hint="Check that site.scratch_dir is readable by the user running glidein-client.",
            ) from None
        out: list[_Entry] = []
        for name in names:
            pilot_id = pilot_id_from_tag(self.site.name, name)
            if pilot_id is None:
                continue
            path = self.base / name
            entry = self._inspect(path, pilot_id, now)
            ended = entry.finished_at if entry is not None else _mtime(path)
            if ended is not None and now - ended > self.keep_finished_s:
                log.debug("removing the directory of ended pilot %s", name)
                shutil.rmtree(path, ignore_errors=True)
                continue
            if entry is not None:
                out.append(entry)
        out.sort(key=lambda e: e.pilot_id)
        return out

    def _inspect(self, path: Path, pilot_id: int, now: float) -> _Entry | None:
        """Read one pilot's directory; None while it has no pid file (being submitted)."""
        pid_text = _read(path / "pid")
        if pid_text is None or not pid_text.strip().isdigit():
            return None
        pid = int(pid_text)
        meta = _read_json(path / "job.json")
        submitted_at = _float(meta.get("submitted_at"))
        walltime_s = _float(meta.get("walltime_s"))
        started = _float(_read(path / "started"))
        cancelled = (path / "cancelled").exists()
        code_text = _read(path / "exitcode")
        if code_text is not None and code_text.strip().lstrip("-").isdigit():
            code = int(code_text)
            finished = _mtime(path / "exitcode") or now
            _alive(pid, _mtime(path / "pid"))  # reaps the ended script if this process started it
            if cancelled:
                native, reason = "CANCELLED", f"cancelled (exit code {code})"
            elif code == 0:
                native, reason = "COMPLETED", ""
            elif code == 124 or (
                code == 137 and started is not None and walltime_s is not None and finished - started >= walltime_s
            ):
                limit = f" of {walltime_s:.0f} s" if walltime_s is not None else ""
                native, reason = "TIMEOUT", f"walltime{limit} reached (exit code {code})"
            else:
                native, reason = "FAILED", f"exit code {code}"
            return _Entry(path, pilot_id, pid, native, reason, submitted_at, finished)
        if _alive(pid, _mtime(path / "pid")):
            native = "RUNNING" if started is not None else "PENDING"
            return _Entry(path, pilot_id, pid, native, "", submitted_at, None)
        # The process is gone without an exit code: note when that was first seen.
        lost = path / "lost"
        seen_at = _mtime(lost)
        if seen_at is None:
            seen_at = now
            try:
                _write(lost, f"{now:.0f}\n".encode(), 0o600)
            except OSError:
                pass
        if cancelled:
            return _Entry(path, pilot_id, pid, "CANCELLED", "cancelled", submitted_at, seen_at)
        reason = "the pilot's process ended without writing an exit code (killed, or the host rebooted)"
        return _Entry(path, pilot_id, pid, "LOST", reason, submitted_at, seen_at)

    def _cancel(self, wanted: set[str]) -> None:
        for entry in self._scan(time.time()):
            if f"local-{entry.pid}" not in wanted or entry.finished_at is not None:
                continue
            try:
                _write(entry.path / "cancelled", f"{time.time():.0f}\n".encode(), 0o600)
            except OSError as exc:
                log.warning("cannot mark pilot local-%d as cancelled: %s", entry.pid, exc.strerror)
            try:
                os.killpg(entry.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            except PermissionError:
                raise SchedulerError(
                    f"Not allowed to stop the local pilot local-{entry.pid}.",
                    hint="Run glidein-client as the user that started the pilots.",
                    command=["kill", "-TERM", f"-{entry.pid}"],
                ) from None
            log.info("cancelled pilot %s (local-%d)", entry.path.name, entry.pid)


# --- small file and process helpers ------------------------------------------------------------


def _spawn(argv: list[str], cwd: Path) -> int:
    """Start ``argv`` detached: own session, stdin from /dev/null, output into ``cwd``."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(cwd / "stdout"), flags, 0o600),
        (os.POSIX_SPAWN_OPEN, 2, str(cwd / "stderr"), flags, 0o600),
    ]
    env = dict(os.environ)
    try:
        return os.posix_spawn(argv[0], argv, env, file_actions=actions, setsid=True)
    except NotImplementedError:  # pragma: no cover - C libraries without POSIX_SPAWN_SETSID
        return os.posix_spawn(argv[0], argv, env, file_actions=actions, setpgroup=0)


def _alive(pid: int, since: float | None) -> bool:
    """Whether ``pid`` is still the pilot's process; a pilot that ended as a zombie is reaped.

    ``since`` is when the pid file was written: a process that started at another time is
    not the pilot but a later process that got the same pid.
    """
    try:
        proc = psutil.Process(pid)
        if since is not None and abs(proc.create_time() - since) > _PID_REUSE_SLACK_S:
            return False
        if proc.status() == psutil.STATUS_ZOMBIE:
            _reap(pid)
            return False
        return True
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _reap(pid: int) -> None:
    """Collect the exit status of a pilot started by this process, so no zombie remains."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _read_json(path: Path) -> dict[str, object]:
    text = _read(path)
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _float(value: object) -> float | None:
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None
