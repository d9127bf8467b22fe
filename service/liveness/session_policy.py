"""What a streamed session allows and what it counts as live: limits, thresholds, weights.

The numbers and where they come from (`faceguard eval liveness --stream` prints the
measurements behind them on attacks, `--responders` on real people answering challenges):

- `turn_degrees` / `look_up_degrees`: the pose change from the session's neutral pose (its
  first rest, facing the camera) that answers a head challenge. Measured on the live video
  (real2.webm, face mesh pose): a head that moves on purpose spans yaw -26 to +41 and pitch
  -26 to +16 degrees, while a still head jitters by 1-2 degrees, so 15 (turn) and 10 (look
  up, the smaller movement) are deliberate moves, not noise. On the responders' clips real
  answers reach 40-60 degrees of yaw and 39-45 of pitch.
- `motion_residual`: part A's planarity residual (RMS of the best homography fit, as a
  fraction of face width) above which the landmark motion is that of a 3D head, not a flat
  picture moved or tilted. Measured per session: generated printed photos 0.0105 (median),
  screen replays 0.006, the live video 0.056; a synthetic head turned 15-20 degrees gives
  0.018-0.023. 0.02 lies between the pictures and a turned head.
- `track_cosine`: embedding cosine to the session's first face below which the face is
  someone else (FACE_CHANGED). The live video's frames stay at or above 0.50 to its first frame
  through +-40 degrees of yaw (0.57 for the replay video); 0.3 leaves room for that, and the
  match itself uses the operating threshold.
- `match_pose_degrees`: the embedding is not pose-invariant: on the responders' clips the
  similarity to the session's first, frontal face fell to 0.32 at 45 degrees of pitch and 0.39
  at 54 degrees of yaw (issue 17 measured 0.17-0.23 at about 52 degrees of yaw), against
  `track_cosine` 0.3. Frames posed more than 25 degrees from the reference's pose are followed
  by position only (`track_jump`), and the identity is checked again when the face comes back
  (the LOOK_AT_CAMERA step between challenges brings it back); a face that comes back after a
  gap answers nothing until it has matched again.
- `neutral_degrees`: a person told to look at the camera rests within a few degrees of where
  they started; 10 is less than the smallest answer (10 up, 15 sideways), so a person still
  turned from the last answer is not prompted (failure mode: a held answer became the next
  baseline and the return to the camera read as a move the wrong way).
- `track_jump`: the face centre moving more than this many face widths between consecutive
  frames is a cut, not a movement (the videos' largest step is 0.10 face widths).
- `passive_threshold`: the passive model's operating threshold from the manifest; its weight
  is low because its measured APCER on the replay video is 27.5% (manifest `[liveness]`).
- Rest before each prompt (`rest_s`, `rest_degrees`) and two challenges in a row: a
  recording cannot hear the prompt but it can move the asked way by chance. The live video is
  a person swinging the head left and right: with one challenge and no rest rule a replay of
  it passed 50% of sessions; prompting only after 0.6 s of pose steady within 4 degrees (the
  mesh's jitter on a still head is 1-2 degrees) and asking two different challenges took the
  generated and the recorded replays to 0 of their sessions (`faceguard eval liveness
  --stream`); at 5 degrees the recorded replay passed 6-8%. These values were chosen on the
  same two videos they are measured on (there is no held-out recording), and a calmer
  recording, still between moves, answers each challenge by chance with roughly 1/3
  probability, so two in a row leave ~1/9 (BLINK is weaker: people blink every few seconds).
  The figures cannot show more.
- Weights: the challenge is the only check a replayed recording passes only by chance, so it
  carries the most; motion separates flat pictures from heads; blink is weak evidence (a
  replayed video blinks too) and passive is weak by measurement.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum


class Challenge(StrEnum):
    """What the kiosk asks the person to do; directions are the person's own."""

    TURN_LEFT = "TURN_LEFT"
    TURN_RIGHT = "TURN_RIGHT"
    LOOK_UP = "LOOK_UP"
    BLINK = "BLINK"


CHECKS = ("passive", "motion", "blink", "challenge")

# What the kiosk shows, in words a person takes in at a glance. Between two challenges the
# person is asked back to the camera (LOOK_AT_CAMERA): each challenge starts from, and is judged
# against, the same neutral pose.
LOOK_AT_CAMERA = "LOOK_AT_CAMERA"
INSTRUCTIONS = {
    Challenge.TURN_LEFT: "Turn your head a little to the left",
    Challenge.TURN_RIGHT: "Turn your head a little to the right",
    Challenge.LOOK_UP: "Look up a little",
    Challenge.BLINK: "Blink your eyes",
    LOOK_AT_CAMERA: "Look at the camera",
}


@dataclass(frozen=True)
class SessionLimits:
    """How long and how much one streamed session may take."""

    max_duration_s: float = 20.0
    max_frames: int = 300
    idle_timeout_s: float = 5.0
    # A session that has seen no face this long (since its start or the last face) ends.
    no_face_timeout_s: float = 4.0
    response_window_s: float = 4.0
    # Before each prompt the head rests: landmarks for rest_s seconds, at least
    # baseline_frames frames, pose steady within LivenessPolicy.rest_degrees.
    baseline_frames: int = 5
    rest_s: float = 0.6
    # Frames with a face observed before deciding when no challenge is asked.
    min_frames: int = 15
    require_challenge: bool = True
    # Challenges asked one after the other; a recording answers each by chance at best.
    challenges_per_session: int = 2
    challenges: tuple[Challenge, ...] = tuple(Challenge)


@dataclass(frozen=True)
class LivenessPolicy:
    """Thresholds of the checks and how they combine into one score."""

    turn_degrees: float = 15.0
    look_up_degrees: float = 10.0
    rest_degrees: float = 4.0
    # The neutral pose: a first rest within this many degrees of yaw of facing the camera;
    # later prompts wait for a rest within this many degrees of it on each axis.
    neutral_degrees: float = 10.0
    # The identity check compares embeddings only on frames within this many degrees of the
    # reference frame's pose; between them the face is followed frame to frame.
    match_pose_degrees: float = 25.0
    # The longest eye closure that answers a BLINK challenge: a slow, deliberate blink of up
    # to a second and a half does (spontaneous blinks count up to BLINK_MAX_S, 0.7 s); eyes
    # held shut longer do not.
    blink_max_s: float = 1.5
    motion_residual: float = 0.02
    track_cosine: float = 0.3
    track_jump: float = 0.5
    # None: the passive model's operating threshold from the manifest (`with_passive`).
    passive_threshold: float | None = None
    weights: dict[str, float] = field(
        default_factory=lambda: {"passive": 0.15, "motion": 0.25, "blink": 0.1, "challenge": 0.5}
    )
    pass_score: float = 0.6

    def __post_init__(self) -> None:
        if set(self.weights) != set(CHECKS):
            raise ValueError(f"liveness weights must name exactly {', '.join(CHECKS)}")

    def with_passive(self, threshold: float) -> LivenessPolicy:
        """This policy with the manifest's passive threshold where none is configured."""
        if self.passive_threshold is not None:
            return self
        return replace(self, passive_threshold=threshold)
