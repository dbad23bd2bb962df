"""`glidein-client deploy CONFIG`: install or upgrade the client on a remote login node over SSH.

Over the same key + one-time-code login as remote mode (:class:`~glidein_client.site.runners.ssh.SshRunner`):

1. checks that ``ssh.remote_python`` there is the Python this host builds wheels for
   (same version and platform: the wheels are copied, never downloaded there);
2. copies the wheels of this checkout and of its dependencies (``pip wheel``, built here) to
   ``<remote_dir>/wheels``;
3. creates the virtualenv ``<remote_dir>/venv`` and installs the wheels into it offline
   (``pip install --no-index --no-deps``);
4. writes the site config as ``<remote_dir>/site.toml`` -- without its ``[ssh]`` section and with
   ``site.token_file`` pointing at the copy of the token ``<remote_dir>/site.token`` (mode 0600)
   and, when ``site.ca_file`` names the server's CA (``glidein-server init``'s private CA), with
   ``site.ca_file`` pointing at its copy ``<remote_dir>/ca.pem``: the login node and its pilots
   trust the server without anyone copying the CA by hand, and a deploy after
   ``glidein-server tls renew`` made a new CA carries the new one (and restarts the service);
5. keeps the client going, as ``ssh.service`` says: a crontab line that runs ``glidein-client
   once`` every ``ssh.cron_minutes`` minutes, logging to ``<remote_dir>/cron.log`` (``cron``), or a
   ``systemd --user`` unit ``glidein-client-<site>.service`` that runs the daemon ``glidein-client
   run``, enabled, started, and restarted when the install, config or token changed (``systemd``;
   checked first: the login node must give the user a systemd instance with lingering on). What
   the other way installed before is removed.

Each step compares first: wheels by a fingerprint of their contents (the sha256 of their RECORD,
which lists every file's hash; rebuilding an unchanged checkout gives the same fingerprint),
files by content, the crontab by its line, the unit by its text and state. A second deploy of
the same checkout and config changes nothing and says so. ``dry_run`` reports what would change
and changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import posixpath
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glidein_client.site.config import SiteConfig
from glidein_client.site.deploy_config import remote_config_text
from glidein_client.site.deploy_service import ServiceSteps, unit_name
from glidein_client.site.deploy_wheels import Wheels, build_wheels
from glidein_client.site.runners.ssh import SshRunner
from glidein_client.wire.errors import ConfigError, SchedulerError, SshError

log = logging.getLogger(__name__)

RECORD_FILE = "deployed.json"


@dataclass(frozen=True)
class Step:
    name: str
    text: str  # what was (or would be) done, or why nothing needs doing
    changed: bool


@dataclass(frozen=True)
class DeployReport:
    target: str
    remote_dir: str
    version: str
    fingerprint: str
    dry_run: bool
    steps: tuple[Step, ...] = field(default_factory=tuple)

    @property
    def changed(self) -> bool:
        return any(step.changed for step in self.steps)

    def text(self) -> str:
        head = f"deploy to {self.target}, in {self.remote_dir}: glidein {self.version} (wheels {self.fingerprint})" + (
            " -- dry run" if self.dry_run else ""
        )
        lines = [head]
        lines += [f"  {'*' if s.changed else ' '} {s.name:<8} {s.text}" for s in self.steps]
        changes = sum(s.changed for s in self.steps)
        if not changes:
            lines.append("nothing to change: this deployment is up to date")
        elif self.dry_run:
            lines.append(f"{changes} step(s) would change something (marked *); nothing was changed")
        else:
            lines.append(f"done: {changes} step(s) changed something (marked *)")
        return "\n".join(lines)


async def deploy(
    site: SiteConfig,
    *,
    runner: SshRunner | None = None,
    wheels: Wheels | None = None,
    dry_run: bool = False,
    source: Path | None = None,
) -> DeployReport:
    """Install or upgrade glidein for ``site`` on its login node; see the module docstring."""
    if site.ssh is None:
        raise ConfigError(
            f"Site config {site.path} has no [ssh] section: deploy needs the login node to install on.",
            hint="See site_configs/remote-slurm.toml.",
            field="ssh",
        )
    token = await asyncio.to_thread(site.read_token)
    ca = await asyncio.to_thread(site.read_ca)
    own = runner is None
    runner = runner or SshRunner(site.ssh, config_path=site.path)
    try:
        if wheels is None:
            with tempfile.TemporaryDirectory(prefix="glidein-wheels-") as tmp:
                built = await build_wheels(Path(tmp), source=source)
                return await _Deployment(site, runner, built, token, ca, dry_run).run_or_explain()
        return await _Deployment(site, runner, wheels, token, ca, dry_run).run_or_explain()
    finally:
        if own:
            await runner.aclose()


class _Deployment(ServiceSteps):
    def __init__(
        self, site: SiteConfig, runner: SshRunner, wheels: Wheels, token: str, ca: bytes | None, dry_run: bool
    ) -> None:
        assert site.ssh is not None
        self.site, self.ssh, self.runner, self.wheels = site, site.ssh, runner, wheels
        self.token, self.ca, self.dry_run = token, ca, dry_run
        self.steps: list[Step] = []
        self.dir = ""

    def step(self, name: str, changed: bool, done: str, would: str | None = None, same: str = "") -> None:
        text = (would or done) if changed and self.dry_run else (done if changed else same)
        self.steps.append(Step(name, text, changed))
        if changed and not self.dry_run:
            log.info("deploy %s: %s", name, text)

    async def run(self) -> DeployReport:
        home = await self.runner.home()
        remote = self.ssh.remote_dir
        remote = remote[2:] if remote.startswith("~/") else remote
        self.dir = posixpath.normpath(posixpath.join(home, remote))
        record = await self._read_record()
        await self._check_python()
        if self.ssh.service == "systemd":
            await self._check_systemd()
        await self._makedirs(self.dir)
        wheels_changed = await self._copy_wheels(record)
        await self._install(record, wheels_changed)
        ca_file = self._path("ca.pem") if self.ca is not None else None
        config = remote_config_text(self.site, self._path("site.token"), ca_file=ca_file)
        await self._put("config", "site.toml", config.encode(), 0o600)
        await self._put("token", "site.token", (self.token + "\n").encode(), 0o600)
        if self.ca is not None:
            await self._put("ca", "ca.pem", self.ca, 0o644)  # a public certificate: pilots read it
        renewed = any(s.changed for s in self.steps if s.name in ("install", "config", "token", "ca"))
        unit_path = posixpath.join(home, ".config", "systemd", "user", unit_name(self.site))
        if self.ssh.service == "systemd":
            await self._crontab(install=False)
            await self._unit(unit_path, restart=renewed)
        else:
            await self._crontab(install=True)
            await self._remove_unit(unit_path)
        new_record = {
            "version": self.wheels.version,
            "fingerprint": self.wheels.fingerprint,
            "wheels": self.wheels.fingerprints,
            "python": self.wheels.python,
        }
        if record != new_record and not self.dry_run:
            await self.runner.write_file(self._path(RECORD_FILE), json.dumps(new_record, indent=1).encode(), mode=0o600)
        return DeployReport(
            str(self.runner.target),
            self.dir,
            self.wheels.version,
            self.wheels.fingerprint,
            self.dry_run,
            tuple(self.steps),
        )

    async def run_or_explain(self) -> DeployReport:
        try:
            return await self.run()
        except OSError as exc:  # a file on the login node (SFTP)
            raise SshError(
                f"Deploying to {self.runner.target} failed: {exc.strerror or exc}"
                + (f": {exc.filename}" if exc.filename else "")
                + ".",
                hint="Check ssh.remote_dir and the permissions there.",
            ) from None

    def _path(self, *parts: str) -> str:
        return posixpath.join(self.dir, *parts)

    async def _read_record(self) -> dict[str, Any]:
        try:
            data = json.loads(await self.runner.read_file(self._path(RECORD_FILE)))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    async def _check(self, argv: list[str], what: str, timeout_s: float = 120.0) -> str:
        result = await self.runner.run(argv, timeout_s=timeout_s)
        if result.returncode != 0:
            detail = (result.stderr.strip() or result.stdout.strip() or f"exit code {result.returncode}").splitlines()
            raise SshError(
                f"{what} failed on {self.runner.target}: {detail[-1]}",
                command=argv,
                exit_code=result.returncode,
                stderr=result.stderr,
            )
        return result.stdout

    async def _check_python(self) -> None:
        probe = "import sys, sysconfig; print(f'{sys.version_info[0]}.{sys.version_info[1]}', sysconfig.get_platform())"
        try:
            result = await self.runner.run([self.ssh.remote_python, "-c", probe], timeout_s=60)
            problem = (result.stderr.strip() or f"exit code {result.returncode}") if result.returncode else ""
        except SchedulerError as exc:  # not found, or no answer
            problem = exc.message
        if problem:
            raise ConfigError(
                f"{self.ssh.remote_python!r} (ssh.remote_python in {self.site.path}) does not run on "
                f"{self.runner.target}: {problem.splitlines()[-1]}",
                hint="Name a Python 3 there, e.g. /usr/bin/python3 or a module's python.",
                field="ssh.remote_python",
            )
        found = result.stdout.strip()
        if found != self.wheels.python:
            raise ConfigError(
                f"The wheels were built here for Python {self.wheels.python}, but {self.ssh.remote_python} on "
                f"{self.runner.target} is Python {found}; compiled dependencies would not install there.",
                hint=f"Set ssh.remote_python in {self.site.path} to a Python {self.wheels.python.split()[0]} on the "
                "login node, or run deploy with that Python version here.",
                field="ssh.remote_python",
            )
        self.step("python", False, "", same=f"{self.ssh.remote_python} is Python {found}, as the wheels")

    async def _makedirs(self, path: str) -> None:
        exists = await self.runner.exists(path)
        if not exists and not self.dry_run:
            await self.runner.makedirs(path, mode=0o700)
        self.step("dir", not exists, f"created {path}", f"would create {path}", same=f"{path} exists")

    async def _copy_wheels(self, record: dict[str, Any]) -> bool:
        wheel_dir = self._path("wheels")
        known: dict[str, str] = record.get("wheels") or {}
        todo = []
        for wheel in self.wheels.files:
            same = known.get(wheel.name) == self.wheels.fingerprints[wheel.name]
            if not same or not await self.runner.exists(posixpath.join(wheel_dir, wheel.name)):
                todo.append(wheel)
        stale = sorted(set(known) - set(self.wheels.fingerprints))
        if not self.dry_run:
            await self.runner.makedirs(wheel_dir, mode=0o700)
            for wheel in todo:
                data = await asyncio.to_thread(wheel.read_bytes)
                await self.runner.write_file(posixpath.join(wheel_dir, wheel.name), data, mode=0o644)
            if stale:
                old = [posixpath.join(wheel_dir, n) for n in stale]
                await self._check(["rm", "-f", "--", *old], "Removing old wheels")
        names = ", ".join(w.name.split("-")[0] for w in todo)
        gone = f"; removed {len(stale)} old one(s)" if stale else ""
        changed = bool(todo or stale)
        self.step(
            "wheels",
            changed,
            f"copied {len(todo)} wheel(s) ({names}) to {wheel_dir}{gone}",
            f"would copy {len(todo)} wheel(s) ({names}) to {wheel_dir}{gone}",
            same=f"{len(self.wheels.files)} wheels in {wheel_dir} are current",
        )
        return changed

    async def _install(self, record: dict[str, Any], wheels_changed: bool) -> None:
        venv = self._path("venv")
        python = posixpath.join(venv, "bin", "python")
        has_venv = await self.runner.exists(python)
        if not has_venv and not self.dry_run:
            await self._check([self.ssh.remote_python, "-m", "venv", venv], "Creating the virtualenv", timeout_s=300)
        self.step("venv", not has_venv, f"created {venv}", f"would create {venv}", same=f"{venv} exists")
        entry = posixpath.join(venv, "bin", "glidein-client")
        needed = (
            not has_venv
            or wheels_changed
            or record.get("fingerprint") != self.wheels.fingerprint
            or not await self.runner.exists(entry)
        )
        if needed and not self.dry_run:
            wheels = [posixpath.join(self._path("wheels"), w.name) for w in self.wheels.files]
            await self._check(
                [
                    python,
                    "-m",
                    "pip",
                    "--isolated",
                    "install",
                    "--quiet",
                    "--no-index",
                    "--no-deps",
                    "--force-reinstall",
                    "--disable-pip-version-check",
                    *wheels,
                ],
                "Installing the wheels",
                timeout_s=600,
            )
            probe = "import importlib.metadata as m; print(m.version('glidein'))"
            version = (await self._check([python, "-c", probe], "Checking the installed glidein")).strip()
            if version != self.wheels.version:
                raise SshError(f"After installing, {python} reports glidein {version}, not {self.wheels.version}.")
        what = f"glidein {self.wheels.version} and {len(self.wheels.files) - 1} dependencies into {venv}"
        self.step(
            "install",
            needed,
            f"installed {what}",
            f"would install {what}",
            same=f"glidein {self.wheels.version} ({self.wheels.fingerprint}) is installed",
        )

    async def _read_or_none(self, path: str) -> bytes | None:
        try:
            return await self.runner.read_file(path)
        except FileNotFoundError:
            return None

    async def _put(self, name: str, filename: str, data: bytes, mode: int) -> None:
        path = self._path(filename)
        current = await self._read_or_none(path)
        changed = current != data
        if changed and not self.dry_run:
            await self.runner.write_file(path, data, mode=mode)
        done, would = ("wrote", "write") if current is None else ("updated", "update")
        self.step(name, changed, f"{done} {path} (mode {mode:o})", f"would {would} {path}", same=f"{path} is current")
