"""How the mesh liveness cues separate live video from attacks (a report command).

Run: `python -m tools.evaluation.cues_report [--data DIR]`.

Runs the face pipeline's mesh cues over the development videos (`spoof/apfol_videos`: a live
person, `real2.webm`, and the same person replayed on a phone, `fake2.webm`) and over attacks
rendered from the live video by `tools.evaluation.attacks` (printed photos and screen replays
of single frames, a screen replay of the whole video). Frames are taken at 15 fps, the kiosk's
rate. For each source it prints the pose range (5th to 95th percentile), the eye openness, the
blinks counted, and the planarity residual over sliding 2-second windows; then the median cost
of mesh plus cues per frame. Figures for the report, not for a unit test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from service.vision.liveness_cues import FrameCues, blink_count, planarity_residual
from service.vision.pipeline import FacePipeline, PipelineConfig, primary_face
from service.vision.types import Image
from tools.evaluation.attacks import printed_photo, replayed_video, screen_replay
from tools.evaluation.video import read_video

KIOSK_FPS = 15.0
WINDOW_S = 2.0
WINDOW_STEP = 5  # frames between window starts
ATTACK_SEEDS = ((1, 0.1), (2, 0.45), (3, 0.8))  # (seed, where in the live video the still is)
DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


@dataclass(frozen=True)
class Track:
    """Cues of consecutive frames (None where no face was found) and the mesh+cues cost."""

    cues: list[FrameCues | None]
    cost_ms: list[float]


def track(pipeline: FacePipeline, frames: list[np.ndarray]) -> Track:
    """Detect the primary face of each frame and compute its cues, timing mesh + cues."""
    cues: list[FrameCues | None] = []
    cost = []
    for bgr in frames:
        image = Image(rgb=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), format="video")
        face = primary_face(pipeline.detect(image), image)
        if face is None:
            cues.append(None)
            continue
        start = time.perf_counter()
        cues.append(pipeline.cues(image, face))
        cost.append((time.perf_counter() - start) * 1000.0)
    return Track(cues, cost)


def window_residuals(cues: list[FrameCues | None], fps: float = KIOSK_FPS) -> list[float]:
    """Planarity residual of each WINDOW_S window holding a face in at least 80% of frames."""
    size = int(WINDOW_S * fps)
    out = []
    for start in range(0, len(cues) - size + 1, WINDOW_STEP):
        seen = [c.points for c in cues[start : start + size] if c is not None]
        if len(seen) >= 0.8 * size:
            out.append(planarity_residual(seen))
    return out


def summarise(cues: list[FrameCues | None], fps: float = KIOSK_FPS) -> dict[str, object]:
    """The figures of one source."""
    seen = [(i, c) for i, c in enumerate(cues) if c is not None]
    if not seen:
        return {"frames": len(cues), "faces": 0}

    def spread(values: list[float]) -> list[float]:
        return [round(float(np.percentile(values, q)), 1) for q in (5, 95)]

    openness = [c.eye_openness for _, c in seen]
    residuals = window_residuals(cues, fps)
    return {
        "frames": len(cues),
        "faces": len(seen),
        "yaw_p5_p95": spread([c.yaw for _, c in seen]),
        "pitch_p5_p95": spread([c.pitch for _, c in seen]),
        "roll_p5_p95": spread([c.roll for _, c in seen]),
        "eye_openness_median": round(statistics.median(openness), 3),
        "eye_openness_min": round(min(openness), 3),
        "blinks": blink_count(
            openness, [i / fps for i, _ in seen], [(c.yaw, c.pitch) for _, c in seen]
        ),
        "planarity_windows": len(residuals),
        "planarity_min_median_max": (
            [round(f(residuals), 4) for f in (min, statistics.median, max)] if residuals else []
        ),
    }


def run(data: Path, threads: int, attack_frames: int) -> dict[str, object]:
    pipeline = FacePipeline(PipelineConfig(threads=threads))
    if pipeline.facemesh is None:
        raise RuntimeError("the manifest names no face mesh model: run `faceguard models build`")
    videos = data / "spoof" / "apfol_videos"
    live = read_video(videos / "real2.webm", KIOSK_FPS)
    sources: dict[str, list[np.ndarray]] = {
        "live real2.webm": live,
        "phone replay fake2.webm": read_video(videos / "fake2.webm", KIOSK_FPS),
        "replayed_video(real2)": replayed_video(live, seed=1, fps=KIOSK_FPS),
    }
    for seed, where in ATTACK_SEEDS:
        still = live[int(where * (len(live) - 1))]
        sources[f"printed_photo seed {seed}"] = printed_photo(still, attack_frames, KIOSK_FPS, seed)
        sources[f"screen_replay seed {seed}"] = screen_replay(still, attack_frames, KIOSK_FPS, seed)
    results: dict[str, object] = {}
    costs: list[float] = []
    for name, frames in sources.items():
        tracked = track(pipeline, frames)
        costs += tracked.cost_ms
        results[name] = summarise(tracked.cues)
    results["mesh_and_cues_ms_median"] = round(statistics.median(costs), 2)
    results["threads"] = threads
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="development data folder")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--attack-frames", type=int, default=45, help="frames per photo attack")
    args = parser.parse_args(argv)
    results = run(args.data, args.threads, args.attack_frames)
    sys.stdout.write(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
