"""What one image costs a vision worker, by the kind of image: `faceguard bench images`.

An attacker pays for bytes and calls; a worker pays for decoded pixels. This prints the CPU
time a worker spends on one Verify frame (`best_probe`: decode, detect, and for a face the
quality, alignment, embedding and liveness) for a normal 640x480 kiosk JPEG and for the worst
images the limits let through, each as a multiple of the kiosk frame, and for a whole request:
as many copies of the image as `engine.max_frames` and `server.max_message_bytes` allow.
CPU time (not wall time) so that other load on a shared machine counts less; medians of
`--repeat` runs, with one model run at a time (`vision.threads = 1`) as under load.

The kiosk frame is a sample photo's face framed as a kiosk camera sees it (`tools.bench.pipeline`);
the large images are the same frame scaled up, so they hold a face for the pipeline to work on.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import struct
import sys
import tempfile
import time
from dataclasses import fields, replace
from pathlib import Path

import cv2
import numpy as np
from PIL import Image as PILImage

from service.app.decisions import Policy
from service.config import Settings
from service.vision.decode import ImageDecodeError
from service.vision.pipeline import FacePipeline
from service.vision.subject import ImageRejected, best_probe
from tools.analyze import sample_images
from tools.bench.pipeline import framed_face


def _encode(rgb: np.ndarray, kind: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(rgb).save(buffer, kind, **options)
    return buffer.getvalue()


def _lying_jpeg(frame: bytes, width: int, height: int) -> bytes:
    """The kiosk frame with its frame header rewritten to declare `width` x `height`."""
    data = bytearray(frame)
    at = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, at + 5, height, width)
    return bytes(data)


def cases(frame: bytes) -> dict[str, bytes]:
    """The kiosk frame and the costliest images of each kind that the default limits admit."""
    rgb = np.asarray(PILImage.open(io.BytesIO(frame)).convert("RGB"))

    def scaled(width: int, height: int) -> np.ndarray:
        return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LINEAR)

    big = scaled(7296, 5472)  # 39.9 MP: just under decode.max_pixels
    noise = np.random.default_rng(0).integers(0, 256, big.shape, dtype=np.uint8)
    noisy = cv2.addWeighted(big, 0.9, noise, 0.1, 0)  # ~13 MB: near decode.max_bytes
    full = scaled(1600, 1250)  # decode.max_full_pixels
    return {
        "kiosk 640x480 JPEG": frame,
        "JPEG kiosk frame declaring 6000x6000": _lying_jpeg(frame, 6000, 6000),
        "JPEG 40 MP cut in half": _encode(big, "JPEG", quality=90)[: len(frame) * 20],
        "JPEG 40 MP q90": _encode(big, "JPEG", quality=90),
        "JPEG 40 MP noisy q90": _encode(noisy, "JPEG", quality=90),
        "PNG 1600x1250": _encode(full, "PNG"),
        "WebP 1600x1250 lossless": _encode(full, "WEBP", lossless=True),
    }


def cpu_ms(pipeline: FacePipeline, frames: list[bytes], repeat: int) -> float:
    """Median CPU ms of one Verify's face work on `frames` (refusals included: they cost too)."""

    def once() -> None:
        try:
            best_probe(pipeline, frames, allow_multiple=False)
        except (ImageRejected, ImageDecodeError):
            pass

    once()  # warm-up
    samples = []
    for _ in range(repeat):
        start = time.process_time()
        once()
        samples.append((time.process_time() - start) * 1000.0)
    return statistics.median(samples)


def run(repeat: int) -> list[dict[str, object]]:
    settings = Settings()
    pipeline = FacePipeline(replace(settings.service_pipeline_config(), threads=1))
    with tempfile.TemporaryDirectory() as tmp:
        photo = sample_images(Path(tmp))[0].read_bytes()
    frame = framed_face(pipeline, photo, (640, 480))[0]
    max_frames = next(f.default for f in fields(Policy) if f.name == "max_frames")
    max_bytes = settings.server.max_message_bytes
    rows: list[dict[str, object]] = []
    baseline = None
    for name, data in cases(frame).items():
        one = cpu_ms(pipeline, [data], repeat)
        baseline = baseline or one
        copies = max(1, min(max_frames, (max_bytes - 1024) // len(data)))
        request = cpu_ms(pipeline, [data] * copies, max(1, repeat // 2))
        rows.append({
            "image": name, "bytes": len(data), "cpu_ms": round(one, 1),
            "x_kiosk": round(one / baseline, 2), "request_frames": copies,
            "request_cpu_ms": round(request, 1),
            "request_x_kiosk_request": None,
        })  # fmt: skip
    kiosk_request = rows[0]["request_cpu_ms"]
    for row in rows:
        row["request_x_kiosk_request"] = round(float(row["request_cpu_ms"]) / kiosk_request, 2)
    return rows


def run_bench_images(args: argparse.Namespace) -> int:
    """`faceguard bench images`: the table, or one JSON list with --json."""
    rows = run(args.repeat)
    if args.json:
        sys.stdout.write(json.dumps(rows) + "\n")
        return 0
    for row in rows:
        sys.stdout.write(
            f"{row['image']:<38} {row['bytes']:>10} B {row['cpu_ms']:>8.1f} ms "
            f"x{row['x_kiosk']:<6} request of {row['request_frames']:>2}: "
            f"{row['request_cpu_ms']:>8.1f} ms x{row['request_x_kiosk_request']}\n"
        )
    return 0
