"""Per-frame liveness cues from a 468-point face mesh, and the multi-frame checks built on them.

A recording cannot answer a prompt and a photo is flat: these are the geometric facts that the
streamed liveness check rests on, so they are measured here from the mesh alone, as pure
functions (numpy/cv2) that a session can call frame by frame:

- head pose (yaw, pitch, roll) from the mesh's own 3D points, for challenge responses;
- eye openness (eye aspect ratio, Soukupova & Cech 2016) per frame, and blinks over time;
- planarity: how well one homography per frame explains the landmark motion. A photo, however
  it is moved or tilted, is a plane, so its landmarks move by a homography; a real head turning
  moves the nose against the cheeks, which no homography can follow.

Mesh indices are MediaPipe's canonical face mesh topology (the facemesh model's output order).
Image coordinates: x right, y down; the mesh's z grows away from the camera. "Left" and "right"
in names below are the person's own, which is the image's right and left in a camera frame that
is not mirrored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

MESH_POINTS = 468
# Eye contours as (outer corner, upper 1, upper 2, inner corner, lower 2, lower 1): the six
# points of the eye aspect ratio.
RIGHT_EYE = (33, 160, 158, 133, 153, 144)
LEFT_EYE = (263, 387, 385, 362, 380, 373)
# Pairs (person's right, person's left) symmetric about the face's mid-plane; their mean
# difference is the face's left-pointing axis, robust to one noisy point.
SYMMETRIC_PAIRS = ((234, 454), (33, 263), (133, 362), (61, 291), (127, 356), (93, 323), (58, 288))
FOREHEAD, CHIN = 10, 152
# Raw pitch of faces looking about straight at the camera: the median over 147 LFW photos
# (every 40th file; interquartile range -11 to +2 degrees), subtracted so that such a face
# reads about 0. Individual faces differ by several degrees: a challenge should compare the
# pose with the same person's pose at the start of the session, not with 0.
PITCH_OFFSET = -5.0
# Landmarks tracked for the motion checks: spread over the face and over depth (nose tip and
# bridge in front, cheeks, jaw and forehead behind), so a turning head shows parallax.
TRACK_POINTS = (
    1,
    4,
    6,
    168,
    197,
    195,
    5,  # nose tip, bridge
    10,
    151,
    9,
    8,  # forehead, mid-line
    33,
    133,
    263,
    362,
    70,
    300,
    105,
    334,  # eye corners, brows
    61,
    291,
    0,
    17,
    13,
    14,  # mouth
    152,
    148,
    377,
    176,
    400,  # chin
    234,
    454,
    93,
    323,
    132,
    361,
    58,
    288,
    172,
    397,
    127,
    356,
    50,
    280,
    205,
    425,  # cheeks, jaw
)
# A blink: openness below BLINK_CLOSED of the eyes' open level, back above BLINK_REOPEN of it
# within BLINK_MAX_S seconds. The open level is local and pose-matched: the 80th percentile of
# the frames within BLINK_LEVEL_S seconds whose yaw and pitch are within BLINK_POSE_DEGREES,
# because the mesh's eye aspect ratio is not pose-invariant (it rises 1.2-2.1x past 30 degrees
# of yaw, as the eye's width foreshortens, and falls looking up) and does not fall far at a
# full closure (to 0.47-0.71 of the open level on the responders' clips, median about 0.6).
# Open eyes stay above 0.8 of that level on those clips except in the middle of a fast turn.
BLINK_CLOSED = 0.75
BLINK_REOPEN = 0.85
# Eye closures longer than this are not blinks (eyes shut on purpose, or a lost track).
BLINK_MAX_S = 0.7
BLINK_LEVEL_S = 1.0
BLINK_POSE_DEGREES = 10.0
BLINK_LEVEL_FRAMES = 3  # fewer pose-matched frames than this: the frame is not judged


@dataclass(frozen=True, eq=False)
class FrameCues:
    """What one frame's mesh says about the head and eyes.

    yaw: degrees, positive when the person turns the head to their own left (the nose moves
    towards the image's right in an unmirrored camera). pitch: degrees, positive looking up.
    roll: degrees, positive when the eye line turns clockwise in the image (the eye on the
    image's right lower). eye_openness: mean eye aspect ratio of both eyes (about 0.25 to 0.35
    open, falling towards 0.1 closed). points: (len(TRACK_POINTS), 2) float32 pixels.
    face_width: px between the cheek extremes, to normalise distances.
    """

    yaw: float
    pitch: float
    roll: float
    eye_openness: float
    points: np.ndarray
    face_width: float


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-9)


def eye_aspect_ratio(mesh: np.ndarray, eye: tuple[int, ...]) -> float:
    """(|p2-p6| + |p3-p5|) / (2 |p1-p4|) in the image plane: eyelid gap over eye width."""
    p = mesh[list(eye), :2].astype(np.float64)
    vertical = np.linalg.norm(p[1] - p[5]) + np.linalg.norm(p[2] - p[4])
    return float(vertical / max(2.0 * np.linalg.norm(p[0] - p[3]), 1e-9))


def head_pose(mesh: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees from the mesh's 3D points (see FrameCues for the signs).

    The face's left axis is the mean of symmetric right-to-left vectors, its down axis the
    forehead-to-chin vector made orthogonal to it; with their cross product they form the head's
    rotation R, decomposed as R = Rz(roll) Rx(-pitch) Ry(-yaw): the head turns about its own
    vertical axis, then nods, then tilts in the image plane.
    """
    points = mesh.astype(np.float64)
    left = _unit(np.mean([points[b] - points[a] for a, b in SYMMETRIC_PAIRS], axis=0))
    down = points[CHIN] - points[FOREHEAD]
    down = _unit(down - np.dot(down, left) * left)
    rotation = np.column_stack([left, down, np.cross(left, down)])
    yaw = np.degrees(np.arctan2(rotation[2, 0], rotation[2, 2]))
    pitch = np.degrees(np.arcsin(np.clip(-rotation[2, 1], -1.0, 1.0))) - PITCH_OFFSET
    roll = np.degrees(np.arctan2(-rotation[0, 1], rotation[1, 1]))
    return float(yaw), float(pitch), float(roll)


def cues_from_mesh(mesh: np.ndarray) -> FrameCues:
    """The per-frame cues of one (468, 3) mesh in image pixels."""
    if mesh.shape != (MESH_POINTS, 3):
        raise ValueError(f"expected a ({MESH_POINTS}, 3) mesh, got {mesh.shape}")
    yaw, pitch, roll = head_pose(mesh)
    openness = (eye_aspect_ratio(mesh, LEFT_EYE) + eye_aspect_ratio(mesh, RIGHT_EYE)) / 2.0
    width = float(np.linalg.norm(mesh[454, :2] - mesh[234, :2]))
    return FrameCues(
        yaw=yaw,
        pitch=pitch,
        roll=roll,
        eye_openness=openness,
        points=mesh[list(TRACK_POINTS), :2].astype(np.float32),
        face_width=width,
    )


def homography_residuals(tracks: Sequence[np.ndarray]) -> np.ndarray:
    """Per frame: RMS distance between the points and the best homography image of frame 0's
    points, as a fraction of the face width (the first frame's, the scale of the fit)."""
    if len(tracks) < 2:
        return np.zeros(0)
    first = np.asarray(tracks[0], dtype=np.float64)
    width = float(np.ptp(first[:, 0])) or 1.0
    residuals = []
    for points in tracks[1:]:
        points = np.asarray(points, dtype=np.float64)
        matrix, _ = cv2.findHomography(first, points, 0)  # least squares over all points
        if matrix is None:
            residuals.append(np.inf)
            continue
        mapped = cv2.perspectiveTransform(first[None], matrix)[0]
        residuals.append(np.sqrt(np.mean(np.sum((mapped - points) ** 2, axis=1))) / width)
    return np.asarray(residuals)


def planarity_residual(tracks: Sequence[np.ndarray]) -> float:
    """How far the landmark motion is from that of a plane: ~0 for a photo, larger for a head.

    `tracks` are per-frame (K, 2) point sets in the same order (FrameCues.points). The value is
    the RMS over frames of each frame's homography-fit residual (fraction of face width), so a
    few mesh outliers do not dominate; 0.0 with fewer than two frames.
    """
    residuals = homography_residuals(tracks)
    if residuals.size == 0:
        return 0.0
    return float(np.sqrt(np.mean(np.square(residuals))))


def blinks(
    openness: Sequence[float], timestamps: Sequence[float],
    poses: Sequence[tuple[float, float]] | None = None, max_closed_s: float = BLINK_MAX_S,
) -> list[tuple[float, float]]:  # fmt: skip
    """(closed at, reopened at) of each blink in an eye-openness trace: a frame below
    BLINK_CLOSED of the open level after an open one, then a frame back above BLINK_REOPEN of
    it within `max_closed_s`.

    Each frame is judged against its own open level (see BLINK_CLOSED): the frames around it
    at about the same pose (`poses`: (yaw, pitch) per frame; None: one pose), leaving out the
    frames of the closure being followed (and later ones at its pose that are still as shut),
    so that eyes held shut for long do not become the open level. A trace that never reopens,
    or stays shut longer than `max_closed_s`, counts no blink.
    """
    values = np.asarray(openness, dtype=np.float64)
    times = np.asarray(timestamps, dtype=np.float64)
    if values.shape != times.shape:
        raise ValueError("openness and timestamps differ in length")
    if values.size < 3:
        return []
    angles = np.zeros((values.size, 2)) if poses is None else np.asarray(poses, np.float64)
    if angles.shape != (values.size, 2):
        raise ValueError("poses and openness differ in length")
    if np.any(np.diff(times) < 0):
        raise ValueError("timestamps must not decrease")
    # Each frame's neighbours in time, as index ranges of the sorted trace: the level is taken
    # over a bounded slice, not the whole trace (a challenge judges its window on every frame).
    starts = np.searchsorted(times, times - BLINK_LEVEL_S, side="left")
    ends = np.searchsorted(times, times + BLINK_LEVEL_S, side="right")
    found: list[tuple[float, float]] = []
    closed_from: int | None = None  # the first frame of the closure being followed
    shut = np.zeros(values.size, dtype=bool)  # frames that read as that closure still going on
    seen_open = False
    for i, (value, time) in enumerate(zip(values, times, strict=True)):
        lo, hi = starts[i], ends[i]
        near = np.all(np.abs(angles[lo:hi] - angles[i]) <= BLINK_POSE_DEGREES, axis=1)
        if closed_from is not None:
            near[max(closed_from, lo) - lo : max(i, lo) - lo] = False
            near &= ~shut[lo:hi]
        if np.count_nonzero(near) < BLINK_LEVEL_FRAMES:
            continue
        level = float(np.percentile(values[lo:hi][near], 80))
        if closed_from is None:
            if value < BLINK_CLOSED * level and seen_open:
                closed_from = i
                # Later frames at the closure's pose still below the reopening mark are the
                # same closure: never the open level a long closure would be judged against.
                shut = (
                    (np.arange(values.size) >= i)
                    & (values < BLINK_REOPEN * level)
                    & np.all(np.abs(angles - angles[i]) <= BLINK_POSE_DEGREES, axis=1)
                )
            seen_open = seen_open or value >= BLINK_REOPEN * level
        elif value >= BLINK_REOPEN * level:
            if time - times[closed_from] <= max_closed_s:
                found.append((float(times[closed_from]), float(time)))
            closed_from = None
    return found


def blink_count(
    openness: Sequence[float], timestamps: Sequence[float],
    poses: Sequence[tuple[float, float]] | None = None,
) -> int:  # fmt: skip
    """How many blinks (see `blinks`) the trace holds."""
    return len(blinks(openness, timestamps, poses))
