"""What a 1:N search finds: named pairs instead of bare `(str, float)` tuples.

NamedTuples, so code that unpacks `for customer_id, score in ...` keeps working.
"""

from __future__ import annotations

from typing import NamedTuple


class Match(NamedTuple):
    """A customer the probe matched, with the exact cosine of their best template."""

    customer_id: str
    score: float


class WatchlistHit(NamedTuple):
    """The closest watchlist entry and its cosine. Not a `Match`: an entry is not a customer,
    and a hit must never be read as a customer id."""

    entry_id: str
    score: float
