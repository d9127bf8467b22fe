"""The transport side of streamed sessions: reading frames with timeouts, cancellation, cleanup.

gRPC's request iterator blocks until the kiosk sends, so an idle or abandoned stream would hold
its handler thread forever. A `RequestPump` reads it on a thread of its own into a small
bounded queue (flow control still reaches the kiosk), stamping each message with its arrival
time, so the handler can wait with the session's timers and the call's deadline. When the call
ends for any reason, the handler returns, gRPC fails the pending read, and the reader exits; the
handler joins it, so no thread and no session entry outlive the stream.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from faceguard.v1 import verification_pb2
from service.api.messages import MAX_CLOCK_SKEW_S, datetime_from
from service.app.streams import ActiveSessions, Frame, Opening, Outcome, StreamRun
from service.errors import Expired, InvalidInput, TooLarge
from service.liveness.session import Prompt

log = logging.getLogger(__name__)

QUEUE_FRAMES = 8
POLL_S = 0.25  # how often a waiting handler looks whether the caller is still there
_END = object()  # the caller closed its side of the stream (or seems to: see `_cancelled`)
_GONE = object()  # reading failed: the call was cancelled or broke
# gRPC Python can end a cancelled call's request stream as if the caller had closed it, a
# moment before the call turns inactive; a session must not be decided in that moment.
END_GRACE_S = 0.1


class Cancelled(Exception):
    """The caller went away: nothing to answer."""


class RequestPump:
    """Reads a request iterator on its own thread; `get` waits with a timeout."""

    def __init__(self, requests: Iterator[Any], clock: Callable[[], float]) -> None:
        self._requests = requests
        self._clock = clock
        self._queue: queue.Queue[tuple[float, Any]] = queue.Queue(QUEUE_FRAMES)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="stream-reader", daemon=True)
        self._thread.start()

    def _put(self, item: tuple[float, Any]) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=POLL_S)
                return
            except queue.Full:
                continue

    def _read(self) -> None:
        end = _END
        try:
            for message in self._requests:
                self._put((self._clock(), message))
                if self._stop.is_set():
                    return
        except grpc.RpcError:
            end = _GONE
        self._put((self._clock(), end))

    def get(self, timeout: float, context: grpc.ServicerContext) -> tuple[float, Any] | None:
        """The next (arrival time, message), `(t, None)` at the end of the stream, or None when
        `timeout` passed first; raises Cancelled once the caller is gone."""
        deadline = self._clock() + timeout
        while True:
            if not context.is_active():
                raise Cancelled
            left = deadline - self._clock()
            try:
                arrived, message = self._queue.get(timeout=max(0.0, min(left, POLL_S)))
            except queue.Empty:
                if left <= POLL_S:
                    return None
                continue
            if message is _GONE or (message is _END and _cancelled(context)):
                raise Cancelled  # the request stream ended because the call was cancelled
            return arrived, None if message is _END else message

    def close(self) -> None:
        """Stop reading; the reader exits once gRPC fails its pending read (the call is over)."""
        self._stop.set()


def _cancelled(context: grpc.ServicerContext) -> bool:
    """Whether the call turns out cancelled within `END_GRACE_S` of its request stream ending.

    Costs a caller that really closed its stream that much before its decision.
    """
    deadline = time.monotonic() + END_GRACE_S
    while context.is_active():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def _frame(message: Any) -> Frame:
    return Frame(
        data=message.image.data,
        captured_s=_captured_s(message),
        device_id=message.device_id,
        session_id=message.session_id,
    )


def _captured_s(message: Any) -> float | None:
    """The frame's capture time in seconds (None: not sent): a valid timestamp within
    `MAX_CLOCK_SKEW_S` of the server's clock, or INVALID_TIMESTAMP / CLOCK_SKEW. It orders and
    times the session's frames, so it is refused rather than trusted (a kiosk keeps NTP time)."""
    if not message.HasField("captured_at"):
        return None
    captured = datetime_from(message.captured_at, "frame captured_at").timestamp()
    if abs(captured - time.time()) > MAX_CLOCK_SKEW_S:
        raise InvalidInput(
            "CLOCK_SKEW",
            f"frame captured_at is more than {MAX_CLOCK_SKEW_S:.0f} s from the server's clock",
        )
    return captured


def prompt_message(
    prompt: Prompt, clock: Callable[[], float] = time.monotonic
) -> verification_pb2.Prompt:
    """A Prompt whose deadline is on the wall clock (the session's is on the monotonic one)."""
    message = verification_pb2.Prompt(
        challenge=prompt.code,
        window_ms=round(prompt.window_s * 1000),
        text=prompt.text,
    )
    message.deadline.FromNanoseconds(round((time.time() + prompt.deadline_s - clock()) * 1e9))
    return message


def opening_of(message: Any, identify: bool) -> Opening:
    """The session's opening from the first message, which must be `start`."""
    if message is None or message.WhichOneof("message") != "start":
        raise InvalidInput("START_REQUIRED", "the first message of a stream must be `start`")
    start = message.start
    options = start.options
    if identify:
        return Opening(
            session_id=options.session_id, device_id=options.device_id, identify=True,
            top_k=start.top_k, min_score=start.min_score,
            request_challenge=options.request_challenge,
        )  # fmt: skip
    return Opening(
        session_id=options.session_id, device_id=options.device_id,
        customer_id=start.customer_id, request_challenge=options.request_challenge,
    )  # fmt: skip


def run_stream(
    requests: Iterator[Any],
    context: grpc.ServicerContext,
    begin: Callable[[Opening], StreamRun],
    sessions: ActiveSessions,
    identify: bool,
    idle_s: float,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Prompt | Outcome]:
    """Drive one session: yields each prompt as the session asks, then the one Outcome.

    Domain errors propagate to `mapped_stream`; a caller that hangs up ends it quietly.
    """
    pump = RequestPump(requests, clock)
    try:
        first = pump.get(_budget(idle_s, context), context)
        if first is None:
            raise Expired("SESSION_IDLE", "no start message")
        opening = opening_of(first[1], identify)
        with sessions.hold(opening.session_id):
            run = begin(opening)
            try:
                while not run.done:
                    item = pump.get(_budget(run.wait_s(), context), context)
                    if item is None:
                        run.expire()
                        continue
                    arrived, message = item
                    if message is None:
                        run.close()
                        break
                    if message.WhichOneof("message") != "frame":
                        raise InvalidInput("FRAME_EXPECTED", "only frames follow the start message")
                    prompt = run.frame(_frame(message.frame), arrived)
                    if prompt is not None:
                        yield prompt
            except (Expired, TooLarge) as exc:  # idle, too long, too many frames: audited
                exc.metadata["event_id"] = run.abandon(exc.reason)
                raise
            except (Cancelled, GeneratorExit):  # the caller left, while reading or answering
                run.abandon("SESSION_ABANDONED")
                raise
            yield run.finish()
    except Cancelled:
        log.info("stream abandoned by the caller")
    finally:
        pump.close()


def _budget(wait: float, context: grpc.ServicerContext) -> float:
    """How long the handler may wait for the next message: `wait` (the session's next timer,
    or the idle limit before the start message), never past the call's deadline."""
    remaining = context.time_remaining()
    if remaining is not None:
        if remaining <= 0:
            raise Expired("DEADLINE_EXCEEDED", "the call's deadline passed")
        wait = min(wait, remaining)
    return wait
