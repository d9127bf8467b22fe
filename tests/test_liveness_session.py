"""The streamed session's decision logic on synthetic cue tracks (tests/liveness_tracks.py):
a head that follows the prompt passes, a tilted photo and a recording do not; windows, limits,
face tracking, the random pick and the score combination."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from service.errors import Expired, TooLarge, Unprocessable
from service.liveness import verdicts
from service.liveness.challenge import pick
from service.liveness.report import LivenessCheck
from service.liveness.session import EMBED_EVERY, Observation, Phase, Session
from service.liveness.session_policy import Challenge, LivenessPolicy, SessionLimits
from service.vision.types import FaceAnalysis, Quality
from tests.liveness_tracks import LiveHead, Recording, TiltedPhoto, analysis, unit

FPS = 15.0
POLICY = LivenessPolicy(passive_threshold=0.2)
LIMITS = SessionLimits(response_window_s=3.0, max_duration_s=10.0, max_frames=200)


def session(
    challenge: Challenge = Challenge.TURN_LEFT, limits: SessionLimits = LIMITS, **kwargs: object
) -> Session:
    """A session that asks `challenge` first, then the first of the others."""

    def choose(remaining):
        return challenge if challenge in remaining else remaining[0]

    return Session(limits, POLICY, 0.0, choose=choose, **kwargs)  # type: ignore[arg-type]


def drive(s: Session, subject, frames: int = 120, passive: float = 0.9) -> int:
    """Feed `subject`'s frames at 15 fps until the session is done; the subject hears the
    prompt. Returns the frames sent."""
    face = unit(1)
    for i in range(frames):
        now = (i + 1) / FPS
        if s.phase is Phase.CHALLENGE and s.prompt and now > s.prompt.deadline_s:
            s.expire(now)
        if s.done:
            return i
        seen = Observation.of(now, now, analysis(face, passive=passive), subject.next())
        prompt = s.observe(seen)
        if prompt is not None:
            subject.respond(prompt.code)
    return frames


def until_prompt(s: Session, head: LiveHead, face: np.ndarray) -> None:
    """Frames of a resting head until the session sends its prompt (after rest_s seconds)."""
    for i in range(100):
        if s.observe(Observation.of(i / FPS, i / FPS, analysis(face), head.next())):
            return
    raise AssertionError("no prompt")


def check(report, name: str) -> LivenessCheck:
    return next(c for c in report.checks if c.name == name)


@pytest.mark.parametrize("challenge", list(Challenge))
def test_a_head_that_follows_the_prompt_passes(challenge: Challenge) -> None:
    s = session(challenge)
    drive(s, LiveHead())
    report = s.report()
    assert s.done and s.response is not None and s.response.passed, s.response
    assert len(s.asked) == LIMITS.challenges_per_session == 2 and s.asked[0] == challenge
    assert len(set(s.asked)) == 2  # a second, different challenge after the first
    assert report.passed and report.challenge == report.response == ",".join(s.asked)
    assert check(report, "challenge").passed
    assert report.score >= POLICY.pass_score


def test_the_challenges_are_random_and_each_starts_from_rest() -> None:
    s = Session(LIMITS, POLICY, 0.0)  # the real, random pick
    head = LiveHead(seed=5)
    face, prompts = unit(1), []
    for i in range(150):
        now = (i + 1) / FPS
        if now >= s.next_timer_s():
            s.expire(now)
        if s.done:
            break
        cues = head.next()
        prompt = s.observe(Observation.of(now, now, analysis(face), cues))
        if prompt is not None:
            prompts.append((prompt, cues.yaw))
            head.respond(prompt.code)
    assert s.report().passed, s.report()
    first, back, second = (p for p, _ in prompts)
    assert first.challenge != second.challenge and second.challenge is not None
    # Between them the person was asked back to the camera, in words, with a deadline; the
    # second prompt waited until the head was back at rest, facing the camera.
    assert back.challenge is None and back.code == "LOOK_AT_CAMERA"
    assert back.text == "Look at the camera" and back.window_s == LIMITS.response_window_s
    assert abs(prompts[2][1]) < POLICY.neutral_degrees


def test_a_head_that_never_rests_gets_no_prompt() -> None:
    """A recording of someone talking and moving all the time is never prompted; the session
    runs out of time instead of offering it a challenge to answer by chance."""
    s = session()
    head, face = LiveHead(), unit(1)
    with pytest.raises(Expired) as error:
        for i in range(400):
            now = (i + 1) / FPS
            cues = head.next()
            moving = cues.__class__(
                yaw=12.0 * np.sin(float(i)), pitch=0.0, roll=0.0, eye_openness=0.3,
                points=cues.points, face_width=cues.face_width,
            )  # fmt: skip
            assert s.observe(Observation.of(now, now, analysis(face), moving)) is None
    assert error.value.reason == "SESSION_TOO_LONG" and s.prompt is None


@pytest.mark.parametrize("challenge", [Challenge.TURN_LEFT, Challenge.TURN_RIGHT])
def test_a_photo_tilted_to_imitate_a_turn_fails_as_planar(challenge: Challenge) -> None:
    s = session(challenge)
    drive(s, TiltedPhoto())
    report = s.report()
    assert not report.passed
    assert report.response == f"{challenge}_PLANAR"
    assert not check(report, "motion").passed
    assert not check(report, "blink").passed


@pytest.mark.parametrize("challenge", [Challenge.LOOK_UP, Challenge.BLINK])
def test_a_photo_cannot_look_up_or_blink(challenge: Challenge) -> None:
    s = session(challenge)
    sent = drive(s, TiltedPhoto())
    report = s.report()
    assert not report.passed and report.response == "NONE"
    # It ran until the window closed: 5 baseline frames + 3 s at 15 fps.
    assert sent >= LIMITS.baseline_frames + LIMITS.response_window_s * FPS


def test_a_recording_that_moves_the_wrong_way_first_fails() -> None:
    s = session(Challenge.TURN_LEFT)
    drive(s, Recording())
    report = s.report()
    assert not report.passed
    assert report.response == "TURN_RIGHT"
    assert "wrong way" in check(report, "challenge").detail


def test_a_recording_that_ignores_the_prompt_fails_at_the_deadline() -> None:
    s = session(Challenge.LOOK_UP)

    class Still(LiveHead):
        def respond(self, challenge: str) -> None:
            pass

    drive(s, Still())
    assert s.done and not s.report().passed and s.report().response == "NONE"


def test_a_turn_made_before_the_prompt_does_not_count() -> None:
    """A face already turned when the session starts is the baseline: it must turn further."""
    s = session(Challenge.TURN_LEFT)
    head = LiveHead()
    head.yaw, head.target = 30.0, (30.0, 0.0)
    head.respond = lambda challenge: None  # type: ignore[method-assign]
    drive(s, head)
    assert not s.report().passed and s.report().response == "NONE"


def test_a_response_after_the_deadline_is_too_late() -> None:
    s = session(Challenge.TURN_LEFT)
    head = LiveHead()
    face = unit(1)
    until_prompt(s, head, face)
    assert s.phase is Phase.CHALLENGE and s.prompt is not None
    assert s.prompt.deadline_s - s.prompt.window_s >= LIMITS.rest_s  # it waited for rest
    late = s.prompt.deadline_s + 0.1
    head.respond("TURN_LEFT")
    for _ in range(10):
        head.next()
    s.observe(Observation.of(late, late, analysis(face), head.next()))
    assert s.done and not s.response.passed  # type: ignore[union-attr]


def test_the_window_closes_without_frames() -> None:
    s = session(Challenge.TURN_LEFT)
    head, face = LiveHead(), unit(1)
    until_prompt(s, head, face)
    assert s.next_timer_s() == pytest.approx(s.prompt.deadline_s)  # type: ignore[union-attr]
    s.expire(s.next_timer_s())
    assert s.done and s.report().response == "NONE" and not s.report().passed


def test_idle_and_overlong_sessions_expire() -> None:
    s = session()
    s.observe(Observation(0.1, 0.1))
    with pytest.raises(Expired) as idle:
        s.expire(0.1 + LIMITS.idle_timeout_s)
    assert idle.value.reason == "SESSION_IDLE"
    s = session()
    with pytest.raises(Expired) as long:
        s.observe(Observation(LIMITS.max_duration_s + 0.1, 0.0))
    assert long.value.reason == "SESSION_TOO_LONG"


def test_the_frame_cap_holds() -> None:
    s = session(limits=SessionLimits(max_frames=3))
    for i in range(3):
        s.observe(Observation(i / FPS, i / FPS))  # no face: the session waits
    with pytest.raises(TooLarge) as error:
        s.observe(Observation(0.3, 0.3))
    assert error.value.reason == "TOO_MANY_FRAMES"


def test_another_face_mid_session_is_face_changed() -> None:
    s = session()
    head = LiveHead()
    assert float(unit(1) @ unit(2)) < POLICY.track_cosine
    s.observe(Observation.of(0.0, 0.0, analysis(unit(1)), head.next()))
    with pytest.raises(Unprocessable) as error:
        s.observe(Observation.of(0.07, 0.07, analysis(unit(2)), head.next()))
    assert error.value.reason == "FACE_CHANGED"


def test_a_face_that_jumps_between_frames_is_face_changed() -> None:
    s = session()
    head, face = LiveHead(), unit(1)
    s.observe(Observation.of(0.0, 0.0, analysis(face), head.next()))
    with pytest.raises(Unprocessable) as error:
        s.observe(Observation.of(0.07, 0.07, analysis(face, dx=150.0), head.next()))
    assert error.value.reason == "FACE_CHANGED"
    # After a gap (the face left the picture), a new position is not a jump.
    s = session()
    s.observe(Observation.of(0.0, 0.0, analysis(face), head.next()))
    s.observe(Observation.of(1.0, 1.0, analysis(face, dx=150.0), head.next()))


def test_the_best_quality_face_is_kept_for_matching() -> None:
    s = session()
    head, face = LiveHead(), unit(1)
    qualities = [60.0, 85.0, 70.0]
    for i, q in enumerate(qualities):
        s.observe(Observation.of(i / FPS, i / FPS, analysis(face, quality=q), head.next()))
    assert s.best is not None and s.best.quality.score == 85.0


def test_embeddings_are_asked_for_only_where_needed() -> None:
    s = session()
    head, face = LiveHead(), unit(1)
    assert s.wish().wants_embedding(Quality(80.0, ()))  # the first face: the identity to follow
    s.observe(Observation.of(0.0, 0.0, analysis(face, quality=80.0), head.next()))
    assert not s.wish().wants_embedding(Quality(70.0, ()))
    assert s.wish().wants_embedding(Quality(90.0, ()))  # better than the best: the match?
    plain = analysis(face, quality=70.0)
    for i in range(1, EMBED_EVERY):
        unembedded = FaceAnalysis(plain.face, plain.quality, None, cues=head.next())
        s.observe(Observation(i / FPS, i / FPS, unembedded))
    assert s.wish().wants_embedding(Quality(70.0, ()))  # time to check it is still the same
    # The identity check on that frame catches a change made in between.
    with pytest.raises(Unprocessable):
        s.observe(Observation.of(0.4, 0.4, analysis(unit(2), quality=70.0), head.next()))
    assert s.best is not None and s.best.quality.score == 80.0


def test_without_landmarks_a_challenge_cannot_pass() -> None:
    s = session()
    face = unit(1)
    for i in range(LIMITS.baseline_frames):
        s.observe(Observation.of(i / FPS, i / FPS, analysis(face)))
    report = s.report()
    assert s.done and not report.passed and report.challenge == ""
    assert check(report, "motion").score is None  # unmeasured, not failed by a number


def test_without_a_challenge_the_session_decides_on_passive_motion_and_blink() -> None:
    limits = SessionLimits(require_challenge=False, min_frames=20)
    s = session(limits=limits)
    head = LiveHead()
    head.target = (25.0, 0.0)  # moves on its own
    head.blink_at = 8
    sent = drive(s, head)
    report = s.report()
    assert sent == 20 and s.done and s.prompt is None
    assert [c.name for c in report.checks] == ["passive", "motion", "blink"]
    assert report.passed
    # The same without motion or blink does not reach the pass score on passive alone.
    s = session(limits=limits)
    drive(s, TiltedPhoto())
    assert not s.report().passed


def test_a_stream_that_ends_during_the_window_is_unanswered() -> None:
    s = session()
    head, face = LiveHead(), unit(1)
    until_prompt(s, head, face)
    s.close()
    assert s.done and s.report().response == "NONE" and not s.report().passed


def test_the_pick_is_random_over_the_configured_set() -> None:
    allowed = (Challenge.TURN_LEFT, Challenge.BLINK)
    counts = Counter(pick(allowed) for _ in range(400))
    assert set(counts) == set(allowed)  # both drawn; nothing else (P(miss) ~ 2^-400)
    with pytest.raises(ValueError):
        pick(())


def test_combine_weights_the_measured_checks_and_requires_the_challenge() -> None:
    policy = POLICY
    passive = LivenessCheck("passive", True, 0.8, 0.15)
    motion = LivenessCheck("motion", False, None, 0.25)  # unmeasured: drops out
    blink = LivenessCheck("blink", True, 1.0, 0.1)
    challenge = LivenessCheck("challenge", False, 0.0, 0.5)
    report = verdicts.combine([passive, motion, blink], policy)
    assert report.score == pytest.approx((0.15 * 0.8 + 0.1) / 0.25, abs=1e-4)
    assert report.passed
    assert not verdicts.combine([passive, motion, blink, challenge], policy).passed
    assert not verdicts.combine([motion], policy).passed  # nothing measured: not live


def test_weights_must_name_every_check() -> None:
    with pytest.raises(ValueError):
        LivenessPolicy(weights={"passive": 1.0})
    assert np.isclose(sum(LivenessPolicy().weights.values()), 1.0)
