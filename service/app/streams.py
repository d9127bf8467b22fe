"""One streamed verify or identify session over the engine: frames in, prompts and a decision out.

The gRPC servicer owns the transport (reading with timeouts, cancellation); this runner owns
the rest: validating the opening and each frame, analysing only the followed face of each
frame (detect, quality, passive liveness, embedding, mesh cues), feeding the `Session`, and
ending in the engine's `verify_face` / `identify_face` with the session's `LivenessReport`.
Refusals (NO_FACE, FACE_CHANGED, low quality) are audited as declined attempts, as single-shot
calls audit theirs.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from service.config import StreamSettings
from service.app.decision import Decision
from service.app.engine import Engine, face_errors
from service.errors import Conflict, InvalidInput, Unprocessable
from service.liveness.session import Observation, Prompt, Session
from service.vision.types import FaceAnalysis
from service.vision_processes import Vision

T = TypeVar("T")

SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")  # fullmatch only


@dataclass(frozen=True)
class Opening:
    """The first message: who claims to be whom (verify) or what to search (identify)."""

    session_id: str
    device_id: str
    identify: bool = False
    customer_id: str = ""
    top_k: int = 0
    min_score: float = 0.0
    request_challenge: bool = False


@dataclass(frozen=True, eq=False)
class Frame:
    data: bytes
    captured_s: float | None  # the kiosk's capture clock; None: not sent
    device_id: str
    session_id: str


@dataclass(frozen=True)
class Outcome:
    """The session's one answer: the decision, and the candidates of an identify."""

    decision: Decision
    candidates: list[tuple[str, float]]


class ActiveSessions:
    """Session ids of the streams running now: a second stream may not reuse a live id, and
    every entry leaves with its stream, however it ends."""

    def __init__(self) -> None:
        self._ids: set[str] = set()
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, session_id: str) -> Iterator[None]:
        with self._lock:
            if session_id in self._ids:
                raise Conflict("SESSION_ACTIVE", f"session {session_id} is already streaming")
            self._ids.add(session_id)
        try:
            yield
        finally:
            with self._lock:
                self._ids.discard(session_id)

    def __len__(self) -> int:
        with self._lock:
            return len(self._ids)


def analyse_frame(
    vision: Vision, session: Session, data: bytes, received_s: float, captured_s: float
) -> Observation:
    """The session's observation of a frame: only the face it follows is analysed, as it
    wishes (see `subject.stream_frame`)."""
    found = vision.stream_frame(data, session.frames, session.wish())
    if found is None:
        return Observation(received_s, captured_s)
    return Observation(
        received_s, captured_s, found.face, found.quality, found.liveness, found.embedding,
        found.cues,
    )  # fmt: skip


class StreamRun:
    """One session's work; not thread-safe (one stream, one handler thread)."""

    def __init__(
        self,
        engine: Engine,
        settings: StreamSettings,
        opening: Opening,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not SESSION_ID.fullmatch(opening.session_id or ""):
            raise InvalidInput(
                "INVALID_SESSION_ID",
                "session_id must be 1-64 characters of letters, digits and . _ : -",
            )
        # A refused opening (unknown customer, a floor below the threshold) is audited as a
        # declined attempt of the device, like a refused single-shot call.
        if opening.identify:
            engine.attempt("IDENTIFY", opening.device_id, "", lambda: engine.check_search(
                opening.top_k, opening.min_score))  # fmt: skip
        else:  # enrolled, consent not expired
            engine.attempt("VERIFY", opening.device_id, opening.customer_id,
                           lambda: engine.check_verifiable(opening.customer_id))  # fmt: skip
        self.engine = engine
        self.opening = opening
        self.clock = clock
        policy = settings.liveness.with_passive(engine.policy.liveness_threshold)
        self.session = Session(
            settings.limits(), policy, clock(),
            ask_challenge=settings.require_challenge or opening.request_challenge,
        )  # fmt: skip
        self._last_capture: float | None = None

    @property
    def kind(self) -> str:
        return "IDENTIFY" if self.opening.identify else "VERIFY"

    def abandon(self, reason: str) -> str:
        """Audit a session that ended without a decision (the caller left, or a time limit
        passed): a declined attempt like a refused face; returns its event id."""
        opening = self.opening
        return self.engine.refuse(self.kind, opening.device_id, opening.customer_id, reason)

    def _refusing(self, run: Callable[[], T]) -> T:
        """Run a step whose Unprocessable ends the session as an audited declined attempt."""
        return self.engine.attempt(self.kind, self.opening.device_id, self.opening.customer_id, run)

    def _check_frame(self, frame: Frame) -> float:
        if frame.session_id and frame.session_id != self.opening.session_id:
            raise InvalidInput("SESSION_MISMATCH", "a frame names another session")
        if frame.device_id and frame.device_id != self.opening.device_id:
            raise InvalidInput("DEVICE_MISMATCH", "a frame names another device")
        if not frame.data:
            raise InvalidInput("IMAGE_EMPTY", f"frame {self.session.frames}: no image")
        captured = frame.captured_s
        if captured is None:
            return self.clock()
        if self._last_capture is not None and captured < self._last_capture:
            raise InvalidInput("FRAME_OUT_OF_ORDER", "capture timestamps went backwards")
        self._last_capture = captured
        return captured

    def observation(self, frame: Frame, received_s: float) -> Observation:
        captured = self._check_frame(frame)
        with face_errors():
            return analyse_frame(self.engine.vision, self.session, frame.data, received_s, captured)

    def frame(self, frame: Frame, received_s: float) -> Prompt | None:
        """Take one frame that arrived at `received_s` (server clock); a prompt to send, if any.
        A frame that fails its vision worker is audited, as single-shot calls audit theirs."""
        obs = self._refusing(lambda: self.observation(frame, received_s))
        prompt: list[Prompt | None] = []

        def observe() -> FaceAnalysis:
            prompt.append(self.session.observe(obs))
            return self.session.best  # type: ignore[return-value]

        self._refusing(observe)  # FACE_CHANGED is audited
        return prompt[0]

    @property
    def done(self) -> bool:
        return self.session.done

    def wait_s(self) -> float:
        """How long to wait for the next frame before the session must act on its own."""
        return max(0.0, self.session.next_timer_s() - self.clock())

    def expire(self) -> None:
        self.session.expire(self.clock())

    def close(self) -> None:
        self.session.close()

    def finish(self) -> Outcome:
        """The decision on the best-quality face with the session's liveness report."""
        report = self.session.report()

        def best() -> FaceAnalysis:
            analysis = self.session.best
            if analysis is None:
                raise Unprocessable("NO_FACE", "no face found in any frame of the session")
            self.engine.quality_gate(analysis, "best frame")
            return analysis

        analysis = self._refusing(best)
        opening = self.opening
        if opening.identify:
            candidates, decision = self.engine.identify_face(
                analysis, opening.top_k, opening.min_score, opening.device_id, liveness=report
            )
            return Outcome(decision, candidates)
        decision = self.engine.verify_face(
            opening.customer_id, analysis, opening.device_id, liveness=report
        )
        return Outcome(decision, [])
