"""Score how usable one detected face is for recognition, and say why when it is not.

Four checks, each measured cheaply on a small crop or from the five landmarks:

- size: the face box's shorter side and the inter-eye distance, in pixels;
- sharpness: variance of the Laplacian of the inner face, resized to a fixed 64x64 grid so that
  it does not depend on the capture resolution, and scaled by (128 / mean brightness)^2 so that a
  dark but sharp face is not called blurred (exposure is judged on its own). A 0.7 px Gaussian
  before the Laplacian makes it measure detail just below the grid's finest scale, where the
  resampling from different capture sizes differs most: a face half as large then reads about
  0.8 of the value, against 0.6 without it, while blur is told apart as well as before;
- exposure: mean brightness (BT.601 luma, 0..255) and the fraction of clipped pixels (<= 5 or
  >= 250) on the same crop;
- pose: yaw, pitch and roll estimated from the landmarks (see `estimate_pose`).

Scoring: each check maps its measurement to 0..1 with a piecewise-linear ramp that is exactly
0.5 at the policy threshold, 1 at a comfortably good value and 0 at the worst possible value;
a check with several measurements takes their minimum. A check fails when its score is below
0.5, i.e. when a measurement is beyond its threshold, and the overall score is 100 times the
weakest check. So a score of at least 50 means that every check passed, and `reasons` lists
every check that failed. The components dict holds each measurement and each check's score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import cv2
import numpy as np

from service.vision.types import Face, Image, Pose, Quality, Shortfall


class QualityReason(StrEnum):
    """Why a face fell short; a `str`, so it compares equal to the bare code."""

    SIZE = "LOW_QUALITY_SIZE"
    BLUR = "LOW_QUALITY_BLUR"
    EXPOSURE = "LOW_QUALITY_EXPOSURE"
    POSE = "LOW_QUALITY_POSE"


# Named starting points for the size limits, by where the photos come from; any limit set
# explicitly (quality.min_face_px, quality.min_inter_eye_px) overrides its profile's value.
PROFILES: dict[str, dict[str, float]] = {
    # A kiosk camera at arm's length: 80-150 px faces, never upsampled for the recogniser.
    "kiosk": {"min_face_px": 80.0, "min_inter_eye_px": 40.0},
    # Enrolment from an ID document scan or a web photo: small faces are all there is (the
    # 150x150 LFW photos have ~60 px faces, 25-35 px between the eyes; View 1 accuracy at that
    # size is 99.5%). Below 45 px (20 px between the eyes) the detector itself falters.
    "id_photo": {"min_face_px": 45.0, "min_inter_eye_px": 20.0},
}


@dataclass(frozen=True)
class QualityPolicy:
    """Thresholds for a bank kiosk or enrolment capture.

    Sizes come from `profile` unless given: the recogniser sees a 112x112 crop whose eyes are
    about 35 px apart, so for the kiosk 40 px between the eyes (and a box of about twice that)
    is the least that is not upsampled; a kiosk camera at arm's length gives 80-150 px. The
    `id_photo` profile accepts the small faces of ID scans and web photos (see `PROFILES`).

    Sharpness and exposure were calibrated on 1,500 LFW faces (the 150x150 copies). Sharpness
    15: 99.9% pass, while 94% fail once blurred by a Gaussian of 3% of the face width, and 99.9%
    at 5%. Brightness 40..215 and at most 25% clipped pixels: all pass (darkest 45, most clipped
    20%), while 91% fail at a quarter of their exposure and 97% at three times it.

    Pose: recognition accuracy falls off beyond about 30 degrees of yaw; pitch and roll
    estimates are noisier, and roll is undone by alignment, hence 25.
    """

    profile: str = "kiosk"
    min_face_px: float | None = None  # None: the profile's
    min_inter_eye_px: float | None = None  # None: the profile's
    min_sharpness: float = 15.0
    min_brightness: float = 40.0
    max_brightness: float = 215.0
    max_clipped_fraction: float = 0.25
    max_yaw_deg: float = 30.0
    max_pitch_deg: float = 25.0
    max_roll_deg: float = 25.0

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"quality profile is one of {', '.join(PROFILES)}")
        for name, value in PROFILES[self.profile].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if not 0.0 < self.min_brightness < self.max_brightness < 255.0:
            raise ValueError("need 0 < min_brightness < max_brightness < 255")
        if not 0.0 < self.max_clipped_fraction < 1.0:
            raise ValueError("need 0 < max_clipped_fraction < 1")
        if min(self.face_px, self.inter_eye_px, self.min_sharpness) <= 0.0:
            raise ValueError("size and sharpness thresholds must be positive")
        if not all(
            0.0 < a < 90.0 for a in (self.max_yaw_deg, self.max_pitch_deg, self.max_roll_deg)
        ):
            raise ValueError("pose limits must lie in (0, 90) degrees")

    @property
    def face_px(self) -> float:
        """The resolved minimum face size (the profile's unless set)."""
        value = self.min_face_px
        return float(PROFILES[self.profile]["min_face_px"] if value is None else value)

    @property
    def inter_eye_px(self) -> float:
        """The resolved minimum inter-eye distance (the profile's unless set)."""
        value = self.min_inter_eye_px
        return float(PROFILES[self.profile]["min_inter_eye_px"] if value is None else value)


# Geometry of a frontal face in units of the inter-eye distance, from the 5-point reference
# template that ArcFace-style recognisers align to (eyes y=51.6, nose y=71.7, mouth y=92.3,
# eyes 35.2 apart in a 112x112 crop), plus the nose tip's depth in front of the eyes, about
# 0.45 inter-eye distances for an adult face.
FRONTAL_NOSE_RATIO = 0.495  # (nose - eye line) / (mouth line - eye line), frontal
EYE_TO_MOUTH_PER_IED = 1.155
NOSE_DEPTH_PER_IED = 0.45

_CROP_SIDE = 64  # sharpness/exposure grid: the scale at which the recogniser sees the inner face
_CROP_INSET = 0.15  # drop 15% of the box on each side: keeps skin, leaves out background and hair
_DETAIL_SIGMA = 0.7  # Gaussian before the Laplacian, in grid pixels (see the module docstring)
# Brightness compensation stops at a mean of 32 (x4 gain): beyond it, it would mostly amplify
# quantisation and sensor noise, and such a face fails EXPOSURE anyway.
_MIN_MEAN_FOR_GAIN = 32.0
_CLIP_LOW, _CLIP_HIGH = 5, 250


def assess_quality(image: Image, face: Face, policy: QualityPolicy = QualityPolicy()) -> Quality:
    """Measure one face in its decoded image and score it against `policy`."""
    landmarks = np.asarray(face.landmarks, dtype=np.float64).reshape(5, 2)
    face_px = min(face.width, face.height)
    inter_eye_px = float(np.linalg.norm(landmarks[1] - landmarks[0]))
    grey = _inner_face_grey(image.rgb, face.box)
    sharpness, brightness, clipped = _texture_and_exposure(grey)
    pose = estimate_pose(landmarks)

    scores = {
        QualityReason.SIZE: min(
            _rising(face_px, policy.face_px), _rising(inter_eye_px, policy.inter_eye_px)
        ),
        QualityReason.BLUR: _rising(sharpness, policy.min_sharpness, good_factor=4.0),
        QualityReason.EXPOSURE: min(
            _centred(brightness, policy.min_brightness, policy.max_brightness),
            _falling(clipped, policy.max_clipped_fraction, worst=1.0),
        ),
        QualityReason.POSE: min(
            _falling(abs(pose.yaw), policy.max_yaw_deg, worst=90.0),
            _falling(abs(pose.pitch), policy.max_pitch_deg, worst=90.0),
            _falling(abs(pose.roll), policy.max_roll_deg, worst=90.0),
        ),
    }
    components = {
        "face_px": face_px,
        "inter_eye_px": inter_eye_px,
        "sharpness": sharpness,
        "brightness": brightness,
        "clipped_fraction": clipped,
        "size_score": scores[QualityReason.SIZE],
        "sharpness_score": scores[QualityReason.BLUR],
        "exposure_score": scores[QualityReason.EXPOSURE],
        "pose_score": scores[QualityReason.POSE],
    }
    reasons = tuple(reason for reason, score in scores.items() if score < 0.5)
    return Quality(
        score=100.0 * min(scores.values()),
        reasons=reasons,
        components=components,
        pose=pose,
        shortfalls=shortfalls(components, pose, policy, reasons),
    )


def shortfalls(
    components: dict[str, float], pose: Pose, policy: QualityPolicy, reasons: tuple[str, ...]
) -> tuple[Shortfall, ...]:
    """Each measurement beyond its limit, for the failed checks in `reasons`, in words."""
    found: list[Shortfall] = []

    def check(reason: str, measure: str, value: float, setting: str, text: str) -> None:
        limit = float(getattr(policy, setting))
        beyond = value > limit if setting.startswith("max_") else value < limit
        if reason in reasons and beyond:
            sentence = text.format(value=value, limit=limit) + f" (quality.{setting})"
            found.append(Shortfall(reason, measure, value, limit, setting, sentence))

    size, exposure = QualityReason.SIZE, QualityReason.EXPOSURE
    check(size, "face_px", components["face_px"], "min_face_px",
          "face {value:.0f} px, needs {limit:.0f}")  # fmt: skip
    check(size, "inter_eye_px", components["inter_eye_px"], "min_inter_eye_px",
          "eyes {value:.0f} px apart, needs {limit:.0f}")  # fmt: skip
    check(QualityReason.BLUR, "sharpness", components["sharpness"], "min_sharpness",
          "sharpness {value:.1f}, needs {limit:.0f}")  # fmt: skip
    check(exposure, "brightness", components["brightness"], "min_brightness",
          "brightness {value:.0f}, needs {limit:.0f}")  # fmt: skip
    check(exposure, "brightness", components["brightness"], "max_brightness",
          "brightness {value:.0f}, at most {limit:.0f}")  # fmt: skip
    check(exposure, "clipped_fraction", components["clipped_fraction"], "max_clipped_fraction",
          "clipped pixels {value:.0%}, at most {limit:.0%}")  # fmt: skip
    for axis in ("yaw", "pitch", "roll"):
        check(QualityReason.POSE, axis, abs(getattr(pose, axis)), f"max_{axis}_deg",
              axis + " {value:.2f} degrees, at most {limit:.0f}")  # fmt: skip
    return tuple(found)


def estimate_pose(landmarks: np.ndarray) -> Pose:
    """Estimate head pose in degrees from 5 landmarks (eyes, nose tip, mouth corners).

    An estimate under a weak-perspective model of a generic face, good to several degrees near
    frontal and saturating towards +-90; it cannot tell a turned head from an unusual face.

    - roll: angle of the line from the left to the right eye; positive when the right eye is
      lower, i.e. the face is turned clockwise on screen (image y points down).
    - The landmarks are then rotated by -roll about the eye midpoint, so the eyes are level.
    - yaw: the nose tip, `d = NOSE_DEPTH_PER_IED` inter-eye distances in front of the eyes and
      mouth, shifts sideways by d*sin(yaw) while the eyes close up to cos(yaw); so
      offset / inter-eye distance = d*tan(yaw), the offset being taken from the face's midline
      (halfway between the eye and mouth midpoints). Positive: nose towards the image's right.
    - pitch: the nose's height between eye line and mouth line, r, moves from its frontal value
      r0 = FRONTAL_NOSE_RATIO by -(d / EYE_TO_MOUTH_PER_IED)*tan(pitch). Positive: nose towards
      the eyes, the head tilted back (chin up).
    """
    points = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    eye_vector = points[1] - points[0]
    roll = math.atan2(eye_vector[1], eye_vector[0])
    cos_r, sin_r = math.cos(roll), math.sin(roll)
    derotate = np.array([[cos_r, sin_r], [-sin_r, cos_r]])  # rotation by -roll
    level = (points - (points[0] + points[1]) / 2.0) @ derotate.T  # eye midpoint at origin

    inter_eye = float(np.hypot(*eye_vector))
    nose_x, nose_y = level[2]
    mouth_x, mouth_y = (level[3] + level[4]) / 2.0
    nose_offset = nose_x - mouth_x / 2.0  # midline x is the mean of eye (0) and mouth midpoints
    yaw = math.atan2(nose_offset, NOSE_DEPTH_PER_IED * inter_eye)
    tilt_ratio = EYE_TO_MOUTH_PER_IED / NOSE_DEPTH_PER_IED
    pitch = math.atan2((FRONTAL_NOSE_RATIO * mouth_y - nose_y) * tilt_ratio, mouth_y)
    return Pose(
        yaw=math.degrees(yaw),
        pitch=float(np.clip(math.degrees(pitch), -90.0, 90.0)),
        roll=math.degrees(roll),
    )


def _inner_face_grey(rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Grey inner face resized to a fixed grid; empty when the box misses the image."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    inset_x, inset_y = _CROP_INSET * (x2 - x1), _CROP_INSET * (y2 - y1)
    height, width = rgb.shape[:2]
    left, right = max(0, round(x1 + inset_x)), min(width, round(x2 - inset_x))
    top, bottom = max(0, round(y1 + inset_y)), min(height, round(y2 - inset_y))
    if right - left < 2 or bottom - top < 2:
        return np.empty((0, 0), dtype=np.uint8)
    grey = cv2.cvtColor(rgb[top:bottom, left:right], cv2.COLOR_RGB2GRAY)
    shrinking = grey.shape[0] >= _CROP_SIDE and grey.shape[1] >= _CROP_SIDE
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR  # AREA blocks when growing
    return cv2.resize(grey, (_CROP_SIDE, _CROP_SIDE), interpolation=interpolation)


def _texture_and_exposure(grey: np.ndarray) -> tuple[float, float, float]:
    """Return (brightness-compensated Laplacian variance, mean brightness, clipped fraction)."""
    if grey.size == 0:
        return 0.0, 0.0, 1.0
    brightness = float(grey.mean())
    clipped = float(np.count_nonzero((grey <= _CLIP_LOW) | (grey >= _CLIP_HIGH)) / grey.size)
    smoothed = cv2.GaussianBlur(grey.astype(np.float32), (0, 0), _DETAIL_SIGMA)
    laplacian = cv2.Laplacian(smoothed, cv2.CV_32F)
    gain = 128.0 / max(brightness, _MIN_MEAN_FOR_GAIN)
    sharpness = float(laplacian.var()) * gain * gain
    return sharpness, brightness, clipped


def _rising(value: float, threshold: float, good_factor: float = 2.0) -> float:
    """0 at 0, 0.5 at the threshold, 1 from good_factor x threshold: more is better."""
    return float(np.interp(value, [0.0, threshold, good_factor * threshold], [0.0, 0.5, 1.0]))


def _falling(value: float, threshold: float, worst: float) -> float:
    """1 at 0, 0.5 at the threshold, 0 from `worst`: less is better."""
    return float(np.interp(value, [0.0, threshold, worst], [1.0, 0.5, 0.0]))


def _centred(value: float, low: float, high: float) -> float:
    """1 midway between low and high, 0.5 at either, 0 at the ends of the 0..255 range."""
    return float(
        np.interp(value, [0.0, low, (low + high) / 2.0, high, 255.0], [0.0, 0.5, 1.0, 0.5, 0.0])
    )
