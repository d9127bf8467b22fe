"""The database engine behind the store: SQLite (pragmas, write transactions that take the
lock up front) or PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, make_url
from sqlalchemy import event as sa_event

SQLITE_BUSY_TIMEOUT_S = 30
WRITE = "faceguard_write"  # execution option marking write transactions (BEGIN IMMEDIATE)


def sqlite_file(url: str) -> Path | None:
    """The database file a SQLite URL names; None for another backend."""
    parsed = make_url(url)
    return Path(parsed.database or "") if parsed.get_backend_name() == "sqlite" else None


def schema_engine(url: str) -> Engine:
    """An engine whose transactions take the write lock (SQLite BEGIN IMMEDIATE), for schema
    migrations run without the store's keys (`faceguard db upgrade`)."""
    return open_engine(url).execution_options(**{WRITE: True})


def open_engine(url: str) -> Engine:
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        return create_engine(parsed, pool_pre_ping=True)
    if backend != "sqlite":
        raise ValueError(
            f"unsupported database {backend!r}: use sqlite:/// or postgresql+psycopg://"
        )
    if parsed.database in (None, "", ":memory:") or "memory" in parsed.query.get("mode", ""):
        raise ValueError("an in-memory SQLite gallery would vanish; give sqlite:///<file path>")
    engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
    sa_event.listen(engine, "connect", _sqlite_on_connect)
    sa_event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    """Take transaction control from the sqlite3 driver and set the per-connection pragmas.

    WAL lets readers run beside the single writer; synchronous=FULL makes each commit (and
    its audit event) durable across power loss; secure_delete overwrites erased templates.
    """
    dbapi_connection.isolation_level = None  # the driver emits no BEGIN; _sqlite_on_begin does
    cursor = dbapi_connection.cursor()
    for pragma in (
        "journal_mode=WAL",
        "foreign_keys=ON",
        f"busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}",
        "synchronous=FULL",
        "secure_delete=ON",
    ):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    """Writes take the database write lock up front (BEGIN IMMEDIATE): that serialises audit
    appends and makes a busy writer wait for the busy timeout instead of failing on upgrade."""
    immediate = conn.get_execution_options().get(WRITE, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
