"""Domain errors: what went wrong, as a machine-readable reason code, free of any transport.

The API layer maps each class to a gRPC status (`service/api/status.py`); the reason code
travels to the client in a `google.rpc.ErrorInfo`, so kiosks and the enrolment CLI can act on
it without parsing messages.
"""

from __future__ import annotations


class FaceguardError(Exception):
    """Base class; `reason` is the stable code a client acts on."""

    def __init__(self, reason: str, message: str, **metadata: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.metadata = metadata


class InvalidInput(FaceguardError):
    """A field or image that can never be accepted as sent (INVALID_ARGUMENT)."""


class TooLarge(FaceguardError):
    """Input over a configured limit (RESOURCE_EXHAUSTED)."""


class Unprocessable(FaceguardError):
    """A well-formed request the faces cannot satisfy: no face, several, too low quality
    (FAILED_PRECONDITION)."""


class Forbidden(FaceguardError):
    """The caller's role does not grant what the request asks for (PERMISSION_DENIED)."""


class NotFound(FaceguardError):
    """An unknown customer (NOT_FOUND)."""


class Conflict(FaceguardError):
    """The customer, or their face, is already enrolled (ALREADY_EXISTS)."""


class Unavailable(FaceguardError):
    """The service is not ready to answer (UNAVAILABLE)."""


class Internal(FaceguardError):
    """The service failed on this request: a vision worker crashed or overran (INTERNAL)."""


class Expired(FaceguardError):
    """A session that ran past a time limit: idle too long, or longer than allowed
    (DEADLINE_EXCEEDED)."""


class SettingsError(ValueError):
    """Settings that cannot be used: a missing file, a value with no calibration behind it, a
    schema this code does not serve. Raised before serving, so it is not a FaceguardError
    (no gRPC status): the process refuses to start with its message."""
