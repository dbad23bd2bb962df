"""The shared-filesystem mailbox between pilots and their site client (``network = "none"``).

Each pilot has its own box, ``<mailbox dir>/glidein-<site>-<pilot id>``, made by the client
(exclusively, mode 0700) when it submits the pilot. The mailbox directory and every box are
used only when they belong to the user running glidein and nobody else may write to them
(:mod:`glidein_client.sharedfs.private`), and only messages written by that user are read.
A pilot writes a request, ``req-<id>.json``; the
client forwards it to the server with the token it minted for that box's pilot (and no
other), writes the answer as ``resp-<id>.json`` and removes the request; the pilot reads and
removes the answer. Every file is written under a temporary name, flushed to disk and
renamed into place, so a reader sees a whole message or none. The client removes files and
boxes nobody touched for longer than ``mailbox.stale_after``.

After writing a request the pilot also rings: it creates an empty file named after its box
and the request in ``<mailbox dir>/.ring``. The client lists that one directory to find new
requests, however many boxes there are, and looks into every box only now and then (in case
a ring was lost).
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import msgspec

from glidein_client.sharedfs.private import owned_by_me
from glidein_client.sharedfs.staging_area import write_atomic
from glidein_client.wire.errors import ValidationError

T = TypeVar("T")
RING = ".ring"
REQUEST_PREFIX = "req-"
RESPONSE_PREFIX = "resp-"
SUFFIX = ".json"

#: Mailbox operations and the pilot API route each one stands for.
OPS: dict[str, tuple[str, str]] = {
    "health": ("GET", "/health"),
    "register": ("POST", "/pilot/register"),
    "sync": ("POST", "/pilot/sync"),
    "exit": ("POST", "/pilot/exit"),
}
#: The client uploads an output the pilot wrote into the staging area (body: StagedOutput).
UPLOAD_OP = "upload"


class MailRequest(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    op: str
    body: msgspec.Raw = msgspec.Raw(b"null")
    sent_at: float = 0.0


class MailResponse(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    status: int  # the HTTP status the server (or the client) answered with
    body: msgspec.Raw = msgspec.Raw(b"null")


def box_name(site: str, pilot_id: int) -> str:
    return f"glidein-{site}-{pilot_id}"


def new_id(seq: int) -> str:
    return f"{seq:08d}-{uuid.uuid4().hex[:12]}"


def request_path(box: Path, msg_id: str) -> Path:
    return box / f"{REQUEST_PREFIX}{msg_id}{SUFFIX}"


def response_path(box: Path, msg_id: str) -> Path:
    return box / f"{RESPONSE_PREFIX}{msg_id}{SUFFIX}"


def write_message(path: Path, msg: MailRequest | MailResponse) -> None:
    """Write one message atomically (temporary file, fsync, rename). Blocking.

    A message need not outlive a crash of the node that wrote it (the call is made again), so
    the directory is not flushed after the rename.
    """
    write_atomic(path, msgspec.json.encode(msg), durable_rename=False)


class ForeignMessage(ValidationError):
    """A message file that another Unix user wrote (or a link): never acted upon."""


def read_message(path: Path, type_: type[T]) -> T:
    """Read one message. Blocking; raises FileNotFoundError, ForeignMessage or ValidationError.

    Only a regular file of this user is read (no symbolic link is followed): a request or an
    answer planted by another user is refused, whatever the permissions of its box.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        fd = -1
    if fd < 0 or not owned_by_me(fd):
        if fd >= 0:
            os.close(fd)
        raise ForeignMessage(
            f"The mailbox message {path} was not written by this Unix user; it is ignored.",
            hint=f"Another user can write into {path.parent}: check its owner and mode (it should be 0700).",
        )
    with os.fdopen(fd, "rb") as fh:
        data = fh.read()
    try:
        return msgspec.json.decode(data, type=type_)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValidationError(
            f"The mailbox message {path.name} is not valid: {exc}.",
            hint="It was not written by glidein; it is ignored and removed.",
        ) from None


def ring(box: Path, msg_id: str) -> None:
    """Tell the client that ``box`` has a new request. Blocking; best effort (the client also looks itself)."""
    bell = box.parent / RING
    with contextlib.suppress(OSError):
        bell.mkdir(mode=0o700, exist_ok=True)
        (bell / f"{box.name}.{msg_id}").touch()


def rung(root: Path) -> tuple[set[str], list[Path]]:
    """Names of the boxes that rang, and the ring files to remove once their boxes were read."""
    names, paths = set(), []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(root / RING):
            names.add(entry.name.split(".", 1)[0])
            paths.append(Path(entry.path))
    return names, paths


def requests_in(box: Path) -> list[Path]:
    """Pending requests of one box, oldest first."""
    try:
        names = sorted(e.name for e in os.scandir(box) if e.name.startswith(REQUEST_PREFIX) and e.name.endswith(SUFFIX))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [box / n for n in names]


def message_id(path: Path) -> str:
    name = path.name
    for prefix in (REQUEST_PREFIX, RESPONSE_PREFIX):
        if name.startswith(prefix):
            return name[len(prefix) : -len(SUFFIX)]
    return name


def boxes(root: Path, site: str) -> Iterator[Path]:
    """The boxes of ``site``'s pilots under the mailbox directory."""
    prefix = f"glidein-{site}-"
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(root):
            if entry.name.startswith(prefix) and entry.is_dir(follow_symlinks=False):
                yield Path(entry.path)


def pilot_of(box: Path, site: str) -> int | None:
    tail = box.name.removeprefix(f"glidein-{site}-")
    return int(tail) if tail.isdigit() else None


def sweep(root: Path, site: str, stale_s: float, now: float | None = None) -> int:
    """Remove files untouched for ``stale_s`` and then-empty boxes of the same age; returns files removed."""
    cutoff = (time.time() if now is None else now) - stale_s
    removed = 0
    for box in list(boxes(root, site)):
        try:
            idle = box.stat().st_mtime < cutoff  # before removing files in it changes its time
            for entry in os.scandir(box):
                with contextlib.suppress(FileNotFoundError):
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)
                        removed += 1
        except FileNotFoundError:
            continue
        if idle:
            with contextlib.suppress(OSError):
                box.rmdir()  # only when empty
    return removed
