"""PNG plots of a run: cores allocated versus in use over time, and each site's occupancy."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from glidein_client.wire.errors import ConfigError
from glidein_sim.metrics import Timeline


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError(
            "Plots need matplotlib, which is not installed.",
            hint="Install it with: pip install 'glidein[sim]' (or run with --no-plots).",
        ) from None
    return plt


def plot(runs: Sequence[tuple[str, Timeline]], out_dir: Path, name: str) -> list[Path]:
    """Write ``<name>-cores.png`` and ``<name>-occupancy.png``; return their paths."""
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}-cores.png", out_dir / f"{name}-occupancy.png"]

    fig, axes = plt.subplots(len(runs), 1, figsize=(10, 3.2 * len(runs)), sharex=True, squeeze=False)
    for ax, (label, tl) in zip(axes[:, 0], runs, strict=True):
        hours = [t / 3600 for t in tl.t]
        alloc = [sum(v) for v in zip(*tl.allocated.values(), strict=True)]
        busy = [sum(v) for v in zip(*tl.busy.values(), strict=True)]
        ax.plot(hours, alloc, label="cores allocated (pilots running)")
        ax.plot(hours, busy, label="cores in use (jobs running)")
        ax.fill_between(hours, busy, alloc, alpha=0.25, color="tab:red", label="idle in pilots")
        ax.set_title(f"{name}: {label}")
        ax.set_ylabel("cores")
        ax.legend(loc="lower right", fontsize="small")
    axes[-1, 0].set_xlabel("hours")
    fig.tight_layout()
    fig.savefig(paths[0], dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(len(runs), 1, figsize=(10, 3.2 * len(runs)), sharex=True, squeeze=False)
    for ax, (label, tl) in zip(axes[:, 0], runs, strict=True):
        hours = [t / 3600 for t in tl.t]
        for site, alloc in tl.allocated.items():
            busy = tl.busy[site]
            occ = [100 * b / a if a else 0.0 for a, b in zip(alloc, busy, strict=True)]
            ax.plot(hours, occ, label=site)
        ax.set_ylim(0, 105)
        ax.set_ylabel("occupancy %")
        ax.set_title(f"{name}: per-site occupancy, {label}")
        ax.legend(loc="lower right", fontsize="small")
    axes[-1, 0].set_xlabel("hours")
    fig.tight_layout()
    fig.savefig(paths[1], dpi=100)
    plt.close(fig)
    return paths
