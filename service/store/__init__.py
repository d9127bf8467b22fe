"""The store: every table and every query (SQL lives only here), template crypto, durable files,
the audit chain and the schema migrations."""
