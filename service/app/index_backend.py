"""The vector index backend the settings name (`gallery.backend`), opened for the gallery.

The one place that knows every backend: a new one adds its settings to
`service.config.GallerySettings` and a case here that returns its `VectorIndex`, restored from
its persisted state and healed against the store, or rebuilt from it.
"""

from __future__ import annotations

from pathlib import Path

from service.config import GallerySettings
from service.gallery.faiss_index import IndexOptions, SnapshotFile, open_faiss
from service.gallery.vector_index import VectorIndex
from service.store.customers import Store


def open_index(
    settings: GallerySettings, store: Store, model: str, dim: int, data_dir: Path
) -> VectorIndex:
    """The index of the store's templates of embedder version `model`, ready to serve."""
    match settings.backend:
        case "faiss":
            faiss = settings.faiss
            file = SnapshotFile(faiss.snapshot_path(data_dir), lambda: store.keyring)
            options = IndexOptions(
                exact_limit=faiss.exact_limit, probe_fraction=faiss.probe_fraction
            )
            return open_faiss(store, model, file, dim, options)
        case "milvus":  # pymilvus is the `milvus` extra: imported only when chosen
            from service.gallery.milvus_index import open_milvus

            return open_milvus(dim, settings.milvus, store.keyring, store, model)
    raise ValueError(f"unknown gallery backend {settings.backend!r}")
