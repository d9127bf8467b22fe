"""The Milvus backend's settings (the `gallery.milvus` table), apart from the backend itself so
the settings load without pymilvus, which only a Milvus deployment installs (the `milvus` extra).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, SecretStr


class MilvusSettings(BaseModel):
    """The Milvus gallery backend (`gallery.backend = "milvus"`, service/gallery/milvus_index.py).

    Milvus stores the vectors rotated by a secret derived from the template keyring and only
    proposes candidates: the service re-scores them against the store before any threshold.
    """

    uri: str = Field("http://127.0.0.1:19530", description="Milvus proxy address")
    token: SecretStr | None = Field(None, description="user:password or API key, when enabled")
    collection: str = Field(
        "faceguard_templates", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,254}$",
        description="collection holding the rotated templates (made when missing)",
    )  # fmt: skip
    index_type: Literal["FLAT", "HNSW", "IVF_FLAT", "IVF_SQ8", "IVF_PQ"] = Field(
        "HNSW", description="Milvus index built on sealed segments"
    )
    index_params: dict[str, int | float | str] = Field(
        default_factory=dict,
        description="build parameters (HNSW M/efConstruction, IVF nlist, PQ m); default per type",
    )
    search_params: dict[str, int | float | str] = Field(
        default_factory=dict,
        description="search parameters (HNSW ef, IVF nprobe); default per type",
    )
    consistency_level: Literal["Strong", "Bounded", "Session", "Eventually"] = Field(
        "Bounded",
        description="searches only; candidates are re-scored against the store, so a stale "
        "or deleted hit never matches",
    )
    rotation_key_id: str | None = Field(
        None, description="template keyring key the rotation derives from (default: the active "
        "key when the collection is made; recorded with the collection)",
    )  # fmt: skip
    timeout_s: float = Field(10.0, gt=0, description="per Milvus call")
