"""Frames of a video file, at a kiosk's rate: the one reader of the evaluation and benches."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def read_video(path: Path, fps: float | None = None, limit: int | None = None) -> list[np.ndarray]:
    """BGR frames of a video, resampled to `fps` by dropping frames (None: every frame), at
    most `limit` of them; FileNotFoundError when no frame can be read."""
    capture = cv2.VideoCapture(str(path))
    source = capture.get(cv2.CAP_PROP_FPS) or fps or 1.0
    step = (fps or source) / source
    frames: list[np.ndarray] = []
    index = 0
    while limit is None or len(frames) < limit:
        ok, frame = capture.read()
        if not ok:
            break
        if index == 0 or int(index * step) != int((index - 1) * step):
            frames.append(frame)
        index += 1
    capture.release()
    if not frames:
        raise FileNotFoundError(f"no frames could be read from {path}")
    return frames
