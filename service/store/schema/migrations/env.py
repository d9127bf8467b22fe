"""Alembic environment: runs the revisions on the connection `service.store.schema.migrate` hands
over (already in a transaction that holds the migration lock), never on its own engine, so no
alembic.ini is needed at run time. `target_metadata` is the project's tables, for comparing
a database against the code when writing a new revision."""

from alembic import context
from sqlalchemy import MetaData


def _target_metadata() -> MetaData:
    # Every module that puts a table in METADATA, so the comparison sees all of them.
    import service.store.calibrations
    import service.store.lists
    import service.store.outbox
    import service.store.velocity
    import service.store.watchlist  # noqa: F401
    from service.store.tables import METADATA

    return METADATA


connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=_target_metadata(), render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
