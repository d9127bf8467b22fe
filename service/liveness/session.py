"""The streamed session as a pure state machine over per-frame observations.

BASELINE (frames of a face at rest) -> CHALLENGE (prompt sent, response window open) ->
BASELINE again for the next challenge, `challenges_per_session` times -> DONE; a challenge that
fails ends the session. The first rest, facing the camera, is the session's neutral pose:
every challenge is judged against it, and after an answer the person is asked to look at the
camera again (a LOOK_AT_CAMERA prompt with its own deadline) before the next challenge, which
waits for a rest near the neutral pose, so an answer held too long is neither the next
baseline nor, on its way back, a move the wrong way. Without a challenge, BASELINE collects
`min_frames` face frames and is DONE. A prompt goes out only once the head has been at rest
for `baseline_frames` frames, so that the response is measured from a still pose and a
recording that keeps moving gets no prompt to answer by chance. Time comes in as arguments
(the server's monotonic clock for windows and limits, the capture clock for blink timing), so
the machine is driven the same way by the gRPC runner and by tests.

It follows one face: in each frame the face nearest the previous one, and the session ends
FACE_CHANGED when that face jumps between consecutive frames or stops being the same person.
The embedding is compared only where the pose is close to the reference's (a turned head's
embedding drifts far from its frontal one); in between, the face is followed frame to frame,
and a face that comes back after a gap answers nothing until it has matched again.
It keeps only what it needs: scores, landmark points and the best-quality face's analysis,
never the images. Embedding is the costly step of a frame, so the session asks for one only
where it needs it (`wish`): the first face, a face of better quality than the best
so far (the one matched at the end), and every `EMBED_EVERY`-th face frame to keep checking
that the face is still the same person; the face's position is checked on every frame.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

import numpy as np

from service.errors import Expired, TooLarge, Unprocessable
from service.liveness import verdicts
from service.liveness.challenge import Baseline, Response, judge, pick
from service.liveness.report import LivenessCheck, LivenessReport
from service.liveness.session_policy import (
    INSTRUCTIONS,
    LOOK_AT_CAMERA,
    Challenge,
    LivenessPolicy,
    SessionLimits,
)
from service.vision.liveness_cues import FrameCues
from service.vision.subject import FrameWish
from service.vision.types import Embedding, Face, FaceAnalysis

# Face frames between identity checks of the followed face (at 15 frames/s: three a second).
EMBED_EVERY = 5
# Consecutive frames further apart than this are not checked for a jump: the face may have
# left the picture and come back.
JUMP_GAP_S = 0.25


class Phase(StrEnum):
    BASELINE = "BASELINE"
    CHALLENGE = "CHALLENGE"
    DONE = "DONE"


@dataclass(frozen=True, eq=False)
class Observation:
    """One frame as the session sees it: when it came, and the analysis of the face it follows
    (None: no face). The analysis carries an embedding where the session asked for one
    (`Session.wish`), and the mesh cues where the mesh model is built."""

    received_s: float  # server clock
    captured_s: float  # capture clock (the kiosk's), for blink timing
    analysis: FaceAnalysis | None = None

    @classmethod
    def of(
        cls, received_s: float, captured_s: float, analysis: FaceAnalysis,
        cues: FrameCues | None = None,
    ) -> Observation:  # fmt: skip
        """An observation of an analysed face, with mesh cues measured apart from it."""
        return cls(
            received_s, captured_s, replace(analysis, cues=analysis.cues if cues is None else cues)
        )

    @property
    def face(self) -> Face | None:
        return self.analysis.face if self.analysis else None

    @property
    def cues(self) -> FrameCues | None:
        return self.analysis.cues if self.analysis else None


@dataclass(frozen=True)
class Prompt:
    """What the kiosk is to show: a challenge, or (challenge None) look at the camera."""

    challenge: Challenge | None
    deadline_s: float  # server clock
    window_s: float

    @property
    def code(self) -> str:
        return LOOK_AT_CAMERA if self.challenge is None else str(self.challenge)

    @property
    def text(self) -> str:
        return INSTRUCTIONS[self.challenge or LOOK_AT_CAMERA]


class Session:
    """One kiosk session: limits, face tracking, the challenge and the liveness report."""

    def __init__(
        self,
        limits: SessionLimits,
        policy: LivenessPolicy,
        started_s: float,
        ask_challenge: bool | None = None,
        choose: Callable[[Sequence[Challenge]], Challenge] = pick,
    ) -> None:
        self.limits = limits
        self.policy = policy
        self.started_s = started_s
        self.last_s = started_s
        self.face_s = started_s  # when a face was last seen (the start, before the first)
        self.ask_challenge = limits.require_challenge if ask_challenge is None else ask_challenge
        self._choose = choose
        self.phase = Phase.BASELINE
        self.frames = 0
        self.best: FaceAnalysis | None = None
        self.challenge: Challenge | None = None
        self.prompt: Prompt | None = None
        self.response: Response | None = None  # the last one
        self.asked: list[Challenge] = []
        self.responses: list[Response] = []
        self._reference: Embedding | None = None
        self._reference_pose: tuple[float, float] | None = None
        self.neutral: Baseline | None = None  # the first rest pose: challenges start from it
        # The face came back after a gap (no followed face for JUMP_GAP_S) and has not matched
        # the reference since: its frames answer nothing until it does.
        self._unconfirmed = False
        self._since_embedding = 0
        self._previous: tuple[float, Face] | None = None
        self._face_frames = 0
        self._phase_face_frames = 0
        self._passive: list[float] = []
        self._cues: list[tuple[float, FrameCues]] = []  # (captured_s, cues)
        self._baseline: deque[tuple[float, FrameCues]] = deque()  # (received_s, cues)
        self._window: list[tuple[float, FrameCues]] = []  # (seconds after prompt, cues)
        self._window_without_cues = 0

    @property
    def done(self) -> bool:
        return self.phase is Phase.DONE

    # ---- the face to follow ---------------------------------------------------------------

    def wish(self) -> FrameWish:
        """What the next frame should give: the face nearest the one followed so far, and its
        embedding only where needed (the first face, a better one than the best, or time to
        check the face is still the same person)."""
        last = self._previous[1] if self._previous is not None else None
        # A face to match again after a gap: an embedding is only of use where its pose can
        # be compared with the reference (else `_track` drops it), judged by the last cues.
        rematch = self._unconfirmed and self._comparable(self._cues[-1][1] if self._cues else None)
        needed = (
            self._reference is None
            or self.best is None
            or self._since_embedding + 1 >= EMBED_EVERY
            or rematch
        )
        return FrameWish(last, None if needed else self.best.quality.score)

    def _track(
        self, face: Face, embedding: Embedding | None, received_s: float,
        cues: FrameCues | None = None,
    ) -> None:  # fmt: skip
        if self._previous is not None and received_s - self._previous[0] <= JUMP_GAP_S:
            moved = np.linalg.norm(face.centre - self._previous[1].centre)
            if moved > self.policy.track_jump * max(self._previous[1].width, 1.0):
                raise Unprocessable(
                    "FACE_CHANGED", "the face jumped between frames: another face or a cut"
                )
        elif self._previous is not None:
            self._unconfirmed = True  # not followed across the gap: match it again
        self._previous = (received_s, face)
        if embedding is None:
            self._since_embedding += 1
            return
        self._since_embedding = 0
        if not self._comparable(cues):
            return  # too turned to compare: followed by position until it comes back
        if self._reference is None:
            self._reference = embedding
            self._reference_pose = (cues.yaw, cues.pitch) if cues is not None else None
        elif float(embedding.vector @ self._reference.vector) < self.policy.track_cosine:
            raise Unprocessable("FACE_CHANGED", "the face changed during the session")
        self._unconfirmed = False

    def _comparable(self, cues: FrameCues | None) -> bool:
        """Whether this frame's embedding may be compared with the reference: its pose is within
        `match_pose_degrees` of the reference frame's (any pose where either is unknown)."""
        if cues is None or self._reference_pose is None:
            return True
        limit = self.policy.match_pose_degrees
        yaw, pitch = self._reference_pose
        return abs(cues.yaw - yaw) <= limit and abs(cues.pitch - pitch) <= limit

    # ---- frames and time ------------------------------------------------------------------

    def _check_limits(self, now_s: float) -> None:
        if now_s - self.started_s > self.limits.max_duration_s:
            raise Expired(
                "SESSION_TOO_LONG", f"sessions last at most {self.limits.max_duration_s:g} s"
            )

    def _check_face_seen(self, now_s: float) -> None:
        """A stream of frames without a face makes no progress: it ends early instead of
        holding its thread until `max_duration_s`."""
        if now_s - self.face_s >= self.limits.no_face_timeout_s:
            raise Expired(
                "NO_FACE_TIMEOUT",
                f"no face for {self.limits.no_face_timeout_s:g} s: session ended",
            )

    def observe(self, obs: Observation) -> Prompt | None:
        """Take one frame; returns the prompt to send when this frame completes the baseline."""
        if self.done:
            return None
        self.frames += 1
        if self.frames > self.limits.max_frames:
            raise TooLarge(
                "TOO_MANY_FRAMES", f"a session takes at most {self.limits.max_frames} frames"
            )
        self._check_limits(obs.received_s)
        self.last_s = obs.received_s
        prompt = self.prompt
        if self.phase is Phase.CHALLENGE and prompt and obs.received_s > prompt.deadline_s:
            self._close_window()
            return None
        if prompt is not None and obs.received_s > prompt.deadline_s:  # LOOK_AT_CAMERA
            self._not_back(obs.received_s)
            return None
        found = obs.analysis
        if found is None:
            if self.phase is Phase.CHALLENGE:
                self._window_without_cues += 1
            self._check_face_seen(obs.received_s)
            return None
        self.face_s = obs.received_s
        self._track(found.face, found.embedding, obs.received_s, found.cues)
        self._face_frames += 1
        self._phase_face_frames += 1
        if found.embedding is not None and (
            self.best is None or found.quality.score > self.best.quality.score
        ):
            self.best = found
        if found.liveness is not None:
            self._passive.append(found.liveness.score)
        if found.cues is not None:
            self._cues.append((obs.captured_s, found.cues))
        if self.phase is Phase.BASELINE:
            return self._baseline_step(obs)
        return self._challenge_step(obs)

    def _baseline_step(self, obs: Observation) -> Prompt | None:
        if obs.cues is not None:
            self._baseline.append((obs.received_s, obs.cues))
            while (
                len(self._baseline) > 1
                and obs.received_s - self._baseline[1][0] >= self.limits.rest_s
            ):
                self._baseline.popleft()  # keep just the last rest_s seconds
        if not self.ask_challenge:
            if self._face_frames >= self.limits.min_frames:
                self.phase = Phase.DONE
            return None
        if self._phase_face_frames < self.limits.baseline_frames:
            return None
        if not self._baseline:
            self._finish(Response(False, "NONE", "no face landmarks to judge a response by"))
            return None
        if not self._at_rest(obs.received_s):
            return None
        if self.neutral is None:
            self.neutral = Baseline.of([c for _, c in self._baseline])
        remaining = [c for c in self.limits.challenges if c not in self.asked]
        self.challenge = self._choose(remaining or self.limits.challenges)
        self.asked.append(self.challenge)
        window = self.limits.response_window_s
        self.prompt = Prompt(self.challenge, obs.received_s + window, window)
        self.phase = Phase.CHALLENGE
        return self.prompt

    def _challenge_step(self, obs: Observation) -> Prompt | None:
        """A frame in the window; returns the LOOK_AT_CAMERA prompt after a passed answer."""
        assert self.prompt is not None and self.challenge is not None
        if obs.cues is None or self._unconfirmed:
            self._window_without_cues += 1
            return None
        self._window.append((obs.received_s - self._sent_s, obs.cues))
        response = self._judge(final=False)
        if response is None:
            return None
        return self._answered(response, obs.received_s)

    @property
    def _sent_s(self) -> float:
        assert self.prompt is not None
        return self.prompt.deadline_s - self.prompt.window_s

    def _at_rest(self, now_s: float) -> bool:
        """Landmarks for the last `rest_s` seconds (at least `baseline_frames` frames), with a
        head pose that varied by at most `rest_degrees` on each axis."""
        if len(self._baseline) < self.limits.baseline_frames:
            return False
        if now_s - self._baseline[0][0] < self.limits.rest_s:
            return False
        yaws = [c.yaw for _, c in self._baseline]
        pitches = [c.pitch for _, c in self._baseline]
        spread = max(max(yaws) - min(yaws), max(pitches) - min(pitches))
        if spread > self.policy.rest_degrees:
            return False
        return self._near_neutral(float(np.median(yaws)), float(np.median(pitches)))

    def _near_neutral(self, yaw: float, pitch: float) -> bool:
        """Facing the camera (first rest), or back within `neutral_degrees` of the neutral pose."""
        limit = self.policy.neutral_degrees
        if self.neutral is None:
            return abs(yaw) <= limit
        return abs(yaw - self.neutral.yaw) <= limit and abs(pitch - self.neutral.pitch) <= limit

    def _answered(self, response: Response, now_s: float) -> Prompt | None:
        """A challenge's verdict: after a pass, back to the camera for the next one (the
        LOOK_AT_CAMERA prompt, with a deadline); else, or after the last, the session ends."""
        if not response.passed or len(self.asked) >= self.limits.challenges_per_session:
            self._finish(response)
            return None
        self.responses.append(response)
        self.response = response
        self.phase = Phase.BASELINE
        window = self.limits.response_window_s
        self.prompt = Prompt(None, now_s + window, window)
        self._baseline.clear()
        self._window = []
        self._window_without_cues = 0
        self._phase_face_frames = 0
        return self.prompt

    def _judge(self, final: bool) -> Response | None:
        assert self.challenge is not None and self.neutral is not None
        sent = self._sent_s
        rest = [(t - sent, c) for t, c in self._baseline]
        return judge(
            self.challenge, self.neutral, rest[-1][1].points, self._window, self.policy, final,
            rest,
        )  # fmt: skip

    def _not_back(self, now_s: float) -> None:
        """The LOOK_AT_CAMERA deadline passed without a rest near the neutral pose."""
        assert self.prompt is not None
        waited = now_s - (self.prompt.deadline_s - self.prompt.window_s)
        self._finish(
            Response(False, LOOK_AT_CAMERA, f"not back at the camera after {waited:.1f} s")
        )

    def _close_window(self) -> None:
        response = self._judge(final=True)
        assert response is not None
        if self._window_without_cues:
            missing = self._window_without_cues
            detail = f"{response.detail}; {missing} frame(s) without face landmarks"
            response = Response(response.passed, response.seen, detail, response.at_s)
        self._finish(response)

    def _finish(self, response: Response | None) -> None:
        if response is not None:
            self.responses.append(response)
        self.response = response
        self.phase = Phase.DONE

    def next_timer_s(self) -> float:
        """The server time at which the session must act if no frame arrives before it."""
        limits = self.limits
        timers = [self.last_s + limits.idle_timeout_s, self.started_s + limits.max_duration_s]
        if self.frames:  # frames that came without a face; none at all is SESSION_IDLE
            timers.append(self.face_s + limits.no_face_timeout_s)
        if self.prompt is not None:
            timers.append(self.prompt.deadline_s)
        return min(timers)

    def expire(self, now_s: float) -> None:
        """No frame came by `next_timer_s`: close the window, or give up on an idle session."""
        if self.done:
            return
        if self.phase is Phase.CHALLENGE and self.prompt and now_s >= self.prompt.deadline_s:
            self._close_window()
            return
        if self.prompt is not None and now_s >= self.prompt.deadline_s:  # LOOK_AT_CAMERA
            self._not_back(now_s)
            return
        if now_s - self.last_s >= self.limits.idle_timeout_s:
            raise Expired(
                "SESSION_IDLE", f"no frame for {self.limits.idle_timeout_s:g} s: session dropped"
            )
        if self.frames:
            self._check_face_seen(now_s)
        self._check_limits(now_s)

    def close(self) -> None:
        """The kiosk stopped sending: decide on what was seen (an open challenge is unanswered)."""
        if self.done:
            return
        if self.phase is Phase.CHALLENGE:
            self._close_window()
        elif self.ask_challenge:
            self._finish(Response(False, "NONE", "the stream ended before a challenge"))
        else:
            self._finish(None)

    # ---- the result -----------------------------------------------------------------------

    def report(self) -> LivenessReport:
        """Every check's result and the combined score (call once the session is done)."""
        policy = self.policy
        found: list[LivenessCheck] = [
            verdicts.passive_check(self._passive, policy),
            verdicts.motion_check([c.points for _, c in self._cues], policy),
            verdicts.blink_check(
                [c.eye_openness for _, c in self._cues],
                [t for t, _ in self._cues],
                policy,
                [(c.yaw, c.pitch) for _, c in self._cues],
            ),
        ]
        if self.ask_challenge:
            responses = self.responses or [Response(False, "NONE", "no challenge was answered")]
            required = self.limits.challenges_per_session
            found.append(verdicts.challenge_check(self.asked, responses, required, policy))
            return verdicts.combine(found, policy, self.asked, responses)
        return verdicts.combine(found, policy)
