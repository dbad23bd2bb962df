"""Which inputs a submitter may name: files they uploaded themselves, or public URLs.

A file on the server is named by its sha256; knowing a hash is not owning the file, so an
input hash is accepted only when the submitter uploaded that content (or it is an output of
one of their jobs). An input URL is fetched by the pilot without credentials; a URL on this
server itself is refused, since the server's own files are named by sha256.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

from glidein_client.wire.errors import ValidationError
from glidein_client.wire.schema import JobSpec
from glidein_server.store.base import Principal, Store
from glidein_server.store.files import FileStore


def own_netlocs(request_host: str, public_url: str = "") -> frozenset[str]:
    """The host[:port] names under which clients reach this server (lower case)."""
    names = {request_host.lower()}
    if public_url:
        names.add(urlsplit(public_url).netloc.lower())
    return frozenset(n for n in names if n)


def self_url_error(url: str, own: Iterable[str], field: str) -> ValidationError | None:
    """A plain refusal when ``url`` points at this server itself; None otherwise."""
    netloc = urlsplit(url).netloc.lower().rpartition("@")[2]
    if netloc not in own:
        return None
    return ValidationError(
        f"{field}: {url} points at this glidein server itself; inputs are not fetched from it by URL.",
        hint="Name the file by its local path in the job file (glidein submit uploads it) or by sha256.",
        field=field,
    )


async def check_inputs(
    jobs: Sequence[JobSpec], principal: Principal, store: Store, files: FileStore, own: frozenset[str]
) -> None:
    """Raise :class:`ValidationError` for the first input the submitter may not name."""
    readable: dict[str, bool] = {}
    for i, spec in enumerate(jobs):
        for inp in spec.inputs:
            field = f"jobs[{i}].inputs"
            if inp.url is not None and (err := self_url_error(inp.url, own, f"{field}.url")) is not None:
                raise err
            sha = inp.sha256
            if sha is None:
                continue
            if sha not in readable:
                readable[sha] = files.exists(sha) and await store.may_read_file(sha, principal)
            if not readable[sha]:
                # One answer whether the content exists or belongs to someone else: no hash oracle.
                raise ValidationError(
                    f"{field}: {inp.name!r} (sha256 {sha[:12]}…) was never uploaded by you.",
                    hint="Upload the file first (glidein submit does that for you); "
                    "files uploaded by other users cannot be named by their hash.",
                    field=field,
                )
