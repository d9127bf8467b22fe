"""The use cases: what the service does, between the transport (api) and storage."""
