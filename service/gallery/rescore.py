"""Exact re-scoring of an approximate index's candidates against the store.

An approximate or remote index (Milvus, a compressed FAISS index) only proposes candidates: its
scores may be approximate, its vectors rotated, and at Milvus's Bounded consistency a search can
return a template deleted a moment ago. The store is the source of truth, so before any threshold
the gallery keeps only the candidates the store still holds and scores each one exactly, as the
cosine of the probe and the decrypted template. An erased or replaced template can then never
produce a match, whatever the index still says.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple, Protocol

import numpy as np

from service.store.customers import StoredTemplate


class TemplateLookup(Protocol):
    """What re-scoring needs of the store (`Store.templates_by_id`)."""

    def templates_by_id(self, ids: Iterable[int]) -> Mapping[int, StoredTemplate]: ...


class Candidate(NamedTuple):
    """A candidate the store confirmed: its owner and its exact cosine with the probe."""

    template_id: int
    customer_id: str
    score: float


def rescore(
    candidates: Sequence[tuple[int, float]],
    probe: np.ndarray,
    store: TemplateLookup,
    model: str | None = None,
) -> list[Candidate]:
    """The candidates (template id, index score) the store still holds, scored exactly, best
    first (ties by template id). Absent ids and, when `model` is given, templates of another
    embedder (whose scores mean nothing against this probe) are dropped."""
    wanted = list(dict.fromkeys(int(template_id) for template_id, _ in candidates))
    if not wanted:
        return []
    held = store.templates_by_id(wanted)
    probe = np.asarray(probe, np.float32)
    found = [
        Candidate(template.id, template.customer_id, float(template.vector @ probe))
        for template_id in wanted
        if (template := held.get(template_id)) is not None
        and (model is None or template.model == model)
    ]
    return sorted(found, key=lambda c: (-c.score, c.template_id))
