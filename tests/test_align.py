"""Alignment: the similarity transform is exact on consistent points and warps correctly."""

from __future__ import annotations

import numpy as np
import pytest

from service.vision.align import align_face, similarity_transform

TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ]
)


def _transform(
    points: np.ndarray, scale: float, angle_deg: float, shift: tuple[float, float]
) -> np.ndarray:
    theta = np.deg2rad(angle_deg)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    return scale * points @ rotation.T + np.asarray(shift)


@pytest.mark.parametrize(
    ("scale", "angle", "shift"),
    [(1.0, 0.0, (0, 0)), (2.5, 30.0, (100, -40)), (0.4, -75.0, (7, 300))],
)
def test_similarity_transform_recovers_the_face_placement(
    scale: float, angle: float, shift: tuple[float, float]
) -> None:
    landmarks = _transform(TEMPLATE, scale, angle, shift)
    matrix = similarity_transform(landmarks, TEMPLATE)
    mapped = landmarks @ matrix[:, :2].T + matrix[:, 2]
    np.testing.assert_allclose(mapped, TEMPLATE, atol=1e-9)


def test_similarity_transform_never_mirrors() -> None:
    mirrored = TEMPLATE * np.array([-1.0, 1.0])
    matrix = similarity_transform(mirrored, TEMPLATE)
    assert np.linalg.det(matrix[:, :2]) > 0


def test_align_face_puts_marked_landmarks_on_the_template() -> None:
    image = np.zeros((400, 400, 3), dtype=np.uint8)
    landmarks = _transform(TEMPLATE, 2.0, 20.0, (120, 60))
    for x, y in landmarks:
        image[round(y) - 1 : round(y) + 2, round(x) - 1 : round(x) + 2] = 255
    chip = align_face(image, landmarks, TEMPLATE, (112, 112))
    assert chip.shape == (112, 112, 3)
    for x, y in TEMPLATE:
        assert chip[round(y), round(x)].max() > 100
