"""`faceguard bench follow`: how long a change through one replica takes to reach another's index.

Replica A is a bare store; replica B a gallery over the FAISS backend that follows the store
(`Gallery.follow`: LISTEN/NOTIFY on PostgreSQL, polling every `--poll-s` on SQLite). A enrols
`--changes`/2 customers and erases them again, one change at a time; for each the bench times
from the moment A's call returned (committed) until B's index holds the new templates or no
longer holds the erased ones, and prints p50/p99/max per kind. Run it against a throwaway
database (default: a temporary SQLite file).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from service.app.index_backend import open_index
from service.config import GallerySettings
from service.domain import Consent
from service.gallery.gallery import Gallery
from service.store.changes import listener_for
from service.store.crypto import generate_keyring
from service.store.customers import NewEvent, NewTemplate, Store

DIM = 128
MODEL = "bench-embedder"
_TIMEOUT_S = 30.0


def _until(condition: Any) -> float:
    start = time.perf_counter()
    while not condition():
        if time.perf_counter() - start > _TIMEOUT_S:
            raise TimeoutError("the follower did not apply a change within 30 s")
        time.sleep(0.0002)
    return time.perf_counter() - start


def _figures(lags: list[float]) -> dict[str, float]:
    ordered = sorted(lags)
    ms = 1000.0
    return {
        "count": len(ordered),
        "p50_ms": round(statistics.median(ordered) * ms, 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * ms, 2),
        "max_ms": round(ordered[-1] * ms, 2),
    }


def measure_follow(url: str, changes: int, poll_s: float) -> dict[str, Any]:
    keyring = generate_keyring()
    rng = np.random.default_rng(0)
    consent = Consent("kiosk verification", datetime.now(UTC), "branch", "bench")
    with tempfile.TemporaryDirectory() as data, Store(url, keyring) as a, Store(url, keyring) as b:
        a.create_schema()
        b.create_schema()
        index = open_index(GallerySettings(), b, MODEL, DIM, Path(data))
        follower = Gallery(b, index, MODEL)
        follower.follow(listener_for(b), poll_s)
        try:
            time.sleep(0.2)  # the listener connects
            enrolled, erased = [], []
            for n in range(changes // 2):
                vector = rng.standard_normal(DIM).astype(np.float32)
                template = NewTemplate(vector / np.linalg.norm(vector), MODEL, 80)
                ids = np.asarray(
                    a.enroll(f"c-{n}", [template], consent, NewEvent("ENROLL", "OK")), np.int64
                )
                enrolled.append(_until(lambda ids=ids: bool(index.contains(ids).all())))
            for n in range(changes // 2):
                ids = np.asarray(a.delete_customer(f"c-{n}", NewEvent("DELETE", "OK")), np.int64)
                erased.append(_until(lambda ids=ids: not index.contains(ids).any()))
        finally:
            follower.stop_following()
    return {
        "database": url.split(":", 1)[0], "poll_s": poll_s,
        "enrolment": _figures(enrolled), "erasure": _figures(erased),
        "all": _figures(enrolled + erased),
    }  # fmt: skip


def run_bench_follow(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite:///{Path(tmp) / 'follow.db'}"
        result = measure_follow(url, args.changes, args.poll_s)
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        Console().print_json(json.dumps(result))
    return 0
