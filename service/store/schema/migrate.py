"""Bring a gallery database to this code's schema revision, or check that it is there.

Alembic owns the schema: each revision under `migrations/versions` is one step, and the
database's `alembic_version` row says which it is at. `upgrade` runs the missing steps in one
transaction that first takes the migration lock, so replicas started together on an empty
database take turns instead of racing `CREATE TABLE` (PostgreSQL: a transaction-scoped
`pg_advisory_xact_lock`, with transactional DDL; SQLite: the `BEGIN IMMEDIATE` write lock of
the store's writer engine). Whoever waited then finds the schema current and does nothing.

A database made by `create_all` before migrations existed has the tables but no version row:
`upgrade` stamps it at the baseline when every baseline table is there (the revisions create
only what is missing, so a partial one is completed), then upgrades it. A database at a
revision this code does not know was migrated by a newer faceguard: it is refused, never
served or changed.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, func, inspect, select

from service.errors import SettingsError

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
BASELINE = "0001_baseline"
# The tables of the release at commit 2e79320, which the baseline revision creates.
BASELINE_TABLES = frozenset(
    {
        "customers",
        "templates",
        "consents",
        "events",
        "outbox",
        "risk_list_entries",
        "watchlist_entries",
        "watchlist_templates",
    }
)
UPGRADE_COMMAND = "faceguard db upgrade"
# Alembic's `context` and `op` are module-level proxies: one migration at a time per process,
# whatever database it is on (the database lock serialises processes).
_IN_PROCESS = threading.Lock()
# pg_advisory_xact_lock key shared by every faceguard process on one database ("fgschema").
_LOCK_KEY = 0x6667736368656D61


class SchemaError(SettingsError):
    """The database's schema is not the one this code serves; the message says what to do."""


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def head() -> str:
    """The revision this code serves."""
    revision = _script().get_current_head()
    assert revision is not None, "the migrations folder has no revisions"
    return revision


def current(conn: Connection) -> str | None:
    """The database's revision; None when it has no version row (empty, or made by create_all)."""
    return MigrationContext.configure(conn).get_current_revision()


def _known(revision: str) -> bool:
    return any(script.revision == revision for script in _script().walk_revisions())


def _refuse_newer(revision: str | None) -> None:
    if revision is not None and not _known(revision):
        raise SchemaError(
            f"the database schema is at revision {revision}, which this faceguard (schema "
            f"{head()}) does not know: a newer faceguard migrated it; run that version, or "
            "restore a backup made before its upgrade"
        )


def _lock(conn: Connection) -> None:
    """Serialise migrations across processes until the transaction ends (SQLite: the writer
    engine's BEGIN IMMEDIATE already holds the database's write lock)."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(_LOCK_KEY)))


def adopt_legacy(conn: Connection) -> None:
    """Stamp a database made by create_all before migrations (tables, no version row) at the
    baseline when it has all of the baseline's tables; an empty one is left to the revisions."""
    tables = set(inspect(conn).get_table_names())
    if "customers" not in tables or "alembic_version" in tables:
        return
    if BASELINE_TABLES <= tables:
        command.stamp(_config(conn), BASELINE)
        log.info("database made before schema migrations: stamped at %s", BASELINE)
    else:
        log.info("database made before schema migrations, partial: completing from the start")


def upgrade(conn: Connection) -> tuple[str | None, str]:
    """Run the missing revisions inside `conn`'s transaction (committed by the caller), under
    the migration lock; returns the revisions before and after. Refuses a newer schema."""
    with _IN_PROCESS:
        _lock(conn)
        before = current(conn)
        _refuse_newer(before)
        if before is None:
            adopt_legacy(conn)
        command.upgrade(_config(conn), "head")
        after = current(conn)
    assert after is not None
    if before != after:
        log.info("database schema upgraded from %s to %s", before or "nothing", after)
    return before, after


def require_head(conn: Connection) -> str:
    """The database's revision if it is this code's; otherwise SchemaError naming the fix."""
    revision = current(conn)
    _refuse_newer(revision)
    if revision != head():
        raise SchemaError(
            f"the database schema is at {revision or 'no revision'}, this faceguard serves "
            f"{head()}: run `{UPGRADE_COMMAND}` with this version's settings first"
        )
    return revision
