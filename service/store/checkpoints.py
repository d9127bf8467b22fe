"""Signed checkpoints of the audit chain's head, kept outside the database.

A keyed chain cannot be rewritten without the audit key, but deleting its newest rows leaves
a shorter chain that is still intact. A checkpoint records the head (row id, hash, where the
keyed chain starts) with an HMAC under a key derived from the audit key, one JSON line
appended to `checkpoints.jsonl` in the checkpoint directory (0700; the file 0600, opened for
append only). The operator ships the file off the machine (a log shipper, WORM storage);
`faceguard audit verify --checkpoints FILE` then checks the database against the latest one:
rows deleted (truncation), a different hash at that row (re-chained), a keyed chain turned
back to plain hashes, and a line whose signature is wrong (forged).

The serving process writes one at start, every `storage.audit_checkpoint_every_s` when the
head moved, and at stop (`Checkpointer`); `faceguard audit checkpoint` writes one on demand.
Only committed rows are read, so a checkpoint never names a row that could still roll back.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from service.store import audit_chain as audit
from service.store.audit_chain import ChainKey
from service.store.customers import Store
from service.store.tables import event_table

log = logging.getLogger(__name__)

FILE_NAME = "checkpoints.jsonl"
_KEYED_FROM = (
    select(event_table.c.id)
    .where(event_table.c.type == audit.KEYED_MARKER)
    .order_by(event_table.c.id)
    .limit(1)
)


@dataclass(frozen=True)
class Checkpoint:
    """The chain head at a moment, as signed."""

    row: int
    hash: str
    keyed_from: int | None
    key_id: str
    written_at: str

    def signed_text(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Checkpoints:
    """What a checkpoint file holds: the valid checkpoints, and the lines that are not."""

    valid: list[Checkpoint]
    forged: list[int]  # 1-based line numbers with a wrong signature or no valid shape

    @property
    def latest(self) -> Checkpoint | None:
        return max(self.valid, key=lambda c: c.row) if self.valid else None


def current(store: Store) -> Checkpoint | None:
    """The committed head of the store's chain, or None when it is empty."""
    key = _key_of(store)
    with store.connect() as conn:
        found = audit.head(conn, event_table)
        if found is None:
            return None
        keyed_from = conn.execute(_KEYED_FROM).scalar()
    row, head_hash = found
    now = datetime.now(UTC).isoformat(timespec="microseconds")
    return Checkpoint(row, head_hash, keyed_from, key.key_id, now)


def write(store: Store, directory: Path) -> Checkpoint | None:
    """Append a signed checkpoint of the current head to `directory`/checkpoints.jsonl."""
    checkpoint = current(store)
    if checkpoint is None:
        return None
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    line = {**asdict(checkpoint), "sig": _key_of(store).sign(checkpoint.signed_text())}
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    fd = os.open(directory / FILE_NAME, flags, 0o600)
    try:
        os.write(fd, (json.dumps(line, sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return checkpoint


def read(path: Path, key: ChainKey) -> Checkpoints:
    """Every line of a checkpoint file, checked against `key` (missing file: none)."""
    valid, forged = [], []
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return Checkpoints([], [])
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            fields = json.loads(text)
            signature = fields.pop("sig")
            checkpoint = Checkpoint(**fields)
            expected = key.sign(checkpoint.signed_text())
            ok = isinstance(signature, str) and hmac.compare_digest(expected, signature)
        except (ValueError, TypeError, KeyError, AttributeError):
            ok = False
        if ok:
            valid.append(checkpoint)
        else:
            forged.append(number)
    return Checkpoints(valid, forged)


def problem(store: Store, checkpoint: Checkpoint, report: audit.ChainReport) -> str | None:
    """What the database contradicts in an (authentic) checkpoint, or None."""
    if checkpoint.keyed_from is not None and report.keyed_from != checkpoint.keyed_from:
        return (
            f"the checkpoint of row {checkpoint.row} has the chain keyed from row "
            f"{checkpoint.keyed_from}, the database from {report.keyed_from} (re-chained)"
        )
    with store.connect() as conn:
        found = audit.hash_at(conn, event_table, checkpoint.row)
    if found is None:
        return (
            f"row {checkpoint.row} of the checkpoint written {checkpoint.written_at} is gone: "
            f"the chain ends at row {report.head_row} (truncated)"
        )
    if found != checkpoint.hash:
        return f"row {checkpoint.row} differs from its checkpoint (re-chained or replaced)"
    return None


def _key_of(store: Store) -> ChainKey:
    if store.chain_key is None:
        raise audit.ChainKeyError("checkpoints need the audit key (the store has none)")
    return store.chain_key


class Checkpointer:
    """Writes a checkpoint at start, every `interval_s` while the head moves, and at stop."""

    def __init__(self, store: Store, directory: Path, interval_s: float) -> None:
        self.store = store
        self.directory = directory
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: tuple[int, str] | None = None

    def checkpoint(self) -> None:
        try:
            head = current(self.store)
            if head is None or (head.row, head.hash) == self._last:
                return
            written = write(self.store, self.directory)
            if written is not None:
                self._last = (written.row, written.hash)
        except OSError as exc:  # a full disk must not stop the service; it is logged loudly
            log.error("audit checkpoint not written to %s: %s", self.directory, exc)
        except Exception:  # a database error: the next round tries again, the thread lives on
            log.exception("audit checkpoint not written to %s", self.directory)

    def start(self) -> None:
        self.checkpoint()
        if self.interval_s <= 0:
            return

        def loop() -> None:
            while not self._stop.wait(self.interval_s):
                self.checkpoint()

        self._thread = threading.Thread(target=loop, name="audit-checkpoints", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.checkpoint()
