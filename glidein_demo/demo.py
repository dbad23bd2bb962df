"""`make demo`: the whole system on one machine, through the same commands a person would type.

A server on SQLite, a site client with the local scheduler, pilots started by that client,
and a mixed workload of single- and multi-core jobs with inputs and outputs, submitted and
followed with the `glidein` CLI. Every output is checked against a result computed here.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from glidein_client.site.config import load_site_config
from glidein_client.site.runners.local import LocalRunner
from glidein_client.site.schedulers.local import LocalScheduler
from glidein_client.wire.api import ApiClient

ANALYSE = '''\
"""Count the words of a text, split across the job's cores, and write a one-line result."""
import collections, os, sys, time
from concurrent.futures import ProcessPoolExecutor


def count(lines):
    return collections.Counter(w for line in lines for w in line.split())


def main():
    src, dst, pause = sys.argv[1], sys.argv[2], float(sys.argv[3])
    cpus = int(os.environ.get("GLIDEIN_CPUS", "1"))
    lines = open(src).read().splitlines()
    if cpus > 1:
        with ProcessPoolExecutor(cpus) as pool:
            parts = list(pool.map(count, [lines[i::cpus] for i in range(cpus)]))
    else:
        parts = [count(lines)]
    total = sum(parts, collections.Counter())
    time.sleep(pause)  # stands in for real work
    word, n = min(total.items(), key=lambda kv: (-kv[1], kv[0]))
    with open(dst, "w") as out:
        out.write(f"{sum(total.values())} words, {len(total)} distinct, most common {word!r} x{n}\\n")


if __name__ == "__main__":
    main()
'''
WORDS = (
    "pilot glidein slot core memory walltime site queue lease claim input output neutrino muon "
    "detector event shower trigger photon cluster node login batch token demand"
).split()


def expected_result(text: str) -> str:
    total = collections.Counter(w for line in text.splitlines() for w in line.split())
    word, n = min(total.items(), key=lambda kv: (-kv[1], kv[0]))
    return f"{sum(total.values())} words, {len(total)} distinct, most common {word!r} x{n}\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def say(text: str) -> None:
    print(text, flush=True)


class Demo:
    def __init__(self, root: Path, jobs: int) -> None:
        self.root = root
        self.n_jobs = jobs
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = dict(os.environ)
        self.ca_file = ""

    def cli(self, module: str, *args: str, capture: bool = True) -> str:
        pipe = subprocess.PIPE if capture else None
        proc = subprocess.run(
            [sys.executable, "-m", module, *args], env=self.env, check=False, stdout=pipe, stderr=pipe
        )
        if proc.returncode != 0:
            err = proc.stderr.decode() if proc.stderr else ""
            raise SystemExit(f"demo: `{module} {' '.join(args)}` failed (exit {proc.returncode}): {err.strip()}")
        return proc.stdout.decode() if proc.stdout else ""

    def secret(self, name: str, value: str) -> Path:
        path = self.root / name
        path.write_text(value + "\n")
        path.chmod(0o600)
        return path

    def start(self, name: str, module: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.root / f"{name}.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def setup(self) -> tuple[str, Path]:
        port = free_port()
        server_dir = self.root / "server"
        init = json.loads(self.cli("glidein_server.cli", "init", str(server_dir), "--port", str(port), "--json"))
        user = json.loads(self.cli("glidein_server.cli", "--dir", str(server_dir), "user", "add", "demo", "--json"))
        site = json.loads(self.cli("glidein_server.cli", "--dir", str(server_dir), "site", "add", "local", "--json"))
        url, self.ca_file = init["url"], init["ca_file"]  # HTTPS, with the CA that init made
        self.env.update(
            GLIDEIN_URL=url,
            GLIDEIN_CA_FILE=self.ca_file,
            GLIDEIN_TOKEN_FILE=str(self.secret("user.token", user["token"])),
        )
        self.env.pop("GLIDEIN_TOKEN", None)
        site_config = self.root / "local.toml"
        site_config.write_text(f"""\
[site]
name = "local"
url = "{url}"
ca_file = "{self.ca_file}"
token_file = "{self.secret("site.token", site["token"])}"
scheduler = "local"
scratch_dir = "{self.root / "site"}"
cycle_s = 2

[pilot]
cpus = 4
memory = "4G"
disk = "2G"
walltime = "10m"
idle_timeout = "30s"

[limits]
max_pilots = 3
max_idle_pilots = 3
max_submit_per_cycle = 3
""")
        say(f"  server     {url}  (SQLite in {server_dir}; TLS with the CA in {self.ca_file})")
        self.start("server", "glidein_server.cli", "--dir", str(server_dir), "serve")
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("demo: the server did not start; see server.log") from None
                time.sleep(0.1)
        self.cli("glidein_client.site.cli", "check", str(site_config))
        self.start("client", "glidein_client.site.cli", "run", str(site_config))
        say("  client     site 'local', local scheduler, pilots of 4 slots (up to 3 pilots), a cycle every 2 s")
        return url, site_config

    def workload(self) -> tuple[Path, dict[int, str]]:
        rng = random.Random(42)
        work = self.root / "work"
        (work / "data").mkdir(parents=True)
        (work / "analyse.py").write_text(ANALYSE)
        expected: dict[int, str] = {}
        lines = ["[defaults]", 'memory = "300M"', 'walltime = "5m"', 'labels = { dataset = "demo" }', ""]
        for i in range(self.n_jobs):
            cpus = 1 if i % 3 else rng.choice((2, 3, 4))
            text = "\n".join(" ".join(rng.choices(WORDS, k=rng.randint(5, 30))) for _ in range(rng.randint(50, 400)))
            (work / "data" / f"part-{i}.txt").write_text(text)
            expected[i] = expected_result(text)
            pause = round(rng.uniform(0.3, 1.0), 2)
            lines += [
                "[[job]]",
                f'argv = ["python3", "analyse.py", "data.txt", "result.txt", "{pause}"]',
                f'inputs = ["analyse.py", {{ path = "data/part-{i}.txt", name = "data.txt" }}]',
                'outputs = ["result.txt"]',
                f"cpus = {cpus}",
                f'labels = {{ dataset = "demo", part = "{i}" }}',
                "",
            ]
        (work / "jobs.toml").write_text("\n".join(lines))
        return work, expected

    def stop_pilots(self, site_config: Path) -> int:
        site = load_site_config(site_config)
        sched = LocalScheduler(site, LocalRunner())

        async def stop() -> int:
            pilots = [p for p in await sched.status() if p.state.active]
            await sched.cancel([p.batch_id for p in pilots])
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # the pilots are other processes: poll their state
                if not any(p.state.active for p in await sched.status()):
                    break
                await asyncio.sleep(0.2)
            return len(pilots)

        return asyncio.run(stop())

    def shutdown(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def run(args: argparse.Namespace) -> int:
    root = Path(tempfile.mkdtemp(prefix="glidein-demo-"))
    demo = Demo(root, args.jobs)
    t_start = time.monotonic()
    try:
        say("glidein demo: a server, a site client and pilots on this machine\n")
        say("1. Starting the server and the site client")
        url, site_config = demo.setup()
        say(f"\n2. Submitting {args.jobs} jobs (1 to 4 cores, an input each, an output each)")
        work, expected = demo.workload()
        ids = json.loads(demo.cli("glidein_client.user.cli", "submit", str(work / "jobs.toml"), "--json"))["ids"]
        t_submit = time.monotonic()
        say(f"  submitted jobs {ids[0]}-{ids[-1]}; the client sees the demand and starts pilots\n")
        say("3. Waiting for the jobs (glidein wait)")
        subprocess.run(
            [sys.executable, "-m", "glidein_client.user.cli", "wait", "--timeout", "5m"], env=demo.env, check=False
        )
        t_done = time.monotonic()
        say("\n4. Fetching and verifying every output (glidein fetch)")
        out = root / "outputs"
        demo.cli("glidein_client.user.cli", "fetch", *map(str, ids), "-d", str(out))
        bad = [
            i
            for i, job_id in enumerate(ids)
            if not (out / str(job_id) / "result.txt").exists()
            or (out / str(job_id) / "result.txt").read_text() != expected[i]
        ]
        say(f"  {len(ids) - len(bad)} of {len(ids)} outputs match the result computed here")
        say("\n5. Stopping the pilots and the client")
        demo.procs[1].send_signal(signal.SIGTERM)
        stopped = demo.stop_pilots(site_config)
        say(f"  {stopped} pilots still running were told to stop (they report their occupancy as they leave)")
        token = (root / "user.token").read_text().strip()

        async def summary() -> tuple[dict[str, int], dict[str, int], float | None, float | None]:
            async with ApiClient(url, token, ca_file=demo.ca_file) as api:
                s = await api.summary()
                used = [j.usage for j in (await api.list_jobs(ids=ids, limit=len(ids))).jobs if j.usage]
            cpu = sum(u.cpu_s or 0.0 for u in used)
            core_wall = sum((u.wall_s or 0.0) * u.cpus for u in used if u.cpu_s is not None)
            return s.jobs, s.pilots, s.occupancy, cpu / core_wall if core_wall else None

        jobs, pilots, occupancy, efficiency = asyncio.run(summary())
        done, failed = jobs.get("done", 0), jobs.get("failed", 0)
        say("\nSummary")
        say(f"  jobs        {done} done, {failed} failed, {len(ids) - done - failed} other, of {len(ids)} submitted")
        say(f"  outputs     {len(ids) - len(bad)} verified, {len(bad)} wrong or missing")
        say(f"  pilots      {sum(pilots.values())} used (local scheduler, 4 slots each, on {os.cpu_count()} cores)")
        if occupancy is not None:
            say(f"  occupancy   {100 * occupancy:.0f}% of the pilots' slot-seconds were given to jobs")
        say(
            f"  time        {t_done - t_submit:.1f} s from submit to the last job done, "
            f"{time.monotonic() - t_start:.1f} s for the whole demo"
        )
        if efficiency is not None:
            say(f"  CPU         {100 * efficiency:.0f}% efficiency of the jobs (CPU time over wall time x cores)")
        say(f"  dashboard   {url}/ui (while the server runs; log in with an operator token), metrics at {url}/metrics")
        ok = done == len(ids) and not bad
        say("\nAll jobs done and verified." if ok else f"\nSomething went wrong; logs are in {root}.")
        return 0 if ok else 1
    finally:
        demo.shutdown()
        if args.keep:
            say(f"(kept {root})")
        elif (root / "server").exists():
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(prog="glidein-demo", description=__doc__)
    p.add_argument("--jobs", type=int, default=120)
    p.add_argument("--keep", action="store_true", help="keep the demo's directory (logs, database)")
    try:
        sys.exit(run(p.parse_args()))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
