"""Every table and every query of the service (SQL lives only here)."""
