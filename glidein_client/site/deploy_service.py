"""How a deployment keeps the client going on the login node: a crontab line (``ssh.service = "cron"``)
or a ``systemd --user`` unit (``"systemd"``), and taking out what the other way installed before."""

from __future__ import annotations

import posixpath
import shlex

from glidein_client.site.config import SiteConfig, SshSection
from glidein_client.site.runners.ssh import SshRunner
from glidein_client.site.schedulers.base import render_template
from glidein_client.wire.errors import ConfigError, SchedulerError, SshError


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


class ServiceSteps:
    """The service steps of a deployment (mixed into it: it has the runner, the site and the step log)."""

    site: SiteConfig
    ssh: SshSection
    runner: SshRunner
    dir: str
    dry_run: bool

    def step(self, name: str, changed: bool, done: str, would: str | None = None, same: str = "") -> None:
        raise NotImplementedError

    async def _check(self, argv: list[str], what: str, timeout_s: float = 120.0) -> str:
        raise NotImplementedError

    async def _read_or_none(self, path: str) -> bytes | None:
        raise NotImplementedError

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
