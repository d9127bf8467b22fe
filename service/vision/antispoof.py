"""Passive (single-frame) liveness: a model's score that a face crop shows a live person.

No registry model is trustworthy on its own (see the manifest's measured error), so this is a
weak signal for the risk layer, never a pass/fail gate. Each model's crop and output reading are
described in its manifest entry:

- `crop_scale`: the detector box is squared and scaled by this factor before resizing;
- `reading`: how outputs become a live score in [0, 1]:
  - `tree_leaf_spoof`: FaceAntiSpoofing's tree network; spoof = sum(|class pred| * leaf mask)
    (as the package's app computes it), live = 1 - min(spoof, 1);
  - `probability`: a score in [0, 1] from output `score_output`; `live_is_low` says which way
    round it reads (measured on the development data, not taken from documentation).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from service.modelpack.manifest import Model
from service.vision.models import ModelSpecError, OnnxModel
from service.vision.types import Face, Liveness


def square_crop(rgb: np.ndarray, face: Face, scale: float, size: int) -> np.ndarray:
    """The face box squared around its centre, scaled, cut out and resized.

    Where the square leaves the image it is filled by reflection: a black border is itself a
    strong cue to these models (measured: it turns one of them into a coin toss on tight crops).
    """
    x1, y1, x2, y2 = face.box
    side = max(x2 - x1, y2 - y1) * scale
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    ratio = size / side
    matrix = np.array([[ratio, 0, size / 2.0 - cx * ratio], [0, ratio, size / 2.0 - cy * ratio]])
    return cv2.warpAffine(
        rgb, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )


def _tree_leaf_spoof(outputs: dict[str, np.ndarray], model: Model) -> np.ndarray:
    preds = outputs[model.extra["class_output"]]
    mask = outputs[model.extra["leaf_output"]]
    spoof = (np.abs(preds) * mask).sum(axis=1)
    return 1.0 - np.minimum(spoof, 1.0)


def _probability(outputs: dict[str, np.ndarray], model: Model) -> np.ndarray:
    score = outputs[model.extra["score_output"]].reshape(-1)
    return 1.0 - score if model.extra["live_is_low"] else score


READINGS = {
    "tree_leaf_spoof": _tree_leaf_spoof,
    "probability": _probability,
}


class AntiSpoofModel(OnnxModel):
    """A passive liveness network (manifest task `liveness`) over face crops, batched across
    faces."""

    task = "liveness"

    def __init__(self, model: Model, path: Path) -> None:
        super().__init__(model, path)
        self.crop_scale = float(self.extra("crop_scale", 1.0))
        reading = self.extra("reading")
        if reading not in READINGS:
            raise ModelSpecError(f"{self.name}: reading {reading!r} is not one of {list(READINGS)}")
        self._read = READINGS[reading]

    def crops(self, rgb: np.ndarray, faces: list[Face]) -> np.ndarray:
        size = self.input.size[1]  # square: its height
        return np.stack([square_crop(rgb, f, self.crop_scale, size) for f in faces])

    def __call__(self, crops: np.ndarray) -> list[Liveness]:
        live = self._read(self.outputs(crops), self.model)
        return [Liveness(score=float(s), model=self.name) for s in live]
