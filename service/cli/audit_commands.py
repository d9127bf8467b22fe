"""`faceguard audit verify` and `faceguard audit checkpoint`: the event log's tamper evidence.

`verify` walks the chain (plain hashes before the AUDIT_CHAIN_KEYED row, the audit key's HMAC
from it on) and checks it against the latest signed checkpoint (`--checkpoints FILE`, by
default the data dir's): rows deleted after it (truncation), a different hash at its row or
a moved keyed start (re-chaining), and lines whose signature is wrong (forged). It only reads:
it never makes a key, a table or a row. `checkpoint` appends a checkpoint of the head now.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from service.app.assembly import audit_key_for, keyring_for
from service.config import Settings, load_settings
from service.store import checkpoints
from service.store.connection import sqlite_file
from service.store.customers import Store

log = logging.getLogger(__name__)


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    if args.data_dir:
        settings = settings.model_copy(
            update={"storage": settings.storage.model_copy(update={"data_dir": args.data_dir})}
        )
    return settings


def verify_report(store: Store, checkpoint_file: Path) -> dict[str, object]:
    """The chain's report, checked against the latest authentic checkpoint in the file."""
    report = store.verify_chain()
    ok, reason = report.ok, report.reason
    latest, forged = None, []
    if store.chain_key is None and ok and _has_lines(checkpoint_file):
        # Checkpoints exist, so the chain was keyed: a missing key must not skip them (deleting
        # the key file and re-chaining plain would then pass).
        ok = False
        reason = (
            f"{checkpoint_file} holds checkpoints but the audit key is missing: give it with "
            "storage.audit_key_file to check the chain against them"
        )
    elif store.chain_key is not None:
        found = checkpoints.read(checkpoint_file, store.chain_key)
        latest, forged = found.latest, found.forged
        if forged and ok:  # a broken chain's own reason comes first
            ok = False
            reason = f"{checkpoint_file}: lines {forged} are not signed by the audit key (forged)"
        elif ok and latest is not None:
            contradiction = checkpoints.problem(store, latest, report)
            if contradiction:
                ok, reason = False, contradiction
    return {
        "ok": ok,
        "rows_checked": report.rows,
        "first_broken_row": report.first_broken,
        "reason": reason,
        "head_hash": report.head_hash,
        "head_row": report.head_row,
        "keyed_from_row": report.keyed_from,
        "checkpoint": asdict(latest) if latest is not None else None,
        "checkpoint_file": str(checkpoint_file),
        "forged_checkpoint_lines": forged,
    }


def _has_lines(path: Path) -> bool:
    try:
        return bool(path.read_text().strip())
    except FileNotFoundError:
        return False


def _existing_store(settings: Settings) -> tuple[Store | None, str]:
    """The service's store as it is, or why there is none: both commands only read what is
    there (opening a missing database would make an empty one, and ./data, and ask for a key)."""
    storage = settings.storage
    database = sqlite_file(storage.url())
    if database is not None and not database.is_file():
        return None, (
            f"no faceguard database at {database}: give the service's data directory with "
            "--data-dir (or storage.data_dir / storage.database_url in --config)"
        )
    store = Store(storage.url(), keyring_for(settings), audit_key_for(settings, False))
    if not store.has_audit_events():
        store.close()
        return None, "no events table: not a faceguard database"
    return store, ""


def run_audit_verify(args: argparse.Namespace) -> int:
    settings = _settings(args)
    store, missing = _existing_store(settings)
    if store is None:
        return _fail(args, missing)
    try:
        file = args.checkpoints or settings.storage.checkpoint_dir() / checkpoints.FILE_NAME
        result = verify_report(store, file)
    finally:
        store.close()
    _print(args, result)
    return 0 if result["ok"] else 1


def _fail(args: argparse.Namespace, reason: str) -> int:
    log.error("%s", reason)
    if getattr(args, "json", False):  # (`audit checkpoint` has no --json: it prints JSON)
        _print(args, {"ok": False, "reason": reason})
    return 1


def _print(args: argparse.Namespace, figures: dict[str, object]) -> None:
    """One JSON object with --json; for people, the verdict on one line and a table."""
    if args.json:
        sys.stdout.write(json.dumps(figures) + "\n")
        return
    console = Console()
    if figures["ok"]:
        verdict = f"audit chain intact: {figures['rows_checked']} rows checked"
    else:
        verdict = f"audit chain BROKEN at row {figures['first_broken_row']}: {figures['reason']}"
    console.print(verdict, style="bold", markup=False, highlight=False, soft_wrap=True)
    table = Table(show_header=False, box=None, pad_edge=False)
    for key, value in figures.items():
        table.add_row(key, "" if value is None else str(value))
    console.print(table)


def run_audit_checkpoint(args: argparse.Namespace) -> int:
    settings = _settings(args)
    store, missing = _existing_store(settings)
    if store is None:
        return _fail(args, missing)
    try:
        if store.chain_key is None:
            return _fail(args, f"no audit key at {settings.storage.audit_key_path()}")
        written = checkpoints.write(store, settings.storage.checkpoint_dir())
    finally:
        store.close()
    file = settings.storage.checkpoint_dir() / checkpoints.FILE_NAME
    sys.stdout.write(
        json.dumps({"checkpoint": asdict(written) if written else None, "file": str(file)}) + "\n"
    )
    return 0
