"""What a PBS server's refusals mean: qsub's messages -> the config key to change.

Pure data and one pure function, used by :class:`~.pbs.PbsScheduler`. The messages are those
of OpenPBS 23.06 / PBS Professional 2022.1 (src/lib/Liblog/pbs_messages.c), Torque 6.1 and
Slurm 22.05's Torque wrapper (which passes sbatch's words on).
"""

from __future__ import annotations

import re

from glidein_client.site.config import SiteConfig
from glidein_client.site.schedulers.base import Refusal

#: Limits a PBS Pro / OpenPBS server puts on a user, a group or a project (pbs_messages.c, the
#: msg_et_* texts of OpenPBS 23.06): the pilot itself is fine, there are too many already.
LIMIT_REFUSALS = (
    Refusal(
        re.compile(
            r"would exceed (?:per-(?:user|group|project) |(?:user|group|project) \S+'s )?limit on resource "
            r"(?P<resource>[\w.-]+) in (?P<where>queue \S+|complex)",
            re.I,
        ),
        "it would go over the site's limit on {resource} in the {where}, which this user's pilots (queued "
        "and running) use up",
        "limits.max_pilots",
        also=" (fewer pilots at once), or lower `pilot.cpus` / `pilot.memory`, or ask the site's admin to raise "
        "the limit",
    ),
    Refusal(
        re.compile(
            r"Maximum number of jobs (?:in 'Q' state )?(?:for (?:user|group|project) \S+ )?already in "
            r"(?P<where>queue \S+|complex)",
            re.I,
        ),
        "the {where} already holds as many jobs of this user as the site allows",
        "limits.max_pilots",
        also=" (and `limits.max_idle_pilots`), or ask the site's admin to raise the limit",
    ),
    Refusal(
        re.compile(r"would exceed (?P<where>queue \S+'s|complex's) per-(?:user|group|project) limit", re.I),
        "it would go over the {where} limit on this user's jobs",
        "limits.max_pilots",
        also=" (and `limits.max_idle_pilots`), or ask the site's admin to raise the limit",
    ),
)

#: ``Unknown resource`` (PBSE_UNKRESC): which resource, so the right key is named.
UNKNOWN_RESOURCE = re.compile(r"Unknown resource[:\s]*(?:Resource_List\.)?(?P<resource>[\w.-]*)", re.I)

REFUSALS = (
    *LIMIT_REFUSALS,
    Refusal(
        re.compile(
            r"Unknown queue|Invalid partition|invalid partition specified|"
            r"Queue is not enabled|Queue is not started|rejected by all possible destinations",
            re.I,
        ),
        "the queue {partition!r} does not exist or takes no jobs",
        "batch.partition",
    ),
    Refusal(
        re.compile(
            r"does not have access to the queue|not permitted to use this partition|"
            r"Access denied to partition|Unauthorized Request",
            re.I,
        ),
        "this user may not use the queue {partition!r}",
        "batch.partition",
    ),
    Refusal(
        re.compile(r"Invalid account|Bad account|invalid project", re.I),
        "the account {account!r} is not valid here",
        "batch.account",
    ),
    Refusal(re.compile(r"Invalid qos|\bqos\b", re.I), "the QOS {qos!r} is not valid here", "batch.qos"),
    Refusal(
        re.compile(r"Unknown resource|Invalid feature specification", re.I),
        "it does not know a resource in {constraint!r}",
        "batch.constraint",
        also=" (and `batch.extra_directives`)",
    ),
    Refusal(
        re.compile(r"walltime|time limit", re.I),
        "the walltime {walltime} is more than the queue {partition!r} allows",
        "pilot.walltime",
        also=" (or choose another `batch.partition`)",
    ),
    Refusal(re.compile(r"\bmem\b|memory", re.I), "no node or queue offers {memory_mb} MB of memory", "pilot.memory"),
    Refusal(re.compile(r"\bngpus\b|\bgpus\b|\bgres\b", re.I), "no node or queue offers {gpus} GPU(s)", "pilot.gpus"),
    Refusal(
        re.compile(r"\bncpus\b|\bppn\b|\bprocs\b|More processors requested", re.I),
        "no node or queue offers {cpus} CPUs",
        "pilot.cpus",
    ),
    Refusal(
        re.compile(
            r"violates queue and/or server resource limits|exceeds queue resource limits|"
            r"Requested node configuration is not available|Insufficient amount of resource|"
            r"Illegal attribute or resource value",
            re.I,
        ),
        "the pilot ({cpus} CPUs, {memory_mb} MB, {gpus} GPU(s), {walltime}) is over a limit of the queue {partition!r}",
        "pilot.cpus",
        also=", `pilot.memory`, `pilot.gpus`, `pilot.walltime` and `batch.partition`",
    ),
    Refusal(
        re.compile(r"invalid option -- '?n'?", re.I),
        "it does not take -n (node-exclusive), which `pilot.whole_node` asks for",
        "pilot.whole_node",
    ),
    Refusal(
        re.compile(r"illegal -\w|invalid option|unrecognized option|usage: qsub|directive error", re.I),
        "a directive is not valid",
        "batch.extra_directives",
    ),
)


def unknown_resource_refusal(resource: str, site: SiteConfig) -> Refusal:
    """``Unknown resource: <resource>`` blamed on the key that asked for it.

    OpenPBS has ``ngpus`` only where the site defines it; a constraint or an extra directive
    may name a resource the server lacks.
    """
    batch = site.batch
    if resource in ("ngpus", "gpus") and site.shape.gpus:
        refusal = Refusal(
            UNKNOWN_RESOURCE,
            "this PBS server has no resource {resource!r}, so it cannot give the pilot {gpus} GPU(s) "
            "(OpenPBS has ngpus only where the site defines it)",
            "pilot.gpus",
            also=" (set it to 0), or ask the site's admin to define the resource",
        )
    elif resource and batch.constraint and resource in batch.constraint:
        refusal = Refusal(
            UNKNOWN_RESOURCE, "it does not know the resource {resource!r} of {constraint!r}", "batch.constraint"
        )
    elif resource and any(resource in line for line in batch.extra_directives):
        refusal = Refusal(UNKNOWN_RESOURCE, "it does not know the resource {resource!r}", "batch.extra_directives")
    else:
        refusal = Refusal(
            UNKNOWN_RESOURCE,
            "it does not know the resource {resource!r}",
            "batch.constraint",
            also=" and `batch.extra_directives`, or ask the site's admin which resources it defines",
        )
    return refusal
