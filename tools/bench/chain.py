"""`faceguard bench chain`: what the audit chain's one global order costs a fleet of replicas.

Every decision appends its event under the chain's append lock (PostgreSQL: one transaction-
scoped advisory lock, held from the append to the commit), so however many replicas write, the
appends run one at a time. This bench makes decisions as `Store.record_event` records them (the
event, its outbox row, and for a decline its velocity row, in one transaction) from `--writers`
stores ("replicas", each its own connection pool) with `--threads` threads each, and from one
store with one thread (no contention), for `--seconds` each, and prints per run: decisions/s,
the decision latency p50/p99, and the time each decision waited for the lock (p50/p99, timed
around the lock call). The lock is held from its acquisition to the commit, so the fleet's
decisions/s can never exceed 1 / (that hold time): the uncontended run's latency minus its
wait estimates it, printed as `ceiling_decisions_per_s`. The chain is verified at the end.

Run it against an empty throwaway PostgreSQL database: it keys a chain with a key of its own
and appends to it.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import threading
import time
from typing import Any

from rich.console import Console
from sqlalchemy import make_url

from service.store import audit_chain
from service.store.audit_chain import ChainKey, ChainKeyError, NewEvent
from service.store.crypto import generate_keyring
from service.store.customers import Store

log = logging.getLogger(__name__)


def _decision(n: int) -> NewEvent:
    """A decision event like the service's: one in four a decline that velocity counts."""
    declined = n % 4 == 0
    outcome = "DECLINE" if declined else "APPROVE"
    payload = {
        "outcome": outcome, "reason_codes": ["NO_MATCH" if declined else "MATCH"],
        "match_score": 0.2 if declined else 0.8, "risk_score": 0.0, "policy_version": "bench",
        "rules": [],
    }  # fmt: skip
    return NewEvent("VERIFY", outcome, device_id=f"kiosk-{n % 50}",
                    customer_id=f"c-{n % 5000}", payload=payload)  # fmt: skip


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


def _run(stores: list[Store], threads: int, seconds: float) -> dict[str, Any]:
    """Decisions from every store with `threads` threads each, for `seconds`."""
    latencies: list[float] = []
    waits: list[float] = []
    stop = threading.Event()
    serialise = audit_chain._serialise_appends

    def timed_lock(conn: Any) -> None:
        start = time.perf_counter()
        serialise(conn)
        waits.append(time.perf_counter() - start)

    def decide(store: Store, seed: int) -> None:
        n = seed
        while not stop.is_set():
            start = time.perf_counter()
            store.record_event(_decision(n))
            latencies.append(time.perf_counter() - start)
            n += 7919

    audit_chain._serialise_appends = timed_lock  # the append looks it up at each call
    try:
        workers = [
            threading.Thread(target=decide, args=(store, s * 100 + t), daemon=True)
            for s, store in enumerate(stores)
            for t in range(threads)
        ]
        started = time.perf_counter()
        for worker in workers:
            worker.start()
        time.sleep(seconds)
        stop.set()
        for worker in workers:
            worker.join(60)
        elapsed = time.perf_counter() - started
    finally:
        audit_chain._serialise_appends = serialise
    ms = 1000.0
    return {
        "writers": len(stores), "threads_per_writer": threads, "decisions": len(latencies),
        "decisions_per_s": round(len(latencies) / elapsed, 1),
        "latency_ms_p50": round(statistics.median(latencies) * ms, 2),
        "latency_ms_p99": round(_percentile(latencies, 0.99) * ms, 2),
        "lock_wait_ms_p50": round(statistics.median(waits) * ms, 2),
        "lock_wait_ms_p99": round(_percentile(waits, 0.99) * ms, 2),
        "lock_wait_share": round(sum(waits) / sum(latencies), 3),
    }  # fmt: skip


def measure_chain(url: str, writers: int, threads: int, seconds: float) -> dict[str, Any]:
    keyring, chain_key = generate_keyring(), ChainKey.generate()
    stores = [Store(url, keyring, chain_key) for _ in range(writers)]
    try:
        for store in stores:
            store.create_schema()
        alone = _run(stores[:1], 1, seconds)
        fleet = _run(stores, threads, seconds)
        hold_ms = alone["latency_ms_p50"] - alone["lock_wait_ms_p50"]
        report = stores[0].verify_chain()
    finally:
        for store in stores:
            store.close()
    return {
        "uncontended": alone, "fleet": fleet,
        "lock_hold_ms_estimate": round(hold_ms, 2),
        "ceiling_decisions_per_s": round(1000.0 / hold_ms, 1) if hold_ms > 0 else None,
        "chain_ok": report.ok, "chain_rows": report.rows,
    }  # fmt: skip


def run_bench_chain(args: argparse.Namespace) -> int:
    if make_url(args.url).get_backend_name() != "postgresql":
        log.error("bench chain measures the PostgreSQL advisory lock: give a postgresql+psycopg "
                  "URL of a throwaway database")  # fmt: skip
        return 2
    try:
        result = measure_chain(args.url, args.writers, args.threads, args.seconds)
    except ChainKeyError:
        log.error("that database's audit chain was keyed by an earlier run: give an empty one")
        return 2
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        Console().print_json(json.dumps(result))
    return 0 if result["chain_ok"] else 1
