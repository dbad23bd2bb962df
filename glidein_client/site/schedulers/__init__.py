"""Batch-system backends behind the :class:`Scheduler` seam, chosen by ``site.scheduler``."""

from __future__ import annotations

import importlib
from typing import cast

from glidein_client.site.config import SiteConfig
from glidein_client.site.runners.local import Runner
from glidein_client.site.schedulers.base import PilotJob, PilotLaunch, PilotState, Scheduler
from glidein_client.wire.errors import ConfigError

__all__ = ["BACKENDS", "PilotJob", "PilotLaunch", "PilotState", "Scheduler", "make_scheduler"]

#: scheduler name -> (module in this package, class); modules are imported only when chosen.
BACKENDS: dict[str, tuple[str, str]] = {
    "local": ("local", "LocalScheduler"),
    "slurm": ("slurm", "SlurmScheduler"),
    "pbs": ("pbs", "PbsScheduler"),
    "htcondor": ("htcondor", "HTCondorScheduler"),
    "lsf": ("lsf", "LsfScheduler"),
}


def make_scheduler(site: SiteConfig, runner: Runner) -> Scheduler:
    """The backend named by ``site.scheduler`` of ``site``, talking through ``runner``."""
    name = site.site.scheduler
    if name not in BACKENDS:
        raise ConfigError(
            f"Site config {site.path}: site.scheduler {name!r} is not known.",
            hint=f"Use one of: {', '.join(BACKENDS)}.",
            field="site.scheduler",
        )
    module_name, class_name = BACKENDS[name]
    try:
        module = importlib.import_module(f"{__name__}.{module_name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{module_name}":
            raise
        raise ConfigError(
            f"Site config {site.path}: the {name} scheduler is not available in this installation.",
            hint="Install a glidein release that includes it, or use another site.scheduler.",
            field="site.scheduler",
        ) from None
    return cast(Scheduler, getattr(module, class_name)(site, runner))
