"""The web dashboard's pages as HTML: plain server-rendered pages with inline SVG plots.

No script at all and no external resource (it works on a closed network); the pages are served
with a Content-Security-Policy that forbids scripts, and every user-supplied string (labels,
argv, site names, reasons) passes through :func:`html.escape`. :class:`History` keeps the
cores in use per site over the last hour for the overview's plot.
"""

from __future__ import annotations

import collections
import html
import time
from collections.abc import Iterable, Mapping, Sequence

from glidein_client.wire.schema import AttemptView, JobView
from glidein_server.store.monitoring import DatasetRow, Monitoring

CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
STYLE = """
body{font-family:sans-serif;margin:1.5em;color:#222}nav a{margin-right:1em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left}
svg.plot{border:1px solid #ddd;background:#fafafa}.dead{color:#b00;font-weight:bold}pre{background:#f4f4f4;padding:.5em}
"""
e = html.escape


class History:
    """Cores in use per site, one sample per call of :meth:`add`, the newest ``keep`` of them."""

    def __init__(self, keep: int = 720) -> None:
        self.samples: collections.deque[tuple[float, dict[str, int]]] = collections.deque(maxlen=keep)

    def add(self, now: float, snap: Monitoring) -> None:
        cores: dict[str, int] = {s.name: 0 for s in snap.sites}
        for site, _, _, _, c in snap.running:
            cores[site] = cores.get(site, 0) + c
        self.samples.append((now, cores))

    def series(self) -> dict[str, list[tuple[float, float]]]:
        out: dict[str, list[tuple[float, float]]] = {}
        for t, cores in self.samples:
            for site, c in cores.items():
                out.setdefault(site, []).append((t, float(c)))
        return out


def page(title: str, body: str, *, refresh_s: int | None = 10) -> str:
    meta = f'<meta http-equiv="refresh" content="{refresh_s}">' if refresh_s else ""
    nav = "".join(
        f'<a href="{href}">{name}</a>'
        for href, name in (("/ui", "Overview"), ("/ui/sites", "Sites"), ("/ui/datasets", "Datasets"))
    )
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">{meta}<title>glidein: {e(title)}</title>'
        f"<style>{STYLE}</style></head><body><nav>{nav}</nav><h1>{e(title)}</h1>{body}</body></html>"
    )


def login_page(message: str = "") -> str:
    note = f'<p class="dead">{e(message)}</p>' if message else ""
    form = (
        '<form method="post" action="/ui/login"><label>Operator token '
        '<input type="password" name="token" autocomplete="off" size="50"></label> '
        '<button type="submit">Log in</button></form>'
    )
    return page("Log in", note + form + "<p>The dashboard is read-only.</p>", refresh_s=None)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def bar_chart(values: Mapping[str, float], *, width: int = 480, bar_h: int = 22) -> str:
    top = max(values.values(), default=0) or 1
    parts = []
    for i, (name, v) in enumerate(values.items()):
        w = max(1.0, (width - 160) * v / top)
        y = i * (bar_h + 6) + 4
        parts.append(
            f'<text x="4" y="{y + 16}">{e(name)}</text><rect class="bar" x="110" y="{y}" width="{w:.1f}" '
            f'height="{bar_h}" fill="{COLORS[i % len(COLORS)]}"></rect>'
            f'<text x="{114 + w:.1f}" y="{y + 16}">{v:g}</text>'
        )
    height = len(values) * (bar_h + 6) + 8
    return f'<svg class="plot" width="{width}" height="{height}" role="img">{"".join(parts)}</svg>'


def line_plot(series: Mapping[str, Sequence[tuple[float, float]]], *, width: int = 640, height: int = 220) -> str:
    """One polyline per series over time, with a legend; an empty frame when there is no data yet."""
    points = [p for s in series.values() for p in s]
    if not points:
        return f'<svg class="plot" width="{width}" height="{height}"><text x="10" y="20">no data yet</text></svg>'
    t0, t1 = min(p[0] for p in points), max(p[0] for p in points)
    top = max(max(p[1] for p in points), 1.0)
    span = max(t1 - t0, 1.0)
    plot_h = height - 40
    parts = [f'<text x="4" y="14">{top:g}</text><text x="4" y="{plot_h + 14}">0</text>']
    for i, (name, s) in enumerate(sorted(series.items())):
        color = COLORS[i % len(COLORS)]
        xy = " ".join(f"{40 + (width - 50) * (t - t0) / span:.1f},{10 + plot_h * (1 - v / top):.1f}" for t, v in s)
        if len(s) == 1:  # one sample: a short flat line, so that it shows
            xy += f" {48 + (width - 50) * (s[0][0] - t0) / span:.1f},{10 + plot_h * (1 - s[0][1] / top):.1f}"
        line = f'fill="none" stroke="{color}" stroke-width="2" points="{xy}"'
        parts.append(f'<polyline class="series" {line}></polyline>')
        parts.append(f'<text x="{40 + 120 * i}" y="{height - 6}" fill="{color}">{e(name)}</text>')
    return f'<svg class="plot" width="{width}" height="{height}" role="img">{"".join(parts)}</svg>'


def overview(snap: Monitoring, history: History) -> str:
    states: dict[str, int] = {}
    for _, state, _, n in snap.jobs:
        states[state] = states.get(state, 0) + n
    running_pilots = sum(p.pilots for p in snap.pilots if p.state == "running")
    allocated = sum(p.cores for p in snap.pilots if p.state == "running")
    in_use = sum(c for *_, c in snap.running)
    body = (
        "<h2>Jobs by state</h2>"
        + bar_chart(dict(sorted(states.items())))
        + "<h2>Cores in use by site (last hour)</h2>"
        + line_plot(history.series())
        + f"<p>{running_pilots} running pilots, {allocated} cores allocated, {in_use} in use by jobs.</p>"
    )
    return page("Overview", body)


def sites_page(snap: Monitoring, now: float, dead_after_s: float) -> str:
    pilots: dict[str, dict[str, int]] = {}
    for p in snap.pilots:
        d = pilots.setdefault(p.site, {})
        d[p.state] = d.get(p.state, 0) + p.pilots
        if p.state == "running":
            d["allocated"] = d.get("allocated", 0) + p.cores
            d["free"] = d.get("free", 0) + p.cores_free
    rows = []
    for s in snap.sites:
        d = pilots.get(s.name, {})
        seen = "never" if s.last_seen is None else f"{now - s.last_seen:.0f} s ago"
        dead = s.last_seen is None or now - s.last_seen > dead_after_s
        rows.append(
            (
                s.name,
                d.get("running", 0),
                d.get("pending", 0),
                d.get("allocated", 0),
                d.get("allocated", 0) - d.get("free", 0),
                f"{s.health:.2f}",
                f"{s.backoff_s:.0f} s",
                seen + (" (client down)" if dead else ""),
                s.demand_pilots,
                s.multicore_idle,
            )
        )
    headers = (
        "site", "pilots running", "pilots pending", "cores allocated", "cores in use", "health", "back-off",
        "client last seen", "pilots wanted", "idle multicore jobs",
    )  # fmt: skip
    return page("Sites", table(headers, rows))


def datasets_page(rows: Sequence[DatasetRow], key: str) -> str:
    out = []
    for d in rows:
        st = d.states
        eff = f"{100 * d.cpu_s / d.core_wall_s:.0f}%" if d.core_wall_s else "-"
        idle = st.get("idle", 0) + st.get("claimed", 0)
        out.append(
            (d.name or f"(no {key} label)", idle, st.get("running", 0), st.get("done", 0), st.get("failed", 0),
             st.get("cancelled", 0), st.get("held", 0), d.cores_in_use, eff)
        )  # fmt: skip
    headers = ("dataset", "idle", "running", "done", "failed", "cancelled", "held", "cores in use", "CPU efficiency")
    done = {d.name or f"(no {key} label)": float(d.states.get("done", 0)) for d in rows}
    return page("Datasets", table(headers, out) + "<h2>Done jobs per dataset</h2>" + bar_chart(done))


def job_page(job: JobView, attempts: Sequence[AttemptView]) -> str:
    spec = job.spec
    facts = [
        ("owner", job.owner),
        ("state", job.state.value),
        ("command", " ".join(spec.argv) if spec.argv else "(script)"),
        ("labels", ", ".join(f"{k}={v}" for k, v in sorted(spec.labels.items())) or "-"),
        ("cores, memory", f"{spec.cpus}, {spec.memory_mb} MB"),
        ("submitted", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.submitted_at))),
        ("reason", job.reason or "-"),
    ]
    body = table(("", ""), facts)
    if job.history:  # holds, releases and retries by request
        events = [
            (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ev.at)), ev.action, ev.by, ev.reason or "-",
             ", ".join(f"{c.field} {c.old} -> {c.new}" for c in ev.changes) or "-")
            for ev in job.history
        ]  # fmt: skip
        body += "<h2>History</h2>" + table(("when", "what", "by", "why", "changed"), events)
    body += "<h2>Attempts</h2>"
    rows = []
    for a in attempts:
        p = a.provenance
        rows.append(
            (
                a.id, a.site, a.outcome or "running", p.host if p else "-",
                f"{p.batch_system} {p.batch_id}" if p else "-",
                "-" if a.wall_s is None else f"{a.wall_s:.1f} s", "-" if a.cpu_s is None else f"{a.cpu_s:.1f} s",
                "-" if a.cpu_efficiency is None else f"{100 * a.cpu_efficiency:.0f}%",
                "-" if a.max_rss_mb is None else f"{a.max_rss_mb:.0f} MB",
                f"{p.python}; {p.os}; {p.cpu_model}" if p else "-",
                " ".join(f"{o.name}:{o.sha256[:12]}" for o in a.outputs) or "-",
            )
        )  # fmt: skip
    headers = ("attempt", "site", "outcome", "host", "batch job", "wall", "CPU", "efficiency", "max RSS",
               "software", "outputs (sha256)")  # fmt: skip
    body += table(headers, rows)
    for a in attempts:
        if a.stderr_tail:
            body += f"<h3>stderr of attempt {a.id}</h3><pre>{e(a.stderr_tail[-4000:])}</pre>"
    return page(f"Job {job.id}", body, refresh_s=None)
