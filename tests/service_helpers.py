"""Shared helpers for the tests that run the gRPC service: data, settings, a served instance."""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from faceguard.v1 import common_pb2, enrollment_pb2
from service.api.server import Running, start
from service.app.index_backend import open_index
from service.config import GallerySettings, Settings
from service.gallery.gallery import Gallery
from service.store.customers import Store
from service.vision.pipeline import FacePipeline

FACEGUARD = Path(sys.executable).with_name("faceguard")

# The shared LFW copy is 150x150 (faces ~60 px wide): below the kiosk size gate, so the test
# service uses a gate sized for it, set the way an operator would (environment variables).
SMALL_FACE_ENV = {
    "FACEGUARD_QUALITY__MIN_FACE_PX": "45",
    "FACEGUARD_QUALITY__MIN_INTER_EYE_PX": "20",
}


def service_settings(data_dir: Path, **server: object) -> Settings:
    settings = Settings(
        quality={"min_face_px": 45, "min_inter_eye_px": 20},
        storage={"data_dir": data_dir, "dev_generate_key": True},
        server={"port": 0, "grace_seconds": 5} | server,
        vision={"threads": 1, "processes": 1},
    )
    return settings


def with_sections(settings: Settings, **sections: dict[str, object]) -> Settings:
    """`settings` with some fields of the named sections replaced, e.g.
    `with_sections(settings, vision={"processes": 0})`: one test server's differences."""
    update = {
        name: getattr(settings, name).model_copy(update=fields) for name, fields in sections.items()
    }
    return settings.model_copy(update=update)


def sink_risk(policy_file: Path, hmac_key_file: Path, sink_port: int, **more: object) -> dict:
    """Risk settings that deliver to a reference fraud sink on 127.0.0.1:`sink_port`, retrying
    at test speed (for `with_sections(settings, risk=...)`)."""
    return {
        "policy_file": policy_file, "callback_target": f"127.0.0.1:{sink_port}",
        "hmac_key_file": hmac_key_file, "backoff_initial_s": 0.05, "backoff_max_s": 0.5,
        "poll_interval_s": 0.05,
    } | more  # fmt: skip


@contextmanager
def serving(settings: Settings, grace: float = 1.0) -> Iterator[Running]:
    """The gRPC service started in this process from `settings`, stopped on leaving: for a
    test that needs a server of its own; modules share one through conftest's `serve`."""
    running = start(settings)
    try:
        yield running
    finally:
        running.stop(grace=grace)


@functools.cache
def _gate() -> FacePipeline:
    return FacePipeline(service_settings(Path("unused")).service_pipeline_config())


def passes_gate(path: Path) -> bool:
    """One face that passes the test service's quality gate (many LFW photos are posed)."""
    analyses = _gate().analyse(path.read_bytes())
    return len(analyses) == 1 and not analyses[0].quality.reasons


def best_quality(paths: list[Path]) -> Path:
    """The image whose face scores best at the gate: one that stays above it when a client
    re-encodes it (a posed photo near a limit can cross it)."""
    return max(paths, key=lambda path: _gate().analyse(path.read_bytes())[0].quality.score)


def people_with(shared: Path, minimum: int, count: int) -> list[tuple[str, list[Path]]]:
    """LFW people with at least `minimum` gate-passing images (sorted, deterministic)."""
    people = []
    for folder in sorted((shared / "faces" / "lfw").iterdir()):
        candidates = sorted(folder.glob("*.jpg"))
        if len(candidates) < minimum:
            continue
        images = [p for p in candidates[: minimum + 2] if passes_gate(p)][:minimum]
        if len(images) == minimum:
            people.append((folder.name, images))
        if len(people) == count:
            break
    return people


def image(path: Path) -> common_pb2.Image:
    return common_pb2.Image(data=path.read_bytes())


def consent() -> enrollment_pb2.Consent:
    record = enrollment_pb2.Consent(
        purpose="kiosk verification", channel="branch", operator_id="op-1"
    )
    record.given_at.GetCurrentTime()
    return record


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_serving(address: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"{address} did not become SERVING")


@contextmanager
def server_process(data_dir: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """`faceguard serve` as a separate process (so it can be killed -9)."""
    env = {**os.environ, **SMALL_FACE_ENV, "FACEGUARD_VISION__THREADS": "1"}
    process = subprocess.Popen(
        [str(FACEGUARD), "serve", "--data-dir", str(data_dir), "--port", str(port), "--dev-key"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_serving(f"127.0.0.1:{port}")
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=60)


def mtls_settings(
    data_dir: Path, pki: Path, client_ca: bool = True, **security: object
) -> Settings:
    """Test service settings with server TLS from `pki` (written by `service.cli.certs`), and
    mutual TLS unless `client_ca` is False; `security` overrides the limits."""
    settings = service_settings(data_dir, tls_cert=pki / "server.pem", tls_key=pki / "server.key")
    update = {"client_ca": pki / "ca.pem" if client_ca else None, **security}
    return settings.model_copy(update={"security": settings.security.model_copy(update=update)})


def tls_channel(port: int, pki: Path, client: str | None) -> grpc.Channel:
    """A channel to 127.0.0.1:`port` trusting `pki`'s CA, with `client`'s certificate if given."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.pem").read_bytes(),
        private_key=(pki / f"{client}.key").read_bytes() if client else None,
        certificate_chain=(pki / f"{client}.pem").read_bytes() if client else None,
    )
    return grpc.secure_channel(f"127.0.0.1:{port}", credentials)


def faiss_gallery(store: Store, data_dir: Path, dim: int, model: str) -> Gallery:
    """A gallery of `model`'s templates over the FAISS backend as the service opens it: the
    snapshot data_dir/index.faiss restored and healed, or rebuilt from the store."""
    return Gallery(store, open_index(GallerySettings(), store, model, dim, data_dir), model)
