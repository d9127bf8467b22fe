"""Dense face landmarks: MediaPipe's 468-point face mesh (as shipped by human) over onnxruntime.

The five MTCNN points cannot show an eyelid closing or the nose moving against the cheeks; the
mesh can, so the liveness cues (blink, pose, planarity) are computed from it. The model wants
the face upright in a 192x192 crop, as MediaPipe and human feed it: the detector box is squared
around its centre, enlarged by the manifest's `crop_scale`, rotated so that the eye line is
horizontal, and scaled to 192x192 (rgb / 255). Its points come back in crop pixels and are
mapped back to the image through the inverse of that transform; z (relative depth, growing away
from the camera) is scaled the same way so that x, y and z share the image's pixel units.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from service.modelpack.manifest import Model
from service.vision.models import OnnxModel
from service.vision.types import Face

MESH_OUTPUT = "mesh"
FLAG_OUTPUT = "face_flag"


def crop_transform(face: Face, scale: float, size: int) -> np.ndarray:
    """2x3 affine matrix from image pixels to the upright, square `size` crop of the face."""
    left_eye, right_eye = face.landmarks[0], face.landmarks[1]
    angle = np.degrees(np.arctan2(right_eye[1] - left_eye[1], right_eye[0] - left_eye[0]))
    centre = (face.box[:2] + face.box[2:]) / 2.0
    side = max(face.width, face.height) * scale
    matrix = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), angle, size / side)
    matrix[:, 2] += (size / 2.0 - centre[0], size / 2.0 - centre[1])
    return matrix


@dataclass(frozen=True, eq=False)
class MeshOutput:
    """The face mesh's answer for a batch of crops: N x 468 x 3 points in crop pixels (x, y,
    relative z) and each crop's probability of holding a face."""

    points: np.ndarray
    face_probability: np.ndarray


class FaceMesh(OnnxModel):
    """The face mesh network (manifest task `landmarks`): upright face crops in, `MeshOutput`
    out; `mesh_and_score` places one face's mesh in its image."""

    task = "landmarks"

    def __init__(self, model: Model, path: Path) -> None:
        super().__init__(model, path)
        self.size = self.input.size[1]  # square: its height
        self.crop_scale = float(self.extra("crop_scale", 1.5))

    def crop(self, rgb: np.ndarray, face: Face) -> tuple[np.ndarray, np.ndarray]:
        """The model's input crop and the matrix that made it. Border pixels are replicated:
        a face near the frame edge should not gain a black frame the model never saw."""
        matrix = crop_transform(face, self.crop_scale, self.size)
        crop = cv2.warpAffine(
            rgb, matrix, (self.size, self.size),
            flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE,
        )  # fmt: skip
        return crop, matrix

    def __call__(self, crops: np.ndarray) -> MeshOutput:
        found = self.outputs(crops, [MESH_OUTPUT, FLAG_OUTPUT])
        points = found[MESH_OUTPUT].reshape(len(crops), -1, 3)
        return MeshOutput(points, found[FLAG_OUTPUT].reshape(len(crops), -1)[:, 0])

    def mesh_and_score(self, rgb: np.ndarray, face: Face) -> tuple[np.ndarray, float]:
        """The (468, 3) float32 mesh of `face` in `rgb`'s pixels (x, y, relative z) and the
        model's probability that the crop holds a face."""
        crop, matrix = self.crop(rgb, face)
        found = self(crop[None])
        points = found.points[0].astype(np.float64)
        inverse = cv2.invertAffineTransform(matrix)
        scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
        out = np.empty_like(points)
        out[:, :2] = points[:, :2] @ inverse[:, :2].T + inverse[:, 2]
        out[:, 2] = points[:, 2] / scale
        return out.astype(np.float32), float(found.face_probability[0])
