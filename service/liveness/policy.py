"""What a streamed session allows and what it counts as live: limits, thresholds, weights.

The numbers and where they come from (`faceguard eval liveness --stream` prints the
measurements behind them):

- `turn_degrees` / `look_up_degrees`: the pose change from the session's baseline that
  answers a head challenge. A person asked to turn turns 25-45 degrees; standing still at a
  kiosk, their head wanders a few degrees (the live video, real2.webm, talks and moves
  naturally, and its yaw spread around its median stays under this). Looking up is a smaller
  movement than turning, hence the lower bar.
- `motion_residual`: part A's planarity residual (RMS of the best homography fit, as a
  fraction of face width) above which the landmark motion is that of a 3D head, not a flat
  picture moved or tilted. Set between the generated printed/screen attacks (a homography
  explains them) and a turning live head.
- `track_cosine`: embedding cosine to the session's first face below which the face is
  someone else (FACE_CHANGED). Far below the operating threshold on purpose: a head turned
  30 degrees is still the same person, and the match itself uses the operating threshold.
- `track_jump`: the face centre moving more than this many face widths between consecutive
  frames is a cut, not a movement (at 15 frames/s a head does not travel half its width).
- `passive_threshold`: the passive model's operating threshold from the manifest; its weight
  is low because its measured APCER on the replay video is 27.5% (manifest `[liveness]`).
- Weights: the challenge is the only check a replayed recording cannot pass by chance, so it
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

INSTRUCTIONS = {
    Challenge.TURN_LEFT: "Turn your head to your left",
    Challenge.TURN_RIGHT: "Turn your head to your right",
    Challenge.LOOK_UP: "Look up",
    Challenge.BLINK: "Blink",
}


@dataclass(frozen=True)
class SessionLimits:
    """How long and how much one streamed session may take."""

    max_duration_s: float = 20.0
    max_frames: int = 300
    idle_timeout_s: float = 5.0
    response_window_s: float = 5.0
    baseline_frames: int = 5
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
    rest_degrees: float = 6.0
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
