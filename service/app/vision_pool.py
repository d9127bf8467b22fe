"""Where the face pipeline runs for requests and stream frames: in worker processes, or here.

Worker processes (`VisionProcesses`, the service's default) for two reasons:
- Throughput. Python runs one thread at a time, and the pipeline's own Python (non-maximum
  suppression, crops, quality) holds that lock between model runs. In one process, 8
  concurrent verifies kept only 1.7 of 2 cores busy, and each verify cost about a quarter more
  CPU than it did alone.
- Containment. A decoder or model that crashes on a crafted image takes down one worker, not
  the service, and a worker that overruns the time limit is killed. Either way that call fails
  with `VisionWorkerError` and a fresh worker takes the dead one's place.

Each worker serves one call at a time over its own pipe: the image bytes go in, the analysis
and the stage timings come back (see `service.vision.subject`). A call goes to the idle worker
used most recently, whose caches are warm, and runs its model runs side by side only when
every other worker is idle: under load, splitting a call only adds threads competing for the
same cores.

`InProcessVision` runs the same functions on a pipeline in this process (`vision.processes =
0`), for tools and tests that want no child processes.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import signal
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TypeVar

from service.metrics import Observer, instrument_pipeline
from service.modelpack.manifest import MODELS_DIR
from service.vision import subject
from service.vision.pipeline import FacePipeline, PipelineConfig
from service.vision.subject import FrameWish
from service.vision.types import FaceAnalysis

log = logging.getLogger(__name__)
T = TypeVar("T")

CGROUP = Path("/sys/fs/cgroup")
STARTUP_TIMEOUT_S = 300.0  # loading and checking every model on a slow, busy machine


class Vision(ABC):
    """The face work the engine and stream sessions ask for (see `service.vision.subject`),
    and the versions of the models doing it (task -> version, for every decision).

    Each task is written once, here: its method hands its `subject` function (registered in
    `subject.TASKS`) and arguments to `run_task`, which the in-process and the worker-process
    implementations define. A new task is a `vision_task` function in `subject` and its
    method here.
    """

    allow_multiple: bool

    @property
    @abstractmethod
    def model_versions(self) -> dict[str, str]: ...

    @abstractmethod
    def instrument(self, observe: Observer) -> None:
        """Report each pipeline stage's duration to `observe` from now on."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def run_task(self, task: Callable[..., T], *args: object) -> T:
        """`task(pipeline, *args)` on a pipeline of this implementation's."""

    def best_probe(self, frames: list[bytes]) -> FaceAnalysis:
        return self.run_task(subject.best_probe, frames, self.allow_multiple)

    def single_face(self, data: bytes, index: int, template: bool) -> FaceAnalysis:
        return self.run_task(subject.single_face, data, index, template, self.allow_multiple)

    def stream_frame(self, data: bytes, index: int, wish: FrameWish) -> FaceAnalysis | None:
        return self.run_task(subject.stream_frame, data, index, wish)


class VisionWorkerError(Exception):
    """A vision worker died, overran the time limit or could not start."""


class VisionUnavailable(VisionWorkerError):
    """No vision worker could take the call: all busy past the time limit, or none running."""


@dataclass(frozen=True)
class InProcessVision(Vision):
    """The face work on a pipeline of this process."""

    pipeline: FacePipeline
    allow_multiple: bool = False

    @property
    def model_versions(self) -> dict[str, str]:
        return self.pipeline.model_versions

    def instrument(self, observe: Observer) -> None:
        instrument_pipeline(self.pipeline, observe)

    def run_task(self, task: Callable[..., T], *args: object) -> T:
        return task(self.pipeline, *args)

    def close(self) -> None:
        """Nothing to release: the pipeline is the caller's."""


@dataclass(eq=False)
class _Worker:
    process: BaseProcess
    conn: Connection


def cpu_quota(cgroup: Path = CGROUP) -> float | None:
    """The CPUs a container's cgroup quota allows (v2 `cpu.max` or v1 CFS); None: no quota."""
    try:
        if (cgroup / "cpu.max").is_file():
            quota, period = (cgroup / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        quota_us = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 else quota_us / period_us


def default_process_count(cgroup: Path = CGROUP) -> int:
    """One worker per core this process may use: its CPU affinity, capped by a container's CPU
    quota, which affinity does not show (2 CPUs on a 64-core host would start 64 workers)."""
    cores = len(os.sched_getaffinity(0))
    quota = cpu_quota(cgroup)
    return cores if quota is None else max(1, min(cores, math.ceil(quota)))


class VisionProcesses(Vision):
    """The face work in `count` worker processes, each with its own pipeline.

    `timeout_s` bounds both the wait for a free worker and one call's work. Stage durations
    measured in the workers go to the observer given to `instrument` (none until then).
    """

    def __init__(
        self,
        config: PipelineConfig,
        count: int,
        allow_multiple: bool = False,
        timeout_s: float = 30.0,
        models_dir: Path = MODELS_DIR,
    ) -> None:
        if count < 1:
            raise ValueError("at least one vision worker is needed")
        self.config = config
        self.allow_multiple = allow_multiple
        self.timeout_s = timeout_s
        self.models_dir = models_dir
        self._observe: Observer = lambda stage, seconds: None
        self._context = multiprocessing.get_context("spawn")  # never fork a gRPC server
        self._changed = threading.Condition()
        self._all: set[_Worker] = set()
        self._idle: list[_Worker] = []
        self._busy = 0
        self._starting = 0
        self._closed = False
        started = [self._spawn() for _ in range(count)]  # they load their models at once
        try:
            versions = [self._await_ready(worker) for worker in started]
        except BaseException:
            self.close()
            raise
        self._model_versions = versions[0]  # every worker loads the same verified files
        self._idle = started
        log.info("vision workers ready: %d processes", count)

    @property
    def model_versions(self) -> dict[str, str]:
        return self._model_versions

    def instrument(self, observe: Observer) -> None:
        self._observe = observe

    def pids(self) -> list[int]:
        """The worker processes' ids, for operators (and tests) to find them."""
        with self._changed:
            return sorted(w.process.pid for w in self._all if w.process.pid is not None)

    def close(self) -> None:
        """Stop every worker: each exits when its pipe closes; stragglers are killed."""
        with self._changed:
            self._closed = True
            workers = list(self._all)
            self._all.clear()
            self._idle.clear()
            self._changed.notify_all()
        for worker in workers:
            worker.conn.close()
        for worker in workers:
            _stop(worker.process)

    # ---- one call ----------------------------------------------------------------------

    def run_task(self, task: Callable[..., T], *args: object) -> T:
        """Send the task's name and arguments to an idle worker and wait for its answer."""
        name = task.__name__
        worker, spread = self._take()
        try:
            worker.conn.send((name, args, spread))
            if not worker.conn.poll(self.timeout_s):
                raise TimeoutError(f"no answer within {self.timeout_s:.0f} s")
            ok, value, stages = worker.conn.recv()
        except BaseException as exc:  # dead, stuck or interrupted: its state is unknown
            self._replace(worker)
            log.error("vision worker %s failed during %s: %r", worker.process.pid, name, exc)
            raise VisionWorkerError(f"the vision worker failed during {name}") from exc
        self._give_back(worker)
        for stage, seconds in stages:
            self._observe(stage, seconds)
        if not ok:
            raise value
        return value

    def _take(self) -> tuple[_Worker, bool]:
        """The most recently used idle worker, and whether it may spread its model runs (no
        other worker is busy)."""
        with self._changed:
            usable = self._changed.wait_for(
                lambda: self._idle or self._closed or self._busy + self._starting == 0,
                timeout=self.timeout_s,
            )
            if not usable:
                raise VisionUnavailable(f"no vision worker free within {self.timeout_s:.0f} s")
            if not self._idle:
                raise VisionUnavailable("no vision worker is running")
            spread = self._busy == 0
            self._busy += 1
            return self._idle.pop(), spread

    def _give_back(self, worker: _Worker) -> None:
        with self._changed:
            self._busy -= 1
            if self._closed:
                return
            self._idle.append(worker)
            self._changed.notify()

    # ---- worker lifecycle --------------------------------------------------------------

    def _spawn(self) -> _Worker:
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=_work, args=(child, self.config, self.models_dir), daemon=True,
            name="faceguard-vision",
        )  # fmt: skip
        process.start()
        child.close()  # the worker holds the only other end: its death reads as EOF here
        worker = _Worker(process, parent)
        with self._changed:
            self._all.add(worker)
        return worker

    def _await_ready(self, worker: _Worker) -> dict[str, str]:
        """The worker's model versions, once its models are loaded."""
        try:
            if not worker.conn.poll(STARTUP_TIMEOUT_S):
                raise VisionWorkerError(f"not ready within {STARTUP_TIMEOUT_S:.0f} s")
            status, detail = worker.conn.recv()
        except (EOFError, OSError) as exc:
            raise VisionWorkerError("the vision worker exited while starting") from exc
        if status != "ready":
            raise VisionWorkerError(f"the vision worker could not start: {detail}")
        return detail

    def _replace(self, worker: _Worker) -> None:
        """Kill a failed worker and start another in the background; it joins the idle ones
        once its models are loaded."""
        with self._changed:
            self._busy -= 1
            self._all.discard(worker)
            if self._closed:
                return
            self._starting += 1
        worker.conn.close()
        _stop(worker.process, grace=0.0)
        threading.Thread(target=self._restart, name="vision-restart", daemon=True).start()

    def _restart(self) -> None:
        worker = None
        try:
            worker = self._spawn()
            self._await_ready(worker)
        except Exception:
            log.exception("a replacement vision worker did not start")
            ready = False
        else:
            ready = True
        with self._changed:
            self._starting -= 1
            keep = ready and not self._closed
            if keep:
                self._idle.append(worker)
            elif worker is not None:
                self._all.discard(worker)
            self._changed.notify_all()
        if worker is not None and not keep:
            worker.conn.close()
            _stop(worker.process, grace=0.0)


def _stop(process: BaseProcess, grace: float = 5.0) -> None:
    process.join(grace)
    if process.is_alive():
        process.kill()
        process.join(5.0)


def _work(conn: Connection, config: PipelineConfig, models_dir: Path) -> None:
    """A worker's life: load the pipeline, then answer calls until the pipe closes.

    Signals are the serving process's business: on SIGTERM it finishes its in-flight calls,
    which need their workers, then closes the pipes.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        pipeline = FacePipeline(config, models_dir=models_dir)
    except Exception as exc:
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    stages: list[tuple[str, float]] = []
    instrument_pipeline(pipeline, lambda stage, seconds: stages.append((stage, seconds)))
    conn.send(("ready", pipeline.model_versions))
    while True:
        try:
            task, args, spread = conn.recv()
        except (EOFError, OSError):
            return
        stages.clear()
        pipeline.side_by_side.spread = spread
        try:
            reply = (True, subject.TASKS[task](pipeline, *args), stages)
        except subject.ImageRejected as exc:
            reply = (False, exc, stages)
        except Exception as exc:  # a bug: report it whole, as the serving process would
            log.exception("vision task %s failed", task)
            reply = (False, RuntimeError(f"{type(exc).__name__}: {exc}"), stages)
        conn.send(reply)
