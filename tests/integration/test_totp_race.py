"""Parallel wrong one-time codes: each attempt is counted before the server awaits anything."""

from __future__ import annotations

import asyncio

import pytest

from glidein_client.wire.errors import AuthError
from glidein_client.wire.schema import Role
from glidein_server import totp

from ..conftest import LiveServer


async def test_a_hundred_parallel_wrong_codes_evaluate_only_the_lockout_limit(live_server: LiveServer) -> None:
    code = await live_server.enable_totp()
    right = code()
    wrong = "123456" if right != "123456" else "654321"

    async def guess(i: int) -> str:
        async with live_server.api(live_server.operator_token) as op:
            try:
                await op.admin_add(Role.USER, f"user{i}", wrong)
            except AuthError as exc:
                return str(exc)
        return "accepted"

    answers = await asyncio.gather(*(guess(i) for i in range(100)))
    evaluated = [a for a in answers if "wrong or expired" in a]
    locked = [a for a in answers if "Too many wrong" in a]
    assert len(evaluated) == totp.MAX_FAILURES, answers[:10]
    assert len(locked) == 100 - totp.MAX_FAILURES
    async with live_server.api(live_server.operator_token) as op:
        with pytest.raises(AuthError, match="Too many wrong"):  # even the right code waits out the pause
            await op.admin_add(Role.USER, "alice", right)
