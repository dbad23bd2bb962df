"""`glidein-client deploy CONFIG`: install or upgrade the client on a remote login node over SSH.

Over the same key + one-time-code login as remote mode (:class:`~glidein_client.site.runners.ssh.SshRunner`):

1. checks that ``ssh.remote_python`` there is the Python this host builds wheels for
   (same version and platform: the wheels are copied, never downloaded there);
2. copies the wheels of this checkout and of its dependencies (``pip wheel``, built here) to
   ``<remote_dir>/wheels``;
3. creates the virtualenv ``<remote_dir>/venv`` and installs the wheels into it offline
   (``pip install --no-index --no-deps``);
4. writes the site config as ``<remote_dir>/site.toml`` -- without its ``[ssh]`` section and with
   ``site.token_file`` pointing at the copy of the token ``<remote_dir>/site.token`` (mode 0600);
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
import hashlib
import json
import logging
import posixpath
import re
import shlex
import shutil
import sys
import sysconfig
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glidein_client.site.config import SiteConfig
from glidein_client.site.runners.local import LocalRunner
from glidein_client.site.runners.ssh import SshRunner
from glidein_client.site.schedulers.base import render_template
from glidein_client.wire.errors import ConfigError, GlideinError, SchedulerError, SshError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger(__name__)

RECORD_FILE = "deployed.json"
_BUILD_IGNORE = (
    ".git",
    ".venv",
    "venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    ".hypothesis",
    "tests",
    "benchmarks",
    "site_configs",
    "examples",
    "packaging",
)
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class Wheels:
    """Wheels of glidein and its dependencies, built on this host."""

    directory: Path
    files: tuple[Path, ...]
    fingerprints: dict[str, str]  # file name -> sha256 of its RECORD (first 16 hex digits)
    version: str  # of glidein
    python: str  # "3.11 linux-x86_64": what the wheels were built for

    @property
    def fingerprint(self) -> str:
        """One fingerprint for the whole set."""
        text = "\n".join(f"{name} {fp}" for name, fp in sorted(self.fingerprints.items()))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


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


def checkout_dir() -> Path:
    """The source checkout this glidein runs from (where ``pyproject.toml`` names the project)."""
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    try:
        project = tomllib.loads(pyproject.read_text()).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        project = {}
    if project.get("name") != "glidein":
        raise ConfigError(
            "deploy builds glidein from its source checkout, and this installation has none.",
            hint="Run glidein-client deploy from a checkout (`pip install -e .` there), or pass --source DIR.",
        )
    return root


async def build_wheels(dest: Path, *, source: Path | None = None) -> Wheels:
    """Build the wheels of ``source`` (default: :func:`checkout_dir`) and its dependencies into ``dest``."""
    source = source or checkout_dir()
    await asyncio.to_thread(dest.mkdir, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="glidein-build-") as tmp:
        # Built from a copy, so the checkout gets no build/ or *.egg-info from it.
        copy = Path(tmp) / "src"
        await asyncio.to_thread(shutil.copytree, source, copy, ignore=shutil.ignore_patterns(*_BUILD_IGNORE))
        argv = [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--disable-pip-version-check",
            "-w",
            str(dest),
            str(copy),
        ]
        log.info("building the wheels of %s and its dependencies", source)
        result = await LocalRunner().run(argv, timeout_s=900)
    if result.returncode != 0:
        lines = [ln for ln in result.stderr.splitlines() if ln.strip() and "is ignored" not in ln]
        raise GlideinError(
            f"Building the wheels failed: {(lines or ['exit code ' + str(result.returncode)])[-1].strip()}",
            hint="pip needs the dependencies of glidein from an index or its cache; run "
            f"`{shlex.join(argv[:4])} -w DIR {source}` to see the whole output.",
            command=argv,
            exit_code=result.returncode,
            stderr=result.stderr,
        )
    files, fingerprints = await asyncio.to_thread(_scan, dest)
    main = [f for f in files if f.name.startswith("glidein-")]
    if not main:
        raise GlideinError(f"pip built no glidein wheel into {dest}.")
    version = main[0].name.split("-")[1]
    python = f"{sys.version_info[0]}.{sys.version_info[1]} {sysconfig.get_platform()}"
    return Wheels(dest, files, fingerprints, version, python)


def _scan(dest: Path) -> tuple[tuple[Path, ...], dict[str, str]]:
    files = tuple(sorted(dest.glob("*.whl")))
    return files, {f.name: _fingerprint(f) for f in files}


def _fingerprint(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as zf:
        records = [n for n in zf.namelist() if n.endswith(".dist-info/RECORD")]
        data = zf.read(records[0]) if records else wheel.read_bytes()
    return hashlib.sha256(data).hexdigest()[:16]


def remote_config_text(site: SiteConfig, token_file: str) -> str:
    """The site config for the login node: no ``[ssh]``, ``site.token_file`` at the copied token."""
    with open(site.path, "rb") as fh:
        raw = tomllib.load(fh)
    raw.pop("ssh", None)
    raw["site"]["token_file"] = token_file
    text = (
        f"# Written by `glidein-client deploy` from {site.path.replace(chr(10), ' ')} on the operator's host.\n"
        "# Change that file and deploy again: the next deploy replaces this one.\n\n" + _toml(raw)
    )
    if tomllib.loads(text) != raw:  # pragma: no cover - a bug in _toml
        raise GlideinError("The site config could not be written back as TOML faithfully.")
    return text


def cron_line(site: SiteConfig, remote_dir: str) -> tuple[str, str]:
    """The crontab marker comment and job line for ``site`` deployed in ``remote_dir``."""
    assert site.ssh is not None
    marker = f"# glidein-client deploy: site {site.name} in {remote_dir}"
    command = (
        shlex.join(
            [
                posixpath.join(remote_dir, "venv", "bin", "glidein-client"),
                "once",
                posixpath.join(remote_dir, "site.toml"),
            ]
        )
        + f" >>{shlex.quote(posixpath.join(remote_dir, 'cron.log'))} 2>&1"
    )
    return marker, f"*/{site.ssh.cron_minutes} * * * * " + command.replace("%", "\\%")


def unit_name(site: SiteConfig) -> str:
    return f"glidein-client-{site.name}.service"


def unit_text(site: SiteConfig, remote_dir: str) -> str:
    """The ``systemd --user`` unit that runs ``glidein-client run`` for ``site`` deployed in ``remote_dir``."""
    argv = [posixpath.join(remote_dir, "venv", "bin", "glidein-client"), "run", posixpath.join(remote_dir, "site.toml")]
    return render_template(
        "glidein-client.service",
        {
            "site": site.name,
            "config_source": site.path.replace("\n", " "),
            "exec_start": " ".join(_systemd_word(word) for word in argv),
        },
        quote=False,
        package="glidein_client.site",
    )


def _systemd_word(word: str) -> str:
    """One word of a unit's ExecStart: double-quoted, specifiers (%) and variables ($) kept literal."""
    if "\n" in word:
        raise ConfigError(
            f"The path {word!r} has a line break, which a systemd unit cannot hold.",
            hint="Choose an ssh.remote_dir without one.",
            field="ssh.remote_dir",
        )
    escaped = word.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


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
    own = runner is None
    runner = runner or SshRunner(site.ssh, config_path=site.path)
    try:
        if wheels is None:
            with tempfile.TemporaryDirectory(prefix="glidein-wheels-") as tmp:
                built = await build_wheels(Path(tmp), source=source)
                return await _Deployment(site, runner, built, token, dry_run).run_or_explain()
        return await _Deployment(site, runner, wheels, token, dry_run).run_or_explain()
    finally:
        if own:
            await runner.aclose()


class _Deployment:
    def __init__(self, site: SiteConfig, runner: SshRunner, wheels: Wheels, token: str, dry_run: bool) -> None:
        assert site.ssh is not None
        self.site, self.ssh, self.runner, self.wheels = site, site.ssh, runner, wheels
        self.token, self.dry_run = token, dry_run
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
        await self._put("config", "site.toml", remote_config_text(self.site, self._path("site.token")).encode(), 0o600)
        await self._put("token", "site.token", (self.token + "\n").encode(), 0o600)
        renewed = any(s.changed for s in self.steps if s.name in ("install", "config", "token"))
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

    async def _crontab(self, *, install: bool) -> None:
        """Put this site's crontab line in (``install``) or take it out; other lines stay as they are."""
        marker, line = cron_line(self.site, self.dir)
        try:
            listed = await self.runner.run(["crontab", "-l"], timeout_s=30)
        except SchedulerError:
            if not install:
                return  # no cron here, so no line of ours either
            raise
        if listed.returncode != 0 and "no crontab" not in (listed.stderr + listed.stdout).lower():
            if not install:
                return
            raise SshError(
                f"`crontab -l` failed on {self.runner.target}: {listed.stderr.strip()}",
                hint="deploy installs a crontab line; this site may not allow cron for this user "
                '(ssh.service = "systemd" runs the client as a systemd --user unit instead).',
                command=list(listed.argv),
                exit_code=listed.returncode,
                stderr=listed.stderr,
            )
        old = listed.stdout.splitlines() if listed.returncode == 0 else []
        kept: list[str] = []
        skip = False
        for text in old:
            if skip:
                skip = False
                continue
            if text == marker:
                skip = True  # the marker and the job line after it are ours
                continue
            kept.append(text)
        new = [*kept, marker, line] if install else kept
        changed = new != old
        if not install and not changed:
            return
        if changed and not self.dry_run:
            (await self.runner.run(["crontab", "-"], stdin=("\n".join(new) + "\n").encode(), timeout_s=30)).check(
                "Installing the crontab line" if install else "Removing the crontab line"
            )
        if not install:
            self.step("crontab", True, f"removed: {line}", f"would remove: {line}")
            return
        verb = "replaced" if marker in old else "added"
        self.step("crontab", changed, f"{verb}: {line}", f"would {verb[:-1]}: {line}", same=f"has: {line}")

    async def _systemctl(self, *args: str) -> str:
        """``systemctl --user ARGS`` on the login node; its answer, or the plain words of its failure."""
        return await self._check(["systemctl", "--user", *args], f"`systemctl --user {' '.join(args)}`", timeout_s=60)

    async def _check_systemd(self) -> None:
        """Before anything changes: a systemd user instance answers, and it outlives the session (lingering)."""
        problem = ""
        try:
            probe = await self.runner.run(["systemctl", "--user", "show-environment"], timeout_s=30)
            if probe.returncode != 0:
                problem = (probe.stderr.strip() or f"exit code {probe.returncode}").splitlines()[-1]
        except SchedulerError as exc:
            problem = exc.message
        if problem:
            raise ConfigError(
                f'ssh.service in {self.site.path} is "systemd", but {self.runner.target} gives this user no '
                f"systemd user instance (systemctl --user: {problem}).",
                hint='Set ssh.service = "cron", or ask the site for a systemd user instance with lingering on.',
                field="ssh.service",
            )
        user = (await self._check(["id", "-un"], "`id -un`")).strip()
        try:
            linger = await self.runner.run(
                ["loginctl", "show-user", "--property=Linger", "--value", user], timeout_s=30
            )
            lingering = linger.stdout.strip() if linger.returncode == 0 else "unknown"
        except SchedulerError:  # no loginctl: nothing to say either way
            lingering = "unknown"
        if lingering == "no":
            raise ConfigError(
                f"Lingering is off for {user} on {self.runner.target}: a systemd --user unit would stop when "
                "the last session of that user ends.",
                hint=f'Ask the site to run `loginctl enable-linger {user}`, or set ssh.service = "cron" in '
                f"{self.site.path}.",
                field="ssh.service",
            )
        self.step("systemd", False, "", same=f"{user} has a systemd user instance that outlives the session")

    async def _unit(self, path: str, *, restart: bool) -> None:
        """Write the unit, then bring it to enabled and running (restarted when what it runs changed)."""
        unit, text = unit_name(self.site), unit_text(self.site, self.dir).encode()
        current = await self._read_or_none(path)
        written = current != text
        if written and not self.dry_run:
            await self.runner.makedirs(posixpath.dirname(path), mode=0o755)
            await self.runner.write_file(path, text, mode=0o644)
            await self._systemctl("daemon-reload")
        enabled = (await self.runner.run(["systemctl", "--user", "is-enabled", unit], timeout_s=30)).stdout.strip()
        active = (await self.runner.run(["systemctl", "--user", "is-active", unit], timeout_s=30)).stdout.strip()
        actions = [] if enabled == "enabled" else ["enable"]
        actions += ["start"] if active != "active" else ["restart"] if (written or restart) else []
        if not self.dry_run:
            for action in actions:
                await self._systemctl(action, unit)
        done = ([f"{'wrote' if current is None else 'updated'} {path}"] if written else []) + [
            {"enable": "enabled", "start": "started", "restart": "restarted"}[a] + f" {unit}" for a in actions
        ]
        would = ([f"would {'write' if current is None else 'update'} {path}"] if written else []) + [
            f"would {a} {unit}" for a in actions
        ]
        self.step("service", bool(done), "; ".join(done), "; ".join(would), same=f"{unit} is current, enabled, active")

    async def _remove_unit(self, path: str) -> None:
        """With cron: stop, disable and remove the unit an earlier ``systemd`` deploy installed, if any."""
        if not await self.runner.exists(path):
            return
        unit = unit_name(self.site)
        if not self.dry_run:
            await self._systemctl("disable", "--now", unit)
            await self._check(["rm", "-f", "--", path], f"Removing {path}")
            await self._systemctl("daemon-reload")
        self.step(
            "service",
            True,
            f"stopped, disabled and removed {unit} (cron runs the client now)",
            f"would stop, disable and remove {unit}",
        )


def _toml(table: dict[str, Any], prefix: str = "") -> str:
    """A TOML document for ``table`` (strings, numbers, booleans, lists and tables)."""
    scalars = [(k, v) for k, v in table.items() if not isinstance(v, dict)]
    tables = [(k, v) for k, v in table.items() if isinstance(v, dict)]
    out = "".join(f"{_key(k)} = {_value(v)}\n" for k, v in scalars)
    for key, sub in tables:
        name = f"{prefix}.{_key(key)}" if prefix else _key(key)
        out += f"\n[{name}]\n" + _toml(sub, name)
    return out.lstrip("\n") if not prefix else out


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _string(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return "nan"
        return {float("inf"): "inf", float("-inf"): "-inf"}.get(value, repr(value))
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    return value.isoformat() if hasattr(value, "isoformat") else _string(str(value))


def _string(text: str) -> str:
    escapes = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
    out = []
    for ch in text:
        if ch in escapes:
            out.append(escapes[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'
