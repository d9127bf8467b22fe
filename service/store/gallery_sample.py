"""A bounded sample of the enrolled gallery: the bank's own faces, as impostor pairs.

Two customers' templates are a real impostor pair of the bank's population. Calibration reads
at most `customers` customers at random, and at most `per_customer` templates of each (their
oldest: enrolment photos), of one embedder version only (scores of two versions are not
comparable), and decrypts just those. Memory and time are bounded by the two settings, not by
the gallery's size: the random pick is one indexed scan of template owners in the database.
Customers whose newest consent has expired are left out: their templates await the purge and
their consent no longer covers any use of them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from sqlalchemy import func, or_, select

from service.store.customers import Store
from service.store.tables import consent_table, template_table

log = logging.getLogger(__name__)

_CHUNK = 500  # customer ids per IN (...) list


@dataclass(frozen=True, eq=False)
class GallerySample:
    """Templates (rows of `vectors`, float32) and the customer each belongs to."""

    vectors: np.ndarray
    owners: list[str]

    @property
    def people(self) -> int:
        return len(set(self.owners))


def sample_gallery(store: Store, model: str, customers: int, per_customer: int) -> GallerySample:
    """Up to `customers` random customers with templates of `model`, and up to `per_customer`
    of their templates each (decrypted); none of a customer whose consent has expired."""
    newest_expiry = (
        select(consent_table.c.expires_at)
        .where(consent_table.c.customer_id == template_table.c.customer_id)
        .order_by(consent_table.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    pick = (
        select(template_table.c.customer_id)
        .where(template_table.c.model == model)
        .where(or_(newest_expiry.is_(None), newest_expiry > datetime.now(UTC)))
        .group_by(template_table.c.customer_id)
        .order_by(func.random())
        .limit(customers)
    )
    with store.connect() as conn:
        chosen = list(conn.execute(pick).scalars())
        owners: dict[int, str] = {}
        for start in range(0, len(chosen), _CHUNK):
            rows = conn.execute(
                select(template_table.c.id, template_table.c.customer_id)
                .where(template_table.c.customer_id.in_(chosen[start : start + _CHUNK]))
                .where(template_table.c.model == model)
                .order_by(template_table.c.customer_id, template_table.c.id)
            ).all()
            taken: dict[str, int] = {}
            for row in rows:
                if taken.get(row.customer_id, 0) < per_customer:
                    taken[row.customer_id] = taken.get(row.customer_id, 0) + 1
                    owners[row.id] = row.customer_id
    try:
        vectors = _vectors(store, owners)
    except KeyError:  # a customer erased meanwhile: keep the templates still there
        owners = store.customer_of(owners)
        vectors = _vectors(store, owners)
    log.info("calibration sample: %d templates of %d customers", len(owners), len(chosen))
    return GallerySample(vectors, list(owners.values()))


def _vectors(store: Store, owners: dict[int, str]) -> np.ndarray:
    if not owners:
        return np.zeros((0, 0), np.float32)
    return store.vectors_of(np.fromiter(owners, dtype=np.int64, count=len(owners)))
