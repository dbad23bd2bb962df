"""Every problem of a job file at once: one error that lists them all, each naming its job and key.

A person fixing a job file should not have to submit once per mistake. The problems found are
gathered and raised together; one problem reads as before, several as a list (at most
``MAX_SHOWN`` lines, then how many more), and ``--json`` carries each as an object of its own.
"""

from __future__ import annotations

from collections.abc import Sequence

from glidein_client.wire.errors import ValidationError

MAX_SHOWN = 20


def combine(errors: Sequence[ValidationError], source: str) -> ValidationError:
    """One error for ``errors`` (found in ``source``): the error itself when there is one."""
    if len(errors) == 1:
        return errors[0]
    lines = []
    hints: set[str] = set()
    for exc in errors[:MAX_SHOWN]:
        text = exc.message.removeprefix(f"{source}: ")
        fresh = exc.hint and exc.hint not in hints  # a hint once, not on every line it applies to
        lines.append(f"  {text}" + (f" {exc.hint}" if fresh else ""))
        hints.add(exc.hint or "")
    if len(errors) > MAX_SHOWN:
        lines.append(f"  ... and {len(errors) - MAX_SHOWN} more.")
    return ValidationError(
        f"{source}: {len(errors)} problems; nothing was submitted:\n" + "\n".join(lines),
        hint="Fix them all, then submit again.",
        field=errors[0].fields.get("field"),
        file=source,
        errors=[exc.to_wire() for exc in errors],
    )


def raise_all(errors: Sequence[ValidationError], source: str) -> None:
    if errors:
        raise combine(errors, source)
