"""The store's change feed: which templates each committed change added and removed, in commit
order, so that every replica's indexes follow the store.

The feed is the audit chain itself. A customer change (enrolment, template update, erasure,
retention purge) and a watchlist change record `template_ids_added` / `template_ids_removed` in
their event's payload, and events are appended under the chain's append lock (SQLite's write
lock; PostgreSQL's transaction-scoped advisory lock, held until commit), which is taken before
the row's id is drawn. So event row ids are in commit order, and once a row is visible every row
with a smaller id has committed or rolled back: a reader that has applied every change through
row W can read "id > W" later and miss nothing. A replica keeps that W (its watermark) with its
index snapshot and replays from it after a restart.

Wake-ups: on PostgreSQL each change also sends `NOTIFY faceguard_changes` inside its own
transaction (delivered on commit, never on rollback), and `ChangeListener` LISTENs on a
connection of its own. A notification only says "read the feed": the feed is read by id, so a
lost notification (a dropped connection, a listener started late) costs latency, never a change;
the follower polls too (`gallery.follow_poll_s`), the only wake-up on SQLite.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg
from sqlalchemy import Connection, func, make_url, select

from service.store.tables import event_table

if TYPE_CHECKING:
    from service.store.customers import Store

log = logging.getLogger(__name__)

CHANNEL = "faceguard_changes"
# Which event types change which index: the customer gallery's templates and the watchlist's
# (two tables, so their template ids are separate number spaces).
GALLERY = ("ENROLL", "UPDATE_TEMPLATES", "DELETE")
WATCHLIST = ("WATCHLIST_ADD", "WATCHLIST_REMOVE")
ADDED, REMOVED = "template_ids_added", "template_ids_removed"
_BATCH = 1000


@dataclass(frozen=True)
class Change:
    """One committed change: its event row id and the template ids it added and removed."""

    event_row: int
    added: tuple[int, ...]
    removed: tuple[int, ...]


def notify(conn: Connection) -> None:
    """Wake the followers when this transaction commits (PostgreSQL; SQLite followers poll)."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_notify(CHANNEL, "")))


def head(store: Store) -> int:
    """The newest event row id (0 for an empty chain): a rebuild reads it before the templates,
    so the changes committed meanwhile are replayed after it."""
    with store.connect() as conn:
        return int(conn.execute(select(func.coalesce(func.max(event_table.c.id), 0))).scalar())


def changes_after(
    store: Store, types: tuple[str, ...], after: int, limit: int = _BATCH
) -> tuple[list[Change], int]:
    """The changes of `types` after event row `after`, oldest first, and the row id through
    which they are complete (the new watermark: the chain head when fewer than `limit` came,
    so decisions between changes do not make the next read scan them again)."""
    with store.connect() as conn:
        newest = conn.execute(select(func.coalesce(func.max(event_table.c.id), 0))).scalar()
        query = (
            select(event_table.c.id, event_table.c.payload)
            .where(
                event_table.c.id > after,
                event_table.c.id <= newest,
                event_table.c.type.in_(types),
            )
            .order_by(event_table.c.id)
            .limit(limit)
        )
        rows = conn.execute(query).all()
    changes = []
    for row_id, payload in rows:
        facts = json.loads(payload)
        added, removed = facts.get(ADDED) or [], facts.get(REMOVED) or []
        if added or removed:
            changes.append(Change(int(row_id), tuple(map(int, added)), tuple(map(int, removed))))
    through = int(rows[-1][0]) if len(rows) == limit else max(int(newest), after)
    return changes, through


class ChangeListener:
    """LISTEN for change notifications on a PostgreSQL connection of its own.

    `wait` reconnects when the connection has dropped and then reports a wake-up, since
    notifications sent meanwhile are lost: the follower reads the feed from its watermark and
    so catches up. Used by one thread (the follower).
    """

    def __init__(self, url: str) -> None:
        self._conninfo = make_url(url).set(drivername="postgresql").render_as_string(False)
        self._conn: psycopg.Connection | None = None

    @property
    def backend_pid(self) -> int | None:
        """The server process of the LISTEN connection (None when not connected)."""
        return self._conn.info.backend_pid if self._conn is not None else None

    def wait(self, timeout: float) -> bool:
        """Block up to `timeout` seconds; True when a change may have committed (a notification
        came, or the connection was just (re)made), False on a quiet timeout."""
        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(self._conninfo, autocommit=True)
                self._conn.execute(f"LISTEN {CHANNEL}")
            except psycopg.Error as exc:
                log.warning("change listener cannot connect (%s): polling meanwhile", exc)
                self._drop()
                return True
            return True
        try:
            woke = any(True for _ in self._conn.notifies(timeout=timeout, stop_after=1))
            if woke:  # one read of the feed covers every notification already queued
                for _ in self._conn.notifies(timeout=0):
                    pass
            return woke
        except psycopg.Error as exc:
            log.warning("change listener connection lost (%s): reconnecting", exc)
            self._drop()
            return True

    def wake(self) -> None:
        """Send one notification on the channel (from a short connection of its own), so a
        `wait` blocked in another thread returns now: stopping a follower need not wait out
        its poll interval. Other replicas' followers read the feed once more: harmless."""
        try:
            with psycopg.connect(self._conninfo, autocommit=True) as conn:
                conn.execute(f"NOTIFY {CHANNEL}")
        except psycopg.Error as exc:
            log.warning("cannot wake the change listener (%s)", exc)

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
        self._conn = None

    def close(self) -> None:
        self._drop()


def listener_for(store: Store) -> ChangeListener | None:
    """A listener for the store's database; None on SQLite (followers poll)."""
    url = store.url
    return ChangeListener(url) if make_url(url).get_backend_name() == "postgresql" else None
