"""Streamed-session liveness evaluation: APCER per attack type, BPCER on live video.

Material, each analysed once frame by frame through the real pipeline (detector, passive
model, embedding, face mesh cues), then replayed into sessions (`Session`, the service's own
state machine) at the kiosk rate of 15 frames/s:

- `printed_photo`, `screen_replay`: part A's generators over stills (face-api.js and LFW);
- `replayed_video`: the live video shown on a generated phone screen;
- `recorded_replay`: the real phone-replay recording (fake2.webm);
- live: the live video (real2.webm).

Every attack sequence is run once per ordered sequence of `challenges_per_session` distinct
challenges (the attacker's material cannot hear the prompt, so each is its own trial; figures
are grouped by the first challenge) and once without a challenge; videos from several start
offsets. What the data cannot show: a recorded live video cannot answer a random
challenge, so BPCER with a challenge is not measurable here: the live video's challenge
sessions are reported as `unresponsive_live_pass_rate` (how often doing nothing in particular
passes, i.e. the chance a replayed recording has); people who do respond are measured by
`faceguard eval liveness --responders` (tools/evaluation/responders.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import permutations
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from service.config import StreamSettings
from service.errors import FaceguardError
from service.liveness.session import Observation, Session
from service.liveness.session_policy import Challenge, LivenessPolicy, SessionLimits
from service.vision.liveness_cues import planarity_residual
from service.vision.pipeline import FacePipeline, primary_face
from service.vision.types import Image
from tools.evaluation import attacks
from tools.evaluation.runner import Progress
from tools.evaluation.video import read_video

log = logging.getLogger(__name__)

FPS = 15.0
STILL_SIDE = 480  # stills are scaled to a kiosk-like frame before the attack is rendered
OFFSET_S = 0.5  # video sessions start every OFFSET_S seconds


@dataclass(frozen=True)
class Material:
    kind: str  # attack type, or "live"
    name: str
    observations: list[Observation]


def analyse(
    pipeline: FacePipeline, frames: Sequence[np.ndarray], fps: float = FPS
) -> list[Observation]:
    """Every frame's observation of its main face, fully analysed, at `fps` time steps."""
    observations = []
    for i, bgr in enumerate(frames):
        t = i / fps
        image = Image(rgb=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), format="RAW")
        face = primary_face(pipeline.detect(image), image)
        if face is None:
            observations.append(Observation(t, t))
            continue
        analysis = pipeline.analyse_faces(image, [face])[0]
        observations.append(Observation.of(t, t, analysis, pipeline.cues(image, face)))
    return observations


def run_session(
    observations: Sequence[Observation], start: int, limits: SessionLimits,
    policy: LivenessPolicy, sequence: Sequence[Challenge] | None,
) -> tuple[bool, str]:  # fmt: skip
    """(passed, how it ended) of one session over the material from frame `start`, asking
    the challenges of `sequence` in order (None: no challenge)."""
    began = observations[start].received_s
    asked = iter(sequence or ())
    session = Session(
        limits, policy, began, ask_challenge=sequence is not None,
        choose=lambda _: next(asked),
    )  # fmt: skip
    try:
        for obs in observations[start:]:
            now = obs.received_s
            if now >= session.next_timer_s():
                session.expire(now)
            if session.done:
                break
            session.observe(obs)
        session.close()
    except FaceguardError as error:
        return False, error.reason
    report = session.report()
    return report.passed, report.response or ("PASSED" if report.passed else "FAILED")


def _starts(observations: Sequence[Observation], limits: SessionLimits) -> list[int]:
    """Start frames every OFFSET_S seconds that leave room for baseline and window."""
    needed = limits.baseline_frames + int(limits.response_window_s * FPS)
    step = max(1, int(OFFSET_S * FPS))
    return list(range(0, max(1, len(observations) - needed), step))


def _stills(roots: Iterable[Path], count: int) -> list[Path]:
    """The first image of each person, alternating between the roots, `count` in all."""
    per_root = [
        [sorted(p for p in person.iterdir() if p.is_file())[0] for person in sorted(root.iterdir())
         if person.is_dir() and any(person.iterdir())]
        for root in roots
    ]  # fmt: skip
    mixed = [p for group in zip(*per_root, strict=False) for p in group]
    return mixed[:count]


def _kiosk_frame(path: Path) -> np.ndarray:
    image = cv2.imread(str(path))
    if image is None:
        raise FileNotFoundError(f"cannot read {path}")
    return cv2.resize(image, (STILL_SIDE, STILL_SIDE), interpolation=cv2.INTER_CUBIC)


def materials(
    pipeline: FacePipeline, stills: list[Path], live_video: Path, replay_video: Path,
    seconds: float,
) -> list[Material]:  # fmt: skip
    frames = int(seconds * FPS)
    live = read_video(live_video, FPS)
    jobs: list[tuple[str, str, Any]] = []
    for i, still in enumerate(stills):
        jobs.append(
            (
                "printed_photo",
                still.stem,
                lambda s=still, i=i: attacks.printed_photo(_kiosk_frame(s), frames, FPS, i),
            )
        )
        jobs.append(
            (
                "screen_replay",
                still.stem,
                lambda s=still, i=i: attacks.screen_replay(_kiosk_frame(s), frames, FPS, i),
            )
        )
    for seed in range(2):
        jobs.append(
            (
                "replayed_video",
                f"{live_video.stem}-{seed}",
                lambda seed=seed: attacks.replayed_video(live, seed, FPS),
            )
        )
    jobs.append(("recorded_replay", replay_video.stem, lambda: read_video(replay_video, FPS)))
    jobs.append(("live", live_video.stem, lambda: live))  # fmt: skip
    found = []
    with Progress(transient=True) as progress:
        task = progress.add_task("analysing sessions' frames", total=len(jobs))
        for kind, name, make in jobs:
            found.append(Material(kind, name, analyse(pipeline, make())))
            progress.advance(task)
    return found


def evaluate(
    found: list[Material], settings: StreamSettings, passive_threshold: float
) -> dict[str, Any]:
    """APCER per attack type and challenge, BPCER of the live video without a challenge."""
    limits = settings.limits()
    policy = settings.liveness.with_passive(passive_threshold)
    count = limits.challenges_per_session
    modes: list[tuple[Challenge, ...] | None] = [*permutations(limits.challenges, count), None]
    table: dict[str, dict[str, list[bool]]] = {}
    endings: dict[str, dict[str, int]] = {}
    residuals: dict[str, list[float]] = {}
    for material in found:
        points = [o.cues.points for o in material.observations if o.cues is not None]
        residuals.setdefault(material.kind, []).append(planarity_residual(points))
        starts = _starts(material.observations, limits) if material.kind in (
            "live", "replayed_video", "recorded_replay") else [0]  # fmt: skip
        for mode in modes:
            key = str(mode[0]) if mode else "no_challenge"  # grouped by the first challenge
            for start in starts:
                passed, ending = run_session(material.observations, start, limits, policy, mode)
                table.setdefault(material.kind, {}).setdefault(key, []).append(passed)
                counts = endings.setdefault(f"{material.kind}/{key}", {})
                counts[ending] = counts.get(ending, 0) + 1

    def rate(values: list[bool]) -> float:
        return round(float(np.mean(values)), 4) if values else float("nan")

    figures: dict[str, Any] = {"apcer": {}, "sessions": {}}
    for kind, by_mode in table.items():
        challenged = [v for mode, vs in by_mode.items() if mode != "no_challenge" for v in vs]
        if kind == "live":
            figures["bpcer_no_challenge"] = rate([not v for v in by_mode["no_challenge"]])
            figures["unresponsive_live_pass_rate"] = {m: rate(v) for m, v in by_mode.items()
                                                      if m != "no_challenge"}  # fmt: skip
            figures["sessions"]["live"] = len(by_mode["no_challenge"])
            continue
        figures["apcer"][kind] = {"with_challenge": rate(challenged)} | {
            m: rate(v) for m, v in by_mode.items()
        }
        figures["sessions"][kind] = len(challenged)
    figures["session_endings"] = endings
    figures["motion_residual_median"] = {
        k: round(float(np.median(v)), 4) for k, v in residuals.items()
    }
    figures["unmeasured"] = (
        "BPCER with a challenge: the live video cannot answer a random prompt; people who "
        "respond are measured by --responders"
    )
    return figures


def stream_figures(
    pipeline: FacePipeline, settings: StreamSettings, passive_threshold: float, shared: Path,
    count: int, seconds: float,
) -> dict[str, Any]:  # fmt: skip
    """The streamed-session figures over the shared development data."""
    if pipeline.facemesh is None:
        raise FileNotFoundError("the face mesh model is not built: no landmark cues to evaluate")
    stills = _stills([shared / "faces" / "faceapi_bbt", shared / "faces" / "lfw"], count)
    videos = shared / "spoof" / "apfol_videos"
    found = materials(pipeline, stills, videos / "real2.webm", videos / "fake2.webm", seconds)
    return {"stills": len(stills)} | evaluate(found, settings, passive_threshold)
