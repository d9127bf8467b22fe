"""`faceguard bench pipeline`: median latency of each stage, with 1 and 2 model runs side by side.

`mesh_cues` is the face mesh plus the liveness cues computed from it (pose, eye openness,
tracked points); `stream` is the per-frame work of a streamed liveness session: decode,
detect, quality, passive liveness and mesh cues (embedding only runs on the frames kept for
matching, so it is left out).

The frames are made from the sample photos in the model source packages: a face of a sample
is framed as a kiosk camera would see it (640x480, face a third of the height, one face per
frame) and the same at 1920x1080; both are JPEG-encoded so decoding is measured too. Medians,
not means, because this runs on small, shared machines. `total` is less than the sum of the
stages (see `TOTAL_NOTE`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from rich.console import Console
from rich.table import Table

from service.config import load_settings
from service.vision.pipeline import FacePipeline, PipelineConfig
from tools.analyze import sample_images

STAGES = ("decode", "detect", "quality", "align", "liveness", "embed", "mesh_cues")
STREAM_STAGES = ("decode", "detect", "quality", "liveness", "mesh_cues")
TOTAL_NOTE = (
    "total (one whole analysis of the frame, as verify runs it) is less than the sum of the "
    "stages: mesh_cues runs only for streamed frames, and with 2 side by side the liveness "
    "model runs beside the embedder and a face beside its mirror image, so their times overlap"
)


def framed_face(pipeline: FacePipeline, photo: bytes, size: tuple[int, int]) -> list[bytes]:
    """JPEG frames of `size`, one per face of the photo, each face a third of the frame height.

    Each face is cut out with a margin and placed on a plain background, so a frame holds
    exactly one face, as a kiosk or enrolment capture does.
    """
    image = pipeline.decode(photo)
    width, height = size
    frames = []
    for face in pipeline.detect(image):
        scale = height / 3.0 / face.height
        cx, cy = (face.box[:2] + face.box[2:]) / 2.0
        half = np.array([face.width, face.height]) * 1.0
        x1, y1 = np.maximum((cx, cy) - half, 0).astype(int)
        x2, y2 = np.minimum((cx, cy) + half, (image.width, image.height)).astype(int)
        crop = np.ascontiguousarray(image.rgb[y1:y2, x1:x2])
        shift = (width / 2 - (cx - x1) * scale, height / 2 - (cy - y1) * scale)
        matrix = np.array([[scale, 0, shift[0]], [0, scale, shift[1]]])
        frame = cv2.warpAffine(
            crop, matrix, size, flags=cv2.INTER_LINEAR, borderValue=(128, 128, 128)
        )
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        frames.append(encoded.tobytes())
    return frames


def _median_ms(call: Callable[[], object], repeat: int) -> float:
    call()  # warm-up: first runs allocate onnxruntime buffers
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000.0)
    return round(statistics.median(samples), 2)


def stage_latencies(pipeline: FacePipeline, frame: bytes, repeat: int) -> dict[str, float]:
    """Median ms of each stage on `frame`, plus the whole analysis as `total`."""
    image = pipeline.decode(frame)
    faces = pipeline.detect(image)
    chips = pipeline.align(image, faces)
    timings = {
        "decode": _median_ms(lambda: pipeline.decode(frame), repeat),
        "detect": _median_ms(lambda: pipeline.detect(image), repeat),
        "quality": _median_ms(lambda: pipeline.quality(image, faces), repeat),
        "align": _median_ms(lambda: pipeline.align(image, faces), repeat),
        "liveness": (
            _median_ms(lambda: pipeline.liveness(image, faces), repeat)
            if pipeline.liveness_model and faces
            else 0.0
        ),
        "embed": _median_ms(lambda: pipeline.embed(chips), repeat),
        "mesh_cues": (
            _median_ms(lambda: pipeline.cues(image, faces[0]), repeat)
            if pipeline.facemesh and faces
            else 0.0
        ),
    }
    timings["detect_quality_align_embed"] = round(
        sum(timings[k] for k in ("detect", "quality", "align", "embed")), 2
    )
    timings["stream"] = round(sum(timings[k] for k in STREAM_STAGES), 2)
    timings["total"] = _median_ms(lambda: pipeline.analyse(frame), repeat)
    timings["faces"] = len(faces)
    return timings


def enrol_rate(pipeline: FacePipeline, photos: list[bytes], rounds: int = 2) -> float:
    """Portraits per second through the full analysis, as a batch enrolment would run it."""
    start = time.perf_counter()
    for _ in range(rounds):
        for photo in photos:
            pipeline.analyse(photo)
    return round(rounds * len(photos) / (time.perf_counter() - start), 2)


def run_bench_pipeline(args: argparse.Namespace) -> int:
    base: PipelineConfig = load_settings(args.config).service_pipeline_config()
    with tempfile.TemporaryDirectory() as tmp:
        photos = [p.read_bytes() for p in sample_images(Path(tmp))]
    results: dict[str, Any] = {"640x480": {}, "1920x1080": {}}
    for threads in (2, 1):
        pipeline = FacePipeline(replace(base, threads=threads))
        for name, size in (("640x480", (640, 480)), ("1920x1080", (1920, 1080))):
            frame = framed_face(pipeline, photos[0], size)[0]
            results[name][f"threads_{threads}"] = stage_latencies(pipeline, frame, args.repeat)
        if threads == 2:
            portraits = [f for photo in photos for f in framed_face(pipeline, photo, (480, 640))]
            results["enroll_images_per_s"] = enrol_rate(pipeline, portraits)
    if args.json:
        sys.stdout.write(json.dumps(results) + "\n")
        return 0
    table = Table(title="pipeline stage latency, median ms (d+q+a+e: detect+quality+align+embed)")
    columns = [*STAGES, "detect_quality_align_embed", "stream", "total"]
    table.add_column("case")
    for column in columns:
        table.add_column(
            "d+q+a+e" if column == "detect_quality_align_embed" else column, justify="right"
        )
    for name in ("640x480", "1920x1080"):
        for threads, row in results[name].items():
            table.add_row(f"{name} {threads}", *(f"{row[c]:.1f}" for c in columns))
    console = Console(width=max(Console().width, 120))
    console.print(table)
    console.print(TOTAL_NOTE, markup=False, highlight=False)
    console.print(f"batch enrolment: {results['enroll_images_per_s']} images/s (2 threads)")
    return 0
