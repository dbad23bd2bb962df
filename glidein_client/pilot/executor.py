"""Run one job attempt as its own process tree: pinned to its cores, walltime and memory enforced.

Spawning is the hot path of a pilot full of short jobs, so it stays lean: the job is started
by :func:`.spawn.spawn` (posix_spawn, pinned through the calling thread's CPU mask); its exit
is noticed through a pidfd watched by the event loop, not by a thread per job. Memory is
sampled every ``poll_s`` only after the first ``poll_s``, so a job shorter than that costs no
sampling at all.

The job runs in a session of its own. Killing it signals that whole process group and every
descendant that left it; when the main process ends, whatever it left behind is killed too.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass

import psutil

from glidein_client.pilot import leftovers
from glidein_client.pilot.isolation import Isolation
from glidein_client.pilot.launch import (
    SCRIPT_NAME,
    JobRun,
    close_fds,
    devnull,
    exit_reason,
    fd_tail,
    job_argv,
    job_env,
    open_logs,
    write_script,
)
from glidein_client.pilot.proctree import descendant_pids, own_peak_rss_mb, tree_rss_mb
from glidein_client.pilot.spawn import spawn
from glidein_client.wire.schema import JobSpec, Outcome

log = logging.getLogger(__name__)

FALLBACK_POLL_S = 0.05


@dataclass(frozen=True)
class RunResult:
    outcome: Outcome
    exit_code: int | None  # negative: killed by that signal; None: never started or status lost
    reason: str | None  # plain words, e.g. "exited with code 3"
    wall_s: float
    max_rss_mb: float
    stdout_tail: str  # last LOG_TAIL_BYTES of stdout
    stderr_tail: str
    cpu_user_s: float = 0.0  # of the main process and every descendant it (or they) waited for
    cpu_system_s: float = 0.0
    started_at: float | None = None  # wall clock (epoch seconds)


class JobProcess:
    """One attempt of one job. ``start()``, then ``wait()``; ``kill()`` at any time.

    Cancelling ``wait()`` leaves the job running: call ``kill()`` and ``wait()`` again.
    """

    def __init__(
        self,
        run: JobRun,
        *,
        poll_s: float = 1.0,
        grace_s: float = 5.0,
        base_env: Mapping[str, str] | None = None,
        isolation: Isolation | None = None,
    ) -> None:
        self.run = run
        self._sandbox = os.fspath(run.sandbox)
        self._poll_s = poll_s
        self._grace_s = grace_s
        self._base_env = base_env
        self._isolation = isolation
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid: int | None = None
        self._returncode: int | None = None
        self._exited: asyncio.Future[None] | None = None
        self._pidfd = -1
        self._poll_handle: asyncio.TimerHandle | None = None
        self._kill_timer: asyncio.TimerHandle | None = None
        self._walltime_timer: asyncio.TimerHandle | None = None
        self._memory_timer: asyncio.TimerHandle | None = None
        self._killed: tuple[Outcome, str] | None = None
        self._doomed: dict[int, psutil.Process] = {}
        self._no_start: tuple[Outcome, str] | None = None
        self._result: RunResult | None = None
        self._status_lost = False
        self._started_at = 0.0
        self._ended_at = 0.0
        self._max_rss_mb = 0.0
        self._cpu = (0.0, 0.0)  # user, system
        self._started_wall: float | None = None
        self._logs: tuple[int, int] | None = None
        self._tails = ("", "")

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def done(self) -> bool:
        """True once the main process has ended (or never started)."""
        return self._no_start is not None or (self._exited is not None and self._exited.done())

    # --- start ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._loop is not None:
            raise RuntimeError("start() was called twice for the same attempt; make a new JobProcess.")
        self._loop = asyncio.get_running_loop()
        self._started_at = time.monotonic()
        if self._killed is not None:
            self._no_start = self._killed
            return
        run = self.run
        sandbox = self._sandbox
        command = job_argv(run)
        argv = command if self._isolation is None else self._isolation.argv(command, run)
        try:
            if run.spec.script is not None:
                write_script(os.path.join(sandbox, SCRIPT_NAME), run.spec.script)
            out, err = open_logs(sandbox)
        except OSError as exc:
            self._no_start = (
                Outcome.INTERRUPTED,
                f"the pilot could not prepare the job's directory {run.sandbox}: {exc.strerror or exc}",
            )
            return
        try:
            env = job_env(run, os.environ if self._base_env is None else self._base_env)
            self._pid = spawn(argv, cwd=sandbox, env=env, stdin=devnull(), stdout=out, stderr=err, cores=run.cores)
        except (OSError, ValueError) as exc:
            close_fds((out, err))
            self._no_start = self._spawn_failure(command, exc)
            log.info("attempt %d of job %d did not start: %s", run.attempt_id, run.job_id, self._no_start[1])
            return
        self._started_wall = time.time()
        self._logs = (out, err)  # kept open to read their tails when the job ends
        leftovers.started(self._pid, run.attempt_id)
        self._exited = self._loop.create_future()
        try:
            self._pidfd = os.pidfd_open(self._pid)
        except OSError:
            self._poll_handle = self._loop.call_later(FALLBACK_POLL_S, self._poll_exit)
        else:
            self._loop.add_reader(self._pidfd, self._on_pidfd)
        self._watch()
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "attempt %d of job %d started as pid %d on cores %s",
                run.attempt_id,
                run.job_id,
                self._pid,
                ",".join(map(str, sorted(run.cores))) or "any",
            )

    def _spawn_failure(self, argv: list[str], exc: OSError | ValueError) -> tuple[Outcome, str]:
        if isinstance(exc, ValueError):
            return Outcome.FAILED, "the command or its environment contains a NUL character"
        if self.run.spec.script is not None:
            what = "the job's script"
            if isinstance(exc, (FileNotFoundError, PermissionError)) and self.run.spec.script.startswith("#!"):
                first = self.run.spec.script.splitlines()[0]
                problem = "was not found" if isinstance(exc, FileNotFoundError) else "cannot be run"
                return Outcome.FAILED, f"the interpreter in the script's first line ({first}) {problem}"
        else:
            what = f"command {argv[0]!r}" if argv else "the job's command"
        if isinstance(exc, FileNotFoundError) and exc.filename == self._sandbox:
            return Outcome.INTERRUPTED, f"the job's directory {self.run.sandbox} is missing"
        if isinstance(exc, FileNotFoundError):
            return Outcome.FAILED, f"{what} was not found"
        if isinstance(exc, NotADirectoryError):
            return Outcome.FAILED, f"{what} was not found: a part of its path is not a directory"
        if isinstance(exc, PermissionError):
            return Outcome.FAILED, f"{what} could not be run: permission denied"
        if exc.errno in (errno.ENOEXEC, errno.EISDIR, errno.ENAMETOOLONG, errno.E2BIG, errno.ELOOP):
            return Outcome.FAILED, f"{what} could not be run: {exc.strerror}"
        return Outcome.INTERRUPTED, f"the pilot could not start the job: {exc.strerror or exc}"

    # --- exit ----------------------------------------------------------------------------

    def _on_pidfd(self) -> None:
        assert self._loop is not None
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = -1
        self._reap()

    def _poll_exit(self) -> None:
        assert self._pid is not None and self._loop is not None
        self._poll_handle = None
        try:
            info = os.waitid(os.P_PID, self._pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            info = None
            self._status_lost = True
        if info is None and not self._status_lost:
            self._poll_handle = self._loop.call_later(FALLBACK_POLL_S, self._poll_exit)
            return
        self._reap()

    def _reap(self) -> None:
        """The main process has ended but is not reaped yet, so its process group id is still ours."""
        assert self._pid is not None and self._exited is not None
        self._ended_at = time.monotonic()
        # Whatever it left behind; if another waiter reaped it, its pid may be reused already.
        self._signal_tree(signal.SIGKILL, group=not self._status_lost)
        if not self._status_lost:
            try:
                _, status, usage = os.wait4(self._pid, 0)
            except ChildProcessError:
                self._status_lost = True
            else:
                self._returncode = os.waitstatus_to_exitcode(status)
                peak_mb = usage.ru_maxrss / 1024
                if peak_mb > own_peak_rss_mb():  # else it may be the pilot's own peak (see proctree)
                    self._max_rss_mb = max(self._max_rss_mb, peak_mb)
                self._cpu = (usage.ru_utime, usage.ru_stime)
        leftovers.ended(self._pid)
        leftovers.end(self.run.attempt_id, signal.SIGKILL, job_ended=True)
        if self._kill_timer is not None:
            self._kill_timer.cancel()
            self._kill_timer = None
        self._stop_timers()
        self._doomed.clear()
        if self._logs is not None:
            out, err = self._logs
            self._logs = None
            self._tails = (fd_tail(out), fd_tail(err))
            close_fds((out, err))
        self._exited.set_result(None)

    # --- kill ----------------------------------------------------------------------------

    def kill(self, outcome: Outcome, reason: str) -> None:
        """Stop the whole tree: SIGTERM now, SIGKILL after ``grace_s``; the first kill's words stand.

        Has no effect once the main process has ended on its own.
        """
        if self._killed is not None or self.done:
            return
        self._killed = (outcome, reason)
        if self._pid is None or self._loop is None:
            return  # start() will not spawn it
        log.info("stopping attempt %d of job %d: %s", self.run.attempt_id, self.run.job_id, reason)
        self._mark_descendants()
        self._signal_tree(signal.SIGTERM)
        leftovers.end(self.run.attempt_id, signal.SIGTERM, job_ended=False)
        self._kill_timer = self._loop.call_later(self._grace_s, self._escalate)

    def _escalate(self) -> None:
        self._kill_timer = None
        if not self.done:
            self._mark_descendants()
            self._signal_tree(signal.SIGKILL)
            leftovers.end(self.run.attempt_id, signal.SIGKILL, job_ended=False)

    def _mark_descendants(self) -> None:
        """Remember descendants now: once their parent dies they can no longer be found from it."""
        assert self._pid is not None
        for pid in descendant_pids(self._pid):
            if pid not in self._doomed:
                try:
                    self._doomed[pid] = psutil.Process(pid)  # signals to it are safe from pid reuse
                except psutil.Error:
                    pass

    def _signal_tree(self, sig: signal.Signals, *, group: bool = True) -> None:
        assert self._pid is not None
        pid = self._pid
        for send in (os.killpg, os.kill) if group else ():
            try:
                send(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        for proc in self._doomed.values():
            try:
                proc.send_signal(sig)
            except psutil.Error:
                pass

    # --- wait ----------------------------------------------------------------------------

    def rss_mb(self) -> float:
        """Summed resident memory of the main process and all its descendants, in MB."""
        return tree_rss_mb(self._pid) if self._pid is not None and not self.done else 0.0

    async def wait(self) -> RunResult:
        """Wait for the main process to end; walltime and memory are enforced by timers meanwhile."""
        if self._result is not None:
            return self._result
        if self._no_start is not None:
            self._result = self._unstarted(*self._no_start)
            return self._result
        if self._exited is None:
            raise RuntimeError("wait() was called before start(); start the attempt first.")
        await asyncio.shield(self._exited)
        if self._result is None:  # another waiter may have built it already
            self._result = self._finished()
        return self._result

    def _watch(self) -> None:
        """Arm the walltime and memory timers of a started job (cancelled when it ends)."""
        assert self._loop is not None
        spec = self.run.spec
        # The loop's clock is time.monotonic, as is _started_at.
        self._walltime_timer = self._loop.call_at(self._started_at + spec.walltime_s, self._on_walltime)
        self._memory_timer = self._loop.call_at(self._started_at + self._poll_s, self._on_memory_check)

    def _on_walltime(self) -> None:
        self._walltime_timer = None
        self.kill(Outcome.WALLTIME, f"exceeded its walltime of {self.run.spec.walltime_s} s")

    def _on_memory_check(self) -> None:
        assert self._loop is not None
        self._memory_timer = None
        if self._killed is None and not self.done:
            self._check_memory(self.run.spec)
            self._memory_timer = self._loop.call_at(self._loop.time() + self._poll_s, self._on_memory_check)

    def _check_memory(self, spec: JobSpec) -> None:
        rss_mb = self.rss_mb()
        self._max_rss_mb = max(self._max_rss_mb, rss_mb)
        if rss_mb > spec.memory_mb:
            self.kill(Outcome.MEMORY, f"used {rss_mb:.0f} MB, more than its {spec.memory_mb} MB")

    def _stop_timers(self) -> None:
        for timer in (self._walltime_timer, self._memory_timer):
            if timer is not None:
                timer.cancel()
        self._walltime_timer = self._memory_timer = None

    def _finished(self) -> RunResult:
        assert self._pid is not None
        returncode = None if self._status_lost else self._returncode
        reason: str | None
        if self._killed is not None:
            outcome, reason = self._killed
        elif returncode is None:
            outcome, reason = Outcome.INTERRUPTED, "the pilot lost track of its exit status"
        else:
            outcome = Outcome.DONE if returncode == 0 else Outcome.FAILED
            reason = exit_reason(returncode)
            if returncode == 1 and self._isolation is not None and (failed := self._exec_failure()) is not None:
                outcome, reason = failed
            elif self._max_rss_mb > self.run.spec.memory_mb:  # between two samples, or too short for one
                outcome = Outcome.MEMORY
                reason = (
                    f"used up to {self._max_rss_mb:.0f} MB (the peak of its largest process), "
                    f"more than its {self.run.spec.memory_mb} MB"
                )
        result = RunResult(
            outcome=outcome,
            exit_code=returncode,
            reason=reason,
            wall_s=self._ended_at - self._started_at,
            max_rss_mb=round(self._max_rss_mb, 1),
            stdout_tail=self._tails[0],
            stderr_tail=self._tails[1],
            cpu_user_s=self._cpu[0],
            cpu_system_s=self._cpu[1],
            started_at=self._started_wall,
        )
        log.debug(
            "attempt %d of job %d ended: %s%s",
            self.run.attempt_id,
            self.run.job_id,
            outcome.value,
            f" ({reason})" if reason else "",
        )
        return result

    def _exec_failure(self) -> tuple[Outcome, str] | None:
        """The isolation could not start the command (bwrap says ``bwrap: execvp NAME: ERROR``)."""
        line = self._tails[1].partition("\n")[0]
        if not line.startswith("bwrap: execvp "):
            return None
        name, _, error = line[len("bwrap: execvp ") :].rpartition(": ")
        code = {"No such file or directory": errno.ENOENT, "Permission denied": errno.EACCES}.get(error)
        if code is None:
            return None
        exc = (FileNotFoundError if code == errno.ENOENT else PermissionError)(code, error, name)
        return self._spawn_failure(job_argv(self.run), exc)

    def _unstarted(self, outcome: Outcome, reason: str) -> RunResult:
        return RunResult(
            outcome=outcome,
            exit_code=None,
            reason=reason,
            wall_s=0.0,
            max_rss_mb=0.0,
            stdout_tail="",
            stderr_tail="",
        )
