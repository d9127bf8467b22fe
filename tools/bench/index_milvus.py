"""`python -m tools.bench.index_milvus --uri URI`: FAISS and Milvus gallery indexes side by side.

For one gallery size, both backends get the same synthetic face-like templates and probes (see
`tools.bench.index`): the FAISS index as the service builds it (`FaissIndex.rebuild`,
default options) and a Milvus collection through `MilvusIndex` (rotated vectors, the index type
and consistency level asked for). Each reports its build time (Milvus: inserts, flush and the
wait until its index covers every row and is loaded), single-probe search latency (k=10, one
probe per call, as the service searches; Milvus's through gRPC on loopback) and recall@1
against exact search.

Milvus is a running server: `python tests/milvus.py DATA_DIR` starts a private one from the
virtualenv `make milvus-server` makes and prints its URI. The collection is dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from service.config import MilvusSettings
from service.gallery.faiss_index import FaissIndex
from service.gallery.milvus_index import MilvusIndex
from service.store.crypto import generate_keyring
from tools.bench.index import exact_top1, face_like_data

log = logging.getLogger(__name__)

K = 10
_WARM_UP = 10


def search_figures(
    search: Callable[[np.ndarray], list[tuple[int, float]]], probes: np.ndarray, truth: np.ndarray
) -> dict[str, float]:
    """p50/p95 ms of one-probe searches; recall@1 of the index's own ranking, and of the k
    candidates re-scored exactly (the truth among them: what the gallery's `rescore` gets)."""
    for probe in probes[:_WARM_UP]:
        search(probe)
    samples, top1, in_k = [], [], []
    for probe, true_id in zip(probes, truth, strict=True):
        start = time.perf_counter()
        hits = search(probe)
        samples.append((time.perf_counter() - start) * 1000.0)
        top1.append(bool(hits) and hits[0][0] == true_id)
        in_k.append(any(template_id == true_id for template_id, _ in hits))
    p50, p95 = np.percentile(samples, [50, 95])
    return {
        "p50_ms": round(float(p50), 2),
        "p95_ms": round(float(p95), 2),
        "recall_at_1": float(np.mean(top1)),
        "recall_at_1_rescored": float(np.mean(in_k)),
    }


def bench_faiss(templates: np.ndarray, probes: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    index = FaissIndex(templates.shape[1])
    start = time.perf_counter()
    index.rebuild(np.arange(len(templates), dtype=np.int64), templates)
    build_s = time.perf_counter() - start
    figures = search_figures(lambda probe: index.search(probe, K), probes, truth)
    return {"backend": "faiss", "index": index.kind, "build_s": round(build_s, 1), **figures}


def bench_milvus(
    templates: np.ndarray, probes: np.ndarray, truth: np.ndarray, settings: MilvusSettings
) -> dict[str, Any]:
    index = MilvusIndex(templates.shape[1], settings, generate_keyring())
    try:
        start = time.perf_counter()
        index.rebuild(np.arange(len(templates), dtype=np.int64), templates)
        build_s = time.perf_counter() - start
        figures = search_figures(lambda probe: index.search(probe, K), probes, truth)
    finally:
        index._client.drop_collection(index.collection)
        index.close()
    return {
        "backend": "milvus",
        "index": f"{settings.index_type} {index.build_params} {index.search_params['params']} "
        f"{settings.consistency_level}",
        "build_s": round(build_s, 1),
        **figures,
    }


def run(size: int, dim: int, queries: int, genuine_cosine: float, settings: MilvusSettings):
    templates, _, probes = face_like_data(
        size, dim, queries, genuine_cosine, np.random.default_rng(size)
    )
    truth = exact_top1(templates, probes)
    rows = [bench_faiss(templates, probes, truth)]
    log.info("%s", rows[-1])
    rows.append(bench_milvus(templates, probes, truth, settings))
    log.info("%s", rows[-1])
    return {"size": size, "dim": dim, "queries": queries, "k": K, "results": rows}


def print_table(report: dict[str, Any]) -> None:
    table = Table(
        title=f"{report['size']:,} templates, d={report['dim']}, {report['queries']} face-like "
        f"probes, k={report['k']}, one probe per call"
    )
    columns = ("backend", "index", "build s", "p50 ms", "p95 ms", "recall@1", f"re-scored top-{K}")
    for column in columns:
        table.add_column(column, justify="left" if column in ("backend", "index") else "right")
    for row in report["results"]:
        table.add_row(
            row["backend"],
            row["index"],
            f"{row['build_s']:.1f}",
            f"{row['p50_ms']:.2f}",
            f"{row['p95_ms']:.2f}",
            f"{row['recall_at_1']:.3f}",
            f"{row['recall_at_1_rescored']:.3f}",
        )
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uri", required=True, help="Milvus server (python tests/milvus.py DIR)")
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--genuine-cosine", type=float, default=0.7)
    parser.add_argument("--index-type", default="HNSW")
    parser.add_argument("--index-params", type=json.loads, default={}, help='e.g. {"M": 32}')
    parser.add_argument("--search-params", type=json.loads, default={}, help='e.g. {"ef": 256}')
    parser.add_argument("--consistency", default="Bounded")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, handlers=[RichHandler(show_path=False)])
    settings = MilvusSettings(
        uri=args.uri,
        collection="bench_index_milvus",
        index_type=args.index_type,
        index_params=args.index_params,
        search_params=args.search_params,
        consistency_level=args.consistency,
        timeout_s=600,
    )
    report = run(args.size, args.dim, args.queries, args.genuine_cosine, settings)
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
