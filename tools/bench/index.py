"""`python -m tools.bench.index`: the gallery index's cost and recall per gallery size.

For each size it builds the index the service would (`FaissIndex.rebuild` with default
options, or a lower `--exact-limit` to measure the approximate kind on smaller galleries) and
reports the kind chosen, lists scanned, candidates re-scored exactly, build time, snapshot size,
resident memory the build added (the index, plus any heap the allocator kept), single-probe
search latency (k=10, one probe per call, as the service searches) and recall@1 against exact
search.

The data is synthetic and face-like: identities are random unit vectors and each probe is an
identity's template turned to a fixed genuine cosine (0.7 by default, a typical same-person
score for the shipped embedder, whose FMR 1e-4 threshold is 0.53), so its true match is known.
Random identities have no cluster structure, the hard case for IVF; real embeddings cluster.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from service.gallery.faiss_index import FaissIndex, IndexOptions
from service.store.crypto import generate_keyring

log = logging.getLogger(__name__)

K = 10
_GROUND_TRUTH_CHUNK = 1 << 16


def face_like_data(
    size: int, dim: int, queries: int, genuine_cosine: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit templates, the rows probed, and probes at exactly `genuine_cosine` to those rows.

    Normalised in place with row norms, so a million templates cost one 768 MB array and no
    temporary of the same size.
    """
    templates = rng.standard_normal((size, dim), dtype=np.float32)
    templates /= np.sqrt(np.einsum("ij,ij->i", templates, templates))[:, None]
    rows = rng.choice(size, queries, replace=False)
    source = templates[rows]
    noise = rng.standard_normal((queries, dim), dtype=np.float32)
    noise -= np.sum(noise * source, axis=1, keepdims=True) * source  # orthogonal to the template
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    probes = genuine_cosine * source + np.sqrt(1.0 - genuine_cosine**2) * noise
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    return templates, rows, probes.astype(np.float32)


def exact_top1(templates: np.ndarray, probes: np.ndarray) -> np.ndarray:
    """Row of each probe's best template by brute force, a chunk of templates at a time."""
    best_score = np.full(len(probes), -np.inf, np.float32)
    best_row = np.zeros(len(probes), np.int64)
    for start in range(0, len(templates), _GROUND_TRUTH_CHUNK):
        scores = probes @ templates[start : start + _GROUND_TRUTH_CHUNK].T
        top = scores.argmax(axis=1)
        top_score = scores[np.arange(len(probes)), top]
        better = top_score > best_score
        best_score[better], best_row[better] = top_score[better], top[better] + start
    return best_row


def resident_bytes() -> int:
    """This process's resident memory (Linux), to measure what building an index holds."""
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def snapshot_bytes(index: FaissIndex) -> int:
    """Size of the index as saved: its vectors, ids and structure, without Python overhead."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "index.faiss"
        index.save(path, generate_keyring())
        return path.stat().st_size


def single_probe_latency(
    index: FaissIndex, probes: np.ndarray, nprobe: int | None
) -> tuple[float, float, np.ndarray]:
    """p50 and p95 ms of one-probe searches, and each probe's top-1 id."""
    for probe in probes[:10]:  # warm-up: first touches of the index pages
        index.search(probe, K, nprobe)
    samples, top1 = [], []
    for probe in probes:
        start = time.perf_counter()
        hits = index.search(probe, K, nprobe)
        samples.append((time.perf_counter() - start) * 1000.0)
        top1.append(hits[0][0])
    p50, p95 = np.percentile(samples, [50, 95])
    return float(p50), float(p95), np.array(top1)


def bench_size(
    size: int,
    dim: int,
    queries: int,
    genuine_cosine: float,
    nprobes: tuple[int, ...],
    options: IndexOptions,
) -> list[dict[str, Any]]:
    """Rows for one gallery size: the default nprobe first, then any others asked for."""
    templates, rows, probes = face_like_data(
        size, dim, queries, genuine_cosine, np.random.default_rng(size)
    )
    truth = exact_top1(templates, probes)
    log.info(
        "%d templates: exact top-1 is the probe's own identity for %.3f of probes",
        size,
        np.mean(truth == rows),
    )
    index = FaissIndex(dim, options)
    resident_before, start = resident_bytes(), time.perf_counter()
    index.rebuild(np.arange(size, dtype=np.int64), templates)
    build_s = time.perf_counter() - start
    resident_growth = resident_bytes() - resident_before
    del templates  # the index holds its own copy
    nbytes = snapshot_bytes(index)
    built = {
        "size": size,
        "kind": index.kind,
        "nlist": index.nlist,
        "rerank_depth": index.rerank_depth(K),
        "build_s": round(build_s, 2),
        "bytes_per_vector": round(nbytes / size, 1),
        "index_mb": round(nbytes / 1e6, 1),
        "resident_growth_mb": round(resident_growth / 1e6, 1),
    }
    settings = [index.nprobe]
    if index.nlist:
        settings += [n for n in nprobes if n != index.nprobe]
    return [{**built, **search_figures(index, probes, truth, n)} for n in settings]


def search_figures(
    index: FaissIndex, probes: np.ndarray, truth: np.ndarray, nprobe: int
) -> dict[str, Any]:
    """Latency percentiles and recall@1 at one nprobe (0: a flat index, which scans all)."""
    p50, p95, top1 = single_probe_latency(index, probes, nprobe or None)
    figures = {
        "nprobe": nprobe,
        "p50_ms": round(p50, 3),
        "p95_ms": round(p95, 3),
        "recall_at_1": float(np.mean(top1 == truth)),
    }
    log.info("%d templates, %s: %s", len(index), index.kind, figures)
    return figures


def run_index_bench(
    sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000),
    dim: int = 192,
    queries: int = 1000,
    genuine_cosine: float = 0.7,
    nprobes: tuple[int, ...] = (),
    options: IndexOptions | None = None,
) -> dict[str, Any]:
    """Bench every size in turn (one size's data in memory at a time)."""
    options = options or IndexOptions()
    results = [
        row
        for size in sizes
        for row in bench_size(size, dim, queries, genuine_cosine, nprobes, options)
    ]
    return {
        "dim": dim,
        "exact_limit": options.exact_limit,
        "queries": queries,
        "k": K,
        "genuine_cosine": genuine_cosine,
        "results": results,
    }


def print_table(report: dict[str, Any]) -> None:
    table = Table(
        title=(
            f"gallery index, d={report['dim']}, {report['queries']} face-like probes "
            f"(genuine cosine {report['genuine_cosine']}), k={report['k']}, one probe per call"
        )
    )
    columns = [
        ("size", "size", "{:,}"),
        ("kind", "kind", "{}"),
        ("nlist", "nlist", "{}"),
        ("nprobe", "nprobe", "{}"),
        ("rerank", "rerank_depth", "{}"),
        ("build s", "build_s", "{:.1f}"),
        ("B/vector", "bytes_per_vector", "{:.0f}"),
        ("MB", "index_mb", "{:.1f}"),
        ("RSS+ MB", "resident_growth_mb", "{:.1f}"),
        ("p50 ms", "p50_ms", "{:.2f}"),
        ("p95 ms", "p95_ms", "{:.2f}"),
        ("recall@1", "recall_at_1", "{:.3f}"),
    ]
    for title, _, _ in columns:
        table.add_column(title, justify="left" if title == "kind" else "right")
    for row in report["results"]:
        table.add_row(*(fmt.format(row[key]) for _, key, fmt in columns))
    Console(width=max(Console().width, 110)).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--genuine-cosine", type=float, default=0.7)
    parser.add_argument(
        "--nprobe", type=int, nargs="*", default=[], help="more IVF nprobe values to measure"
    )
    parser.add_argument(
        "--exact-limit",
        type=int,
        default=IndexOptions().exact_limit,
        help="largest gallery searched exactly (lower it to measure the approximate kind)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
    )
    report = run_index_bench(
        tuple(args.sizes),
        args.dim,
        args.queries,
        args.genuine_cosine,
        tuple(args.nprobe),
        IndexOptions(exact_limit=args.exact_limit),
    )
    if args.json:
        sys.stdout.write(json.dumps(report) + "\n")
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
