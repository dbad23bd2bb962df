"""The ``glidein`` subcommands, one module per concept.

Each module has ``register(sub, common)``: it adds its subparser(s) with ``parents=[common]`` (the
options every subcommand takes) and sets ``handler``, an ``async (args) -> exit code``. To add a
subcommand: write its module and list it in ``MODULES`` below (the order is the order of ``--help``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from types import ModuleType

from glidein_client.user.commands import change, fetch, logs, show, status, submit, wait

Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]", argparse.ArgumentParser], None]

MODULES: tuple[ModuleType, ...] = (submit, status, wait, fetch, change, logs, show)


def register_all(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    for module in MODULES:
        register: Register = module.register
        register(sub, common)
