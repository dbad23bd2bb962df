"""The staging area of a firewalled site: a directory on the filesystem that the login node shares with the workers.

Layout under the area's root::

    inputs/<key>          an input, verified against its sha256 (key: the sha256, or "url-<sha256 of the URL>")
    inputs/<key>.ok       its marker: {"sha256", "size", "mtime_ns"}, written after verification
    outputs/<attempt>/<name>   an output written by a pilot, until the site client has uploaded it

Every file is written under a temporary name, flushed to disk and renamed into place, so a
reader sees a whole file or none. A marker whose size and modification time still match
the file vouches for it without reading it again; anything else is read and checked again.
The site client writes inputs and reads outputs; pilots read inputs and write outputs. The
area is the site client's user's alone: made with mode 0700, and refused (by client and
pilot) when another user owns it or may write to it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import msgspec

from glidein_client.sharedfs.private import check_private, private_dir
from glidein_client.wire.errors import ServerUnreachable, ValidationError
from glidein_client.wire.rules import check_relative_path
from glidein_client.wire.schema import InputFile

CHUNK = 1 << 20


class StagingUnavailable(ServerUnreachable):
    """A staged input is missing or damaged; the site client stages it again, so waiting helps."""


class Marker(msgspec.Struct, frozen=True):
    sha256: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Usage:
    bytes: int
    files: int


def input_key(inp: InputFile) -> str:
    """Where an input lives in the area: its sha256, or a name derived from its URL."""
    if inp.sha256 is not None:
        return inp.sha256
    return "url-" + hashlib.sha256((inp.url or "").encode()).hexdigest()


def write_atomic(path: Path, data: bytes, *, durable_rename: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see all of it or nothing (temp file, fsync, rename).

    With ``durable_rename`` the directory is flushed too, so that the new name survives a crash.
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if durable_rename:
        _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def hash_file(path: Path) -> tuple[str, int]:
    with open(path, "rb") as fh:
        return _hash_open(fh)


def _hash_open(fh: BinaryIO) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    while chunk := fh.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _copy_hashing(src: BinaryIO, dest: Path, *, durable: bool = True) -> tuple[str, int]:
    """Copy an open file to ``dest`` (temp name, fsync when ``durable``, rename); returns its sha256 and size."""
    digest = hashlib.sha256()
    size = 0
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        with open(tmp, "wb") as out:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
            if durable:
                out.flush()
                os.fsync(out.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return digest.hexdigest(), size


class StagingArea:
    """File operations on one staging area. Blocking: call them through ``asyncio.to_thread``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.inputs = self.root / "inputs"
        self.outputs = self.root / "outputs"

    def create(self) -> None:
        """Make the area (each directory exclusively, 0700), or check that the one there is this user's alone."""
        private_dir(self.root, "staging area", parents=True)
        private_dir(self.inputs, "staging area's inputs directory")
        private_dir(self.outputs, "staging area's outputs directory")

    def check(self) -> None:
        """Raise :class:`ConfigError` unless the area the site client made is this user's alone."""
        check_private(self.root, "staging area")
        check_private(self.inputs, "staging area's inputs directory")
        check_private(self.outputs, "staging area's outputs directory")

    # --- inputs (written by the site client, read by pilots) -----------------------------------

    def input_path(self, key: str) -> Path:
        return self.inputs / key

    def marker(self, key: str) -> Marker | None:
        try:
            return msgspec.json.decode((self.inputs / f"{key}.ok").read_bytes(), type=Marker)
        except (OSError, msgspec.DecodeError):
            return None

    def vouched(self, key: str) -> Marker | None:
        """The marker of a staged input whose size and modification time still match it, else None."""
        mark = self.marker(key)
        if mark is None:
            return None
        try:
            st = os.stat(self.input_path(key))
        except OSError:
            return None
        return mark if (st.st_size, st.st_mtime_ns) == (mark.size, mark.mtime_ns) else None

    def verify(self, key: str, sha256: str | None) -> bool:
        """Read a staged input again; refresh its marker when it is intact, remove it when it is not."""
        path = self.input_path(key)
        try:
            digest, size = hash_file(path)
        except OSError:
            self.discard(key)
            return False
        expected = sha256 or (self.marker(key) or Marker("", -1, 0)).sha256
        if digest != expected:
            self.discard(key)
            return False
        self.mark(key, digest, size)
        return True

    def mark(self, key: str, sha256: str, size: int) -> None:
        st = os.stat(self.input_path(key))
        write_atomic(self.inputs / f"{key}.ok", msgspec.json.encode(Marker(sha256, size, st.st_mtime_ns)))

    def discard(self, key: str) -> None:
        (self.inputs / f"{key}.ok").unlink(missing_ok=True)
        self.input_path(key).unlink(missing_ok=True)

    def partial_path(self, key: str) -> Path:
        return self.inputs / f".{key}.{uuid.uuid4().hex[:8]}.part"

    def input_keys(self) -> set[str]:
        """Keys of the verified inputs in the area."""
        try:
            return {e.name[:-3] for e in os.scandir(self.inputs) if e.name.endswith(".ok")}
        except FileNotFoundError:
            return set()

    def copy_input(self, key: str, sha256: str | None, dest: Path) -> None:
        """Copy a staged input to ``dest`` (a pilot's sandbox), checking it on the way.

        A missing input raises :class:`StagingUnavailable`; a damaged one is removed first, so
        that the site client stages it again, and raises it too.
        """
        mark = self.marker(key)
        if mark is None:
            raise StagingUnavailable(
                f"The input {key[:16]}… is not in the staging area {self.root} (yet).",
                hint="The site client stages it again; check that glidein-client run is running on the login node.",
            )
        expected = sha256 or mark.sha256
        try:
            with open(self.input_path(key), "rb") as src:
                digest, _ = _copy_hashing(src, dest, durable=False)  # the sandbox is scratch
        except FileNotFoundError:
            digest = ""
        if digest != expected:
            self.discard(key)
            dest.unlink(missing_ok=True)
            raise StagingUnavailable(
                f"The staged input {key[:16]}… in {self.root} was damaged (its sha256 does not match); "
                "it was removed so that the site client stages it again."
            )

    # --- outputs (written by pilots, read by the site client) ----------------------------------

    def output_path(self, attempt_id: int, name: str) -> Path:
        rel = check_relative_path(name, field="name")
        return self.outputs / str(int(attempt_id)) / rel

    def put_output(self, attempt_id: int, name: str, src: Path) -> tuple[str, int]:
        """Copy a job's output into the area; returns its sha256 and size."""
        dest = self.output_path(attempt_id, name)
        for part in [*reversed(dest.relative_to(self.outputs).parents)][1:]:  # 0700 at every level
            with contextlib.suppress(FileExistsError):
                os.mkdir(self.outputs / part, 0o700)
        with open(src, "rb") as fh:
            return _copy_hashing(fh, dest)

    def open_output(self, attempt_id: int, name: str, sha256: str, size: int) -> BinaryIO:
        """A staged output, opened for reading after checking it against what the pilot reported.

        Only a regular file inside the area is opened (no symbolic link is followed), so that
        nothing but what the pilot wrote there can be sent to the server.
        """
        path = self.output_path(attempt_id, name)
        missing = ValidationError(
            f"The output {name!r} of attempt {attempt_id} is not in the staging area.",
            hint="The pilot could not write it there; the job will be retried.",
        )
        if not os.path.realpath(path.parent).startswith(os.path.realpath(self.outputs) + os.sep):
            raise missing
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            raise missing from None
        fh = os.fdopen(fd, "rb")
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise missing
            digest, got = _hash_open(fh)
            if (digest, got) != (sha256, size):
                raise ValidationError(
                    f"The output {name!r} of attempt {attempt_id} was damaged in the staging area "
                    "(its sha256 does not match what the pilot wrote).",
                    hint="The job will be retried.",
                )
            fh.seek(0)
            return fh
        except BaseException:
            fh.close()
            raise

    def drop_output(self, attempt_id: int, name: str) -> None:
        path = self.output_path(attempt_id, name)
        path.unlink(missing_ok=True)
        top = self.outputs / str(int(attempt_id))
        for parent in [*path.parents]:
            if parent == self.outputs or not parent.is_relative_to(top):
                break
            with contextlib.suppress(OSError):
                parent.rmdir()

    def output_dirs(self) -> Iterator[tuple[Path, float]]:
        """Each attempt's output directory with its modification time."""
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.outputs):
                if entry.is_dir(follow_symlinks=False):
                    yield Path(entry.path), entry.stat(follow_symlinks=False).st_mtime

    def drop_output_dir(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)

    # --- accounting --------------------------------------------------------------------------

    def usage(self) -> Usage:
        """Bytes and files in the area (inputs, markers, outputs and partial files)."""
        total = files = 0
        for top in (self.inputs, self.outputs):
            for dirpath, _, names in os.walk(top):
                for name in names:
                    with contextlib.suppress(OSError):
                        total += os.lstat(os.path.join(dirpath, name)).st_size
                        files += 1
        return Usage(total, files)

    def stale_partials(self, older_than: float) -> list[Path]:
        """Partial files of downloads that never finished (a client killed mid-transfer)."""
        out = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.inputs):
                if entry.name.startswith(".") and entry.stat().st_mtime < older_than:
                    out.append(Path(entry.path))
        return out
