"""The gallery: durable customer store, encrypted templates, audit chain and vector index."""
