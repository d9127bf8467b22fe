"""One streamed verify or identify session over the kiosk: frames in, prompts and a decision out.

The gRPC servicer owns the transport (reading with timeouts, cancellation); this runner owns
the rest: validating the opening and each frame, analysing only the followed face of each
frame (detect, quality, passive liveness, embedding, mesh cues), feeding the `Session`, and
ending in the kiosk's `verify_face` / `identify_face` with the session's `LivenessReport`.
Refusals (NO_FACE, FACE_CHANGED, low quality) are audited as declined attempts where they are
caught, through the same `Decisions.refusals_audited` as single-shot calls.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

from service.app.decision import Decision
from service.app.faces import face_errors
from service.app.kiosk import Kiosk
from service.app.requests import quality_gate
from service.app.vision_pool import Vision
from service.config import StreamSettings
from service.errors import Conflict, InvalidInput, Unprocessable
from service.gallery.match import Match
from service.liveness.session import Observation, Prompt, Session

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
    candidates: list[Match]


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
    return Observation(received_s, captured_s, found)


class StreamRun:
    """One session's work; not thread-safe (one stream, one handler thread)."""

    def __init__(
        self,
        kiosk: Kiosk,
        settings: StreamSettings,
        opening: Opening,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not SESSION_ID.fullmatch(opening.session_id or ""):
            raise InvalidInput(
                "INVALID_SESSION_ID",
                "session_id must be 1-64 characters of letters, digits and . _ : -",
            )
        self.kiosk = kiosk
        self.opening = opening
        self.clock = clock
        # A refused opening (unknown customer, a floor below the threshold) is audited as a
        # declined attempt of the device, like a refused single-shot call.
        with self._refusals_audited():
            if opening.identify:
                kiosk.check_search(opening.top_k, opening.min_score)
            else:  # enrolled, consent not expired
                kiosk.check_verifiable(opening.customer_id)
        policy = settings.liveness.with_passive(kiosk.decisions.policy.liveness_threshold)
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
        return self.kiosk.decisions.refuse(
            self.kind, opening.device_id, opening.customer_id, reason
        )

    def _refusals_audited(self) -> AbstractContextManager[None]:
        """Around a step whose refusal ends the session as an audited declined attempt."""
        opening = self.opening
        return self.kiosk.decisions.refusals_audited(
            self.kind, opening.device_id, opening.customer_id
        )

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
            return analyse_frame(self.kiosk.vision, self.session, frame.data, received_s, captured)

    def frame(self, frame: Frame, received_s: float) -> Prompt | None:
        """Take one frame that arrived at `received_s` (server clock); a prompt to send, if any.
        A frame that fails its vision worker, or shows another face (FACE_CHANGED), is
        audited, as single-shot calls audit their refusals."""
        with self._refusals_audited():
            return self.session.observe(self.observation(frame, received_s))

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
        with self._refusals_audited():
            analysis = self.session.best
            if analysis is None:
                raise Unprocessable("NO_FACE", "no face found in any frame of the session")
            quality_gate(analysis, "best frame")
        opening = self.opening
        if opening.identify:
            candidates, decision = self.kiosk.identify_face(
                analysis, opening.top_k, opening.min_score, opening.device_id, liveness=report
            )
            return Outcome(decision, candidates)
        decision = self.kiosk.verify_face(
            opening.customer_id, analysis, opening.device_id, liveness=report
        )
        return Outcome(decision, [])
