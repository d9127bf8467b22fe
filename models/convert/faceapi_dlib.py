"""Convert face-api's dlib ResNet-34 face recognition net to ONNX.

The network is @vladmandic/face-api 1.7.15's FaceRecognitionNet
(src/faceRecognitionNet/*.ts): a port of dlib's ResNet-34 face descriptor
whose weights ship in model/face_recognition_model.bin, mostly uint8-quantised.
The graph is written node by node with onnx.helper so that it mirrors the
TypeScript op for op (no TensorFlow export step whose output could drift), and
it is deterministic: the same package gives a byte-identical file.

Model contract: input ``input`` float32 [N, 150, 150, 3], NHWC RGB raw pixel
values 0..255 of a 150x150 face chip; face-api's normalisation
((x - mean_rgb) / 255) happens inside the graph. Cropping/resizing to 150x150
(face-api pads to square and resizes bilinearly when given other sizes) is the
caller's job. Output ``embedding`` float32 [N, 128], not L2-normalised
(face-api's descriptor as is).

The ONNX model is compared against the original runtime before it is written:
faceapi_reference.mjs (next to this file) runs face-api itself on TensorFlow.js'
pure-JS CPU backend over real photos (--samples), the npm deps pinned in
faceapi_package.json being installed into --node-prefix first when
missing. One JSON line with the largest deviation goes to stdout; over the
tolerance the model is not written and the exit status is 1.

Usage (as `faceguard models build` runs it, in the conversion virtualenv):
    python faceapi_dlib.py --package-dir DIR --out-dir DIR --samples IMG...
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from shared_npm import ensure_node_deps
from shared_onnx import ConversionError

LOG = logging.getLogger("faceapi_dlib")

MODEL_NAME = "dlib_resnet"
PACKAGE_NAME = "@vladmandic/face-api"
PACKAGE_VERSION = "1.7.15"
MANIFEST = "face_recognition_model-weights_manifest.json"
INPUT_NAME = "input"
OUTPUT_NAME = "embedding"
INPUT_SIZE = 150
EMBEDDING_SIZE = 128
# FaceRecognitionNet.forwardInput: normalize(batch, meanRgb).div(255)
MEAN_RGB = (122.782, 117.001, 104.298)
PIXEL_DIVISOR = 255.0
OPSET = 17
IR_VERSION = 8  # the oldest IR that carries opset 17, for older runtimes
# Observed deviation is ~4e-7; normalising by /256 instead of /255 already gives ~3.5e-4.
DEFAULT_TOLERANCE = 1e-5
HERE = Path(__file__).resolve().parent
REFERENCE_SCRIPT = HERE / "faceapi_reference.mjs"
NODE_PACKAGE_JSON = HERE / "faceapi_package.json"  # exact pins of the reference runtime's npm deps

# forwardInput's residual stages in order; True marks residualDown.
RESIDUAL_STAGES: tuple[tuple[str, bool], ...] = (
    ("conv32_1", False),
    ("conv32_2", False),
    ("conv32_3", False),
    ("conv64_down", True),
    ("conv64_1", False),
    ("conv64_2", False),
    ("conv64_3", False),
    ("conv128_down", True),
    ("conv128_1", False),
    ("conv128_2", False),
    ("conv256_down", True),
    ("conv256_1", False),
    ("conv256_2", False),
    ("conv256_down_out", True),
)


# --------------------------------------------------------------------------
# weights


def check_package(package_dir: Path) -> None:
    """Refuse other packages: the graph below transcribes 1.7.15's source."""
    meta = json.loads((package_dir / "package.json").read_text(encoding="utf-8"))
    found = (meta.get("name"), meta.get("version"))
    if found != (PACKAGE_NAME, PACKAGE_VERSION):
        raise SystemExit(
            f"{MODEL_NAME}: expected {PACKAGE_NAME}@{PACKAGE_VERSION} in {package_dir}, "
            f"found {found[0]}@{found[1]}"
        )


def decode_weight(data: bytes, offset: int, spec: dict) -> tuple[np.ndarray, int]:
    """One manifest entry -> (float32 tensor, bytes consumed), as tfjs-core's decodeWeight does it.

    Most tensors are uint8-quantised (q * scale + min, evaluated in float64 by JS and stored as
    float32), but a few (the conv64 filters in 1.7.15) are plain little-endian float32.
    """
    count = math.prod(spec["shape"])
    quantization = spec.get("quantization")
    encoding = (spec["dtype"], quantization and quantization["dtype"])
    if encoding == ("float32", None):
        values = np.frombuffer(data, dtype="<f4", count=count, offset=offset)
        return values.astype(np.float32), 4 * count
    if encoding != ("float32", "uint8"):
        raise ValueError(f"{spec['name']}: unsupported weight encoding {encoding}")
    raw = np.frombuffer(data, dtype=np.uint8, count=count, offset=offset)
    values = raw.astype(np.float64) * quantization["scale"] + quantization["min"]
    return values.astype(np.float32), count


def load_weights(model_dir: Path) -> tuple[dict[str, np.ndarray], str]:
    """Reads the layers-style manifest: (name -> float32 tensor, sha256 of the weight bytes)."""
    manifest = json.loads((model_dir / MANIFEST).read_text(encoding="utf-8"))
    weights: dict[str, np.ndarray] = {}
    digest = hashlib.sha256()
    for group in manifest:
        data = b"".join((model_dir / name).read_bytes() for name in group["paths"])
        digest.update(data)
        offset = 0
        for spec in group["weights"]:
            values, consumed = decode_weight(data, offset, spec)
            weights[spec["name"]] = values.reshape(spec["shape"])
            offset += consumed
        if offset != len(data):
            raise ValueError(f"manifest covers {offset} of {len(data)} weight bytes")
    LOG.info("loaded %d tensors (%d values)", len(weights), sum(w.size for w in weights.values()))
    return weights, digest.hexdigest()


# --------------------------------------------------------------------------
# graph


def conv_output_size(size: int, kernel: int, stride: int, same: bool) -> int:
    """TFJS computeConv2DInfo output size for 'same' / 'valid' padding."""
    return math.ceil(size / stride) if same else math.ceil((size - kernel + 1) / stride)


@dataclass(frozen=True)
class Feature:
    """An NCHW tensor in the graph with its static channel count and (square) spatial size."""

    name: str
    channels: int
    size: int


class GraphBuilder:
    """Collects nodes and initialisers, all named after face-api's weight paths (stable output)."""

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        self.weights = weights
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output

    def per_channel(self, name: str) -> str:
        """A [C] weight as [1, C, 1, 1]: broadcasts like TFJS' add/mul on the NHWC last axis."""
        return self.const(name, self.weights[name].reshape(1, -1, 1, 1))

    def normalized_input(self) -> Feature:
        """NHWC raw pixels -> (x - mean_rgb) / 255 -> NCHW, in face-api's op order."""
        mean = self.const("mean_rgb", np.array(MEAN_RGB, dtype=np.float32))
        divisor = self.const("pixel_divisor", np.array(PIXEL_DIVISOR, dtype=np.float32))
        centered = self.op("Sub", [INPUT_NAME, mean], "normalize/sub")
        scaled = self.op("Div", [centered, divisor], "normalize/div")
        nchw = self.op("Transpose", [scaled], "normalize/nchw", perm=[0, 3, 1, 2])
        return Feature(nchw, 3, INPUT_SIZE)

    def conv_layer(self, x: Feature, prefix: str, stride: int, relu: bool, same: bool) -> Feature:
        """convLayer.ts: conv2d + bias, scale layer (x * weights + biases), optional relu."""
        filters = self.weights[f"{prefix}/conv/filters"]  # HWIO
        kernel, out_channels = filters.shape[0], filters.shape[3]
        if same and stride != 1:
            raise ValueError(f"{prefix}: 'same' padding is only transcribed for stride 1")
        pad = (kernel - 1) // 2 if same else 0
        weight = self.const(f"{prefix}/conv/filters", filters.transpose(3, 2, 0, 1))  # OIHW
        bias = self.const(f"{prefix}/conv/bias", self.weights[f"{prefix}/conv/bias"])
        out = self.op(
            "Conv",
            [x.name, weight, bias],
            f"{prefix}/conv",
            kernel_shape=[kernel, kernel],
            strides=[stride, stride],
            pads=[pad] * 4,
        )
        out = self.op(
            "Mul", [out, self.per_channel(f"{prefix}/scale/weights")], f"{prefix}/scale/mul"
        )
        out = self.op(
            "Add", [out, self.per_channel(f"{prefix}/scale/biases")], f"{prefix}/scale/add"
        )
        if relu:
            out = self.op("Relu", [out], f"{prefix}/relu")
        return Feature(out, out_channels, conv_output_size(x.size, kernel, stride, same))

    def pad_end(self, x: str, name: str, channels: int = 0, spatial: int = 0) -> str:
        """Zero-pads at the end of C and/or H, W: TFJS' concat with tf.zeros in residualDown."""
        pads = self.const(
            f"{name}/pads", np.array([0, 0, 0, 0, 0, channels, spatial, spatial], dtype=np.int64)
        )
        return self.op("Pad", [x, pads], name, mode="constant")

    def residual(self, x: Feature, prefix: str) -> Feature:
        """residualLayer.ts residual: conv, convNoRelu, + identity, relu."""
        out = self.conv_layer(x, f"{prefix}/conv1", stride=1, relu=True, same=True)
        out = self.conv_layer(out, f"{prefix}/conv2", stride=1, relu=False, same=True)
        added = self.op("Add", [out.name, x.name], f"{prefix}/add")
        return Feature(self.op("Relu", [added], f"{prefix}/relu"), out.channels, out.size)

    def residual_down(self, x: Feature, prefix: str) -> Feature:
        """residualDown: strided 'valid' branch + zero-padded 2x2 avg-pool shortcut."""
        out = self.conv_layer(x, f"{prefix}/conv1", stride=2, relu=True, same=False)
        out = self.conv_layer(out, f"{prefix}/conv2", stride=1, relu=False, same=True)
        pooled = self.op(
            "AveragePool", [x.name], f"{prefix}/avgpool", kernel_shape=[2, 2], strides=[2, 2]
        )
        pooled_size = conv_output_size(x.size, 2, 2, same=False)
        out_name = out.name
        if pooled_size != out.size:
            # face-api appends exactly one zero row and one zero column to the conv branch.
            if pooled_size != out.size + 1:
                raise ValueError(
                    f"{prefix}: shortcut {pooled_size} vs branch {out.size} is not a one-pixel gap"
                )
            out_name = self.pad_end(out_name, f"{prefix}/pad_spatial", spatial=1)
        if x.channels != out.channels:
            pooled = self.pad_end(
                pooled, f"{prefix}/pad_channels", channels=out.channels - x.channels
            )
        added = self.op("Add", [pooled, out_name], f"{prefix}/add")
        return Feature(self.op("Relu", [added], f"{prefix}/relu"), out.channels, pooled_size)

    def head(self, x: Feature) -> str:
        """Global average over H, W, then the 256x128 FC layer (no bias, no L2 norm)."""
        pooled = self.op("ReduceMean", [x.name], "global_avg", axes=[2, 3], keepdims=0)
        return self.op("MatMul", [pooled, self.const("fc", self.weights["fc"])], OUTPUT_NAME)


def build_model(weights: dict[str, np.ndarray], weights_sha256: str) -> onnx.ModelProto:
    """FaceRecognitionNet.forwardInput as an ONNX graph."""
    g = GraphBuilder(weights)
    x = g.normalized_input()
    x = g.conv_layer(x, "conv32_down", stride=2, relu=True, same=False)
    pooled = g.op("MaxPool", [x.name], "maxpool", kernel_shape=[3, 3], strides=[2, 2])
    x = Feature(pooled, x.channels, conv_output_size(x.size, 3, 2, same=False))
    for prefix, down in RESIDUAL_STAGES:
        x = g.residual_down(x, prefix) if down else g.residual(x, prefix)
    output = g.head(x)

    unused = sorted(set(weights) - {t.name for t in g.initializers})
    if unused:
        raise ValueError(f"weights not used by the graph: {unused}")
    graph = helper.make_graph(
        g.nodes,
        "faceapi_dlib_resnet34",
        [
            helper.make_tensor_value_info(
                INPUT_NAME, TensorProto.FLOAT, ["N", INPUT_SIZE, INPUT_SIZE, 3]
            )
        ],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", EMBEDDING_SIZE])],
        initializer=g.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="faceguard models/convert/faceapi_dlib.py",
        doc_string=(
            f"dlib ResNet-34 face descriptor from {PACKAGE_NAME}@{PACKAGE_VERSION}. "
            f"input: float32 [N,{INPUT_SIZE},{INPUT_SIZE},3] NHWC RGB 0..255 face chip; "
            f"normalisation (x - {list(MEAN_RGB)}) / {PIXEL_DIVISOR:g} is in the graph. "
            f"output: float32 [N,{EMBEDDING_SIZE}] descriptor, not L2-normalised."
        ),
    )
    helper.set_model_props(
        model,
        {
            "source_package": f"{PACKAGE_NAME}@{PACKAGE_VERSION}",
            "source_weights_sha256": weights_sha256,
        },
    )
    onnx.checker.check_model(model, full_check=True)
    return model


# --------------------------------------------------------------------------
# check against the original runtime


@dataclass(frozen=True)
class Reference:
    """Chips and face-api descriptors written by faceapi_reference.mjs."""

    chips: np.ndarray  # uint8 [n, 150, 150, 3]
    descriptors: np.ndarray  # float32 [n, 128]


def run_reference(package_dir: Path, images: list[Path], node: str, node_prefix: Path) -> Reference:
    """Runs face-api on TFJS (CPU backend) in node; node's stdout banner goes to our stderr."""
    env = {**os.environ, "NODE_PATH": str(node_prefix / "node_modules")}
    with tempfile.TemporaryDirectory(prefix="faceapi_reference_") as tmp:
        out_dir = Path(tmp)
        command = [
            node,
            str(REFERENCE_SCRIPT),
            "--package-dir",
            str(package_dir),
            "--out-dir",
            str(out_dir),
        ]
        subprocess.run([*command, *map(str, images)], env=env, stdout=sys.stderr, check=True)
        meta = json.loads((out_dir / "meta.json").read_text(encoding="utf-8"))
        n = meta["count"]
        chips = np.fromfile(out_dir / "chips.u8", dtype=np.uint8).reshape(
            n, INPUT_SIZE, INPUT_SIZE, 3
        )
        descriptors = np.fromfile(out_dir / "descriptors.f32", dtype="<f4").reshape(
            n, EMBEDDING_SIZE
        )
    LOG.info(
        "reference: %d chips from face-api %s, tfjs %s (%s backend)",
        n,
        meta["faceapi"],
        meta["tfjs"],
        meta["backend"],
    )
    return Reference(chips, descriptors)


def onnx_embeddings(model_bytes: bytes, chips: np.ndarray) -> np.ndarray:
    """Runs the converted model on the chips as one batch (exercises the dynamic N)."""
    import onnxruntime as ort  # only needed for the check

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: chips.astype(np.float32)})[0]


def compare(ours: np.ndarray, reference: np.ndarray, tolerance: float) -> dict[str, object]:
    """Largest element-wise deviation and smallest per-face cosine of the two descriptor sets."""
    cosine = np.sum(ours * reference, axis=1) / (
        np.linalg.norm(ours, axis=1) * np.linalg.norm(reference, axis=1)
    )
    return {
        "model": MODEL_NAME,
        "max_abs_diff": float(np.max(np.abs(ours - reference))),
        "min_cosine": float(np.min(cosine)),
        "tolerance": tolerance,
        "inputs": len(reference),
    }


def check_with_node(args: argparse.Namespace, model_bytes: bytes) -> bool:
    """Compares with face-api on real chips, prints the JSON line; True if within tolerance."""
    ensure_node_deps(args.node_prefix, NODE_PACKAGE_JSON)
    images = list(args.samples)
    reference = run_reference(args.package_dir, images, args.node, args.node_prefix)
    if len(reference.descriptors) == 0:
        LOG.error(
            "%s: face-api found no faces in %d image(s), nothing to compare",
            MODEL_NAME,
            len(images),
        )
        return False
    result = compare(
        onnx_embeddings(model_bytes, reference.chips), reference.descriptors, args.tolerance
    )
    sys.stdout.write(json.dumps(result) + "\n")
    if not result["max_abs_diff"] <= args.tolerance:
        LOG.error(
            "%s: max abs diff %.3g vs face-api/TFJS exceeds tolerance %.3g; %s not written",
            MODEL_NAME,
            result["max_abs_diff"],
            args.tolerance,
            args.out,
        )
        return False
    return True


# --------------------------------------------------------------------------
# cli


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--package-dir",
        type=Path,
        required=True,
        help="unpacked face-api npm package (the tarball's package/)",
    )
    parser.add_argument("--out-dir", type=Path, required=True, help=f"writes {MODEL_NAME}.onnx")
    parser.add_argument(
        "--node-prefix",
        type=Path,
        default=Path(os.environ.get("FACEGUARD_CACHE_DIR", Path.home() / ".cache" / "faceguard"))
        / "node",
        help="npm prefix for the pinned reference runtime (default: the faceguard cache's node/)",
    )
    parser.add_argument(
        "--samples", type=Path, nargs="*", default=[], help="real JPEGs for the numerical check"
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="max abs descriptor difference allowed",
    )
    parser.add_argument("--node", default="node", help="node executable")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    args.package_dir = args.package_dir.resolve()
    args.out = args.out_dir / f"{MODEL_NAME}.onnx"
    check_package(args.package_dir)
    weights, weights_sha256 = load_weights(args.package_dir / "model")
    model_bytes = build_model(weights, weights_sha256).SerializeToString()
    try:
        if not check_with_node(args, model_bytes):
            return 1
    except ConversionError as err:
        LOG.error("%s: %s", MODEL_NAME, err)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(model_bytes)
    LOG.info(
        "wrote %s (%d bytes, sha256 %s)",
        args.out,
        len(model_bytes),
        hashlib.sha256(model_bytes).hexdigest(),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
