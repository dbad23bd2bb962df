"""``glidein-server site add|revoke|list``: sites' tokens (revoking a site revokes its pilots too);
``site drain|pause|resume|cap|show``: the operator's hand on a site (:mod:`.site_control`).

More site actions register on the subparsers ``add_subject_commands`` returns.
"""

from __future__ import annotations

import argparse

from glidein_client.wire.schema import Role
from glidein_server.commands.site_control import register as register_site_control
from glidein_server.commands.subjects import add_subject_commands


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    register_site_control(add_subject_commands(sub, common, Role.SITE), common)
