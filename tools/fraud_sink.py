"""`faceguard fraud-sink`: a reference FraudEngine for demos, tests and the callback bench.

What a bank's receiver must do, in a small server: check each event's HMAC signature, keep the
first copy of each event id and acknowledge redeliveries without storing them twice, and store
what it received (SQLite). For exercising the sender it can fail a share of calls or hang:
half of the injected failures happen before the event is stored (the engine was down) and half
after (the acknowledgement was lost), so redeliveries really reach the deduplication.
Behaviour can be changed while it runs: SIGUSR1 toggles hanging, SIGUSR2 toggles failing every
call; in-process, set the `Behaviour` fields.
"""

from __future__ import annotations

import argparse
import logging
import random
import signal
import sqlite3
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from faceguard.v1 import common_pb2, fraud_engine_pb2, fraud_engine_pb2_grpc
from service.risk.callback import SigningKey, load_signing_key

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY, sequence INTEGER NOT NULL, type TEXT NOT NULL,
    customer_id TEXT NOT NULL, device_id TEXT NOT NULL, outcome TEXT NOT NULL,
    attempt INTEGER NOT NULL, received_at REAL NOT NULL, event BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_customer ON events (customer_id, sequence);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
COUNTERS = ("received", "duplicates", "bad_signature", "injected_failures", "out_of_order")


@dataclass
class Behaviour:
    """How the sink misbehaves; fields may be changed while it serves."""

    fail_rate: float = 0.0
    hang: bool = False
    fail_all: bool = False
    assess_outcome: str = "APPROVE"
    rng: random.Random = field(default_factory=random.Random)


class SinkStore:
    """The received events, one row per event id; thread-safe behind one lock."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def count(self, name: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO counters VALUES (?, 1) "
                "ON CONFLICT(name) DO UPDATE SET value = value + 1",
                (name,),
            )

    def keep(self, event: fraud_engine_pb2.IdentityEvent, attempt: int, raw: bytes) -> bool:
        """Store the event unless its id is known; False for a duplicate."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                latest = self._db.execute(
                    "SELECT MAX(sequence) FROM events WHERE customer_id = ? AND customer_id != ''",
                    (event.customer_id,),
                ).fetchone()[0]
                cursor = self._db.execute(
                    "INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (event.event_id, event.sequence, event.type, event.customer_id,
                     event.device_id, common_pb2.Outcome.Name(event.outcome), attempt,
                     time.time(), raw),
                )  # fmt: skip
                fresh = cursor.rowcount == 1
                name = "received" if fresh else "duplicates"
                self._db.execute(
                    "INSERT INTO counters VALUES (?, 1) "
                    "ON CONFLICT(name) DO UPDATE SET value = value + 1",
                    (name,),
                )
                if fresh and latest is not None and event.sequence < latest:
                    self._db.execute(
                        "INSERT INTO counters VALUES ('out_of_order', 1) "
                        "ON CONFLICT(name) DO UPDATE SET value = value + 1"
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return fresh

    def close(self) -> None:
        with self._lock:
            self._db.close()


def sink_stats(path: Path) -> dict[str, int]:
    """Events stored, distinct ids, and the counters (read by tests and the bench)."""
    with sqlite3.connect(path) as db:
        query = "SELECT COUNT(*), COUNT(DISTINCT event_id) FROM events"
        stored, distinct = db.execute(query).fetchone()
        counters = dict(db.execute("SELECT name, value FROM counters").fetchall())
    return {"stored": stored, "distinct": distinct} | {n: counters.get(n, 0) for n in COUNTERS}


def stored_event_ids(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT event_id FROM events")}


class FraudSink(fraud_engine_pb2_grpc.FraudEngineServicer):
    def __init__(self, store: SinkStore, keys: dict[str, SigningKey], behaviour: Behaviour) -> None:
        self.store = store
        self.keys = keys
        self.behaviour = behaviour

    def _misbehave(self, context: grpc.ServicerContext) -> str | None:
        """Hang until the caller's deadline, or pick an injected failure: before/after/None."""
        b = self.behaviour
        if b.hang:
            while b.hang and context.is_active():
                time.sleep(0.05)
            context.abort(grpc.StatusCode.UNAVAILABLE, "sink was hanging")
        if b.fail_all or b.rng.random() < b.fail_rate:
            return "before" if b.fail_all or b.rng.random() < 0.5 else "after"
        return None

    def OnIdentityEvent(
        self, request: fraud_engine_pb2.OnIdentityEventRequest, context: grpc.ServicerContext
    ):
        failure = self._misbehave(context)
        if failure == "before":
            self.store.count("injected_failures")
            context.abort(grpc.StatusCode.UNAVAILABLE, "injected failure before storing")
        key = self.keys.get(request.key_id)
        if key is None or not key.verify(request.event, request.signature):
            self.store.count("bad_signature")
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad event signature")
        event = fraud_engine_pb2.IdentityEvent.FromString(request.event)
        if event.event_id != request.idempotency_key:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "idempotency key is not the event id")
        fresh = self.store.keep(event, request.attempt, request.event)
        if failure == "after":
            self.store.count("injected_failures")
            context.abort(grpc.StatusCode.UNAVAILABLE, "injected failure after storing")
        return fraud_engine_pb2.OnIdentityEventResponse(duplicate=not fresh)

    def Assess(self, request: fraud_engine_pb2.AssessRequest, context: grpc.ServicerContext):
        if self._misbehave(context) is not None:
            self.store.count("injected_failures")
            context.abort(grpc.StatusCode.UNAVAILABLE, "injected failure")
        outcome = self.behaviour.assess_outcome
        return fraud_engine_pb2.AssessResponse(
            outcome=common_pb2.Outcome.Value(outcome),
            reason_codes=[] if outcome == "APPROVE" else ["FRAUD_ENGINE_" + outcome],
        )


@dataclass
class RunningSink:
    server: grpc.Server
    port: int
    servicer: FraudSink

    def stop(self, grace: float = 0.5) -> None:
        self.server.stop(grace).wait()
        self.servicer.store.close()


def start_sink(
    db: Path, keys: dict[str, SigningKey], behaviour: Behaviour | None = None, port: int = 0,
    host: str = "127.0.0.1",
) -> RunningSink:  # fmt: skip
    servicer = FraudSink(SinkStore(db), keys, behaviour or Behaviour())
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="sink"))
    fraud_engine_pb2_grpc.add_FraudEngineServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"fraud sink could not bind {host}:{port}")
    server.start()
    return RunningSink(server, bound, servicer)


def run_fraud_sink(args: argparse.Namespace) -> int:
    key = load_signing_key(args.hmac_key_file, args.key_id)
    behaviour = Behaviour(fail_rate=args.fail_rate, hang=args.hang,
                          assess_outcome=args.assess_outcome,
                          rng=random.Random(args.seed))  # fmt: skip
    running = start_sink(args.db, {key.key_id: key}, behaviour, args.port, args.host)
    stop = threading.Event()

    def toggle(name: str) -> None:
        setattr(behaviour, name, not getattr(behaviour, name))
        log.warning("fraud sink: %s is now %s", name, getattr(behaviour, name))

    signal.signal(signal.SIGUSR1, lambda *_: toggle("hang"))
    signal.signal(signal.SIGUSR2, lambda *_: toggle("fail_all"))
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    log.info("fraud sink on %s:%d storing in %s (fail rate %.2f)", args.host, running.port,
             args.db, args.fail_rate)  # fmt: skip
    stop.wait()
    running.stop()
    return 0
