"""The use cases: what the service does, between the gRPC layer and the store."""
