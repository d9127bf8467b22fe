"""Synthetic cue tracks for the streamed-session tests: a 3D head that turns, a flat photo that
is moved and tilted, eyes that blink.

A recorded live video cannot answer a random challenge, so the decision logic is tested on
landmark and pose tracks built to follow (or ignore) the prompt. The head is a fixed cloud of
points with depth (nose in front, cheeks and jaw behind) projected after a yaw/pitch rotation,
so its 2D motion is not a homography; the photo is that head's frontal view moved by a
homography, as a printed picture is, with a pose estimate that follows the tilt.
"""

from __future__ import annotations

import numpy as np

from service.vision.liveness_cues import FrameCues
from service.vision.types import Embedding, Face, FaceAnalysis, Liveness, Quality

FACE_WIDTH = 200.0
CENTRE = np.array([320.0, 240.0])
POINTS = 46
OPEN_EYES = 0.3
# Frames a person holds a turned pose before facing the camera again (about half a second).
HOLD_FRAMES = 8


def _head() -> np.ndarray:
    """(POINTS, 3) head points in face-width units: x right, y up, z towards the camera."""
    rng = np.random.default_rng(7)
    xy = rng.uniform([-0.45, -0.6], [0.45, 0.55], size=(POINTS, 2))
    nose = np.exp(-(xy[:, 0] ** 2 + (xy[:, 1] + 0.05) ** 2) / 0.02)
    z = 0.3 * nose - 0.5 * xy[:, 0] ** 2 - 0.2 * xy[:, 1] ** 2
    return np.column_stack([xy, z])


HEAD = _head()


def head_points(yaw: float, pitch: float, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Image pixels of the head turned by yaw (to the person's left, positive) and pitch (up)."""
    a, b = np.radians(yaw), np.radians(pitch)
    x, y, z = HEAD.T
    x, z = x * np.cos(a) + z * np.sin(a), -x * np.sin(a) + z * np.cos(a)
    y = y * np.cos(b) + z * np.sin(b)
    image = np.column_stack([CENTRE[0] + FACE_WIDTH * x, CENTRE[1] - FACE_WIDTH * y])
    return (image + rng.normal(0.0, noise * FACE_WIDTH, image.shape)).astype(np.float32)


def photo_points(tilt: float, shift: float, noise: float, rng: np.random.Generator) -> np.ndarray:
    """The frontal view printed on paper, tilted about its vertical axis and slid sideways:
    a perspective (homography) image of a plane."""
    flat = head_points(0.0, 0.0, 0.0, rng).astype(np.float64) - CENTRE
    t = np.radians(tilt)
    depth = 1.0 + flat[:, 0] * np.sin(t) / 800.0  # the far edge of the paper recedes
    x = flat[:, 0] * np.cos(t) / depth + shift
    y = flat[:, 1] / depth
    image = np.column_stack([x, y]) + CENTRE
    return (image + rng.normal(0.0, noise * FACE_WIDTH, image.shape)).astype(np.float32)


def cues(points: np.ndarray, yaw: float, pitch: float, openness: float = OPEN_EYES) -> FrameCues:
    return FrameCues(
        yaw=yaw, pitch=pitch, roll=0.0, eye_openness=openness, points=points,
        face_width=FACE_WIDTH,
    )  # fmt: skip


def analysis(
    vector: np.ndarray, quality: float = 80.0, passive: float = 0.9, dx: float = 0.0
) -> FaceAnalysis:
    """A followed face's analysis: box at the frame centre (moved by dx), the given template."""
    x, y = CENTRE + (dx, 0.0)
    half = FACE_WIDTH / 2.0
    box = np.array([x - half, y - half * 1.2, x + half, y + half * 1.2], dtype=np.float32)
    return FaceAnalysis(
        face=Face(box=box, score=0.99, landmarks=np.zeros((5, 2), np.float32)),
        quality=Quality(score=quality, reasons=()),
        liveness=Liveness(score=passive, model="synthetic"),
        embedding=Embedding(vector=vector, model="synthetic"),
    )


def unit(seed: int, dim: int = 128) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=dim)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


class LiveHead:
    """A person who rests, then does what a script says: `respond(challenge)` sets the move."""

    def __init__(self, seed: int = 0, noise: float = 0.002) -> None:
        self.rng = np.random.default_rng(seed)
        self.noise = noise
        self.yaw = self.pitch = 0.0
        self.target = (0.0, 0.0)
        self.blink_at: int | None = None
        self.back_at: int | None = None
        self.frame = 0

    def respond(self, challenge: str) -> None:
        moves = {
            "TURN_LEFT": (30.0, 0.0), "TURN_RIGHT": (-30.0, 0.0), "LOOK_UP": (0.0, 20.0),
            "LOOK_AT_CAMERA": (0.0, 0.0),
        }  # fmt: skip
        if challenge == "BLINK":
            self.blink_at = self.frame + 2
        else:
            self.target = moves[challenge]
            self.back_at = self.frame + HOLD_FRAMES

    def next(self) -> FrameCues:
        """The next frame's cues: the pose moves a third of the way to the target each frame
        (a turn takes about 0.3 s at 15 frames/s) and back to the camera after HOLD_FRAMES;
        a blink closes the eyes for two frames."""
        self.frame += 1
        if self.back_at is not None and self.frame >= self.back_at:
            self.target, self.back_at = (0.0, 0.0), None
        self.yaw += (self.target[0] - self.yaw) / 3.0
        self.pitch += (self.target[1] - self.pitch) / 3.0
        closed = self.blink_at is not None and self.blink_at <= self.frame < self.blink_at + 2
        points = head_points(self.yaw, self.pitch, self.noise, self.rng)
        return cues(points, self.yaw, self.pitch, 0.08 if closed else OPEN_EYES)


class TiltedPhoto:
    """A printed photo moved about and tilted to imitate a head turn: the pose estimate follows
    the tilt, but the landmarks move as a plane does. It cannot blink."""

    def __init__(self, seed: int = 0, noise: float = 0.002) -> None:
        self.rng = np.random.default_rng(seed)
        self.noise = noise
        self.tilt = 0.0
        self.target = 0.0
        self.frame = 0

    def respond(self, challenge: str) -> None:
        self.target = {"TURN_LEFT": 35.0, "TURN_RIGHT": -35.0}.get(challenge, 0.0)

    def next(self) -> FrameCues:
        self.frame += 1
        self.tilt += (self.target - self.tilt) / 3.0
        shift = 10.0 * np.sin(self.frame / 4.0)
        points = photo_points(self.tilt, shift, self.noise, self.rng)
        return cues(points, self.tilt, 0.0)


class Recording:
    """A replayed live video: a real head that moves and blinks on its own schedule, whatever
    the prompt says (here: it turns to its right, then blinks)."""

    def __init__(self, seed: int = 0) -> None:
        self.head = LiveHead(seed)
        self.script = {12: "TURN_RIGHT", 20: "BLINK"}

    def respond(self, challenge: str) -> None:
        pass  # a recording cannot hear the prompt

    def next(self) -> FrameCues:
        move = self.script.get(self.head.frame)
        if move:
            self.head.respond(move)
        return self.head.next()
