"""The schema's owner: Alembic migrations on SQLite and PostgreSQL.

Head equals what create_all made before migrations; a release-era (2e79320) database and one
made by create_all upgrade with their rows kept; replicas migrating an empty PostgreSQL at once
all come up; a schema newer than the code, or (with auto_migrate off) older, is refused with
the command to run; `faceguard db upgrade` / `db current` work through the real command.
"""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from service_helpers import service_settings
from sqlalchemy import create_engine, insert, inspect, select, text

# Every module with a table in METADATA, so create_all there makes all of today's tables.
import service.store.calibrations
import service.store.lists
import service.store.outbox
import service.store.reviews
import service.store.velocity
import service.store.watchlist  # noqa: F401
from service.app.assembly import open_store
from service.store.connection import schema_engine
from service.store.crypto import generate_keyring
from service.store.customers import Store
from service.store.schema import migrate
from service.store.schema.migrate import SchemaError
from service.store.tables import METADATA, customer_table
from tools import postgres

FACEGUARD = Path(sys.executable).with_name("faceguard")
OLD_EVENT_INDEXES = {"ix_events_device_outcome_time", "ix_events_customer_outcome_time"}
FUTURE = "9999_from_a_newer_faceguard"


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'gallery.db'}"
        return
    postgres_url = request.getfixturevalue("postgres_url")
    postgres.reset_database(postgres_url)
    yield postgres_url
    postgres.reset_database(postgres_url)


def _schema(url: str) -> dict[str, Any]:
    """Every table of the database but Alembic's: columns with types, keys, indexes."""
    engine = create_engine(url)
    try:
        found = inspect(engine)
        return {
            table: {
                "columns": [
                    (c["name"], str(c["type"]), c["nullable"], c.get("default"))
                    for c in found.get_columns(table)
                ],
                "pk": found.get_pk_constraint(table),
                "fks": sorted(
                    (f["name"], tuple(f["constrained_columns"]), f["referred_table"])
                    for f in found.get_foreign_keys(table)
                ),
                "indexes": sorted(
                    (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                    for i in found.get_indexes(table)
                ),
                "unique": sorted(
                    (u["name"], tuple(u["column_names"]))
                    for u in found.get_unique_constraints(table)
                ),
            }
            for table in sorted(found.get_table_names())
            if table != "alembic_version"
        }
    finally:
        engine.dispose()


def _sqlite_ddl(url: str) -> dict[str, str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL")
            ).all()
        return {name: " ".join(sql.split()) for name, sql in rows if name != "alembic_version"}
    finally:
        engine.dispose()


def _migrated(url: str, target: str = "head") -> None:
    engine = schema_engine(url)
    try:
        with engine.begin() as conn:
            migrate._lock(conn)
            command.upgrade(migrate._config(conn), target)
    finally:
        engine.dispose()


def _revision(url: str) -> str | None:
    engine = schema_engine(url)
    try:
        with engine.connect() as conn:
            return migrate.current(conn)
    finally:
        engine.dispose()


def _execute(url: str, statement: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(statement))
    finally:
        engine.dispose()


def _add_customer(url: str, customer_id: str) -> None:
    now = datetime.now(UTC)
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(customer_table).values(
                    customer_id=customer_id, status="ACTIVE", created_at=now, updated_at=now
                )
            )
    finally:
        engine.dispose()


def _open(url: str, migrate_schema: bool = True) -> Store:
    store = Store(url, generate_keyring())
    try:
        store.create_schema(migrate=migrate_schema)
    except Exception:
        store.close()
        raise
    return store


def _customers(store: Store) -> list[str]:
    with store.connect() as conn:
        return list(conn.scalars(select(customer_table.c.customer_id)))


def test_head_is_the_schema_create_all_made(url: str, tmp_path: Path) -> None:
    """Same tables, columns, types, keys and indexes as create_all of every module's tables."""
    engine = create_engine(url)
    METADATA.create_all(engine)
    engine.dispose()
    made_by_create_all = _schema(url)
    ddl = _sqlite_ddl(url) if url.startswith("sqlite") else None
    if url.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'migrated.db'}"
    else:
        postgres.reset_database(url)
    _open(url).close()
    assert _revision(url) == migrate.head()
    assert _schema(url) == made_by_create_all
    assert set(made_by_create_all) == set(METADATA.tables)
    if ddl is not None:  # SQLite: the very CREATE statements, AUTOINCREMENT included
        assert _sqlite_ddl(url) == ddl


def test_release_schema_upgrades_with_its_rows(url: str) -> None:
    """A database at the release's revision (2e79320) gains the new tables, keeps its rows and
    loses the events indexes velocity no longer reads."""
    _migrated(url, migrate.BASELINE)
    assert OLD_EVENT_INDEXES <= {name for name, *_ in _schema(url)["events"]["indexes"]}
    _add_customer(url, "release-customer")
    with _open(url) as store:
        assert _customers(store) == ["release-customer"]
    assert _revision(url) == migrate.head()
    tables = _schema(url)
    assert {"velocity_attempts", "calibrations"} <= set(tables)
    assert not OLD_EVENT_INDEXES & {name for name, *_ in tables["events"]["indexes"]}


RELEASE = "2e79320"  # the last release: velocity_attempts and calibrations came after it
REPO = Path(__file__).resolve().parents[1]
_RELEASE_CREATE_ALL = """
import sys
from sqlalchemy import create_engine
import service.gallery.lists, service.gallery.watchlist, service.risk.outbox
from service.gallery.store import METADATA
assert service.gallery.lists.__file__.startswith(sys.argv[2])
METADATA.create_all(create_engine(sys.argv[1]))
"""


def test_database_made_by_the_release_code_upgrades(url: str, tmp_path: Path) -> None:
    """The release's own code (git archive of 2e79320) makes the database with create_all;
    it equals the baseline revision, and upgrades to head with its rows kept."""
    if subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", RELEASE]).returncode != 0:
        pytest.skip(f"commit {RELEASE} is not in this checkout's history")
    release = tmp_path / "release"
    release.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", RELEASE, "service"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(release)], input=archive.stdout, check=True)
    made = subprocess.run(
        [sys.executable, "-c", _RELEASE_CREATE_ALL, url, str(release)],
        cwd=release, env={"PYTHONPATH": str(release), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    by_release = _schema(url)
    _add_customer(url, "release-customer")
    baseline_url = url
    if url.startswith("sqlite"):
        baseline_url = f"sqlite:///{tmp_path / 'baseline.db'}"
        _migrated(baseline_url, migrate.BASELINE)
        assert _schema(baseline_url) == by_release
        assert _sqlite_ddl(baseline_url) == _sqlite_ddl(url)
    with _open(url) as store:
        assert _customers(store) == ["release-customer"]
    assert _revision(url) == migrate.head()
    assert set(_schema(url)) == set(METADATA.tables)
    if not url.startswith("sqlite"):  # the baseline against the release on PostgreSQL too
        postgres.reset_database(url)
        _migrated(url, migrate.BASELINE)
        assert _schema(url) == by_release


@pytest.mark.parametrize("made_by", ["release", "today", "store_only"])
def test_database_made_before_migrations_is_adopted(url: str, made_by: str) -> None:
    """No version row: the release's tables (2e79320), today's create_all, or only the store's
    tables (a tool that imported nothing else) are stamped or completed, then upgraded."""
    if made_by == "release":
        _migrated(url, migrate.BASELINE)
        _execute(url, "DROP TABLE alembic_version")
    else:
        tables = [METADATA.tables[name] for name in ("customers", "templates",
                  "consents", "events")] if made_by == "store_only" else None  # fmt: skip
        engine = create_engine(url)
        METADATA.create_all(engine, tables=tables)
        engine.dispose()
    _add_customer(url, f"{made_by}-customer")
    assert _revision(url) is None
    with _open(url) as store:
        assert _customers(store) == [f"{made_by}-customer"]
    assert _revision(url) == migrate.head()
    assert set(_schema(url)) == set(METADATA.tables)


def _replica(url: str, start: Any, results: Any) -> None:
    """One replica process opening the store: what it reports is "ok" or its error."""
    store = Store(url, generate_keyring())
    try:
        start.wait(60)
        store.create_schema()
        results.put("ok")
    except Exception as exc:
        results.put(repr(exc))
    finally:
        store.close()


def test_replicas_migrating_an_empty_postgresql_at_once_all_start(postgres_url: str) -> None:
    """The race that killed a replica with UniqueViolation on pg_type_typname_nsp_index: four
    processes released at one instant open the store on an empty database and all come up, on
    one schema; three rounds (without the lock most rounds lose a replica)."""
    spawn = multiprocessing.get_context("spawn")
    replicas = 4
    for _ in range(3):
        postgres.reset_database(postgres_url)
        start, results = spawn.Barrier(replicas), spawn.Queue()
        processes = [
            spawn.Process(target=_replica, args=(postgres_url, start, results))
            for _ in range(replicas)
        ]
        for process in processes:
            process.start()
        reports = [results.get(timeout=120) for _ in processes]
        for process in processes:
            process.join(timeout=30)
        assert reports == ["ok"] * replicas
        assert _revision(postgres_url) == migrate.head()
        assert set(_schema(postgres_url)) == set(METADATA.tables)
    postgres.reset_database(postgres_url)


def test_stores_of_one_process_migrate_at_once(tmp_path: Path) -> None:
    """Threads opening stores on different databases at once (Alembic keeps its state in
    module-level proxies, which no database lock protects): all of them migrate."""
    databases = 4
    start = threading.Barrier(databases)
    errors: list[Exception] = []

    def replica(url: str) -> None:
        with Store(url, generate_keyring()) as store:
            start.wait(60)
            try:
                store.create_schema()
            except Exception as exc:
                errors.append(exc)

    urls = [f"sqlite:///{tmp_path / f'gallery-{n}.db'}" for n in range(databases)]
    threads = [threading.Thread(target=replica, args=(url,)) for url in urls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert [_revision(url) for url in urls] == [migrate.head()] * databases


def test_db_upgrade_commands_race_on_postgresql(postgres_url: str, tmp_path: Path) -> None:
    """Two `faceguard db upgrade` processes on an empty PostgreSQL: both succeed."""
    postgres.reset_database(postgres_url)
    config = tmp_path / "faceguard.toml"
    config.write_text(f'[storage]\ndatabase_url = "{postgres_url}"\n')
    argv = [str(FACEGUARD), "db", "upgrade", "--config", str(config)]
    runs = [subprocess.Popen(argv, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for run in runs:
        _, stderr = run.communicate(timeout=120)
        assert run.returncode == 0, stderr
    current = subprocess.run(
        [str(FACEGUARD), "db", "current", "--config", str(config)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert current.returncode == 0, current.stderr
    assert f"database: {migrate.head()}" in current.stdout
    postgres.reset_database(postgres_url)


def test_newer_schema_is_refused(url: str) -> None:
    """A revision this code does not know (a newer faceguard migrated) is neither served nor
    changed, whether the store migrates or only checks."""
    _open(url).close()
    _execute(url, f"UPDATE alembic_version SET version_num = '{FUTURE}'")
    for migrate_schema in (True, False):
        with pytest.raises(SchemaError, match=f"{FUTURE}.*newer faceguard"):
            _open(url, migrate_schema)
    assert _revision(url) == FUTURE


def test_older_schema_is_refused_without_auto_migrate(tmp_path: Path) -> None:
    """storage.auto_migrate=false: the service refuses an unmigrated database and names the
    command; once `faceguard db upgrade` has run it opens."""
    settings = service_settings(tmp_path)
    settings.storage.auto_migrate = False
    with pytest.raises(SchemaError, match="run `faceguard db upgrade`"):
        open_store(settings)
    upgrade = subprocess.run(
        [str(FACEGUARD), "db", "upgrade", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert upgrade.returncode == 0, upgrade.stderr
    open_store(settings).close()


def test_db_commands_on_the_embedded_database(tmp_path: Path) -> None:
    """`db current` exits 1 before `db upgrade` and 0 after; a newer schema fails both."""

    def db(action: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(FACEGUARD), "db", action, "--data-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    before = db("current")
    assert before.returncode == 1
    assert "database: none" in before.stdout and "faceguard db upgrade" in before.stderr
    assert not (tmp_path / "faceguard.db").exists()  # reading made no empty database
    assert db("upgrade").returncode == 0
    after = db("current")
    assert after.returncode == 0, after.stderr
    assert f"database: {migrate.head()}\ncode: {migrate.head()}" in after.stdout
    url = f"sqlite:///{tmp_path / 'faceguard.db'}"
    _execute(url, f"UPDATE alembic_version SET version_num = '{FUTURE}'")
    for action in ("upgrade", "current"):
        refused = db(action)
        assert refused.returncode == 1
        assert "newer faceguard" in refused.stderr
