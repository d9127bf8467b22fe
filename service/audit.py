"""`faceguard audit verify`: check the event log's hash chain and name the first broken row."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from rich.console import Console
from rich.table import Table

from service.assembly import open_store
from service.config import load_settings

log = logging.getLogger(__name__)


def run_audit_verify(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    if args.data_dir:
        settings = settings.model_copy(
            update={"storage": settings.storage.model_copy(update={"data_dir": args.data_dir})}
        )
    storage = settings.storage
    database = storage.data_dir / "faceguard.db"
    if storage.database_url is None and not database.is_file():
        # Opening the store would create an empty database (and ./data) and then ask for a
        # key: say what is missing instead.
        log.error(
            "no faceguard database at %s: give the service's data directory with --data-dir "
            "(or storage.data_dir / storage.database_url in --config)", database,
        )  # fmt: skip
        return 1
    with open_store(settings) as store:
        report = store.verify_chain()
    figures = {
        "ok": report.ok,
        "rows_checked": report.rows,
        "first_broken_row": report.first_broken,
        "reason": report.reason,
        "head_hash": report.head_hash,
    }
    if args.json:
        sys.stdout.write(json.dumps(figures) + "\n")
    else:
        _print_report(figures)
    return 0 if report.ok else 1


def _print_report(figures: dict[str, object]) -> None:
    """The verdict on one line, then the figures as a table."""
    console = Console()
    verdict = (
        f"audit chain intact: {figures['rows_checked']} rows checked"
        if figures["ok"]
        else f"audit chain BROKEN at row {figures['first_broken_row']}: {figures['reason']}"
    )
    console.print(verdict, style="bold", markup=False, highlight=False, soft_wrap=True)
    table = Table(show_header=False, box=None, pad_edge=False)
    for key, value in figures.items():
        table.add_row(key, "" if value is None else str(value))
    console.print(table)
