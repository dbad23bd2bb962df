"""Demand per site: shares across sites, netting of usable free capacity, unrunnable jobs."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from glidein_client.wire.schema import PilotShape
from glidein_server.policy.demand import FreeCapacity, Shape, eligible_sites, site_demand, unrunnable_note

FOUR = PilotShape(cpus=4, memory_mb=8000, gpus=0, disk_mb=10_000, walltime_s=3600)


def shape(
    cpus: int = 1, n: int = 1, *, mem: int = 1000, gpus: int = 0, wall: int = 600, sites: frozenset[str] | None = None
) -> Shape:
    return Shape(cpus, mem, gpus, 100, wall, sites, n)


def test_single_site_counts_pilots_by_shape() -> None:
    d = site_demand("a", [shape(1, 8), shape(4, 2)], {"a": FOUR}, [])
    assert d.jobs == 10
    assert d.cpus == 16
    assert d.pilots == 2 + 2  # 8 single-core jobs fill 2 pilots, 2 four-core jobs need 2 more


def test_job_eligible_at_two_sites_counts_half_at_each() -> None:
    sites = {"a": FOUR, "b": FOUR}
    da = site_demand("a", [shape(1, 10)], sites, [])
    db = site_demand("b", [shape(1, 10)], sites, [])
    assert da.jobs == 5 and db.jobs == 5
    assert da.jobs + db.jobs == 10  # no double counting


def test_restricted_job_counts_only_where_allowed() -> None:
    sites = {"a": FOUR, "b": FOUR}
    assert site_demand("a", [shape(1, 6, sites=frozenset({"b"}))], sites, []).jobs == 0
    assert site_demand("b", [shape(1, 6, sites=frozenset({"b"}))], sites, []).jobs == 6


def test_site_with_small_pilots_does_not_share_big_jobs() -> None:
    sites = {"big": FOUR, "small": PilotShape(cpus=1, memory_mb=2000, walltime_s=3600)}
    assert site_demand("big", [shape(2, 4)], sites, []).jobs == 4
    small = site_demand("small", [shape(2, 4)], sites, [])
    assert small.jobs == 0 and small.unfit_jobs == 4


def test_free_capacity_is_netted_only_where_usable() -> None:
    jobs = [shape(1, 4, mem=3000)]
    # 4 free cores but only 3000 MB: one job fits, three remain.
    d = site_demand("a", jobs, {"a": FOUR}, [FreeCapacity(4, 3000, 0, 1000, 3600)])
    assert d.jobs == 3
    # free cores with too little remaining lifetime count for nothing.
    d = site_demand("a", jobs, {"a": FOUR}, [FreeCapacity(4, 8000, 0, 1000, 60)])
    assert d.jobs == 4
    # free cores without a needed GPU count for nothing.
    gpu_jobs = [shape(1, 2, gpus=1)]
    sites = {"a": PilotShape(cpus=4, memory_mb=8000, gpus=1, disk_mb=1000, walltime_s=3600)}
    assert site_demand("a", gpu_jobs, sites, [FreeCapacity(4, 8000, 0, 1000, 3600)]).jobs == 2


def test_no_demand_gives_no_pilots() -> None:
    d = site_demand("a", [], {"a": FOUR}, [])
    assert d.pilots == 0 and d.jobs == 0


def test_unrunnable_note_says_why() -> None:
    note = unrunnable_note(64, 1000, 0, 0, 60, None, {"a": FOUR})
    assert note is not None and "64 cpus" in note and "largest pilot: 4" in note
    assert unrunnable_note(2, 1000, 0, 0, 60, None, {"a": FOUR}) is None
    assert "none of those sites is known" in (unrunnable_note(1, 1, 0, 0, 1, frozenset({"zz"}), {"a": FOUR}) or "")


site_names = st.sampled_from(["a", "b", "c"])


@given(
    st.lists(
        st.tuples(st.integers(1, 6), st.integers(1, 50), st.one_of(st.none(), st.frozensets(site_names, min_size=1))),
        max_size=8,
    ),
    st.dictionaries(site_names, st.integers(1, 8), min_size=1),
)
def test_shares_never_exceed_the_jobs(
    specs: list[tuple[int, int, frozenset[str] | None]], cpus_by_site: dict[str, int]
) -> None:
    sites = {n: PilotShape(cpus=c, memory_mb=64_000, walltime_s=3600) for n, c in cpus_by_site.items()}
    shapes = [shape(c, n, sites=s) for c, n, s in specs]
    total = sum(site_demand(name, shapes, sites, []).jobs for name in sites)
    runnable = sum(s.count for s in shapes if eligible_sites(s, sites))
    assert abs(total - runnable) < 1e-6  # every runnable job is counted exactly once across sites
    for name in sites:
        assert site_demand(name, shapes, sites, []).pilots >= 0


def test_unhealthy_site_gets_a_smaller_share_until_it_recovers() -> None:
    sites = {"good": FOUR, "bad": FOUR}
    jobs = [shape(1, 100)]
    health = {"good": 1.0, "bad": 0.25}
    good = site_demand("good", jobs, sites, [], health).jobs
    bad = site_demand("bad", jobs, sites, [], health).jobs
    assert good == 80 and bad == 20 and good + bad == 100
    # never below the floor, so a broken site still gets a little work to show it recovered
    assert site_demand("bad", jobs, sites, [], {"good": 1.0, "bad": 0.0}).jobs > 0
    assert site_demand("bad", jobs, sites, [], {"good": 1.0, "bad": 1.0}).jobs == 50
