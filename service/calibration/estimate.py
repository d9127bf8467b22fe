"""False match rate estimation from a gallery's own cross-person template pairs (numpy, no I/O).

An enrolled gallery is the bank's population: every pair of templates of two different customers
is a real impostor comparison. This module turns a sample of those pairs into thresholds per
target false match rate (FMR), with confidence intervals, and into the estimated FMR at a given
threshold.

Honest uncertainty needs one fact about galleries: their pairs are not independent. Every pair
of Alice's templates with Bob's shares Alice's and Bob's faces, and a population whose impostor
scores run high does so because of *people* (look-alikes, siblings, styling), not of single
pairs. A bootstrap that resamples pairs would treat 100,000 pairs of 20 people as 100,000
independent observations and give intervals far too narrow. The intervals here come from a
bootstrap over people instead (the "pigeonhole" or two-way bootstrap for dyadic data): draw the
people with replacement and weight each pair by how often both its people were drawn.

The accept rule is the project's (tools/evaluation/scores.py): a comparison is accepted when
``score >= threshold``, and a target's threshold is the smallest one at which at most
``target`` of the impostors are accepted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# A target is refused unless the sample is expected to hold at least this many impostor pairs
# above its threshold: with fewer, the threshold rests on a handful of pairs (the relative
# error of a count of 10 is already about 30%).
MIN_EXCEEDANCES = 10
# ... and unless the pairs come from at least this many people: the impostor distribution is a
# property of the people, and a bootstrap over fewer than this many says little about the next
# customer.
MIN_PEOPLE = 10
# ... and unless the people pin the threshold down: a target is refused when the low end of the
# threshold's interval accepts more than this many times the target on the sample. A few people
# make the tail one or two look-alike couples: calibrated on 10 of the 12 kpop idols, 1e-3 came
# out 11x the target on the other two on average (`faceguard eval population
# --held-out-people 2`), and the low end of its interval accepted 8-16x the target.
MAX_INTERVAL_FMR_RATIO = 5.0
# Bootstrap resamples of the people for the confidence intervals.
RESAMPLES = 200
# A sample of at least 1/DENSE_SHARE of the gallery's pairs is chosen among all of them.
DENSE_SHARE = 4
# Pairs scored per block (bounds the memory of gathering both templates of each pair).
SCORE_BLOCK = 65_536


@dataclass(frozen=True, eq=False)
class ImpostorSample:
    """Impostor cosine scores of cross-person template pairs, with who each pair compares.

    ``scores`` is sorted from highest to lowest; ``owner_a[i]`` and ``owner_b[i]`` are the
    person indices (0..people-1) of pair ``i``, kept for the bootstrap over people.
    ``gallery_pairs`` is the number of cross-person pairs in the whole gallery, of which
    ``pairs`` were scored.
    """

    scores: np.ndarray
    owner_a: np.ndarray
    owner_b: np.ndarray
    people: int
    pairs: int
    gallery_pairs: int


@dataclass(frozen=True)
class ThresholdProposal:
    """The threshold that meets one target FMR on a sample, or why the sample cannot tell.

    ``threshold``, ``ci_low`` and ``ci_high`` are None when ``resolvable`` is False, and
    ``reason`` then says which rule refused it (empty otherwise). ``ci_low``..``ci_high`` is the
    bootstrap-over-people confidence interval of the threshold.
    """

    target_fmr: float
    threshold: float | None
    ci_low: float | None
    ci_high: float | None
    impostor_pairs: int
    people: int
    resolvable: bool
    reason: str = ""


def impostor_sample(
    scores: np.ndarray, owner_a: np.ndarray, owner_b: np.ndarray, gallery_pairs: int | None = None
) -> ImpostorSample:
    """An `ImpostorSample` from impostor scores and the person index of each side of each pair.

    Person indices are renumbered densely over the people that occur; ``gallery_pairs``
    defaults to the number of scores (every cross-person pair was scored).
    """
    s = np.asarray(scores, dtype=np.float64)
    a = np.asarray(owner_a)
    b = np.asarray(owner_b)
    if s.ndim != 1 or a.shape != s.shape or b.shape != s.shape:
        raise ValueError("scores and both owner arrays must be 1-D of equal length")
    if s.size == 0:
        raise ValueError("no impostor pairs: the gallery needs templates of at least two people")
    if not np.all(np.isfinite(s)):
        raise ValueError("impostor scores must be finite")
    if np.any(a == b):
        raise ValueError("an impostor pair compares two different people")
    people, codes = np.unique(np.concatenate([a, b]), return_inverse=True)
    order = np.argsort(s, kind="stable")[::-1]
    return ImpostorSample(
        scores=s[order],
        owner_a=codes[: s.size][order].astype(np.int32),
        owner_b=codes[s.size :][order].astype(np.int32),
        people=int(people.size),
        pairs=int(s.size),
        gallery_pairs=int(s.size if gallery_pairs is None else gallery_pairs),
    )


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2 or v.shape[0] < 2:
        raise ValueError(f"vectors must be a 2-D array of at least two templates, got {v.shape}")
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    if not np.all(np.isfinite(v)) or np.any(norms == 0):
        raise ValueError("template vectors must be finite and non-zero")
    return v / norms


def _all_cross_pairs(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.triu_indices(codes.size, k=1)
    different = codes[rows] != codes[cols]
    return rows[different], cols[different]


def _random_cross_pairs(
    codes: np.ndarray, count: int, gallery_pairs: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` distinct cross-owner pairs drawn uniformly at random.

    When they are a large share of the gallery's pairs, a random choice among all of them;
    otherwise draws of two templates, rejecting same-owner and repeated pairs (the set of
    distinct uniform draws is a uniform subset), which needs few rounds at that share.
    """
    if count * DENSE_SHARE >= gallery_pairs:
        rows, cols = _all_cross_pairs(codes)
        chosen = np.sort(rng.choice(rows.size, size=count, replace=False))
        return rows[chosen], cols[chosen]
    n = codes.size
    seen = np.empty(0, dtype=np.int64)
    while seen.size < count:
        draw = 2 * (count - seen.size) + 1024
        i = rng.integers(0, n, size=draw)
        j = rng.integers(0, n, size=draw)
        keep = codes[i] != codes[j]
        lo, hi = np.minimum(i[keep], j[keep]), np.maximum(i[keep], j[keep])
        merged = np.concatenate([seen, lo * n + hi])
        _, first = np.unique(merged, return_index=True)
        seen = merged[np.sort(first)]
    seen = seen[:count]
    return seen // n, seen % n


def _pair_cosines(unit: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Cosines of the row pairs, in blocks so memory stays bounded on large samples."""
    out = np.empty(rows.size, dtype=np.float64)
    for start in range(0, rows.size, SCORE_BLOCK):
        r, c = rows[start : start + SCORE_BLOCK], cols[start : start + SCORE_BLOCK]
        out[start : start + r.size] = np.einsum("ij,ij->i", unit[r], unit[c])
    return out


def sample_impostor_scores(
    vectors: np.ndarray, owners: Sequence[str], *, max_pairs: int, seed: int
) -> ImpostorSample:
    """Cosine scores of all, or of ``max_pairs`` random, cross-owner pairs of the templates.

    ``vectors`` holds one template per row (L2-normalised here, so any embedding will do) and
    ``owners[i]`` is whose template row ``i`` is; pairs of one owner's templates are never
    impostors and are excluded. Every cross-owner pair is scored when there are at most
    ``max_pairs``; otherwise a uniform random sample of distinct pairs, reproducible by ``seed``.
    """
    if max_pairs < 1:
        raise ValueError(f"max_pairs must be >= 1, got {max_pairs}")
    unit = _unit_rows(vectors)
    if len(owners) != unit.shape[0]:
        raise ValueError(f"{len(owners)} owners for {unit.shape[0]} vectors")
    _, codes, counts = np.unique(np.asarray(owners), return_inverse=True, return_counts=True)
    n = codes.size
    gallery_pairs = n * (n - 1) // 2 - int(np.sum(counts * (counts - 1) // 2))
    if gallery_pairs == 0:
        raise ValueError("no impostor pairs: the gallery needs templates of at least two people")
    if gallery_pairs <= max_pairs:
        rows, cols = _all_cross_pairs(codes)
    else:
        rng = np.random.default_rng(seed)
        rows, cols = _random_cross_pairs(codes, max_pairs, gallery_pairs, rng)
    return impostor_sample(_pair_cosines(unit, rows, cols), codes[rows], codes[cols], gallery_pairs)


def _cut_index(cumulative: np.ndarray, target: float) -> int:
    """First index of the descending scores whose accepted weight share exceeds ``target``."""
    total = cumulative[-1]
    return int(np.searchsorted(cumulative, target * total, side="right"))


def _threshold_at(scores: np.ndarray, cumulative: np.ndarray, target: float) -> float:
    """Smallest threshold accepting at most ``target`` of the (weighted) impostors."""
    j = min(_cut_index(cumulative, target), scores.size - 1)
    # Exact counts need the same division the rates use (0.29 * 100 is 28.99.. in binary).
    while j > 0 and cumulative[j - 1] / cumulative[-1] > target:
        j -= 1
    while j < scores.size - 1 and cumulative[j] / cumulative[-1] <= target:
        j += 1
    return float(np.nextafter(scores[j], np.inf))


def _refusal(sample: ImpostorSample, target: float, min_people: int, min_exceedances: int) -> str:
    expected = target * sample.pairs
    if sample.people < min_people:
        return f"{sample.people} people: at least {min_people} are needed to estimate any FMR"
    if expected < min_exceedances:
        needed = math.ceil(min_exceedances / target)
        return (
            f"{sample.pairs} impostor pairs expect {expected:.1f} false matches at FMR {target:g}: "
            f"at least {min_exceedances} are needed ({needed} pairs)"
        )
    return ""


def _interval_refusal(
    sample: ImpostorSample, target: float, interval: tuple[float, float], max_ratio: float
) -> str:
    ratio = estimated_fmr(sample, interval[0]) / target
    if ratio <= max_ratio:
        return ""
    return (
        f"{sample.people} people leave the threshold uncertain: the low end of its interval "
        f"accepts {ratio:.1f}x the target FMR {target:g} (at most {max_ratio:g}x)"
    )


def _bootstrap_thresholds(
    sample: ImpostorSample, targets: Sequence[float], resamples: int, seed: int
) -> np.ndarray:
    """Thresholds per target (columns) of ``resamples`` people-resampled galleries (rows)."""
    rng = np.random.default_rng(seed)
    found = np.empty((resamples, len(targets)))
    for r in range(resamples):
        drawn = np.bincount(rng.integers(0, sample.people, sample.people), minlength=sample.people)
        weights = drawn[sample.owner_a].astype(np.float64) * drawn[sample.owner_b]
        cumulative = np.cumsum(weights)
        if cumulative[-1] == 0:
            found[r] = np.nan
            continue
        found[r] = [_threshold_at(sample.scores, cumulative, t) for t in targets]
    return found


def propose_thresholds(
    sample: ImpostorSample,
    targets: Sequence[float],
    *,
    confidence: float = 0.95,
    resamples: int = RESAMPLES,
    seed: int = 0,
    min_people: int = MIN_PEOPLE,
    min_exceedances: int = MIN_EXCEEDANCES,
    max_interval_ratio: float = MAX_INTERVAL_FMR_RATIO,
) -> list[ThresholdProposal]:
    """The threshold per target FMR, with its bootstrap-over-people confidence interval.

    A target is refused (``resolvable`` False, with the reason) when the sample comes from fewer
    than ``min_people`` people, expects fewer than ``min_exceedances`` impostor pairs above the
    threshold (``target * pairs``), or its people leave the threshold so uncertain that the low
    end of its interval accepts more than ``max_interval_ratio`` times the target on the sample;
    relaxing them is for studies of small galleries, whose thresholds then rest on too few
    people or pairs to be trusted. The interval is the
    percentile interval of the thresholds of ``resamples`` galleries whose people are drawn
    with replacement (``seed`` makes it reproducible); a resample that draws a single person
    has no impostor pair and is skipped. It is approximate: in simulated 60-person galleries
    with person effects, the 95% interval of the 1e-3 threshold covered the true one in about
    82% of galleries (a percentile bootstrap of a tail quantile is somewhat too narrow).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    for target in targets:
        if not 0.0 < target < 1.0:
            raise ValueError(f"target FMR must be in (0, 1), got {target}")
    reasons = [_refusal(sample, float(t), min_people, min_exceedances) for t in targets]
    resolvable = [float(t) for t, why in zip(targets, reasons, strict=True) if not why]
    point = np.cumsum(np.ones(sample.pairs))
    intervals: dict[float, tuple[float, float]] = {}
    if resolvable:
        boot = _bootstrap_thresholds(sample, resolvable, resamples, seed)
        tail = (1.0 - confidence) / 2.0
        for column, target in enumerate(resolvable):
            values = boot[:, column][np.isfinite(boot[:, column])]
            low, high = np.quantile(values, [tail, 1.0 - tail])
            intervals[target] = (float(low), float(high))
    for i, target in enumerate(float(t) for t in targets):
        if target in intervals:
            reasons[i] = _interval_refusal(sample, target, intervals[target], max_interval_ratio)
    proposals = []
    for target, why in zip(targets, reasons, strict=True):
        ok = not why
        proposals.append(
            ThresholdProposal(
                target_fmr=float(target),
                threshold=_threshold_at(sample.scores, point, float(target)) if ok else None,
                ci_low=intervals[float(target)][0] if ok else None,
                ci_high=intervals[float(target)][1] if ok else None,
                impostor_pairs=sample.pairs,
                people=sample.people,
                resolvable=ok,
                reason=why,
            )
        )
    return proposals


def estimated_fmr(sample: ImpostorSample, threshold: float) -> float:
    """Share of the sample's impostor pairs accepted at ``threshold`` (``score >= threshold``)."""
    accepted = np.searchsorted(-sample.scores, -threshold, side="right")
    return float(accepted) / sample.pairs
