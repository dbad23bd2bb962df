"""The one exception root of glidein, with plain-language messages.

Every error says what went wrong and what to do. Structured fields (command, exit
code, stderr, field) travel with it for logs; they never leak into the message
shown to a person unless they help that person.
"""

from __future__ import annotations

from typing import Any


class GlideinError(Exception):
    """Root of every error glidein raises on purpose."""

    #: HTTP status the server answers with when this error reaches a handler.
    http_status = 400

    def __init__(self, message: str, *, hint: str | None = None, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.fields = fields

    def __str__(self) -> str:
        return f"{self.message} {self.hint}" if self.hint else self.message

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.message}
        if self.hint:
            out["hint"] = self.hint
        if "field" in self.fields:
            out["field"] = self.fields["field"]
        return out


class ConfigError(GlideinError):
    """A config file is missing, unreadable or has a bad key or value."""


class ValidationError(GlideinError):
    """A request, job or file does not match what is expected."""


class AuthError(GlideinError):
    """Missing, unknown, expired or under-privileged credentials."""

    http_status = 401


class ForbiddenError(AuthError):
    http_status = 403


class NotFoundError(GlideinError):
    http_status = 404


class ConflictError(GlideinError):
    """The request is well formed but the object is in another state (e.g. a stale lease)."""

    http_status = 409


class ServerUnreachable(GlideinError):
    """The server could not be reached or answered with an unexpected status."""

    http_status = 502


class InputUnavailable(GlideinError):
    """An input URL cannot be fetched: its host does not resolve, it answers 4xx, or 5xx for too long."""


class RateLimited(ServerUnreachable):
    """The server asked to slow down (HTTP 429) for longer than the client was willing to wait."""

    http_status = 429


class TlsError(ConfigError):
    """The server's TLS certificate is not trusted: a missing or wrong CA file, or another host name."""


class SchedulerError(GlideinError):
    """A batch-system command failed."""

    http_status = 502


class TemplateError(GlideinError):
    """A batch-script template references a key that was not supplied."""


class SshError(GlideinError):
    """The login node could not be reached, refused the login, or dropped the connection."""

    http_status = 502
