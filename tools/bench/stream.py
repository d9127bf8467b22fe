"""`faceguard bench stream`: median milliseconds of stream processing per frame, on 2 cores.

A kiosk streams 15 frames/s, so each frame has 66.7 ms. The frames are the live video
(../shared/data/spoof/apfol_videos/real2.webm, 640x480), JPEG-encoded as the kiosk client
sends them. Each frame goes through the session's own path (`analyse_frame`: decode, detect,
quality, passive liveness, embedding and mesh cues of the followed face, then
`Session.observe`; the embedding only where the session asks for one); a second pass times
the stages one by one, embedding every face. The process is pinned to two
cores and a frame runs up to `--threads` model runs side by side. Medians, because the machine
is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
from rich.console import Console
from rich.table import Table

from service.app.streams import analyse_frame
from service.app.vision_pool import InProcessVision
from service.config import load_settings
from service.liveness.session import Session
from service.liveness.session_policy import LivenessPolicy, SessionLimits
from service.vision.pipeline import FacePipeline
from tools.evaluation.video import read_video

BUDGET_MS = 1000.0 / 15.0
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
DEFAULT_VIDEO = SHARED_DATA / "spoof" / "apfol_videos" / "real2.webm"


def video_frames(path: Path, limit: int) -> list[bytes]:
    """Up to `limit` frames of the video as JPEG bytes (quality 90, as `faceguard kiosk`)."""
    encode = [cv2.IMWRITE_JPEG_QUALITY, 90]
    return [cv2.imencode(".jpg", f, encode)[1].tobytes() for f in read_video(path, limit=limit)]


def _pin_two_cores() -> list[int]:
    cores = sorted(os.sched_getaffinity(0))[:2]
    os.sched_setaffinity(0, cores)
    return cores


def _timed(run: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    began = time.perf_counter()
    result = run(*args)
    return result, (time.perf_counter() - began) * 1000.0


def measure(pipeline: FacePipeline, frames: list[bytes]) -> dict[str, Any]:
    """Per-frame milliseconds of the stream path, and of each stage."""
    policy = LivenessPolicy(passive_threshold=0.0)
    limits = SessionLimits(
        max_frames=10 * len(frames), max_duration_s=1e9, min_frames=10 * len(frames),
        require_challenge=False,
    )  # fmt: skip
    session = Session(limits, policy, 0.0)
    vision = InProcessVision(pipeline)
    totals = []
    for i, data in enumerate(frames):
        began = time.perf_counter()
        session.observe(analyse_frame(vision, session, data, i / 30.0, i / 30.0))
        totals.append((time.perf_counter() - began) * 1000.0)
    stages: dict[str, list[float]] = {s: [] for s in ("decode", "detect", "analyse", "cues")}
    for data in frames:
        image, ms = _timed(pipeline.decode, data)
        stages["decode"].append(ms)
        faces, ms = _timed(pipeline.detect, image)
        stages["detect"].append(ms)
        if not faces:
            continue
        _, ms = _timed(pipeline.analyse_faces, image, faces[:1])
        stages["analyse"].append(ms)
        _, ms = _timed(pipeline.cues, image, faces[0])
        stages["cues"].append(ms)
    median = statistics.median(totals)
    return {
        "frames": len(frames),
        "median_ms_per_frame": round(median, 1),
        "p90_ms_per_frame": round(sorted(totals)[int(0.9 * (len(totals) - 1))], 1),
        "budget_ms_at_15fps": round(BUDGET_MS, 1),
        "fits_15fps": median <= BUDGET_MS,
        "stage_median_ms": {k: round(statistics.median(v), 1) for k, v in stages.items() if v},
        "mesh_cues": pipeline.facemesh is not None,
    }


def run_bench_stream(args: argparse.Namespace) -> int:
    cores = _pin_two_cores()
    settings = load_settings(args.config)
    config = settings.service_pipeline_config()
    pipeline = FacePipeline(replace(config, threads=args.threads))
    frames = video_frames(args.video or DEFAULT_VIDEO, args.frames)
    warm_up = Session(SessionLimits(), LivenessPolicy(), 0.0)
    analyse_frame(InProcessVision(pipeline), warm_up, frames[0], 0, 0)
    figures = {"cores": cores, "threads": args.threads, "video": (args.video or DEFAULT_VIDEO).name}
    figures |= measure(pipeline, frames)
    if args.json:
        sys.stdout.write(json.dumps(figures) + "\n")
        return 0
    table = Table(title="stream processing per frame", show_header=False)
    for key, value in figures.items():
        table.add_row(key, json.dumps(value) if isinstance(value, (dict, list)) else f"{value}")
    Console().print(table)
    return 0
