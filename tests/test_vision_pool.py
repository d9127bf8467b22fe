"""`VisionProcesses`: the face work in worker processes gives the same answers as in-process,
its refusals keep their reason and image, and a dead or stuck worker fails only its own call
and is replaced."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from service.app.vision_pool import (
    InProcessVision,
    VisionProcesses,
    VisionUnavailable,
    VisionWorkerError,
    default_process_count,
)
from service.config import load_settings
from service.vision import subject
from service.vision.pipeline import FacePipeline
from service.vision.subject import FrameWish, ImageRejected
from tools.analyze import sample_images
from tools.bench.pipeline import framed_face

CONFIG = load_settings(vision={"threads": 2}).service_pipeline_config()


@pytest.fixture(scope="module")
def pipeline() -> FacePipeline:
    return FacePipeline(CONFIG)


@pytest.fixture(scope="module")
def portraits(pipeline: FacePipeline, tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """Single-face 480x640 JPEG portraits from the model packages' sample photos."""
    photos = [p.read_bytes() for p in sample_images(tmp_path_factory.mktemp("samples"))]
    framed = [f for photo in photos for f in framed_face(pipeline, photo, (480, 640))]
    return [f for f in framed if len(pipeline.analyse(f)) == 1][:3]


@pytest.fixture
def workers() -> Iterator[VisionProcesses]:
    processes = VisionProcesses(CONFIG, count=1)
    yield processes
    processes.close()


def _blank() -> bytes:
    return cv2.imencode(".png", np.full((240, 320, 3), 128, np.uint8))[1].tobytes()


def _wait_dead(pid: int) -> None:
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def test_a_worker_answers_as_the_pipeline_does_in_process(
    workers: VisionProcesses, pipeline: FacePipeline, portraits: list[bytes]
) -> None:
    local = InProcessVision(pipeline)
    remote = workers.best_probe(portraits[:2])
    here = local.best_probe(portraits[:2])
    assert np.allclose(remote.embedding.vector, here.embedding.vector, atol=1e-5)
    assert remote.quality.score == pytest.approx(here.quality.score)
    template = workers.single_face(portraits[0], 0, template=True)
    assert np.allclose(
        template.embedding.vector, local.single_face(portraits[0], 0, True).embedding.vector,
        atol=1e-5,
    )  # fmt: skip


def test_refusals_come_back_with_their_reason_and_image(
    workers: VisionProcesses, portraits: list[bytes]
) -> None:
    with pytest.raises(ImageRejected) as corrupt:
        workers.best_probe([portraits[0], b"\x89PNG\r\n\x1a\n not really"])
    assert (corrupt.value.reason, corrupt.value.index) == ("IMAGE_CORRUPT", 1)
    with pytest.raises(ImageRejected) as none:
        workers.single_face(_blank(), 3, template=False)
    assert (none.value.reason, none.value.index) == ("NO_FACE", 3)
    with pytest.raises(ImageRejected) as no_frame:
        workers.best_probe([_blank(), _blank()])
    assert (no_frame.value.reason, no_frame.value.index) == ("NO_FACE", None)
    assert workers.single_face(portraits[0], 0, template=False).embedding is not None


def test_each_task_is_written_once_and_a_worker_runs_only_registered_tasks(
    workers: VisionProcesses, portraits: list[bytes]
) -> None:
    """Both implementations run the same `subject.TASKS` functions; a worker asked for any
    other function by name refuses it and keeps serving."""
    assert set(subject.TASKS) == {"best_probe", "single_face", "stream_frame"}
    with pytest.raises(RuntimeError, match="KeyError"):
        workers.run_task(os.getcwd)
    found = workers.stream_frame(portraits[0], 0, FrameWish())
    assert found is not None and found.embedding is not None


def test_a_killed_worker_fails_its_call_and_is_replaced(
    workers: VisionProcesses, portraits: list[bytes]
) -> None:
    [before] = workers.pids()
    calls: list[object] = []
    frames = portraits * 3  # several frames: long enough to be killed mid-call
    call = threading.Thread(target=lambda: calls.append(_outcome(workers, frames)))
    call.start()
    time.sleep(0.05)
    os.kill(before, signal.SIGKILL)
    call.join(30)
    assert isinstance(calls[0], VisionWorkerError)
    # The next call waits for the replacement, which answers.
    assert workers.best_probe(portraits[:1]).embedding is not None
    [after] = workers.pids()
    assert after != before
    _wait_dead(before)


def test_a_worker_that_overruns_is_killed_and_replaced(
    workers: VisionProcesses, portraits: list[bytes]
) -> None:
    [before] = workers.pids()
    workers.timeout_s = 0.001
    with pytest.raises(VisionWorkerError):
        workers.best_probe(portraits)
    workers.timeout_s = 60.0
    assert workers.best_probe(portraits[:1]).embedding is not None
    assert workers.pids() != [before]


def test_a_call_that_finds_every_worker_busy_past_the_limit_is_unavailable(
    workers: VisionProcesses, portraits: list[bytes]
) -> None:
    calls: list[object] = []
    long_call = threading.Thread(target=lambda: calls.append(_outcome(workers, portraits * 4)))
    long_call.start()
    time.sleep(0.05)  # the long call holds the only worker
    workers.timeout_s = 0.01
    try:
        with pytest.raises(VisionUnavailable, match="no vision worker free"):
            workers.best_probe(portraits[:1])
    finally:
        workers.timeout_s = 60.0
        long_call.join(60)
    assert not isinstance(calls[0], Exception)  # the busy worker finished its own call


def test_closing_stops_every_worker(portraits: list[bytes]) -> None:
    processes = VisionProcesses(CONFIG, count=2)
    pids = processes.pids()
    assert len(pids) == 2
    processes.close()
    for pid in pids:
        _wait_dead(pid)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(VisionUnavailable):
        processes.best_probe(portraits[:1])


def test_a_worker_that_cannot_load_its_models_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(VisionWorkerError, match="could not start"):
        VisionProcesses(CONFIG, count=1, models_dir=tmp_path)


def _outcome(workers: VisionProcesses, frames: list[bytes]) -> object:
    try:
        return workers.best_probe(frames)
    except Exception as exc:
        return exc


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "150000 100000\n"}, 2),  # cgroup v2: 1.5 CPUs -> 2 workers
        ({"cpu.max": "max 100000\n"}, None),  # no quota: every core
        ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),  # no cgroup files
    ],
)
def test_the_default_worker_count_follows_a_container_cpu_quota(
    tmp_path: Path, files: dict[str, str], expected: int | None
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    cores = len(os.sched_getaffinity(0))
    want = cores if expected is None else min(cores, expected)
    assert default_process_count(tmp_path) == want
