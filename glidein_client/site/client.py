"""The site client: one cycle (demand -> batch status -> decision -> cancel/submit) and the daemon loop.

Use as::

    async with SiteClient(load_site_config(path)) as client:
        report = await client.cycle()          # cron mode
        await client.run_forever(stop=event)   # daemon mode
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from glidein_client.site.config import SiteConfig
from glidein_client.site.control import DRAIN_FILE, is_draining, state_file, tell_pilots_to_drain
from glidein_client.site.decisions import IDLE_OUTS_BEFORE_BACKOFF, Decision, decide, hold_actions, idle_out_note
from glidein_client.site.firewall.forwarder import CLIENT_TOKEN
from glidein_client.site.firewall.service import Firewall, pilot_network_options
from glidein_client.site.idle_outs import IdleOuts
from glidein_client.site.pilot_failures import PilotFailure, read_failure
from glidein_client.site.runners.local import LocalRunner, Runner
from glidein_client.site.schedulers import make_scheduler
from glidein_client.site.schedulers.base import HoldHandler, PilotJob, PilotLaunch, PilotState, Scheduler
from glidein_client.wire.api import ApiClient
from glidein_client.wire.errors import ConfigError, GlideinError, SchedulerError, ServerUnreachable
from glidein_client.wire.schema import Demand, SiteMode
from glidein_client.wire.staging import Network

log = logging.getLogger(__name__)
_ENDED = (PilotState.FAILED, PilotState.DONE)  # a pilot that fails at start exits (with an error, or not)

#: Back-off while the server is unreachable: first retry after this, doubling up to cycle_s.
FIRST_RETRY_S = 1.0
#: The copy of the server's CA in each pilot's directory.
PILOT_CA_FILE = "ca.pem"


@dataclass(frozen=True)
class CycleReport:
    demand_pilots: int
    queued: int  # pilots not running yet (queued, held, unknown)
    running: int
    submitted: tuple[str, ...]  # batch ids
    removed: tuple[str, ...]  # batch ids
    reasons: tuple[str, ...]
    suspended: int = 0  # started, then stopped by the batch system or an admin

    def pilots_text(self) -> str:
        suspended = f", {self.suspended} suspended" if self.suspended else ""
        return f"demand {self.demand_pilots} pilot(s), {self.queued} queued, {self.running} running{suspended}"

    def summary(self) -> str:
        text = f"{self.pilots_text()}; submitted {len(self.submitted)}, removed {len(self.removed)}"
        return f"{text} ({'; '.join(self.reasons)})" if self.reasons else text


@dataclass(frozen=True)
class SiteStatus:
    """``glidein-client status``: what the server asks of the site and what the batch system holds."""

    demand: Demand
    pilots: tuple[PilotJob, ...]
    next_cycle: Decision  # before holds are looked at
    failure: str | None = None  # why a pilot failed at start, from its output, with the key to check
    draining: bool = False  # `glidein-client drain` is in force
    idle_outs: str | None = None  # pilots keep leaving idle while jobs wait: the likely cause

    def counts(self) -> dict[str, int]:
        """Pilots by state (queued, running, held, ... as far as the batch system still lists them)."""
        out: dict[str, int] = {}
        for p in self.pilots:
            out[p.state.value] = out.get(p.state.value, 0) + 1
        return out


def pilot_command(site: SiteConfig, workdir: str) -> tuple[str, ...]:
    """The complete ``glidein_client.pilot run`` command line of one pilot of ``site``.

    ``workdir`` is the pilot's own directory on the site's filesystem; it holds the pilot
    token (``<workdir>/token``) and, when ``site.ca_file`` is set, a copy of the server's CA
    (``<workdir>/ca.pem``): the CA file named in the config may lie where worker nodes cannot
    see it (the operator's host in remote mode), the pilot's directory never. Batch backends put
    this command into their scripts. Pilots under a batch system take their cores, memory, GPUs
    and end time from their allocation; local pilots are given them.
    """
    shape = site.shape
    options = {
        "--url": site.site.server_url,
        "--token-file": os.path.join(workdir, "token"),
        "--site": site.name,
        "--disk": f"{shape.disk_mb}M",
        "--idle-timeout": f"{site.idle_timeout_s}s",
        "--scratch": os.path.join(site.site.scratch_dir, "pilots"),
    }
    if site.site.scheduler == "local":
        # No batch system hands out an allocation: the config is the allocation.
        options.update(
            {
                "--cpus": str(shape.cpus),
                "--memory": f"{shape.memory_mb}M",
                "--gpus": str(shape.gpus),
                "--walltime": f"{shape.walltime_s}s",
            }
        )
    else:
        # The pilot reads its real cores, memory, GPUs and end time from the batch system.
        options["--fallback-walltime"] = f"{shape.walltime_s}s"
    if site.signal_grace_s:
        options["--signal-grace"] = f"{site.signal_grace_s}s"  # the batch script asks for the warning signal
    options["--drain-file"] = os.path.join(workdir, DRAIN_FILE)  # written by `glidein-client drain`
    if site.site.ca_file:
        options["--ca-file"] = os.path.join(workdir, PILOT_CA_FILE)
    if site.isolation != "auto":
        options["--isolation"] = site.isolation
    if site.apptainer_image:
        options["--apptainer-image"] = site.apptainer_image
    options.update(pilot_network_options(site, workdir))  # firewalled sites: relay or mailbox, staged files
    argv = [site.batch.python or sys.executable, "-m", "glidein_client.pilot", "run"]
    for flag, value in options.items():
        argv += [flag, value]
    return tuple(argv)


def make_runner(site: SiteConfig) -> Runner:
    """The runner for ``site``: over SSH to the login node when ``[ssh]`` is set, else this host."""
    if site.ssh is None:
        return LocalRunner()
    if site.site.scheduler == "local":
        raise ConfigError(
            f"Site config {site.path}: the local scheduler runs pilots on the host of glidein-client, so it "
            "cannot work through [ssh].",
            hint="Choose site.scheduler slurm, pbs or htcondor, or install the client on that host with "
            "`glidein-client deploy` (it runs there without [ssh]).",
            field="site.scheduler",
        )
    from glidein_client.site.runners.ssh import SshRunner  # asyncssh is imported only in remote mode

    return SshRunner(site.ssh, config_path=site.path)


class SiteClient:
    """Keeps a site's pilots in line with its demand; one :meth:`cycle` at a time."""

    def __init__(self, site: SiteConfig, *, runner: Runner | None = None, scheduler: Scheduler | None = None) -> None:
        self.site = site
        self._own_runner = runner is None  # made here from the config (SSH in remote mode): closed here
        self.runner: Runner = runner if runner is not None else make_runner(site)
        self.scheduler: Scheduler = scheduler if scheduler is not None else make_scheduler(site, self.runner)
        self._api: ApiClient | None = None
        self._generation: int | None = None  # of the server's work signal, last seen
        self._ca: bytes | None = None  # the server's CA (site.ca_file), read once
        self._examined: set[int] = set()  # ended pilots whose output was read
        self.last_failure: PilotFailure | None = None  # why a pilot last failed at start, when known
        self.firewall: Firewall | None = None  # staging, relay or mailbox of a firewalled site
        self.idle_outs = IdleOuts(state_file("idle-outs", site.name, site.path))  # pilots that left idle, jobless
        self._told_to_drain: set[int] = set()  # pilots given the drain file
        self._idle_logged = 0  # the idle-out streak last logged

    async def __aenter__(self) -> SiteClient:
        token = await asyncio.to_thread(self.site.read_token)
        self._ca = await asyncio.to_thread(self.site.read_ca)
        api = ApiClient(self.site.site.server_url, token, ca_file=self.site.site.ca_file)
        self._api = await api.__aenter__()
        if self.site.network.stages:
            self.firewall = await Firewall(self.site, self._api).__aenter__()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.firewall is not None:
            firewall, self.firewall = self.firewall, None
            await firewall.__aexit__(et, e, tb)
        if self._api is not None:
            api, self._api = self._api, None
            await api.__aexit__(et, e, tb)
        aclose = getattr(self.runner, "aclose", None)
        if self._own_runner and aclose is not None:
            await aclose()

    @property
    def api(self) -> ApiClient:
        if self._api is None:
            raise RuntimeError("SiteClient used outside 'async with'")
        return self._api

    # --- one cycle ---------------------------------------------------------------------------

    async def cycle(self) -> CycleReport:
        """Read the demand and the batch queue, then cancel and submit pilots to match.

        A failed submission stops this cycle's submissions; it is logged with the command,
        exit code and stderr and raised as a :class:`SchedulerError` after the cycle's report
        line (the report travels with it as ``fields["report"]``).
        """
        site = self.site
        if self.firewall is not None:
            await self.firewall.before_cycle()
        demand = await self.api.demand(site.name, site.shape)
        if self.firewall is not None:
            demand = self.firewall.cap(demand)
        pilots = await self.scheduler.status()
        states = {str(p.pilot_id): p.state.value for p in pilots if p.pilot_id > 0}
        start_failure = await self._start_failure(demand, pilots)
        if states or start_failure:
            why = start_failure.text(site.path) if start_failure else None
            await self.api.pilot_states(site.name, states, why)
        draining = is_draining(site.name, site.path)
        await self._note_idle_outs(demand, pilots)
        decision = await self._handle_holds(pilots, self._decide(demand, pilots, draining=draining))
        if draining:
            await self._tell_to_drain(pilots)

        failure: GlideinError | None = None
        removed: tuple[str, ...] = ()
        if decision.remove:
            try:
                await self.scheduler.cancel(list(decision.remove))
                removed = decision.remove
            except SchedulerError as exc:
                _log_scheduler_error("removing pilots", exc)
                failure = exc
        submitted: list[str] = []
        if failure is None:
            for _ in range(decision.submit):
                try:
                    submitted.append(await self._submit_one())
                except SchedulerError as exc:
                    _log_scheduler_error("submitting a pilot", exc)
                    failure = exc
                    break
                except GlideinError as exc:
                    failure = exc
                    break

        started = (PilotState.RUNNING, PilotState.SUSPENDED)
        report = CycleReport(
            demand_pilots=demand.pilots,
            queued=sum(1 for p in pilots if p.state.active and p.state not in started),
            running=sum(1 for p in pilots if p.state is PilotState.RUNNING),
            suspended=sum(1 for p in pilots if p.state is PilotState.SUSPENDED),
            submitted=tuple(submitted),
            removed=removed,
            reasons=decision.reasons,
        )
        (log.warning if failure else log.info)("site %s: %s", site.name, report.summary())
        if isinstance(failure, SchedulerError):
            done = f"{len(submitted)} of {decision.submit} pilot(s) submitted this cycle"
            raise SchedulerError(
                f"The {self.scheduler.name} scheduler failed: {failure.message} ({done}).",
                hint=failure.hint or "The next cycle will try again; the log has the command and its output.",
                report=report,
            ) from None
        if failure is not None:
            failure.fields.setdefault("report", report)
            raise failure
        return report

    async def status(self) -> SiteStatus:
        """The demand, the site's pilots in the batch system, and what a cycle would do now; changes nothing."""
        demand = await self.api.demand(self.site.name, self.site.shape)
        pilots = tuple(await self.scheduler.status())
        found = await self._start_failure(demand, pilots)
        failure = found.text(self.site.path) if found else None
        draining = is_draining(self.site.name, self.site.path)
        idle = await self._note_idle_outs(demand, pilots)
        return SiteStatus(
            demand=demand,
            pilots=pilots,
            next_cycle=self._decide(demand, pilots, draining=draining),
            failure=failure,
            draining=draining,
            idle_outs=idle,
        )

    def _decide(self, demand: Demand, pilots: Sequence[PilotJob], *, draining: bool = False) -> Decision:
        site = self.site
        now = time.time()
        decision = decide(
            demand.pilots,
            pilots,
            site.limits,
            now=now,
            max_queued_s=site.max_queued_s,
            start_failures=demand.start_failures,
            backoff_s=demand.backoff_s,
            draining=draining,
            idle_outs=self.idle_outs.streak(),
            idle_out_age_s=self.idle_outs.age_s(now),
        )
        if demand.mode is SiteMode.OPEN:
            return decision
        why = f"the server's operator has this site {demand.mode.value}: no new pilots"
        return Decision(submit=decision.submit, remove=decision.remove, reasons=(why, *decision.reasons))

    async def _start_failure(self, demand: Demand, pilots: Sequence[PilotJob]) -> PilotFailure | None:
        """While pilots fail at start: why the newest ended one failed, from its error output (each
        pilot read once); logged with the config key to check and kept for `glidein-client status`."""
        if demand.start_failures == 0 and not any(p.state is PilotState.FAILED for p in pilots):
            return None
        ended = [p for p in pilots if p.state in _ENDED and p.pilot_id > 0 and p.pilot_id not in self._examined]
        for pilot in sorted(ended, key=lambda p: -p.pilot_id)[:3]:
            self._examined.add(pilot.pilot_id)
            failure = await read_failure(self.runner, self.site, pilot.pilot_id)
            if failure is not None:
                log.warning("site %s: %s", self.site.name, failure.text(self.site.path))
                self.last_failure = failure
                return failure
        return None

    async def _note_idle_outs(self, demand: Demand, pilots: Sequence[PilotJob]) -> str | None:
        """While jobs wait for this site and its pilots keep leaving idle without one: the line saying
        so (logged once per new pilot in the streak), else None."""
        await self.idle_outs.update(self.runner, self.site, pilots, time.time())
        streak = self.idle_outs.streak()
        if streak < IDLE_OUTS_BEFORE_BACKOFF or demand.pilots <= 0:
            return None
        note = idle_out_note(streak, self.site.shape, self.site.path)
        if streak != self._idle_logged:
            self._idle_logged = streak
            log.warning("site %s: %s", self.site.name, note)
        return note

    async def _tell_to_drain(self, pilots: Sequence[PilotJob]) -> None:
        """Draining: each pilot that may run finds the drain file in its directory (written once)."""
        started = [p for p in pilots if p.state.active and p.pilot_id > 0 and p.pilot_id not in self._told_to_drain]
        failed = await tell_pilots_to_drain(self.site, self.runner, started)
        self._told_to_drain.update(p.pilot_id for p in started if p not in failed)

    async def _handle_holds(self, pilots: list[PilotJob], decision: Decision) -> Decision:
        """Release held pilots whose trouble passes; add the others to this cycle's removals."""
        sched = self.scheduler
        if not isinstance(sched, HoldHandler):
            return decision
        held = [
            (p, info)
            for p in pilots
            if p.state is PilotState.HELD
            if (info := sched.hold_reason(p.batch_id)) is not None
        ]
        if not held:
            return decision
        holds = hold_actions(held, now=time.time())
        if holds.release:
            try:
                await sched.release(list(holds.release))
            except SchedulerError as exc:
                _log_scheduler_error("releasing held pilots", exc)
        remove = tuple(dict.fromkeys(decision.remove + holds.remove))
        return Decision(submit=decision.submit, remove=remove, reasons=decision.reasons + holds.reasons)

    async def _submit_one(self) -> str:
        site = self.site
        grant = await self.api.new_pilot(site.name, walltime_s=site.shape.walltime_s, max_queued_s=site.max_queued_s)
        workdir = os.path.join(site.site.scratch_dir, "pilots-meta", f"glidein-{site.name}-{grant.pilot_id}")
        launch = PilotLaunch(
            pilot_id=grant.pilot_id,
            site=site,
            workdir=workdir,
            token_file=os.path.join(workdir, "token"),
            pilot_argv=pilot_command(site, workdir),
        )
        try:
            await self.runner.makedirs(workdir, mode=0o700)
            await self.runner.write_file(launch.token_file, grant.token.encode(), mode=0o600)
            if site.network is not Network.DIRECT:  # the relay or mailbox forwards the pilot's calls with it
                await self.runner.write_file(os.path.join(workdir, CLIENT_TOKEN), grant.token.encode(), mode=0o600)
            if self._ca is not None:
                await self.runner.write_file(os.path.join(workdir, PILOT_CA_FILE), self._ca, mode=0o644)
        except OSError as exc:
            raise SchedulerError(
                f"Cannot write the token of pilot {launch.tag} to {workdir}: {exc.strerror or exc}.",
                hint="Check that site.scratch_dir exists and is writable by the user running glidein-client.",
            ) from None
        if self.firewall is not None:
            await self.firewall.add_pilot(grant.pilot_id, grant.token)
        batch_id = await self.scheduler.submit(launch)
        log.info("submitted pilot %s as %s", launch.tag, batch_id)
        return batch_id

    # --- daemon ------------------------------------------------------------------------------

    async def run_forever(self, *, stop: asyncio.Event | None = None) -> None:
        """Run a cycle every ``site.cycle_s`` until ``stop`` is set.

        While the server is unreachable, retry after 1 s, doubling up to ``cycle_s``; one line
        is logged when it becomes unreachable and one when it answers again. Other errors are
        logged as one plain line and the loop goes on.
        """
        stop = stop if stop is not None else asyncio.Event()
        if self.firewall is not None and not self.firewall.serving:
            async with self.firewall.serve():  # a firewalled site's pilots talk through this client
                await self.run_forever(stop=stop)
            return
        cycle_s = self.site.site.cycle_s
        retry_s = FIRST_RETRY_S
        unreachable = False
        log.info("site %s: checking demand every %.0f s", self.site.name, cycle_s)
        try:  # learn the server's work generation first, so work arriving during the first cycle is not missed
            self._generation = (await self.api.site_wait(self.site.name, 0)).generation
        except GlideinError:
            pass  # the first cycle reports what is wrong
        while not stop.is_set():
            started = time.monotonic()
            reachable = True
            try:
                await self.cycle()
            except ServerUnreachable as exc:
                reachable = False
                if not unreachable:
                    log.warning(
                        "site %s: %s Retrying with back-off up to %.0f s.", self.site.name, exc.message, cycle_s
                    )
                    unreachable = True
            except GlideinError as exc:
                log.error("site %s: %s", self.site.name, exc)
            if reachable:
                if unreachable:
                    log.info("site %s: the server at %s answers again", self.site.name, self.site.site.server_url)
                    unreachable = False
                retry_s = FIRST_RETRY_S
                delay = cycle_s - (time.monotonic() - started)
            else:
                delay = retry_s
                retry_s = min(retry_s * 2, cycle_s)
            if reachable:
                await self._wait_for_news(stop, max(0.0, delay))
            else:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except asyncio.TimeoutError:
                    pass
        log.info("site %s: stopped", self.site.name)

    async def _wait_for_news(self, stop: asyncio.Event, timeout_s: float) -> None:
        """Sleep until the next cycle is due, new work arrives at the server, or ``stop`` is set.

        The server answers the long poll as soon as jobs are submitted or requeued, so a daemon
        reacts to new demand at once instead of on its next timer tick.
        """
        poll = asyncio.ensure_future(self.api.site_wait(self.site.name, timeout_s, since=self._generation))
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait([poll, stopped], timeout=timeout_s + 5, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not poll.done():
                poll.cancel()
        if poll.done() and not poll.cancelled():
            try:
                result = poll.result()
            except GlideinError:
                await asyncio.sleep(min(timeout_s, FIRST_RETRY_S))  # the next cycle will say what is wrong
                return
            self._generation = result.generation
            if result.changed:
                log.debug("site %s: new work at the server", self.site.name)
                if self.firewall is not None:
                    self.firewall.wake()


def _log_scheduler_error(what: str, exc: SchedulerError) -> None:
    command = exc.fields.get("command")
    log.error(
        "%s failed: %s | command: %s | exit code: %s | stderr: %s",
        what,
        exc.message,
        " ".join(command) if isinstance(command, list) else command,
        exc.fields.get("exit_code"),
        str(exc.fields.get("stderr") or "").strip().replace("\n", " / ")[:2000],
    )
