"""Face embeddings: one or more ONNX embedders fused into a single unit-length template.

Each member network gets the face aligned to its own template, optionally with its mirror
image (the mean of the two embeddings is steadier under pose and lighting asymmetry). Members
are fused by concatenating their unit embeddings scaled by a weight and normalising again, so
the cosine of two fused templates is the weighted mean of the members' cosines. With weights
1/sqrt(std of impostor cosines), this ranks pairs exactly as the sum of z-normalised scores
(score-level fusion) while staying a single vector that FAISS can search with inner product.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from service.modelpack.manifest import Model
from service.vision.align import align_face
from service.vision.models import OnnxModel
from service.vision.parallel import SideBySide


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def fuse(parts: list[np.ndarray], weights: tuple[float, ...]) -> np.ndarray:
    """Weighted concatenation of members' unit embeddings (N x d_i each), renormalised."""
    weighted = [w * p for w, p in zip(weights, parts, strict=True)]
    return l2_normalise(np.concatenate(weighted, axis=-1)).astype(np.float32)


def merge_views(raws: list[np.ndarray]) -> np.ndarray:
    """Unit embeddings from a network's outputs for each view (the face, its mirror image)."""
    if len(raws) == 1:
        return l2_normalise(raws[0])
    return l2_normalise(sum(l2_normalise(raw) for raw in raws))


class EmbeddingNetwork(OnnxModel):
    """One embedding network (manifest task `embedder`): aligned chips in, raw embeddings out
    (`merge_views` makes unit embeddings of them). The entry's `template` is where the 5
    landmarks go in its chip."""

    task = "embedder"

    def __init__(self, model: Model, path: Path) -> None:
        super().__init__(model, path)
        self.template = np.asarray(self.extra("template"), dtype=np.float64)
        self.size = self.input.size

    def chip(self, rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        return align_face(rgb, landmarks, self.template, self.size)

    def views(self, chips: np.ndarray, flip: bool) -> list[np.ndarray]:
        """A uint8 N x H x W x 3 chip batch and, with `flip`, its mirror images, as separate
        batches so that they can run side by side."""
        return [chips, chips[:, :, ::-1]] if flip else [chips]

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        """Raw (unnormalised) N x dim embeddings of a chip batch."""
        return next(iter(self.outputs(chips).values()))

    run = __call__  # one view's run, as `FusedEmbedder.runs` schedules it


@dataclass(frozen=True)
class FusionSpec:
    """How members are combined; read from the manifest's `[embedder]` table."""

    version: str
    members: tuple[str, ...]
    weights: tuple[float, ...]
    flip: bool  # templates: the mean of the face's and its mirror image's embeddings
    probe_flip: bool  # probes likewise (False: the face alone, one network run fewer)


class FusedEmbedder:
    """The service's embedder: members' templates weighted, concatenated and normalised."""

    def __init__(self, spec: FusionSpec, members: list[EmbeddingNetwork]) -> None:
        self.spec = spec
        self.members = members

    def chips(self, rgb: np.ndarray, landmarks: list[np.ndarray]) -> list[np.ndarray]:
        """Aligned chips per member: a list (one entry per member) of N x H x W x 3 batches."""
        return [np.stack([m.chip(rgb, lm) for lm in landmarks]) for m in self.members]

    def runs(self, chips: list[np.ndarray], template: bool) -> list[Callable[[], np.ndarray]]:
        """One network run per member and view, for the caller to run side by side."""
        flip = self.spec.flip if template else self.spec.probe_flip
        return [
            partial(member.run, view)
            for member, batch in zip(self.members, chips, strict=True)
            for view in member.views(batch, flip)
        ]

    def combine(self, raws: list[np.ndarray]) -> np.ndarray:
        """The fused templates from the outputs of `runs`, in its order."""
        views = len(raws) // len(self.members)
        parts = [merge_views(raws[i * views : (i + 1) * views]) for i in range(len(self.members))]
        return fuse(parts, self.spec.weights)

    def __call__(
        self, chips: list[np.ndarray], side_by_side: SideBySide, template: bool
    ) -> np.ndarray:
        """Fused unit templates (`template`) or probes of the members' chip batches."""
        return self.combine(side_by_side.run(*self.runs(chips, template)))
