"""Argument types shared by the ``glidein`` subcommands: job ids, KEY=VALUE, counts.

Each type turns a plain-language parse error into an argparse usage error (exit 2).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from typing import Any

from glidein_client.wire.errors import GlideinError


def parse_ids(words: Iterable[str]) -> list[int]:
    """``["1-3,7", "5"]`` -> ``[1, 2, 3, 7, 5]`` (first occurrence kept). Raises ValueError."""
    seen: dict[int, None] = {}
    for word in words:
        for part in word.split(","):
            part = part.strip()
            if not part:
                continue
            first, dash, last = part.partition("-")
            if not first.isdigit() or (dash and not last.isdigit()):
                raise ValueError(f"{part!r} is not a job id or a range like 1-20")
            lo, hi = int(first), int(last) if dash else int(first)
            if lo < 1 or hi < lo:
                raise ValueError(f"{part!r} is not a valid range; ids start at 1 and ranges go up, e.g. 1-20")
            if hi - lo >= 1_000_000:
                raise ValueError(f"the range {part!r} is too large (at most a million ids)")
            seen.update(dict.fromkeys(range(lo, hi + 1)))
    return list(seen)


def arg_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """Turn a parser that raises GlideinError/ValueError into an argparse type (usage error, exit 2)."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except GlideinError as exc:
            # "memory: cannot read ..." -> "cannot read ...": argparse already names the option.
            field = exc.fields.get("field")
            message = exc.message.removeprefix(f"{field}: ") if field else exc.message
            raise argparse.ArgumentTypeError(message) from None
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"{text!r} is not KEY=VALUE")
    return key, value


def label_filter(text: str) -> str:
    key_value(text)
    return text


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"{text} is not a whole number of at least 1")
    return value


#: The argparse type for IDS arguments: one word -> a list of ids (flattened by ``parse_args``).
ids_type = arg_type(lambda w: parse_ids([w]))


def add_ids(parser: argparse.ArgumentParser, *, required: bool) -> None:
    """The positional ``IDS`` argument: numbers and ranges (``7``, ``1-20``, ``1-5,9``)."""
    parser.add_argument(
        "ids", nargs="+" if required else "*", type=ids_type, metavar="IDS", help="ids or ranges, e.g. 1-20"
    )
