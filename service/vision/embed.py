"""Face embeddings: one or more ONNX embedders fused into a single unit-length template.

Each member network gets the face aligned to its own template, optionally with its mirror
image (the mean of the two embeddings is steadier under pose and lighting asymmetry). Members
are fused by concatenating their unit embeddings scaled by a weight and normalising again, so
the cosine of two fused templates is the weighted mean of the members' cosines. With weights
1/sqrt(std of impostor cosines), this ranks pairs exactly as the sum of z-normalised scores
(score-level fusion) while staying a single vector that FAISS can search with inner product.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.modelpack.manifest import Model
from service.vision.align import align_face
from service.vision.runtime import create_session, run_single_input


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def fuse(parts: list[np.ndarray], weights: tuple[float, ...]) -> np.ndarray:
    """Weighted concatenation of members' unit embeddings (N x d_i each), renormalised."""
    weighted = [w * p for w, p in zip(weights, parts, strict=True)]
    return l2_normalise(np.concatenate(weighted, axis=-1)).astype(np.float32)


class NetworkEmbedder:
    """One embedding network: aligned chips in, unit embeddings out."""

    def __init__(self, model: Model, path: Path, threads: int) -> None:
        self.name = model.name
        self.template = np.asarray(model.extra["template"], dtype=np.float64)
        self.size = (int(model.input["width"]), int(model.input["height"]))
        self.mean = float(model.input.get("mean", 0.0))
        self.std = float(model.input.get("std", 1.0))
        self._session = create_session(path, threads)

    def chip(self, rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        return align_face(rgb, landmarks, self.template, self.size)

    def __call__(self, chips: np.ndarray, flip: bool) -> np.ndarray:
        """Unit embeddings of a uint8 N x H x W x 3 batch (mirror-averaged when `flip`)."""
        batch = (chips.astype(np.float32) - self.mean) / self.std
        if flip:
            batch = np.concatenate([batch, batch[:, :, ::-1]])
        raw = run_single_input(self._session, batch)[0]
        if flip:
            count = len(chips)
            raw = l2_normalise(raw[:count]) + l2_normalise(raw[count:])
        return l2_normalise(raw)


@dataclass(frozen=True)
class FusionSpec:
    """How members are combined; read from the manifest's `[embedder]` table."""

    version: str
    members: tuple[str, ...]
    weights: tuple[float, ...]
    flip: bool


class FusedEmbedder:
    """The service's embedder: members' templates weighted, concatenated and normalised."""

    def __init__(self, spec: FusionSpec, members: list[NetworkEmbedder]) -> None:
        self.spec = spec
        self.members = members

    def chips(self, rgb: np.ndarray, landmarks: list[np.ndarray]) -> list[np.ndarray]:
        """Aligned chips per member: a list (one entry per member) of N x H x W x 3 batches."""
        return [np.stack([m.chip(rgb, lm) for lm in landmarks]) for m in self.members]

    def __call__(self, chips: list[np.ndarray]) -> np.ndarray:
        parts = [m(batch, self.spec.flip) for m, batch in zip(self.members, chips, strict=True)]
        return fuse(parts, self.spec.weights)
