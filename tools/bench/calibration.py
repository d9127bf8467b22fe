"""`faceguard bench calibration`: what one calibration proposal costs on a gallery of N customers.

A throwaway service engine (models in this process) gets a synthetic gallery written through
its own gallery (store and index): per customer, templates clustered around a centre that
shares one direction with every other customer's, so impostor scores run high, as they do on
the East Asian populations of issue 18. Then `CalibrationAdmin.propose` runs as the RPC runs
it (sample, decrypt, score pairs, bootstrap, store), timed; one more run under tracemalloc
gives the peak memory it allocates (numpy included).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from service.domain import Consent
from service.gallery.gallery import Gallery
from service.store.customers import NewEvent, NewTemplate

log = logging.getLogger(__name__)

SHARED = 0.6  # weight of the direction every synthetic centre shares (impostor mean ~0.3)
NOISE = 0.35  # norm of a template's deviation from its person's centre


def synthetic_people(
    dim: int, customers: int, per_customer: int, seed: int
) -> Iterator[tuple[str, np.ndarray]]:
    """(customer id, unit templates as rows) of `customers` synthetic people."""
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal(dim)
    shared /= np.linalg.norm(shared)
    for n in range(customers):
        person = rng.standard_normal(dim)
        centre = SHARED * shared + np.sqrt(1 - SHARED**2) * person / np.linalg.norm(person)
        vectors = centre + NOISE * rng.standard_normal((per_customer, dim)) / np.sqrt(dim)
        yield f"synthetic-{n:06d}", (vectors / np.linalg.norm(vectors, axis=1, keepdims=True))


def fill_gallery(
    gallery: Gallery, model: str, customers: int, per_customer: int = 3, seed: int = 7
) -> None:
    """Enrol the synthetic people not enrolled yet (templates of embedder version `model`)."""
    consent = Consent(purpose="synthetic", given_at=datetime.now(UTC), channel="bench")
    for customer, vectors in synthetic_people(gallery.index.dim, customers, per_customer, seed):
        if gallery.has_customer(customer):
            continue
        templates = [NewTemplate(v.astype(np.float32), model, 80.0) for v in vectors]
        gallery.enroll(customer, templates, consent, NewEvent(type="ENROLL", outcome="APPROVE"))


def run_bench_calibration(args: argparse.Namespace) -> int:
    from service.app.assembly import build_engine
    from service.app.calibration import CalibrationAdmin
    from service.config import Settings

    with tempfile.TemporaryDirectory(prefix="faceguard-bench-calibration-") as folder:
        settings = Settings(
            storage={"data_dir": Path(folder), "dev_generate_key": True},
            vision={"processes": 0, "threads": 1},
            calibration={"sample_customers": max(args.customers, 2), "every_hours": 0},
        )
        engine = build_engine(settings)
        try:
            start = time.perf_counter()
            model = engine.vision.model_versions["embedder"]
            fill_gallery(engine.gallery, model, args.customers, args.templates)
            filled = time.perf_counter() - start
            admin = CalibrationAdmin(engine, settings.calibration)
            seconds = []
            for _ in range(max(args.repeat, 1)):
                start = time.perf_counter()
                record = admin.propose("bench")
                seconds.append(time.perf_counter() - start)
            tracemalloc.start()
            admin.propose("bench")
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        finally:
            engine.close()
    result = {
        "customers": args.customers, "templates_per_customer": args.templates,
        "sampled_people": record.people, "sampled_templates": record.templates,
        "impostor_pairs": record.impostor_pairs, "fill_s": round(filled, 1),
        "propose_s_median": round(statistics.median(seconds), 2),
        "propose_s": [round(s, 2) for s in seconds], "propose_peak_mib": round(peak / 2**20, 1),
        "targets": {
            t.target_fmr: {
                "threshold": t.threshold, "ci": [t.ci_low, t.ci_high],
                "live_fmr_ratio": round(t.live_fmr_ratio, 2),
            } if t.resolvable else t.reason
            for t in record.targets
        },
    }  # fmt: skip
    sys.stdout.write(json.dumps(result, indent=None if args.json else 2) + "\n")
    return 0
