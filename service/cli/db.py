"""`faceguard db upgrade` and `faceguard db current`: the schema migrations as their own step.

They need only the database URL, not the template or audit keys, so a deploy job can run
them before any replica starts; `upgrade` takes the same lock as a replica that migrates at
start, so running it beside one is safe.
"""

from __future__ import annotations

import logging

from service.config import Settings
from service.store.connection import schema_engine
from service.store.durable import make_private
from service.store.schema import migrate

log = logging.getLogger(__name__)


def run_db(settings: Settings, action: str) -> int:
    """Upgrade the schema to this code's revision, or print the database's and the code's."""
    storage = settings.storage
    if storage.database_url is None:
        database = storage.data_dir / "faceguard.db"
        if action != "upgrade" and not database.is_file():
            # Only upgrade makes the embedded database; reading a missing one would create it.
            print(f"database: none (no file at {database})\ncode: {migrate.head()}")
            log.error("no faceguard database at %s: `faceguard db upgrade` creates it", database)
            return 1
        make_private(storage.data_dir)  # the embedded SQLite file lives there
    engine = schema_engine(storage.url())
    try:
        with engine.begin() as conn:
            if action == "upgrade":
                before, after = migrate.upgrade(conn)
                log.info("schema at %s (was %s)", after, before or "nothing")
            else:
                revision = migrate.current(conn)
                print(f"database: {revision or 'none'}\ncode: {migrate.head()}")
                migrate.require_head(conn)
    finally:
        engine.dispose()
    return 0
