"""The ``glidein-server`` subcommands, one module per concept.

Each module has ``register(sub, common)``: it adds its subparser(s) with ``parents=[common]`` (the
options every subcommand takes: ``--dir``, ``--json``) and sets ``handler`` on each leaf, an
``async (args) -> exit code``. To add a subcommand: write its module and list it in ``MODULES``
(the order is the order of ``--help``). To add an action to ``site``, extend ``sites.register``.
"""

from __future__ import annotations

import argparse
from types import ModuleType

from glidein_server.commands import admin, certificate, init, operator, purge, serve, sites, tokens, top, users

MODULES: tuple[ModuleType, ...] = (init, serve, users, sites, tokens, operator, certificate, purge, top, admin)


def register_all(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    for module in MODULES:
        module.register(sub, common)
