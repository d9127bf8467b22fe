"""The session's liveness checks, each kept with its result, and their one combined score.

Each check scores in [0, 1] (1 = live) or has no score when the session gave it nothing to
measure (no landmarks, no passive model); those drop out of the weighted mean instead of
counting as a pass or a fail. A required check (the challenge, when one was asked) must pass
whatever the combined score says: it is the one a recording cannot answer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.liveness.challenge import Response
from service.liveness.report import LivenessCheck, LivenessReport
from service.liveness.session_policy import Challenge, LivenessPolicy
from service.vision.liveness_cues import blink_count, planarity_residual


def passive_check(scores: Sequence[float], policy: LivenessPolicy) -> LivenessCheck:
    """The passive model's median per-frame score (the median ignores a few odd frames)."""
    weight = policy.weights["passive"]
    if policy.passive_threshold is None:
        raise ValueError("the passive threshold is unresolved (LivenessPolicy.with_passive)")
    if not scores:
        return LivenessCheck("passive", False, None, weight, "no passive model score")
    median = float(np.median(scores))
    return LivenessCheck(
        "passive", median >= policy.passive_threshold, median, weight,
        f"median of {len(scores)} frame(s), threshold {policy.passive_threshold}",
    )  # fmt: skip


def motion_check(tracks: Sequence[np.ndarray], policy: LivenessPolicy) -> LivenessCheck:
    """Non-planar landmark motion over the session: a head, not a picture.

    Scored so that the threshold maps to 0.5 and twice the threshold to 1.
    """
    weight = policy.weights["motion"]
    if len(tracks) < 2:
        return LivenessCheck("motion", False, None, weight, "fewer than 2 frames with landmarks")
    residual = planarity_residual(tracks)
    score = float(min(1.0, residual / (2.0 * policy.motion_residual)))
    return LivenessCheck(
        "motion", residual >= policy.motion_residual, score, weight,
        f"planarity residual {residual:.4f} over {len(tracks)} frames, "
        f"threshold {policy.motion_residual}",
    )  # fmt: skip


def blink_check(
    openness: Sequence[float], times: Sequence[float], policy: LivenessPolicy,
    poses: Sequence[tuple[float, float]] | None = None,
) -> LivenessCheck:  # fmt: skip
    """Spontaneous blinks over the session, each judged at its own pose (`poses`)."""
    weight = policy.weights["blink"]
    if len(openness) < 2:
        return LivenessCheck("blink", False, None, weight, "fewer than 2 frames with landmarks")
    blinks = blink_count(openness, times, poses)
    return LivenessCheck(
        "blink", blinks > 0, 1.0 if blinks else 0.0, weight,
        f"{blinks} blink(s) in {len(openness)} frames",
    )  # fmt: skip


def challenge_check(
    asked: Sequence[Challenge], responses: Sequence[Response], required: int,
    policy: LivenessPolicy,
) -> LivenessCheck:  # fmt: skip
    """Passes when all `required` challenges were asked and answered, in their windows."""

    def account(challenge: Challenge | None, response: Response) -> str:
        when = f" after {response.at_s:.2f} s" if response.at_s is not None else ""
        return f"{challenge or 'not asked'}: {response.detail}{when}"

    padded = [*asked, *[None] * (len(responses) - len(asked))]
    passed = len(responses) >= required and all(r.passed for r in responses)
    return LivenessCheck(
        "challenge", passed, 1.0 if passed else 0.0, policy.weights["challenge"],
        "; ".join(account(c, r) for c, r in zip(padded, responses, strict=True)),
    )  # fmt: skip


def combine(
    checks: Sequence[LivenessCheck],
    policy: LivenessPolicy,
    asked: Sequence[Challenge] = (),
    responses: Sequence[Response] = (),
) -> LivenessReport:
    """Weighted mean of the measured checks; passes at `pass_score` with the challenge passed."""
    measured = [c for c in checks if c.score is not None and c.weight > 0]
    total = sum(c.weight for c in measured)
    weighted = sum(c.weight * c.score for c in measured)  # type: ignore[operator]
    score = weighted / total if total else 0.0
    required = [c for c in checks if c.name == "challenge"]
    passed = bool(measured) and score >= policy.pass_score and all(c.passed for c in required)
    return LivenessReport(
        score=round(score, 4), passed=passed, checks=tuple(checks),
        challenge=",".join(asked), response=",".join(r.seen for r in responses),
    )  # fmt: skip
