"""`faceguard bench abuse`: another kiosk's Verify latency while one kiosk certificate attacks.

Starts `faceguard serve` as a separate process with mutual TLS on a loopback port (a fresh data
directory and development certificates, default limits), enrols single-face portraits, then
times a victim kiosk (`kiosk-K-002`) doing paced Verify calls in three phases:
- baseline: nobody else calls;
- streams: the attacker (`kiosk-K-001`) holds `--streams` VerifyStreams that send a faceless
  frame every `--frame-every` seconds and `--watches` `grpc.health.v1.Health/Watch` streams;
- lying images: the attacker sends, from `--attackers` threads, Verify requests of ten small
  JPEGs whose headers claim 6000x6000 (flat grey, about 140 KB each), retrying when refused.

Each phase reports the victim's median and p95 latency, its failed calls by reason, and what
the attacker's calls got (accepted, or refused by reason). Bounded: at most `--calls` victim
calls in at most `--phase-s` seconds per phase, every call with a deadline (a victim call that
waits 10 s fails DEADLINE_EXCEEDED and counts as 10 s), and the attack ends with its phase.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image as PILImage
from rich.console import Console

from enrollment.client import error_reason, open_channel
from faceguard.v1 import common_pb2, enrollment_pb2_grpc, verification_pb2, verification_pb2_grpc
from service.cli.certs import write_dev_pki
from tools.bench.served import (
    HOST,
    ServedProcess,
    enrol_portraits,
    free_port,
    sample_portraits,
    wait_ready,
)

log = logging.getLogger(__name__)

VICTIM, ATTACKER, ENROLMENT = "kiosk-K-002", "kiosk-K-001", "enrollment-desk"
VICTIM_PACE_S = 0.3  # the victim kiosk's gap between calls: inside the device rate limit
CALL_TIMEOUT_S = 10.0  # a victim call still waiting after this counts as DEADLINE_EXCEEDED
ATTACK_TIMEOUT_S = 60.0
LYING_SIDE = 6000


def lying_jpeg(side: int = LYING_SIDE) -> bytes:
    """A progressive JPEG of one flat grey whose header claims `side` x `side` pixels: about
    140 KB on the wire, a 36-megapixel decode for a decoder that decodes what the header says."""
    out = io.BytesIO()
    PILImage.new("L", (side, side), 128).save(out, "JPEG", quality=90, progressive=True)
    return out.getvalue()


def faceless_jpeg() -> bytes:
    """A 640x480 kiosk frame with no face in it."""
    ok, encoded = cv2.imencode(".jpg", np.full((480, 640, 3), 90, np.uint8))
    assert ok
    return encoded.tobytes()


class Tally:
    """Outcomes of calls by reason, from several threads."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, outcome: str) -> None:
        with self._lock:
            self._counts[outcome] += 1

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self._counts.items()))


def _channel(pki: Path, port: int, client: str) -> grpc.Channel:
    """A mutual-TLS channel to the server under test as `client` (a dev PKI name)."""
    return open_channel(
        f"{HOST}:{port}", pki / "ca.pem", pki / f"{client}.pem", pki / f"{client}.key"
    )


def _victim(
    pki: Path, port: int, enrolled: dict[str, bytes], calls: int, budget_s: float
) -> dict[str, Any]:
    """Paced Verify calls of the victim kiosk, at most `calls` of them and none started after
    `budget_s`: latency of every call, failures by reason."""
    ends = time.monotonic() + budget_s
    samples: list[float] = []
    failures = Tally()
    customers = sorted(enrolled)
    with _channel(pki, port, VICTIM) as channel:
        kiosk = verification_pb2_grpc.FaceVerificationStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        health_ok = 0
        for i in range(calls):
            if time.monotonic() > ends:
                break
            customer = customers[i % len(customers)]
            request = verification_pb2.VerifyRequest(
                customer_id=customer, frames=[common_pb2.Image(data=enrolled[customer])]
            )
            start = time.perf_counter()
            try:
                kiosk.Verify(request, timeout=CALL_TIMEOUT_S)
            except grpc.RpcError as error:
                failures.add(error_reason(error))
            samples.append((time.perf_counter() - start) * 1000.0)
            try:
                health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
                health_ok += 1
            except grpc.RpcError as error:
                failures.add(f"health:{error_reason(error)}")
            time.sleep(VICTIM_PACE_S)
    ordered = sorted(samples)
    return {
        "verify_median_ms": round(statistics.median(ordered), 1),
        "verify_p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1),
        "verify_calls": len(samples),
        "failed": failures.as_dict(),
        "health_checks_ok": health_ok,
    }


def _stream_attack(
    pki: Path, port: int, customer: str, streams: int, watches: int, frame_every: float
) -> Callable[[threading.Event], Tally]:
    """Faceless VerifyStreams and Health.Watch streams from one certificate until stopped."""
    frame = faceless_jpeg()

    def attack(stop: threading.Event) -> Tally:
        tally, lock, watching = Tally(), threading.Lock(), []
        with _channel(pki, port, ATTACKER) as channel:
            kiosk = verification_pb2_grpc.FaceVerificationStub(channel)
            health = health_pb2_grpc.HealthStub(channel)

            def requests() -> Iterator[verification_pb2.VerifyStreamRequest]:
                options = verification_pb2.StreamOptions(session_id=str(uuid.uuid4()))
                start = verification_pb2.VerifyStreamStart(customer_id=customer, options=options)
                yield verification_pb2.VerifyStreamRequest(start=start)
                while not stop.wait(frame_every):
                    image = common_pb2.Image(data=frame)
                    yield verification_pb2.VerifyStreamRequest(
                        frame=verification_pb2.StreamFrame(image=image)
                    )

            def hold_stream() -> None:
                while not stop.is_set():  # a stream the server ends is opened again
                    try:
                        for _ in kiosk.VerifyStream(requests(), timeout=ATTACK_TIMEOUT_S):
                            pass
                        tally.add("stream:OK")
                    except grpc.RpcError as error:
                        tally.add(f"stream:{error_reason(error)}")
                        stop.wait(0.5)

            def hold_watch() -> None:
                while not stop.is_set():
                    call = health.Watch(health_pb2.HealthCheckRequest(), timeout=ATTACK_TIMEOUT_S)
                    with lock:
                        watching.append(call)
                    try:
                        for _ in call:
                            pass
                    except grpc.RpcError as error:
                        if error.code() != grpc.StatusCode.CANCELLED:
                            tally.add(f"watch:{error_reason(error)}")
                            stop.wait(0.5)

            threads = [threading.Thread(target=hold_stream) for _ in range(streams)]
            threads += [threading.Thread(target=hold_watch) for _ in range(watches)]
            for thread in threads:
                thread.start()
            stop.wait()
            with lock:
                for call in watching:
                    call.cancel()
            for thread in threads:
                thread.join(ATTACK_TIMEOUT_S)
        return tally

    return attack


def _image_attack(
    pki: Path, port: int, customer: str, attackers: int
) -> Callable[[threading.Event], Tally]:
    """Verify requests of ten lying JPEGs, from `attackers` threads, until stopped."""
    frames = [common_pb2.Image(data=lying_jpeg())] * 10
    request = verification_pb2.VerifyRequest(customer_id=customer, frames=frames)

    def attack(stop: threading.Event) -> Tally:
        tally = Tally()
        with _channel(pki, port, ATTACKER) as channel:
            kiosk = verification_pb2_grpc.FaceVerificationStub(channel)

            def send() -> None:
                while not stop.is_set():
                    try:
                        kiosk.Verify(request, timeout=ATTACK_TIMEOUT_S)
                        tally.add("verify:OK")
                    except grpc.RpcError as error:
                        reason = error_reason(error)
                        tally.add(f"verify:{reason}")
                        if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                            stop.wait(0.2)

            threads = [threading.Thread(target=send) for _ in range(attackers)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        return tally

    return attack


def _under_attack(
    attack: Callable[[threading.Event], Tally], measure: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """Run `attack` in the background while `measure` runs (after it settles), then end it."""
    stop = threading.Event()
    result: list[Tally] = []
    attacker = threading.Thread(target=lambda: result.append(attack(stop)))
    attacker.start()
    time.sleep(2.0)  # the attack's calls reach the server and hold what they can
    try:
        measured = measure()
    finally:
        stop.set()
        attacker.join(ATTACK_TIMEOUT_S * 2)
    return measured | {"attacker_calls": result[0].as_dict() if result else {}}


def _server(pki: Path, data: Path, port: int) -> ServedProcess:
    """The service with mutual TLS: server certificate and client CA from `pki`."""
    env = {
        "FACEGUARD_SERVER__TLS_CERT": str(pki / "server.pem"),
        "FACEGUARD_SERVER__TLS_KEY": str(pki / "server.key"),
        "FACEGUARD_SECURITY__CLIENT_CA": str(pki / "ca.pem"),
        "FACEGUARD_OBSERVABILITY__LOG_FORMAT": "text",
    }
    return ServedProcess(data, port, env)


def measure_abuse(args: argparse.Namespace) -> dict[str, Any]:
    portraits = sample_portraits()
    with tempfile.TemporaryDirectory() as tmp:
        pki, data, port = Path(tmp) / "pki", Path(tmp) / "data", free_port()
        write_dev_pki(pki, ("localhost", HOST))
        with _server(pki, data, port):
            with _channel(pki, port, ENROLMENT) as channel:
                enrolment = enrollment_pb2_grpc.EnrollmentStub(channel)
                wait_ready(enrolment)
                enrolled, _ = enrol_portraits(enrolment, portraits, workers=2)
            # The attacker names a customer the victim never verifies.
            target, *victims = sorted(enrolled)
            victim_gallery = {c: enrolled[c] for c in victims}

            def victim() -> dict[str, Any]:
                return _victim(pki, port, victim_gallery, args.calls, args.phase_s)

            _victim(pki, port, victim_gallery, 3, args.phase_s)  # warm-up
            streams = _stream_attack(
                pki, port, target, args.streams, args.watches, args.frame_every
            )
            images = _image_attack(pki, port, target, args.attackers)
            return {
                "baseline": victim(),
                "streams_and_watches": _under_attack(streams, victim),
                "lying_images": _under_attack(images, victim),
                "attack": {
                    "streams": args.streams,
                    "watches": args.watches,
                    "frame_every_s": args.frame_every,
                    "image_attackers": args.attackers,
                    "lying_jpeg_bytes": len(lying_jpeg()),
                    "victim_pace_s": VICTIM_PACE_S,
                },
            }


def run_bench_abuse(args: argparse.Namespace) -> int:
    results = measure_abuse(args)
    if args.json:
        sys.stdout.write(json.dumps(results) + "\n")
    else:
        Console().print_json(json.dumps(results))
    return 0
