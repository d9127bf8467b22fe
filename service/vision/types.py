"""Domain types that carry a frame's analysis between the vision stages and the layers above.

They are plain frozen dataclasses over numpy arrays so that the pipeline stays free of any
transport or storage concern: the API layer maps them to protos, the gallery stores the
embedding, the risk rules read the scores and reason codes. Those holding arrays compare by
identity (`eq=False`): element-wise array equality has no single truth value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from service.vision.liveness_cues import FrameCues


@dataclass(frozen=True, eq=False)
class Image:
    """A decoded image: RGB uint8, HxWx3, EXIF orientation already applied."""

    rgb: np.ndarray
    format: str  # what the bytes really were ("JPEG", "PNG", ...), never the file extension

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


@dataclass(frozen=True, eq=False)
class Face:
    """A detected face in image coordinates.

    `box` is (x1, y1, x2, y2); `landmarks` is 5x2 in the order left eye, right eye, nose tip,
    left mouth corner, right mouth corner ("left" meaning the image's left).
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def centre(self) -> np.ndarray:
        return (self.box[:2] + self.box[2:]) / 2.0


@dataclass(frozen=True)
class Pose:
    """Head pose estimate in degrees: yaw (left/right), pitch (up/down), roll (in-plane)."""

    yaw: float
    pitch: float
    roll: float


@dataclass(frozen=True)
class Shortfall:
    """One measurement beyond its limit, with the setting that moves the limit, so a refusal
    can say "face 62 px, needs 80 (quality.min_face_px)"."""

    reason: str  # the LOW_QUALITY_* code it belongs to
    measure: str  # the component's name: face_px, inter_eye_px, sharpness, ...
    value: float
    limit: float
    setting: str  # the QualityPolicy field: min_face_px, max_yaw_deg, ...
    text: str  # the sentence, e.g. "eyes 28 px apart, needs 40 (quality.min_inter_eye_px)"


@dataclass(frozen=True)
class Quality:
    """A 0-100 quality score, the measured components behind it and the reasons it fell short."""

    score: float
    reasons: tuple[str, ...]
    components: dict[str, float] = field(default_factory=dict)
    pose: Pose = Pose(0.0, 0.0, 0.0)
    shortfalls: tuple[Shortfall, ...] = ()


@dataclass(frozen=True)
class Liveness:
    """A passive liveness signal: probability-like score that the face is live (1.0 = live).

    `model` names the model that produced it; the score is a weak signal whose measured error is
    recorded in the model manifest, never a pass/fail decision on its own.
    """

    score: float
    model: str


@dataclass(frozen=True, eq=False)
class Embedding:
    """An L2-normalised face template and the model version that produced it."""

    vector: np.ndarray
    model: str


@dataclass(frozen=True, eq=False)
class FaceAnalysis:
    """Everything the pipeline learned about one face in one image or frame.

    The one shape of a face on a frame, whoever asked: a single image or a request's best
    frame always carries its `embedding`; a streamed frame carries one only where its session
    wished for it (`subject.FrameWish`), and carries the face mesh's `cues` where the mesh
    model is built.
    """

    face: Face
    quality: Quality
    liveness: Liveness | None
    embedding: Embedding | None = None
    cues: FrameCues | None = None
