"""`faceguard bench callbacks`: the callback guarantees and the cost of the risk checks.

Delivery: `faceguard serve` runs as a separate process against the reference sink, which
fails a share of calls (half before storing, half after, so redeliveries happen); kiosk
clients make `--decisions` verifies while the service is killed with SIGKILL `--kills` times
and restarted. Once the outbox is drained it prints how many recorded decisions never reached
the sink (lost) and how many events the sink stored twice (duplicates); both must be 0.

Risk cost: with the same data, in-process, the median time the risk checks add to a verify:
the 1:N search for other customers plus `RiskChecks.apply` (list lookups, velocity counts,
watchlist search, policy), measured around exactly those calls.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console

from faceguard.v1 import common_pb2, enrollment_pb2_grpc, verification_pb2, verification_pb2_grpc
from service.app.decision import Decision
from service.domain import APPROVE
from service.risk.callback import load_signing_key, write_signing_key
from tools.bench.served import (
    ServedProcess,
    enrol_portraits,
    free_port,
    sample_portraits,
    wait_ready,
)
from tools.fraud_sink import Behaviour, sink_stats, start_sink, stored_event_ids

log = logging.getLogger(__name__)

CLIENTS = 4


def _decide(service: ServedProcess, enrolled: dict[str, bytes], total: int, kills: int) -> set[str]:
    """`total` acknowledged verifies from several clients, killing the service `kills` times
    at evenly spaced points; calls that fail while it is down are retried."""
    customers = sorted(enrolled)
    acknowledged: set[str] = set()
    lock = threading.Lock()
    kill_at = [total * (k + 1) // (kills + 1) for k in range(kills)]

    def client(n: int) -> None:
        rng = random.Random(n)
        with grpc.insecure_channel(service.address) as channel:
            kiosk = verification_pb2_grpc.FaceVerificationStub(channel)
            while True:
                with lock:
                    if len(acknowledged) >= total:
                        return
                customer = rng.choice(customers)
                request = verification_pb2.VerifyRequest(
                    customer_id=customer, frames=[common_pb2.Image(data=enrolled[customer])],
                    device_id=f"bench-kiosk-{n}",
                )  # fmt: skip
                try:
                    reply = kiosk.Verify(request, timeout=30, wait_for_ready=True)
                except grpc.RpcError:
                    time.sleep(0.1)
                    continue
                with lock:
                    acknowledged.add(reply.decision.event_id)
                    if kill_at and len(acknowledged) >= kill_at[0]:
                        kill_at.pop(0)
                        log.info("kill -9 after %d decisions", len(acknowledged))
                        service.kill()  # the other clients' calls fail and are retried
                        service.start()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return acknowledged


def _recorded(db: Path) -> set[str]:
    """Every event the service committed an outbox row for (including decisions whose reply
    a kill swallowed)."""
    with sqlite3.connect(db) as conn:
        return {row[0] for row in conn.execute("SELECT event_id FROM outbox")}


def _risk_cost(data: Path, enrolled: dict[str, bytes], calls: int) -> dict[str, float]:
    from service.app.assembly import build_engine
    from service.config import load_settings

    settings = load_settings()
    settings = settings.model_copy(update={
        "storage": settings.storage.model_copy(update={"data_dir": data, "dev_generate_key": True}),
        "vision": settings.vision.model_copy(update={"processes": 0}),  # no worker processes
    })  # fmt: skip
    engine = build_engine(settings)
    assert engine.risk is not None
    samples, customers = [], sorted(enrolled)
    for i in range(calls):
        customer = customers[i % len(customers)]
        analysis = engine.vision.single_face(enrolled[customer], 0, template=False)
        score = engine.gallery.best_match(customer, analysis.embedding.vector)
        decision = Decision(
            event_id=str(uuid.uuid4()), outcome=APPROVE, customer_id=customer,
            match_score=score, threshold=engine.policy.threshold, reason_codes=("MATCH",),
            quality_score=analysis.quality.score, device_id="bench",
            liveness_score=analysis.liveness.score if analysis.liveness else None,
        )  # fmt: skip
        start = time.perf_counter()
        neighbours = engine.gallery.search(analysis.embedding.vector, 3)
        engine.risk.checks.assess("VERIFY", decision, [analysis.embedding.vector], neighbours)
        samples.append((time.perf_counter() - start) * 1000.0)
    engine.gallery.store.close()
    return {
        "risk_checks_median_ms": round(statistics.median(samples), 3),
        "risk_checks_p95_ms": round(sorted(samples)[int(0.95 * len(samples))], 3),
    }


def measure_callbacks(decisions: int, fail_rate: float, kills: int) -> dict[str, Any]:
    portraits = sample_portraits()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        key = folder / "hmac.key"
        write_signing_key(key)
        behaviour = Behaviour(fail_rate=fail_rate, rng=random.Random(7))
        sink = start_sink(folder / "sink.db", {"k1": load_signing_key(key, "k1")}, behaviour)
        env = {
            "FACEGUARD_RISK__CALLBACK_TARGET": f"127.0.0.1:{sink.port}",
            "FACEGUARD_RISK__HMAC_KEY_FILE": str(key),
            "FACEGUARD_RISK__BACKOFF_INITIAL_S": "0.05",
            "FACEGUARD_RISK__BACKOFF_MAX_S": "1.0",
            "FACEGUARD_RISK__DEAD_LETTER_AFTER": "40",
            "FACEGUARD_RISK__POLL_INTERVAL_S": "0.05",
            "FACEGUARD_VISION__THREADS": "1",
        }
        service = ServedProcess(folder / "data", free_port(), env)
        service.start()
        started = time.perf_counter()
        try:
            with grpc.insecure_channel(service.address) as channel:
                enrolment = enrollment_pb2_grpc.EnrollmentStub(channel)
                wait_ready(enrolment)
                enrolled, _ = enrol_portraits(enrolment, portraits, workers=2)
            acknowledged = _decide(service, enrolled, decisions, kills)
            decided_s = time.perf_counter() - started
            recorded = _recorded(folder / "data" / "faceguard.db")
            deadline = time.monotonic() + 600
            while not recorded <= stored_event_ids(folder / "sink.db"):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            drained_s = time.perf_counter() - started
        finally:
            service.stop()
            sink.stop()
        stored = stored_event_ids(folder / "sink.db")
        stats = sink_stats(folder / "sink.db")
        result = {
            "decisions_acknowledged": len(acknowledged),
            "events_recorded": len(recorded),
            "kills": kills,
            "sink_fail_rate": fail_rate,
            "sink_injected_failures": stats["injected_failures"],
            "redeliveries_dropped_by_sink": stats["duplicates"],
            "events_lost": len((recorded | acknowledged) - stored),
            "acknowledged_not_recorded": len(acknowledged - recorded),
            "duplicates_stored_at_sink": stats["stored"] - stats["distinct"],
            "out_of_order_per_customer": stats["out_of_order"],
            "decide_s": round(decided_s, 1),
            "all_delivered_s": round(drained_s, 1),
        }
        result |= _risk_cost(folder / "data", enrolled, 200)
    return result


def run_bench_callbacks(args: argparse.Namespace) -> int:
    result = measure_callbacks(args.decisions, args.fail_rate, args.kills)
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        Console().print_json(json.dumps(result))
    ok = result["events_lost"] == 0 and result["duplicates_stored_at_sink"] == 0
    return 0 if ok else 1
