"""Wire models of firewalled sites: their network and out-of-job staging."""

from __future__ import annotations

import enum

from glidein_client.wire.schema import InputFile, JobState, NonNegInt, PosInt, Sha256, _Strict


class Network(str, enum.Enum):
    """How a site's pilots reach the server (the site config's ``site.network``)."""

    DIRECT = "direct"  # pilots talk to the server; files travel inside the job
    RELAY = "relay"  # through the site client's relay on the login node; files staged outside the job
    NONE = "none"  # through a mailbox on the shared filesystem; files staged outside the job

    @property
    def stages(self) -> bool:
        return self is not Network.DIRECT


class SiteNetwork(_Strict, kw_only=True):
    """A site client declares how its pilots reach the server; staging sites claim only staged jobs."""

    network: Network = Network.DIRECT


class StagingJob(_Strict, kw_only=True):
    job_id: int
    state: JobState
    site: str | None = None  # where the job was last claimed
    cpus: PosInt = 1
    inputs: list[InputFile] = []


class StagingView(_Strict, kw_only=True):
    """What a staging site's client works from."""

    staged: list[StagingJob] = []  # jobs reported staged at this site, in whatever state they are now
    eligible: list[StagingJob] = []  # idle jobs this site could run that are not staged here, in claim order


class StagingReport(_Strict, kw_only=True):
    staged: list[int] = []  # jobs whose inputs are now verified in the site's staging area
    released: list[int] = []  # jobs whose staged inputs are gone (or being staged again)


class StagingResult(_Strict, kw_only=True):
    staged: int
    released: int


class StagedOutput(_Strict, kw_only=True):
    """A pilot asks its site client to upload an output it wrote into the staging area."""

    attempt_id: int
    lease: str
    name: str
    sha256: Sha256
    size: NonNegInt
