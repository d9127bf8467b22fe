"""The model interface: a network built from its manifest entry, called on a batch of images.

Every network the pipeline runs (the detector's stages, the embedders, the anti-spoof model,
the face mesh) is an `OnnxModel`: its manifest entry's `input` table says how a batch of RGB
images becomes the network's input tensor (`InputSpec`: size, layout, channel order, mean and
std, transposition), so that a model's pre-processing is an edit of the manifest, not of the
code. Each task's wrapper (see `service.vision.registry`) subclasses it and is called the same
way, `wrapper(images) -> its typed result`; what differs between tasks is only how they cut
their crops and read their outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.modelpack.manifest import Model
from service.vision.onnx_sessions import create_session

LAYOUTS = ("NHWC", "NCHW")
CHANNEL_ORDERS = ("RGB", "BGR")


class ModelSpecError(ValueError):
    """A manifest entry's input table or task does not describe a model this code can run."""


def _dimension(model: Model, key: str) -> int | None:
    value = model.input.get(key, "dynamic")
    if value == "dynamic":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelSpecError(f"{model.name}: input {key} must be a positive integer or 'dynamic'")
    return value


def _scale(model: Model, key: str, default: float) -> float | np.ndarray:
    """A scalar stays a Python float, so that the arithmetic (and its rounding) is float32's
    alone; a per-channel list becomes a float32 vector."""
    value = model.input.get(key, default)
    if isinstance(value, list):
        if len(value) != 3:
            raise ModelSpecError(f"{model.name}: input {key} needs one value or three")
        return np.asarray(value, dtype=np.float32)
    return float(value)


@dataclass(frozen=True, eq=False)
class InputSpec:
    """How a model wants its input: read from the manifest entry's `input` table.

    `height`/`width` None: any size ("dynamic"). `transposed`: the network was trained on
    images with width and height swapped (the expo MTCNN), so its spatial outputs are too.
    """

    layout: str
    height: int | None
    width: int | None
    channels: str
    mean: float | np.ndarray
    std: float | np.ndarray
    transposed: bool

    @classmethod
    def of(cls, model: Model) -> InputSpec:
        layout = str(model.input.get("layout", "NHWC"))
        channels = str(model.input.get("channels", "RGB"))
        if layout not in LAYOUTS:
            raise ModelSpecError(f"{model.name}: input layout {layout!r} is not one of {LAYOUTS}")
        if channels not in CHANNEL_ORDERS:
            raise ModelSpecError(f"{model.name}: input channels {channels!r} is not RGB or BGR")
        return cls(
            layout=layout,
            height=_dimension(model, "height"),
            width=_dimension(model, "width"),
            channels=channels,
            mean=_scale(model, "mean", 0.0),
            std=_scale(model, "std", 1.0),
            transposed=bool(model.input.get("transposed", False)),
        )

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of a fixed-size input, as OpenCV takes sizes."""
        if self.width is None or self.height is None:
            raise ModelSpecError("the model takes any input size")
        return self.width, self.height

    def prepare(self, images: np.ndarray) -> np.ndarray:
        """An N x H x W x 3 RGB batch (uint8 or float) as the network's float32 input."""
        batch = images.astype(np.float32)
        if self.channels == "BGR":
            batch = batch[..., ::-1]
        batch = (batch - self.mean) / self.std
        if self.transposed:
            batch = batch.transpose(0, 2, 1, 3)
        if self.layout == "NCHW":
            batch = batch.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(batch, dtype=np.float32)

    def restore(self, output: np.ndarray) -> np.ndarray:
        """A spatial output map (N x h x w x C, in the input's layout) in image orientation."""
        if self.layout == "NCHW":
            output = output.transpose(0, 2, 3, 1)
        return output.transpose(0, 2, 1, 3) if self.transposed else output


class OnnxModel:
    """A manifest entry's network and its onnxruntime session (one per model per process)."""

    task = ""  # the manifest `task` the subclass runs

    def __init__(self, model: Model, path: Path) -> None:
        if self.task and model.task != self.task:
            raise ModelSpecError(f"{model.name} is a {model.task!r} model, not {self.task!r}")
        self.model = model
        self.name = model.name
        self.input = InputSpec.of(model)
        self._session = create_session(path)
        self._input_name = self._session.get_inputs()[0].name
        self.output_names = [o.name for o in self._session.get_outputs()]

    def extra(self, key: str, default: Any = None) -> Any:
        """A task-specific key of the manifest entry (crop_scale, template, reading, ...)."""
        return self.model.extra.get(key, default)

    def outputs(self, images: np.ndarray, names: list[str] | None = None) -> dict[str, np.ndarray]:
        """The network's outputs (all, or `names`) for a batch of RGB images, by name."""
        wanted = names or self.output_names
        values = self._session.run(wanted, {self._input_name: self.input.prepare(images)})
        return dict(zip(wanted, values, strict=True))
