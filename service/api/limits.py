"""Abuse limits: per-client and per-device rate, per-client concurrency, request size.

- Rate: a token bucket per client (its certificate) and one per device (the device id bound
  to a kiosk certificate; auth.py makes the request's own device_id equal it). An empty
  bucket answers RESOURCE_EXHAUSTED with ErrorInfo `RATE_LIMITED` and a
  `google.rpc.RetryInfo` saying when a token will be there.
- Concurrency: calls in flight per client (`TOO_MANY_CONCURRENT_CALLS`), long-lived calls
  (streams, health Watch) per client (`TOO_MANY_STREAMS`) and long-lived calls in all
  (`STREAMS_BUSY`), so that neither one client nor streams can hold every worker thread while
  others wait: unary calls keep `server.reserved_workers` threads, and one client takes at
  most `client_concurrency` of them. A client is its certificate (SHA-256 fingerprint), so two
  certificates with the same common name do not share limits.
- Size: every request message is checked against its method's limit: requests that carry
  images (any `bytes` field, at any depth) get the server's message limit, all others
  `small_message_bytes`; a streamed call also has a total (`REQUEST_TOO_LARGE`).

Rate and per-client limits need real client identities, so they apply to clients known by
certificate (a public method called without one counts by peer host); development callers
(plaintext) get the size limits and the limit on all long-lived calls only. Health checks and
reflection are exempt from rate limits, not from concurrency limits.
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
from service.api.status import rich_status
from service.config import SecuritySettings, ServerSettings, SettingsError

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
    def __init__(self, limits: LimitInterceptor, slots: list[tuple[ConcurrencyLimiter, str]]):
        self.limits = limits
        self.slots = slots  # the concurrency slots this call holds until it ends
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
        release(self.slots)


def release(slots: list[tuple[ConcurrencyLimiter, str]]) -> None:
    for limiter, key in slots:
        limiter.leave(key)


def check_shares(server: ServerSettings, security: SecuritySettings) -> None:
    """Refuse settings under which one client could hold every thread kept for unary calls,
    or streams could hold every thread."""
    if server.reserved_workers >= server.workers:
        raise SettingsError("server.reserved_workers must leave threads for streams")
    if security.client_concurrency > server.reserved_workers:
        raise SettingsError(
            "security.client_concurrency must not exceed server.reserved_workers: one client "
            "must not be able to hold every thread kept for unary calls"
        )


class LimitInterceptor(CallInterceptor):
    """Runs inside `AuthInterceptor`, which has set the caller's identity for the call.

    Shares of the server's threads: a client (a certificate; a peer host where a public
    method is called without one) holds at most `client_concurrency` calls of any kind and
    `client_streams` long-lived ones (streams, health Watch) at once, and a kiosk certificate
    `kiosk_concurrency` unary face calls (each holds a vision worker); all long-lived calls
    together hold at most `workers - reserved_workers` threads, so unary calls always have
    `reserved_workers`, more than one client may take. Development callers (plaintext) share
    only the last limit.
    """

    def __init__(
        self, settings: SecuritySettings, max_message_bytes: int, server: ServerSettings
    ) -> None:
        self.settings = settings
        self.max_message_bytes = max_message_bytes
        self.clients = RateLimiter(settings.client_rate, settings.client_burst)
        self.devices = RateLimiter(settings.device_rate, settings.device_burst)
        self.concurrency = ConcurrencyLimiter(settings.client_concurrency)
        self.streams = ConcurrencyLimiter(settings.client_streams)
        self.kiosk_calls = ConcurrencyLimiter(settings.kiosk_concurrency)
        self.long_lived = ConcurrencyLimiter(max(1, server.workers - server.reserved_workers))

    def message_limit(self, descriptor: Descriptor) -> int:
        if carries_bulk(descriptor):
            return self.max_message_bytes
        return self.settings.small_message_bytes

    def watcher(
        self, handler: grpc.RpcMethodHandler
    ) -> Callable[[str, grpc.ServicerContext], CallWatch]:
        long_lived = handler.request_streaming or handler.response_streaming
        return functools.partial(self.admit, long_lived=long_lived)

    def admit(self, method: str, context: grpc.ServicerContext, long_lived: bool) -> CallWatch:
        """Start watching a call (the `CallWatch` of `service.api.calls`): rate first (a
        refused call holds nothing), then the call's concurrency slots."""
        identity = auth.CURRENT.get()
        exempt = auth.allowed_roles(method) is auth.PUBLIC
        if identity is None:
            key: str | None = "peer:" + auth.peer_host(context)
        else:
            key = None if identity.development else identity.limit_key
        if identity is not None and key is not None and not exempt:
            wait = self.clients.wait_for(key)
            if not wait and identity.device_id:  # a kiosk: its bound device pays for every call
                wait = self.devices.wait_for(identity.device_id)
            if wait:
                context.abort_with_status(exhausted("RATE_LIMITED", "rate limit", wait))
        slots: list[tuple[ConcurrencyLimiter, str, str, str]] = []
        if key is not None:
            slots.append((self.concurrency, key, "TOO_MANY_CONCURRENT_CALLS", "calls in flight"))
            if long_lived:
                slots.append((self.streams, key, "TOO_MANY_STREAMS", "streams open"))
            elif identity is not None and identity.device_id and not exempt:
                slots.append((self.kiosk_calls, key, "TOO_MANY_CONCURRENT_CALLS", "kiosk calls"))
        if long_lived:
            slots.append((self.long_lived, "", "STREAMS_BUSY", "streams on the server"))
        held: list[tuple[ConcurrencyLimiter, str]] = []
        for limiter, slot, reason, what in slots:
            if not limiter.enter(slot):
                release(held)
                context.abort_with_status(
                    exhausted(reason, f"too many {what}; retry later", _CONCURRENCY_RETRY_S)
                )
            held.append((limiter, slot))
        return _Limited(self, held)
