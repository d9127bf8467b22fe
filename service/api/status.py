"""Domain errors to gRPC statuses with a `google.rpc.ErrorInfo` reason.

Every failure a client can cause leaves with a precise status code and a stable reason code in
the rich error details; anything unexpected is logged with its traceback and answered with
INTERNAL and no detail, so no internals (or biometric data) leak to the caller.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from service.errors import (
    Conflict,
    Expired,
    FaceguardError,
    Forbidden,
    Internal,
    InvalidInput,
    NotFound,
    TooLarge,
    Unavailable,
    Unprocessable,
)

log = logging.getLogger(__name__)

DOMAIN = "faceguard.v1"

STATUS: dict[type[FaceguardError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    TooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unprocessable: grpc.StatusCode.FAILED_PRECONDITION,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Forbidden: grpc.StatusCode.PERMISSION_DENIED,
    Conflict: grpc.StatusCode.ALREADY_EXISTS,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    Expired: grpc.StatusCode.DEADLINE_EXCEEDED,
    Internal: grpc.StatusCode.INTERNAL,
}


def rich_status(
    code: grpc.StatusCode,
    reason: str,
    message: str,
    *extra: Message,
    **metadata: str,
) -> grpc.Status:
    """A status whose details carry an ErrorInfo(reason, domain, metadata), then `extra`
    details (e.g. a RetryInfo)."""
    info = error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata)
    details = []
    for item in (info, *extra):
        detail = any_pb2.Any()
        detail.Pack(item)
        details.append(detail)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=details)
    return rpc_status.to_status(status)


Handler = TypeVar("Handler", bound=Callable[..., Any])


def mapped(handler: Handler) -> Handler:
    """Decorate a servicer method: FaceguardError -> its status; anything else -> INTERNAL."""

    @functools.wraps(handler)
    def wrapper(self: object, request: object, context: grpc.ServicerContext) -> Any:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            # The caller has given up already: do no work for nobody.
            context.abort_with_status(
                rich_status(
                    grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED", "deadline passed"
                )
            )
        try:
            return handler(self, request, context)
        except FaceguardError as exc:
            code = STATUS[type(exc)]
            log.info("%s: %s %s", handler.__name__, code.name, exc.reason)
            context.abort_with_status(rich_status(code, exc.reason, str(exc), **exc.metadata))
        except Exception:
            log.exception("%s failed", handler.__name__)
            context.abort_with_status(
                rich_status(grpc.StatusCode.INTERNAL, "INTERNAL", "internal error")
            )

    return wrapper  # type: ignore[return-value]


StreamHandler = TypeVar("StreamHandler", bound=Callable[..., Iterator[Any]])


def mapped_stream(handler: StreamHandler) -> StreamHandler:
    """`mapped` for response-streaming methods: the handler is a generator, so its errors
    surface while the server iterates it, after `mapped`'s try has returned. Messages already
    yielded stay delivered; the call then ends with the mapped status."""

    @functools.wraps(handler)
    def wrapper(self: object, requests: object, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from handler(self, requests, context)
        except FaceguardError as exc:
            code = STATUS[type(exc)]
            log.info("%s: %s %s", handler.__name__, code.name, exc.reason)
            context.abort_with_status(rich_status(code, exc.reason, str(exc), **exc.metadata))
        except Exception:
            if not context.is_active():
                return  # the caller hung up: the failure is the cancellation's, nobody to tell
            log.exception("%s failed", handler.__name__)
            context.abort_with_status(
                rich_status(grpc.StatusCode.INTERNAL, "INTERNAL", "internal error")
            )

    return wrapper  # type: ignore[return-value]
