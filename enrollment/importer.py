"""`faceguard enroll import`: concurrent, resumable bulk enrolment.

The source is a folder with one sub-folder per customer (its name is the customer id), or a
CSV manifest with `customer_id,path` rows (several rows per customer allowed; paths relative
to the CSV). Each customer is one Enroll call. Finished customers are appended to a state file
(`--state`, by default in the working directory: the archive may be read-only) as they
complete, so an interrupted import (even kill -9) resumes where it stopped; a customer the
service already holds (CUSTOMER_EXISTS) counts as done, which also covers a call that completed
on the server just before the client died.

Every failure names the customer, the file the service refused (from the ErrorInfo `image`
index) and why; `--report` writes them as CSV. With `--skip-bad-images` a refused image is
left out and the customer enrolled from the rest.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import threading
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import grpc
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from enrollment import exit_status
from enrollment.client import Stubs, describe_error
from enrollment.render import records_table
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


# Refusals of one image, not of the customer: with --skip-bad-images the image is left out and
# the customer is enrolled from the rest.
IMAGE_REASONS = frozenset({
    "NO_FACE", "MULTIPLE_FACES", "LOW_QUALITY_SIZE", "LOW_QUALITY_BLUR", "LOW_QUALITY_EXPOSURE",
    "LOW_QUALITY_POSE", "IMAGE_UNSUPPORTED_FORMAT", "IMAGE_CORRUPT", "IMAGE_EMPTY",
    "IMAGE_TOO_LARGE", "UNREADABLE_FILE",
})  # fmt: skip
DONE = frozenset({"ENROLLED", "ALREADY_ENROLLED"})
REPORT_COLUMNS = ("customer_id", "file", "status", "reason", "message", "action")


@dataclass(frozen=True)
class Failure:
    """Why a customer, or one file of theirs, was not enrolled; `file` is empty when the
    refusal concerns the customer as a whole (CUSTOMER_EXISTS aside, e.g. DUPLICATE_IDENTITY).
    `action`: "customer refused", or "image skipped" with --skip-bad-images."""

    customer_id: str
    file: str
    status: str
    reason: str
    message: str
    action: str


@dataclass(frozen=True)
class Result:
    customer_id: str
    outcome: str  # ENROLLED, ALREADY_ENROLLED, or the reason the customer was refused
    failures: tuple[Failure, ...] = ()


def default_state_path(source: Path) -> Path:
    """The resume file in the working directory: the photo archive may be read-only."""
    return Path.cwd() / f"{source.name}.import-state"


def _refused_file(metadata: dict[str, str], images: list[Path]) -> Path | None:
    """The image a refusal names (its ErrorInfo `image` index), if any."""
    index = metadata.get("image", "")
    return images[int(index)] if index.isdigit() and int(index) < len(images) else None


def enroll_one(
    stubs: Stubs, customer_id: str, images: list[Path], consent: enrollment_pb2.Consent,
    timeout: float, skip_bad_images: bool = False,
) -> Result:  # fmt: skip
    """Enrol one customer: "ENROLLED", "ALREADY_ENROLLED", or refused, with what failed.

    With `skip_bad_images` an image the service refuses on its own (no face, low quality,
    unreadable) is left out and the call repeated with the rest, while any are left.
    """
    failures: list[Failure] = []
    remaining = list(images)
    while True:
        data, unreadable = [], []
        for path in remaining:
            try:
                data.append(common_pb2.Image(data=path.read_bytes()))
            except OSError as error:
                unreadable.append(
                    Failure(customer_id, str(path), "LOCAL", "UNREADABLE_FILE", str(error), "")
                )
        if unreadable and not skip_bad_images:
            failures += [replace(f, action="customer refused") for f in unreadable]
            return Result(customer_id, "UNREADABLE_FILE", tuple(failures))
        failures += [replace(f, action="image skipped") for f in unreadable]
        bad = {Path(f.file) for f in unreadable}
        remaining = [p for p in remaining if p not in bad]
        if not remaining:
            return Result(customer_id, failures[-1].reason, tuple(failures))
        request = enrollment_pb2.EnrollRequest(
            customer_id=customer_id, images=data, consent=consent
        )
        try:
            stubs.enrollment.Enroll(request, timeout=timeout)
            return Result(customer_id, "ENROLLED", tuple(failures))
        except grpc.RpcError as error:
            described = describe_error(error)
            reason, metadata = described["reason"], described.get("metadata", {})
            if reason == "CUSTOMER_EXISTS":
                return Result(customer_id, "ALREADY_ENROLLED", tuple(failures))
            bad_file = _refused_file(metadata, remaining)
            skippable = skip_bad_images and bad_file is not None and reason in IMAGE_REASONS
            failure = Failure(
                customer_id, str(bad_file or ""), described["status"], reason,
                described["message"], "image skipped" if skippable else "customer refused",
            )  # fmt: skip
            failures.append(failure)
            if not skippable:
                return Result(customer_id, reason, tuple(failures))
            remaining = [p for p in remaining if p != bad_file]
            if not remaining:
                return Result(customer_id, reason, tuple(failures))


def write_report(path: Path, failures: list[Failure]) -> None:
    """Every failure as a CSV row (REPORT_COLUMNS), for the desk to fix and re-import."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=REPORT_COLUMNS)
        writer.writeheader()
        writer.writerows(asdict(f) for f in failures)


def run_import(args: argparse.Namespace, stubs: Stubs, consent: enrollment_pb2.Consent) -> int:
    customers = read_source(args.source)
    state_path = args.state or default_state_path(args.source)
    state = ImportState(state_path)
    todo = {cid: images for cid, images in customers.items() if cid not in state.done}
    outcomes: Counter[str] = Counter()
    failures: list[Failure] = []
    console = Console(stderr=True)
    columns = (TextColumn("enrolling"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress, ThreadPoolExecutor(args.workers) as pool:
        task = progress.add_task("import", total=len(todo))
        jobs = [
            pool.submit(enroll_one, stubs, cid, images, consent, args.timeout, args.skip_bad_images)
            for cid, images in todo.items()
        ]
        for job in as_completed(jobs):
            result = job.result()
            outcomes[result.outcome] += 1
            failures += result.failures
            if result.outcome in DONE:
                state.mark(result.customer_id, result.outcome)
            progress.advance(task)
    failures.sort(key=lambda f: (f.customer_id, f.file))
    refused = {k: v for k, v in outcomes.items() if k not in DONE}
    summary = {
        "customers": len(customers),
        "skipped_done_before": len(customers) - len(todo),
        "enrolled": outcomes["ENROLLED"],
        "already_enrolled": outcomes["ALREADY_ENROLLED"],
        "failed": sum(refused.values()),
        "failures_by_reason": dict(sorted(refused.items(), key=lambda kv: -kv[1])),
        "images_skipped": sum(1 for f in failures if f.action == "image skipped"),
        "state_file": str(state_path),
        "report_file": str(args.report) if args.report else None,
        "failures": [asdict(f) for f in failures],
    }
    if args.report:
        write_report(args.report, failures)
    if args.json:
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        _print_summary(summary, failures)
    if not refused:
        return exit_status.OK
    service_side = any(exit_status.for_error(f.status) == exit_status.UNAVAILABLE for f in failures)
    return exit_status.UNAVAILABLE if service_side else exit_status.REFUSED


def _print_summary(summary: dict, failures: list[Failure]) -> None:
    console = Console()
    table = Table(title="import summary", show_header=False, title_justify="left")
    for key, value in summary.items():
        if key != "failures" and value is not None:
            table.add_row(key, json.dumps(value) if isinstance(value, dict) else str(value))
    console.print(table)
    if failures:
        rows = [asdict(f) for f in failures]
        columns = ("customer_id", "file", "reason", "message", "action")
        console.print(records_table(rows, columns, "", title="failures"))
