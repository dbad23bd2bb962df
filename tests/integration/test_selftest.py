from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from glidein_client.pilot import selftest
from glidein_client.pilot.selftest import self_test
from glidein_client.wire.errors import ServerUnreachable


async def test_all_pass_and_scratch_is_created(tmp_path: Path) -> None:
    calls = []

    async def server_ok() -> None:
        calls.append(1)

    scratch = tmp_path / "a" / "b"
    result = await self_test(scratch, min_disk_mb=1, required_commands=["sh"], server_check=server_ok)
    assert result.ok and result.reason is None
    assert [c.name for c in result.checks] == ["scratch", "disk", "command sh", "server"]
    assert scratch.is_dir() and not list(scratch.iterdir())  # the probe file is gone
    assert calls == [1]


async def test_unwritable_scratch(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = await self_test(blocker / "scratch", min_disk_mb=1)
    assert not result.ok
    assert [c.name for c in result.checks] == ["scratch"]
    assert result.reason is not None
    assert result.reason.startswith("The pilot self-test failed: scratch: cannot write in")
    assert result.reason.endswith("point the pilot's scratch at a writable local directory.")


async def test_too_little_disk(tmp_path: Path) -> None:
    result = await self_test(tmp_path, min_disk_mb=10**12)
    assert [c.name for c in result.failed] == ["disk"]
    assert result.reason is not None and "1000000000000 MB needed" in result.reason


async def test_missing_command(tmp_path: Path) -> None:
    result = await self_test(tmp_path, min_disk_mb=0, required_commands=["sh", "glidein-no-such-tool"])
    assert [c.name for c in result.failed] == ["command glidein-no-such-tool"]
    assert result.reason is not None and "'glidein-no-such-tool' is not on PATH" in result.reason


@pytest.mark.parametrize(
    "error",
    [ServerUnreachable("The server at https://x did not answer."), ConnectionRefusedError(111, "Connection refused")],
)
async def test_failing_server_check(tmp_path: Path, error: Exception) -> None:
    async def server_down() -> None:
        raise error

    result = await self_test(tmp_path, min_disk_mb=0, server_check=server_down)
    assert [c.name for c in result.failed] == ["server"]
    assert result.reason is not None and str(error) in result.reason


async def test_server_check_that_hangs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(selftest, "SERVER_CHECK_TIMEOUT_S", 0.1)

    async def server_hangs() -> None:
        await asyncio.sleep(10)

    result = await self_test(tmp_path, min_disk_mb=0, server_check=server_hangs)
    assert [c.name for c in result.failed] == ["server"]
    assert "no answer within" in (result.reason or "")


async def test_other_errors_are_not_swallowed(tmp_path: Path) -> None:
    async def broken() -> None:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        await self_test(tmp_path, min_disk_mb=0, server_check=broken)
