"""5-point face alignment: a least-squares similarity transform onto an embedder's template.

Each embedder was trained on faces placed at fixed landmark positions; the template for each
comes from the model manifest. The transform is the closed-form Umeyama solution (rotation,
uniform scale, translation), the same estimate insightface's `norm_crop` gets from
scikit-image, computed here with numpy so alignment needs neither of those packages.
"""

from __future__ import annotations

import cv2
import numpy as np


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 matrix of the similarity transform mapping `src` points onto `dst` (least squares).

    Umeyama (1991), "Least-squares estimation of transformation parameters between two point
    patterns"; the reflection case is excluded so a mirrored face is never produced.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1.0
    rotation = u @ np.diag(d) @ vt
    variance = (src_c**2).sum() / len(src)
    scale = (s * d).sum() / variance if variance > 0 else 1.0
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def align_face(
    rgb: np.ndarray, landmarks: np.ndarray, template: np.ndarray, size: tuple[int, int]
) -> np.ndarray:
    """Warp the face whose 5 `landmarks` are given onto `template`, giving a size (w, h) chip.

    Bilinear sampling from the full-resolution image; pixels outside it are black, as in the
    embedders' training crops.
    """
    matrix = similarity_transform(landmarks, template)
    return cv2.warpAffine(rgb, matrix, size, flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
