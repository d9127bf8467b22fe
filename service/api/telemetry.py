"""The outermost interceptor: request id, one access log line and the RPC metrics per call.

The request id is the caller's `x-request-id` metadata when it is a sane token, otherwise a
new UUID; it is set for the call's log records (`service.logs.REQUEST_ID`) and returned in
the trailing metadata, errors included. Every `Decision` in a response, at any depth (a
stream's final result too), is counted by outcome and reason code.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from service import metrics
from service.api.calls import CallInterceptor, CallWatch
from service.logs import REQUEST_ID

log = logging.getLogger("faceguard.access")

HEADER = "x-request-id"
DECISION = "faceguard.v1.Decision"
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id_of(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == HEADER and isinstance(value, str) and _SANE_ID.fullmatch(value):
            return value
    return str(uuid.uuid4())


class _Observed(CallWatch):
    def __init__(self, method: str, context: grpc.ServicerContext) -> None:
        self.method = method
        self.start = time.perf_counter()
        self.request_id = request_id_of(context)
        self.token = REQUEST_ID.set(self.request_id)

    def response(self, message: Any, context: grpc.ServicerContext) -> None:
        for decision in _decisions(message):
            outcome = decision.DESCRIPTOR.fields_by_name["outcome"].enum_type
            metrics.record_decision(
                outcome.values_by_number[decision.outcome].name, list(decision.reason_codes)
            )

    def finish(self, context: grpc.ServicerContext, failed: bool) -> None:
        elapsed = time.perf_counter() - self.start
        code = context.code() or (
            grpc.StatusCode.OK
            if not failed
            else grpc.StatusCode.UNKNOWN
            if context.is_active()
            else grpc.StatusCode.CANCELLED
        )
        trailing = tuple(context.trailing_metadata() or ())
        context.set_trailing_metadata((*trailing, (HEADER, self.request_id)))
        metrics.RPC_DURATION.labels(method=self.method, code=code.name).observe(elapsed)
        reason = ""
        if code != grpc.StatusCode.OK:
            reason = _reason(code, trailing)
            metrics.RPC_ERRORS.labels(method=self.method, code=code.name, reason=reason).inc()
        log.info(
            "%s %s %s", self.method, code.name, reason,
            extra={"method": self.method, "code": code.name, "reason": reason,
                   "duration_ms": round(elapsed * 1000, 1)},
        )  # fmt: skip
        REQUEST_ID.reset(self.token)


def _decisions(message: Any, depth: int = 0) -> Iterator[Any]:
    """Every `Decision` set in a response, however it is nested (a stream's final result)."""
    for field, value in message.ListFields():
        if field.message_type is None or field.is_repeated or depth > 2:
            continue
        if field.message_type.full_name == DECISION:
            yield value
        else:
            yield from _decisions(value, depth + 1)


def _reason(code: grpc.StatusCode, trailing: tuple[tuple[str, Any], ...]) -> str:
    """The ErrorInfo reason from the status details in the trailing metadata, if any."""
    details = dict(trailing).get(rpc_status.GRPC_DETAILS_METADATA_KEY)
    if not details:
        return code.name
    status = status_pb2.Status.FromString(details)
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return code.name


class TelemetryInterceptor(CallInterceptor):
    def watch(self, method: str, context: grpc.ServicerContext) -> CallWatch:
        return _Observed(method, context)
