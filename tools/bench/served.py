"""The service under a benchmark: `faceguard serve` as its own process on a loopback port with a
fresh data directory (so client and server share no interpreter), and the enrolled customers
the benchmarks verify against (single-face portraits made from the sample photos).

Shared by `faceguard bench service`, `bench abuse` and `bench callbacks`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from faceguard.v1 import common_pb2, enrollment_pb2, enrollment_pb2_grpc
from service.config import load_settings
from service.vision.pipeline import FacePipeline
from tools.analyze import sample_images
from tools.bench.pipeline import framed_face

FACEGUARD = Path(sys.executable).with_name("faceguard")
HOST = "127.0.0.1"  # a benchmark only ever talks to a server it started on loopback


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class ServedProcess:
    """`faceguard serve --dev-key` on `port`, started, killed (SIGKILL) and started again at
    will; `env` adds to this process's environment; `log` collects its output (appended, so
    a restarted process adds to it). A context manager that stops it."""

    def __init__(
        self, data: Path, port: int, env: dict[str, str] | None = None, log: Path | None = None
    ) -> None:
        self.command = [str(FACEGUARD), "serve", "--data-dir", str(data), "--host", HOST,
                        "--port", str(port), "--dev-key"]  # fmt: skip
        self.env = {**os.environ, **(env or {})}
        self.address = f"{HOST}:{port}"
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> ServedProcess:
        if self.log is None:
            self.process = subprocess.Popen(
                self.command, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            return self
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.command, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        return self

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=120)

    def __enter__(self) -> ServedProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_ready(stub: enrollment_pb2_grpc.EnrollmentStub, timeout: float = 180.0) -> None:
    """Until the service answers a List (its models are loaded), at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            stub.List(enrollment_pb2.ListRequest(page_size=1), timeout=5)
            return
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def sample_portraits() -> list[bytes]:
    """Single-face 480x640 portraits of the distinct people in the sample photos."""
    pipeline = FacePipeline(load_settings().service_pipeline_config())
    with tempfile.TemporaryDirectory() as tmp:
        photos = [p.read_bytes() for p in sample_images(Path(tmp))]
    portraits = [f for photo in photos for f in framed_face(pipeline, photo, (480, 640))]
    return [p for p in portraits if _one_clean_face(pipeline, p)]


def _one_clean_face(pipeline: FacePipeline, portrait: bytes) -> bool:
    analyses = pipeline.analyse(portrait)
    return len(analyses) == 1 and not analyses[0].quality.reasons


def enrol_portraits(
    stub: enrollment_pb2_grpc.EnrollmentStub, portraits: list[bytes], workers: int
) -> tuple[dict[str, bytes], float]:
    """Enrol each portrait as its own customer; returns the enrolled ones and images/s.

    A person who appears in two sample photos is refused the second time
    (DUPLICATE_IDENTITY), as the service should; those are left out of the verify runs.
    """
    consent = enrollment_pb2.Consent(purpose="benchmark", channel="bench", operator_id="bench")
    consent.given_at.GetCurrentTime()

    def one(i: int) -> str | None:
        customer_id = f"bench-{i:04d}"
        request = enrollment_pb2.EnrollRequest(
            customer_id=customer_id, images=[common_pb2.Image(data=portraits[i])], consent=consent
        )
        try:
            stub.Enroll(request, timeout=60)
        except grpc.RpcError:
            return None
        return customer_id

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        enrolled = list(pool.map(one, range(len(portraits))))
    rate = len(portraits) / (time.perf_counter() - start)
    return {cid: portraits[i] for i, cid in enumerate(enrolled) if cid}, rate
