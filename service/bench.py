"""`faceguard bench pipeline`: median latency of each stage, at 1 and 2 threads.

The frames are made from the sample photos in the model source packages: the main face of a
sample is framed as a kiosk camera would see it (640x480, face about a third of the height)
and the same scene at 1920x1080; both are JPEG-encoded so decoding is measured too. Medians,
not means, because this runs on small, shared machines.
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

from service.analyze import sample_images
from service.config import load_settings
from service.vision.pipeline import FacePipeline, PipelineConfig, primary_face

STAGES = ("decode", "detect", "quality", "align", "liveness", "embed")


def kiosk_frame(pipeline: FacePipeline, photo: bytes, size: tuple[int, int]) -> bytes:
    """A JPEG frame of `size` with the photo's main face at about a third of the height."""
    image = pipeline.decode(photo)
    face = primary_face(pipeline.detect(image), image)
    if face is None:
        raise ValueError("the sample photo has no face")
    width, height = size
    scale = height / 3.0 / face.height
    cx, cy = (face.box[:2] + face.box[2:]) / 2.0
    matrix = np.array([[scale, 0, width / 2 - cx * scale], [0, scale, height / 2 - cy * scale]])
    frame = cv2.warpAffine(image.rgb, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return encoded.tobytes()


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
    live = pipeline.liveness_model
    crops = live.crops(image.rgb, faces) if live and faces else None
    timings = {
        "decode": _median_ms(lambda: pipeline.decode(frame), repeat),
        "detect": _median_ms(lambda: pipeline.detect(image), repeat),
        "quality": _median_ms(lambda: pipeline.quality(image, faces), repeat),
        "align": _median_ms(lambda: pipeline.align(image, faces), repeat),
        "liveness": _median_ms(lambda: live(crops), repeat) if crops is not None else 0.0,
        "embed": _median_ms(lambda: pipeline.embed(chips), repeat),
    }
    timings["detect_quality_align_embed"] = round(
        sum(timings[k] for k in ("detect", "quality", "align", "embed")), 2
    )
    timings["total"] = _median_ms(lambda: pipeline.analyse(frame), repeat)
    timings["faces"] = len(faces)
    return timings


def enrol_rate(pipeline: FacePipeline, photos: list[bytes], rounds: int = 3) -> float:
    """Images per second through the full analysis, as a batch enrolment would run it."""
    start = time.perf_counter()
    for _ in range(rounds):
        for photo in photos:
            pipeline.analyse(photo)
    return round(rounds * len(photos) / (time.perf_counter() - start), 2)


def run_bench_pipeline(args: argparse.Namespace) -> int:
    base: PipelineConfig = load_settings(args.config).pipeline_config()
    with tempfile.TemporaryDirectory() as tmp:
        photos = [p.read_bytes() for p in sample_images(Path(tmp))]
    results: dict[str, Any] = {"640x480": {}, "1920x1080": {}}
    for threads in (2, 1):
        pipeline = FacePipeline(replace(base, threads=threads))
        frames = {
            "640x480": kiosk_frame(pipeline, photos[0], (640, 480)),
            "1920x1080": kiosk_frame(pipeline, photos[0], (1920, 1080)),
        }
        for name, frame in frames.items():
            results[name][f"threads_{threads}"] = stage_latencies(pipeline, frame, args.repeat)
        if threads == 2:
            results["enroll_images_per_s"] = enrol_rate(pipeline, photos)
    if args.json:
        sys.stdout.write(json.dumps(results) + "\n")
        return 0
    table = Table(title="pipeline stage latency, median ms")
    columns = [*STAGES, "detect_quality_align_embed", "total"]
    table.add_column("case")
    for column in columns:
        table.add_column(column, justify="right")
    for name in ("640x480", "1920x1080"):
        for threads, row in results[name].items():
            table.add_row(f"{name} {threads}", *(f"{row[c]:.1f}" for c in columns))
    console = Console()
    console.print(table)
    console.print(f"batch enrolment: {results['enroll_images_per_s']} images/s (2 threads)")
    return 0
