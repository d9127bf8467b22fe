"""Abuse limits: per-client and per-device rate, per-client concurrency, request size.

- Rate: a token bucket per client (certificate name) and one per device (the device id bound
  to a kiosk certificate; auth.py makes the request's own device_id equal it). An empty
  bucket answers RESOURCE_EXHAUSTED with ErrorInfo `RATE_LIMITED` and a
  `google.rpc.RetryInfo` saying when a token will be there.
- Concurrency: calls in flight per client; one more is refused (`TOO_MANY_CONCURRENT_CALLS`)
  so one client cannot hold every worker thread while others wait.
- Size: every request message is checked against its method's limit: requests that carry
  images (any `bytes` field, at any depth) get the server's message limit, all others
  `small_message_bytes`; a streamed call also has a total (`REQUEST_TOO_LARGE`).

Rate and concurrency limits need real client identities, so they apply to clients known by
certificate; development callers (plaintext) get the size limits only. Health checks and
reflection are exempt from rate and concurrency limits.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2

from service.api import auth
from service.api.calls import CallInterceptor, CallWatch
from service.api.errors import rich_status
from service.config import SecuritySettings

_MAX_KEYS = 100_000  # buckets kept; the least recently used go first
_CONCURRENCY_RETRY_S = 0.5


class TokenBucket:
    """`rate` tokens a second up to `burst`; `take` returns 0 or the seconds until a token."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        self._tokens, self._stamp = float(burst), clock()

    def take(self) -> float:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate


class RateLimiter:
    """Token buckets by key (thread-safe), at most `_MAX_KEYS` of them."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._lock = threading.Lock()

    def wait_for(self, key: str) -> float:
        """0 when `key` may go now, else seconds to wait; always 0 when the rate is 0 (off)."""
        if self.rate <= 0:
            return 0.0
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, self._clock)
                if len(self._buckets) > _MAX_KEYS:
                    self._buckets.popitem(last=False)
            self._buckets.move_to_end(key)
            return bucket.take()


class ConcurrencyLimiter:
    """Counts calls in flight per key; `enter` refuses beyond `limit` (0: no limit)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._in_flight: dict[str, int] = {}
        self._lock = threading.Lock()

    def enter(self, key: str) -> bool:
        with self._lock:
            count = self._in_flight.get(key, 0)
            if self.limit and count >= self.limit:
                return False
            self._in_flight[key] = count + 1
            return True

    def leave(self, key: str) -> None:
        with self._lock:
            count = self._in_flight.get(key, 0) - 1
            if count > 0:
                self._in_flight[key] = count
            else:
                self._in_flight.pop(key, None)


@functools.cache
def carries_bulk(descriptor: Descriptor) -> bool:
    """Whether a message type can hold bytes (an image), at any depth of nesting."""
    seen: set[str] = set()

    def visit(message: Descriptor) -> bool:
        if message.full_name in seen:
            return False
        seen.add(message.full_name)
        for field in message.fields:
            if field.type == FieldDescriptor.TYPE_BYTES:
                return True
            if field.message_type is not None and visit(field.message_type):
                return True
        return False

    return visit(descriptor)


def exhausted(reason: str, message: str, retry_after: float) -> grpc.Status:
    """RESOURCE_EXHAUSTED with an ErrorInfo reason and a RetryInfo hint."""
    delay = Duration()
    delay.FromNanoseconds(math.ceil(retry_after * 1000) * 1_000_000)
    retry = error_details_pb2.RetryInfo(retry_delay=delay)
    return rich_status(grpc.StatusCode.RESOURCE_EXHAUSTED, reason, message, retry)


class _Limited(CallWatch):
    def __init__(self, limits: LimitInterceptor, client: str | None) -> None:
        self.limits = limits
        self.client = client  # holds a concurrency slot when not None
        self.bytes = 0

    def request(self, message: Any, context: grpc.ServicerContext) -> None:
        size = message.ByteSize()
        self.bytes += size
        limit = self.limits.message_limit(message.DESCRIPTOR)
        if size > limit or self.bytes > self.limits.settings.stream_bytes:
            self.deny(
                rich_status(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "REQUEST_TOO_LARGE",
                    f"request over the limit of {limit} bytes for this method",
                ),
            )

    def finish(self, context: grpc.ServicerContext, failed: bool) -> None:
        if self.client is not None:
            self.limits.concurrency.leave(self.client)


class LimitInterceptor(CallInterceptor):
    """Runs inside `AuthInterceptor`, which has set the caller's identity for the call."""

    def __init__(self, settings: SecuritySettings, max_message_bytes: int) -> None:
        self.settings = settings
        self.max_message_bytes = max_message_bytes
        self.clients = RateLimiter(settings.client_rate, settings.client_burst)
        self.devices = RateLimiter(settings.device_rate, settings.device_burst)
        self.concurrency = ConcurrencyLimiter(settings.client_concurrency)

    def message_limit(self, descriptor: Descriptor) -> int:
        if carries_bulk(descriptor):
            return self.max_message_bytes
        return self.settings.small_message_bytes

    def watch(self, method: str, context: grpc.ServicerContext) -> CallWatch:
        identity = auth.CURRENT.get()
        exempt = auth.allowed_roles(method) is auth.PUBLIC
        if identity is None or identity.development or exempt:
            return _Limited(self, None)
        wait = self.clients.wait_for(identity.client)
        if not wait and identity.device_id:  # a kiosk: its bound device pays for every call
            wait = self.devices.wait_for(identity.device_id)
        if wait:
            context.abort_with_status(exhausted("RATE_LIMITED", "rate limit", wait))
        if not self.concurrency.enter(identity.client):
            context.abort_with_status(
                exhausted(
                    "TOO_MANY_CONCURRENT_CALLS",
                    "too many calls in flight for this client",
                    _CONCURRENCY_RETRY_S,
                )
            )
        return _Limited(self, identity.client)
