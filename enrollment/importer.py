"""`faceguard enroll import`: concurrent, resumable bulk enrolment.

The source is a folder with one sub-folder per customer (its name is the customer id), or a
CSV manifest with `customer_id,path` rows (several rows per customer allowed; paths relative
to the CSV). Each customer is one Enroll call. Finished customers are appended to a state file
as they complete, so an interrupted import (even kill -9) resumes where it stopped; a customer
the service already holds (CUSTOMER_EXISTS) counts as done, which also covers a call that
completed on the server just before the client died.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import threading
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import grpc
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from enrollment.client import Stubs, error_reason
from faceguard.v1 import common_pb2, enrollment_pb2

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".bmp", ".webp"}


def read_source(source: Path) -> dict[str, list[Path]]:
    """Images per customer id, from a folder tree or a CSV manifest."""
    customers: dict[str, list[Path]] = defaultdict(list)
    if source.is_dir():
        for folder in sorted(p for p in source.iterdir() if p.is_dir()):
            images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if images:
                customers[folder.name] = images
        return dict(customers)
    with source.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not {"customer_id", "path"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{source}: a CSV manifest needs the columns customer_id,path")
        for row in reader:
            customers[row["customer_id"]].append(source.parent / row["path"])
    return dict(customers)


class ImportState:
    """Append-only record of finished customers; survives a crash at any point."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: set[str] = set()
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    self.done.add(json.loads(line)["customer_id"])
        self._lock = threading.Lock()

    def mark(self, customer_id: str, outcome: str) -> None:
        with self._lock, self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"customer_id": customer_id, "outcome": outcome}) + "\n")
            handle.flush()


def enroll_one(
    stubs: Stubs, customer_id: str, images: list[Path], consent: enrollment_pb2.Consent,
    timeout: float,
) -> str:  # fmt: skip
    """ "ENROLLED", "ALREADY_ENROLLED", or the failure reason."""
    try:
        request = enrollment_pb2.EnrollRequest(
            customer_id=customer_id,
            images=[common_pb2.Image(data=p.read_bytes()) for p in images],
            consent=consent,
        )
    except OSError:
        return "UNREADABLE_FILE"
    try:
        stubs.enrollment.Enroll(request, timeout=timeout)
        return "ENROLLED"
    except grpc.RpcError as error:
        reason = error_reason(error)
        return "ALREADY_ENROLLED" if reason == "CUSTOMER_EXISTS" else reason


def run_import(args: argparse.Namespace, stubs: Stubs, consent: enrollment_pb2.Consent) -> int:
    customers = read_source(args.source)
    state = ImportState(args.state or args.source.with_name(args.source.name + ".import-state"))
    todo = {cid: images for cid, images in customers.items() if cid not in state.done}
    outcomes: Counter[str] = Counter()
    console = Console(stderr=True)
    columns = (TextColumn("enrolling"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress, ThreadPoolExecutor(args.workers) as pool:
        task = progress.add_task("import", total=len(todo))
        jobs = {
            pool.submit(enroll_one, stubs, cid, images, consent, args.timeout): cid
            for cid, images in todo.items()
        }
        for job in as_completed(jobs):
            outcome = job.result()
            outcomes[outcome] += 1
            if outcome in {"ENROLLED", "ALREADY_ENROLLED"}:
                state.mark(jobs[job], outcome)
            progress.advance(task)
    failed = {k: v for k, v in outcomes.items() if k not in {"ENROLLED", "ALREADY_ENROLLED"}}
    summary = {
        "customers": len(customers),
        "skipped_done_before": len(customers) - len(todo),
        "enrolled": outcomes["ENROLLED"],
        "already_enrolled": outcomes["ALREADY_ENROLLED"],
        "failed": sum(failed.values()),
        "failures_by_reason": dict(sorted(failed.items(), key=lambda kv: -kv[1])),
    }
    if args.json:
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        table = Table(title="import summary", show_header=False)
        for key, value in summary.items():
            table.add_row(key, json.dumps(value) if isinstance(value, dict) else str(value))
        Console().print(table)
    return 0 if not failed else 1
