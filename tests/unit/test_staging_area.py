"""The staging area's file rules: markers vouch only for unchanged files; outputs are checked and never followed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from glidein_client.sharedfs.staging_area import StagingArea, StagingUnavailable, input_key
from glidein_client.wire.errors import ValidationError
from glidein_client.wire.schema import InputFile


def staged(tmp_path: Path, data: bytes = b"input data\n" * 1000) -> tuple[StagingArea, str]:
    area = StagingArea(tmp_path / "staging")
    area.create()
    key = hashlib.sha256(data).hexdigest()
    area.input_path(key).write_bytes(data)
    area.mark(key, key, len(data))
    return area, key


def test_marker_vouches_only_for_an_unchanged_file(tmp_path: Path) -> None:
    area, key = staged(tmp_path)
    assert area.vouched(key) is not None and area.input_keys() == {key}
    area.input_path(key).write_bytes(b"other")
    assert area.vouched(key) is None
    assert not area.verify(key, key)  # read again: damaged, so removed
    assert area.marker(key) is None and not area.input_path(key).exists()


def test_url_inputs_have_their_own_key() -> None:
    a = InputFile(name="a", url="https://data.example.org/a")
    assert input_key(a) == "url-" + hashlib.sha256(b"https://data.example.org/a").hexdigest()
    assert input_key(InputFile(name="b", sha256="0" * 64)) == "0" * 64


def test_missing_input_makes_the_pilot_wait(tmp_path: Path) -> None:
    area = StagingArea(tmp_path)
    with pytest.raises(StagingUnavailable):
        area.copy_input("0" * 64, "0" * 64, tmp_path / "dest")


def test_outputs_are_checked_and_links_are_not_followed(tmp_path: Path) -> None:
    area = StagingArea(tmp_path / "staging")
    area.create()
    src = tmp_path / "out.txt"
    src.write_bytes(b"result\n")
    sha, size = area.put_output(7, "res/out.txt", src)
    with area.open_output(7, "res/out.txt", sha, size) as fh:
        assert fh.read() == b"result\n"
    with pytest.raises(ValidationError, match="damaged"):
        area.open_output(7, "res/out.txt", "0" * 64, size)
    secret = tmp_path / "secret"
    secret.write_bytes(b"not an output")
    link = area.output_path(8, "out.txt")
    link.parent.mkdir(parents=True)
    os.symlink(secret, link)
    with pytest.raises(ValidationError, match="not in the staging area"):
        area.open_output(8, "out.txt", hashlib.sha256(b"not an output").hexdigest(), 13)
    os.symlink(tmp_path, area.outputs / "9")  # a linked attempt directory
    with pytest.raises(ValidationError, match="not in the staging area"):
        area.open_output(9, "secret", hashlib.sha256(b"not an output").hexdigest(), 13)
    with pytest.raises(ValidationError):
        area.output_path(7, "../../secret")
    area.drop_output(7, "res/out.txt")
    assert not (area.outputs / "7").exists()
