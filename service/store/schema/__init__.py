"""The gallery database's schema, owned by versioned Alembic migrations (see `migrate`)."""
