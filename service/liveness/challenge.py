"""Challenges: a cryptographically random pick, and whether the pose or eyes answered it.

The pick uses `secrets` so an attacker who has seen earlier sessions cannot predict the next
prompt and prepare a recording that answers it. The judgement reads only frames that arrived
after the prompt was sent and before its deadline (server clock), relative to the session's
neutral pose (its first rest, facing the camera, where every prompt is sent from), so a face
that was already turned does not count and a return from the last answer is not a move.
A head that first moves in another challenge's direction fails: a recording that moves about
until it happens to go the right way does not get to try every direction.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.liveness.session_policy import Challenge, LivenessPolicy
from service.vision.liveness_cues import FrameCues, blinks, planarity_residual


def pick(choices: Sequence[Challenge]) -> Challenge:
    """One challenge from the configured set, unpredictably."""
    if not choices:
        raise ValueError("no challenge to pick from")
    return secrets.choice(list(choices))


@dataclass(frozen=True)
class Baseline:
    """The session's resting head pose before the prompt (medians, robust to a glance)."""

    yaw: float
    pitch: float

    @classmethod
    def of(cls, cues: Sequence[FrameCues]) -> Baseline:
        return cls(
            yaw=float(np.median([c.yaw for c in cues])),
            pitch=float(np.median([c.pitch for c in cues])),
        )


@dataclass(frozen=True)
class Response:
    """What the person did in the window: the verdict, a short account, and when."""

    passed: bool
    seen: str
    detail: str
    at_s: float | None = None  # seconds after the prompt


def _pose_move(cues: FrameCues, base: Baseline, policy: LivenessPolicy) -> Challenge | None:
    """The head challenge this pose answers, if any (the larger normalised move wins)."""
    dyaw, dpitch = cues.yaw - base.yaw, cues.pitch - base.pitch
    moves = {
        Challenge.TURN_LEFT: dyaw / policy.turn_degrees,
        Challenge.TURN_RIGHT: -dyaw / policy.turn_degrees,
        Challenge.LOOK_UP: dpitch / policy.look_up_degrees,
    }
    best = max(moves, key=moves.__getitem__)
    return best if moves[best] >= 1.0 else None


def judge(
    challenge: Challenge,
    base: Baseline,
    reference: np.ndarray,
    window: Sequence[tuple[float, FrameCues]],
    policy: LivenessPolicy,
    final: bool = False,
    before: Sequence[tuple[float, FrameCues]] = (),
) -> Response | None:
    """The response to `challenge` in the frames so far; None while undecided (`final`: the
    window has closed, so undecided is a failure).

    `window` holds (seconds after the prompt, cues) of the frames received in the window;
    `base` is the session's neutral pose, so every challenge is judged from the same pose.
    A blink is judged against the person's own open-eye level at the same pose (`blinks`),
    which the rest frames `before` the prompt (same clock, negative times) help establish; its
    closure must come after the prompt and may last up to `policy.blink_max_s`.
    A head challenge passes on a frame that has the asked pose and whose landmarks are not a
    planar transform of the resting ones (`reference`, the last baseline frame's points):
    tilting a photo changes the estimated pose too, but a homography explains its landmarks.
    """
    if challenge is Challenge.BLINK:
        frames = [*before, *window]
        if len(window) >= 2:
            found = [
                (closed, opened) for closed, opened in blinks(
                    [c.eye_openness for _, c in frames], [t for t, _ in frames],
                    [(c.yaw, c.pitch) for _, c in frames], policy.blink_max_s,
                ) if closed >= 0.0
            ]  # fmt: skip
            if found:
                closed, opened = found[0]
                detail = f"eyes closed at {closed:.2f} s, open again at {opened:.2f} s"
                return Response(True, "BLINK", detail, opened)
        return _unanswered(window) if final else None
    planar: tuple[float, str, float] | None = None  # the flattest answering frame seen
    for t, cues in window:
        move = _pose_move(cues, base, policy)
        if move is None:
            continue
        pose = f"yaw {cues.yaw - base.yaw:+.1f}, pitch {cues.pitch - base.pitch:+.1f} deg"
        if move is not challenge:
            if planar is None:
                return Response(False, str(move), f"moved the wrong way first ({pose})", t)
            continue
        residual = planarity_residual([reference, cues.points])
        if residual >= policy.motion_residual:
            return Response(True, str(move), f"{pose}, residual {residual:.4f}", t)
        if planar is None or residual > planar[0]:
            planar = (residual, pose, t)
    if not final:
        return None
    if planar is not None:
        residual, pose, t = planar
        return Response(
            False, f"{challenge}_PLANAR",
            f"{pose} but planar motion (residual at most {residual:.4f}): a flat picture", t,
        )  # fmt: skip
    return _unanswered(window)


def _unanswered(window: Sequence[tuple[float, FrameCues]]) -> Response:
    return Response(False, "NONE", f"no response in {len(window)} frame(s) with landmarks")
