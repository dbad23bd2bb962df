from __future__ import annotations

import os
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest

from glidein_client.pilot.resource_parsers import (
    batch_id,
    batch_system,
    cgroup_memory_files,
    condor_gpu_ids,
    expand_slurm_counts,
    format_ids,
    needs_nvidia_smi,
    parse_cgroup_limit_mb,
    parse_classad,
    parse_nvidia_smi,
    parse_slurm_mb,
    parse_squeue_end,
    parse_visible_devices,
    pbs_cpus,
    slurm_cpus,
    slurm_memory_mb,
)
from glidein_client.pilot.resources import Facts, detect, resolve, run_text
from glidein_client.wire.errors import ConfigError

MACHINE_AD = """\
Arch = "X86_64"
AssignedGPUs = "CUDA0,GPU-5f2a9c1e"
Cpus = 4
Disk = 40960000
GPUs = 2
Memory = 2048
Name = "slot1_3@wn042.example.org"
Requirements = START && (TARGET.RequestCpus <= MY.Cpus)
TotalCpus = 64.0
"""

JOB_AD = """\
ClusterId = 4711
ProcId = 3
Cmd = "/home/pilot/glidein.sh"
RequestCpus = 4
"""

NVIDIA_SMI = """\
0, GPU-2b6c1f3e-8d1a-4c2e-9a3b-7e2f1a0d5c11
1, GPU-9e8d7c6b-5a4f-3e2d-1c0b-a9f8e7d6c5b4
"""

BASE = Facts(env={}, affinity=(0, 1, 2, 3, 4, 5, 6, 7), physical_mb=64000, disk_free_mb=50000, now=1000.0, pid=42)


# --- Slurm --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4", [4]), ("4(x2)", [4, 4]), ("4,2", [4, 2]), ("36(x2),12", [36, 36, 12]), ("junk", []), ("", [])],
)
def test_expand_slurm_counts(text: str, expected: list[int]) -> None:
    assert expand_slurm_counts(text) == expected


def test_slurm_cpus_prefers_cpus_on_node() -> None:
    env = {"SLURM_CPUS_ON_NODE": "8", "SLURM_JOB_CPUS_PER_NODE": "16(x2)", "SLURM_CPUS_PER_TASK": "2"}
    assert slurm_cpus(env) == (8, "SLURM_CPUS_ON_NODE=8")


def test_slurm_cpus_per_node_picks_this_node() -> None:
    assert slurm_cpus({"SLURM_JOB_CPUS_PER_NODE": "4(x2)"}) == (4, "SLURM_JOB_CPUS_PER_NODE=4(x2)")
    assert slurm_cpus({"SLURM_JOB_CPUS_PER_NODE": "4(x2),2", "SLURM_NODEID": "2"})[0] == 2  # type: ignore[index]
    assert slurm_cpus({"SLURM_CPUS_PER_TASK": "3"}) == (3, "SLURM_CPUS_PER_TASK=3")
    assert slurm_cpus({}) is None


def test_slurm_memory() -> None:
    assert slurm_memory_mb({"SLURM_MEM_PER_NODE": "4000"}, 4) == (4000, "SLURM_MEM_PER_NODE=4000")
    assert slurm_memory_mb({"SLURM_MEM_PER_CPU": "1500"}, 4) == (6000, "SLURM_MEM_PER_CPU=1500 x 4 cpus")
    assert slurm_memory_mb({"SLURM_MEM_PER_NODE": "0"}, 4) is None  # 0 means "all of the node"
    assert parse_slurm_mb("4G") == 4096
    assert parse_slurm_mb("lots") is None


def test_squeue_end_is_local_time() -> None:
    assert parse_squeue_end("2031-05-01T12:30:00\n") == datetime(2031, 5, 1, 12, 30).timestamp()
    assert parse_squeue_end("N/A\n") is None
    assert parse_squeue_end("Unknown") is None
    assert parse_squeue_end("") is None
    assert parse_squeue_end(None) is None


def test_resolve_slurm() -> None:
    env = {
        "SLURM_JOB_ID": "991",
        "SLURM_JOB_CPUS_PER_NODE": "4(x2)",
        "SLURM_MEM_PER_CPU": "1000",
        "CUDA_VISIBLE_DEVICES": "0,1",
    }
    facts = replace(BASE, env=env, squeue_end="1970-01-01T00:00:00")
    d = resolve(facts)
    assert (d.batch_system, d.batch_id) == ("slurm", "991")
    assert d.slots == 4 and d.core_ids == (0, 1, 2, 3)
    assert d.memory_mb == 4000
    assert d.gpu_ids == ("0", "1")
    assert d.end_time == datetime(1970, 1, 1).timestamp()
    assert any("SLURM_JOB_CPUS_PER_NODE=4(x2)" in n for n in d.notes)
    assert any("SLURM_MEM_PER_CPU" in n for n in d.notes)


def test_batch_saying_more_than_affinity_keeps_affinity() -> None:
    d = resolve(replace(BASE, env={"SLURM_JOB_ID": "1", "SLURM_CPUS_ON_NODE": "32"}))
    assert d.slots == 8 and d.core_ids == tuple(range(8))


# --- PBS ----------------------------------------------------------------------------------------


def test_pbs_cpus() -> None:
    nodefile = "wn01.cluster\nwn01.cluster\nwn02.cluster\nwn01\n"
    assert pbs_cpus({"NCPUS": "6"}, nodefile, "wn01") == (6, "NCPUS=6")
    assert pbs_cpus({}, nodefile, "wn01.cluster") == (3, "3 lines for wn01 in PBS_NODEFILE")
    assert pbs_cpus({}, nodefile, "wn09") is None
    assert pbs_cpus({}, None, "wn01") is None


def test_resolve_pbs_uses_nodefile_and_physical_memory() -> None:
    facts = replace(BASE, env={"PBS_JOBID": "123.pbs01"}, hostname="wn02.cluster", pbs_nodefile="wn02\nwn02\nwn03\n")
    d = resolve(facts)
    assert (d.batch_system, d.batch_id) == ("pbs", "123.pbs01")
    assert d.slots == 2 and d.core_ids == (0, 1)
    assert d.memory_mb == 64000


# --- HTCondor -----------------------------------------------------------------------------------


def test_parse_classad() -> None:
    ad = parse_classad(MACHINE_AD)
    assert ad["cpus"] == "4" and ad["memory"] == "2048"
    assert ad["assignedgpus"] == "CUDA0,GPU-5f2a9c1e"
    assert ad["name"] == "slot1_3@wn042.example.org"
    assert ad["requirements"].startswith("START &&")


def test_condor_gpu_ids() -> None:
    assert condor_gpu_ids("CUDA0,GPU-5f2a9c1e") == ("0", "GPU-5f2a9c1e")
    assert condor_gpu_ids("CUDA1, CUDA3") == ("1", "3")
    assert condor_gpu_ids("") == ()


def test_resolve_htcondor() -> None:
    env = {"_CONDOR_MACHINE_AD": "/var/lib/condor/execute/dir_1/.machine.ad", "_CONDOR_JOB_AD": "x"}
    d = resolve(replace(BASE, env=env, machine_ad=MACHINE_AD, job_ad=JOB_AD))
    assert (d.batch_system, d.batch_id) == ("htcondor", "4711.3")
    assert d.slots == 4 and d.memory_mb == 2048
    assert d.gpu_ids == ("0", "GPU-5f2a9c1e")
    assert not needs_nvidia_smi(env, MACHINE_AD, None)


# --- GPUs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", ()),
        ("-1", ()),
        ("NoDevFiles", ()),
        ("0,1", ("0", "1")),
        ("GPU-2b6c1f3e,GPU-9e8d7c6b", ("GPU-2b6c1f3e", "GPU-9e8d7c6b")),
        ("0,-1,2", ("0",)),
        ("MIG-1a2b", ("MIG-1a2b",)),
    ],
)
def test_parse_visible_devices(value: str | None, expected: tuple[str, ...] | None) -> None:
    assert parse_visible_devices(value) == expected


def test_parse_nvidia_smi_prefers_uuids() -> None:
    assert parse_nvidia_smi(NVIDIA_SMI) == (
        "GPU-2b6c1f3e-8d1a-4c2e-9a3b-7e2f1a0d5c11",
        "GPU-9e8d7c6b-5a4f-3e2d-1c0b-a9f8e7d6c5b4",
    )
    assert parse_nvidia_smi("0, [N/A]\n1, [N/A]\n") == ("0", "1")
    assert parse_nvidia_smi("") == ()
    assert parse_nvidia_smi("No devices were found\n") == ()


def test_gpus_from_nvidia_smi_and_explicit_counts() -> None:
    facts = replace(BASE, nvidia_smi=NVIDIA_SMI)
    assert len(resolve(facts).gpu_ids) == 2
    assert resolve(facts, gpus=1).gpu_ids == ("GPU-2b6c1f3e-8d1a-4c2e-9a3b-7e2f1a0d5c11",)
    assert resolve(facts, gpus=0).gpu_ids == ()
    more = resolve(facts, gpus=3)
    assert more.gpu_ids == ("0", "1", "2")
    assert any("only 2 detected" in n for n in more.notes)


def test_cuda_visible_devices_wins_and_hides() -> None:
    facts = replace(BASE, env={"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, nvidia_smi=NVIDIA_SMI)
    assert resolve(facts).gpu_ids == ()
    assert not needs_nvidia_smi(facts.env, None, None)
    assert needs_nvidia_smi({}, None, None)
    assert not needs_nvidia_smi({}, None, 0)


def test_batch_jobs_use_only_the_gpus_they_were_given() -> None:
    slurm = {"SLURM_JOB_ID": "5"}
    assert not needs_nvidia_smi(slurm, None, None)
    assert needs_nvidia_smi(slurm, None, 2)  # the site says how many: take them from nvidia-smi
    d = resolve(replace(BASE, env=slurm, nvidia_smi=NVIDIA_SMI))
    assert d.gpu_ids == ()
    assert any("slurm job was given none" in n for n in d.notes)
    assert resolve(replace(BASE, env=slurm, nvidia_smi=NVIDIA_SMI), gpus=1).gpu_ids == parse_nvidia_smi(NVIDIA_SMI)[:1]
    condor_no_gpus = "Cpus = 2\nMemory = 1000\n"
    assert not needs_nvidia_smi({"_CONDOR_MACHINE_AD": "/x"}, condor_no_gpus, None)


# --- cgroups ------------------------------------------------------------------------------------


def test_cgroup_v2_files_and_limits() -> None:
    files = cgroup_memory_files("0::/system.slice/slurmstepd.scope/job_77\n", Path("/cg"))
    assert files[0] == Path("/cg/system.slice/slurmstepd.scope/job_77/memory.max")
    assert files[-1] == Path("/cg/memory.max")
    assert len(files) == 4
    assert parse_cgroup_limit_mb("max\n") is None
    assert parse_cgroup_limit_mb("2147483648\n") == 2048


def test_cgroup_v1_files() -> None:
    text = "12:cpu,cpuacct:/\n4:memory:/slurm/uid_0/job_5\n0::/\n"
    files = cgroup_memory_files(text, Path("/cg"))
    assert Path("/cg/memory/slurm/uid_0/job_5/memory.limit_in_bytes") in files
    assert parse_cgroup_limit_mb("9223372036854771712") is None


def test_memory_is_the_smallest_limit() -> None:
    assert resolve(replace(BASE, cgroup_mb=3000)).memory_mb == 3000
    d = resolve(replace(BASE, cgroup_mb=3000), memory_mb=8000)
    assert d.memory_mb == 8000
    assert any("8000 MB as configured" in n and "3000 MB" in n for n in d.notes)


# --- explicit numbers and the rest --------------------------------------------------------------


def test_explicit_cpus_cap_and_oversubscribe() -> None:
    capped = resolve(BASE, cpus=3)
    assert capped.slots == 3 and capped.core_ids == (0, 1, 2)
    over = resolve(replace(BASE, affinity=(2, 3)), cpus=6)
    assert over.slots == 6 and over.core_ids == (2, 3)
    assert any("oversubscribing 2 cores (2-3)" in n for n in over.notes)


def test_explicit_walltime_and_disk() -> None:
    d = resolve(BASE, walltime_s=600, disk_mb=100)
    assert d.end_time == 1600.0 and d.disk_mb == 100
    d = resolve(BASE)
    assert d.end_time is None and d.disk_mb == 50000
    assert (d.batch_system, d.batch_id) == ("local", "local-42")
    assert len(d.notes) == 5


def test_bad_explicit_numbers_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="cpus"):
        resolve(BASE, cpus=0)
    with pytest.raises(ConfigError, match="walltime_s"):
        resolve(BASE, walltime_s=0)


def test_batch_system_and_id() -> None:
    assert batch_system({"SLURM_JOB_ID": "1"}) == "slurm"
    assert batch_system({"PBS_JOBID": "1.x"}) == "pbs"
    assert batch_system({"_CONDOR_MACHINE_AD": "/x"}) == "htcondor"
    assert batch_system({}) == "local"
    assert batch_id({}, "ClusterId = 7\n", 1) == "7.0"
    assert batch_id({}, None, 99) == "local-99"


def test_format_ids() -> None:
    assert format_ids([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert format_ids([]) == ""


# --- detect() end to end on this host ------------------------------------------------------------


async def test_detect_here_with_a_machine_ad(tmp_path: Path) -> None:
    ad = tmp_path / ".machine.ad"
    ad.write_text('Cpus = 1\nMemory = 512\nAssignedGPUs = "CUDA0"\n')
    job_ad = tmp_path / ".job.ad"
    job_ad.write_text(JOB_AD)
    env = {"_CONDOR_MACHINE_AD": str(ad), "_CONDOR_JOB_AD": str(job_ad), "PATH": os.environ["PATH"]}
    d = await detect(tmp_path / "scratch" / "not-yet", env=env, walltime_s=60, now=5.0)
    assert d.slots == 1 and len(d.core_ids) == 1
    assert d.core_ids[0] in os.sched_getaffinity(0)
    assert d.memory_mb == 512
    assert d.gpu_ids == ("0",)
    assert d.disk_mb > 0
    assert d.end_time == 65.0
    assert d.batch_id == "4711.3"


async def test_detect_plain_host(tmp_path: Path) -> None:
    d = await detect(tmp_path, env={"PATH": "/nonexistent"}, gpus=0, disk_mb=10)
    assert d.slots == len(os.sched_getaffinity(0))
    assert 0 < d.memory_mb
    assert d.gpu_ids == () and d.disk_mb == 10
    assert d.batch_system == "local" and d.batch_id == f"local-{os.getpid()}"
    assert d.end_time is None


async def test_run_text_is_best_effort() -> None:
    assert await run_text(["glidein-no-such-command"]) is None
    assert await run_text(["sh", "-c", "exit 3"]) is None
    assert await run_text(["sleep", "5"], timeout_s=0.2) is None
    assert await run_text(["glidein-x"], env={"PATH": "/nonexistent"}) is None
    assert await run_text(["echo", "0, GPU-1"]) == "0, GPU-1\n"


async def test_detect_asks_nvidia_smi_and_squeue(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, out in (("nvidia-smi", NVIDIA_SMI), ("squeue", "2031-05-01T12:30:00\n")):
        tool = bin_dir / name
        tool.write_text(f"#!/bin/sh\ncat <<'EOF'\n{out}EOF\n")
        tool.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_JOB_ID": "77", "SLURM_CPUS_ON_NODE": "1"}
    d = await detect(tmp_path, env=env, gpus=2)
    assert d.gpu_ids == parse_nvidia_smi(NVIDIA_SMI)
    assert d.end_time == datetime(2031, 5, 1, 12, 30).timestamp()
    assert (d.batch_system, d.batch_id, d.slots) == ("slurm", "77", 1)
    assert any("from squeue" in n for n in d.notes)
