"""Accuracy metrics for face verification, identification and presentation attack detection.

Everything is exact and computed from the empirical score distributions with numpy only, so
that a figure in a report can be recomputed by hand from the scores that produced it.

Conventions shared by every function here:

* A score is a similarity: higher means "more likely the same person" (verification,
  identification) or "more likely live" (PAD).
* A comparison is accepted when ``score >= threshold`` (ISO/IEC 19795-1 decision rule). Ties at
  the threshold are therefore always accepted together; no tie is ever split.
* Verification labels are 1 for a genuine (mated) pair and 0 for an impostor (non-mated) pair.
  The caller scores a failed comparison (no face found) as a non-match at the cosine floor
  (-1.0) instead of dropping it, so failures to acquire count as errors; the many identical
  scores that produces are handled by the tie rules above.
* A false-match-rate target is only *measured* when there are enough impostors to observe one
  false match: at least ``1 / target`` of them (see `fmr_is_resolvable`). Below that the
  threshold that reaches the target is set just above the highest impostor score, which gives a
  measured FMR of 0 without being evidence that the real FMR is below the target. Reports
  publish ``None`` for such targets instead of a number that would look like a measurement.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

LFW_VIEW2_PAIRS = 6000
LFW_VIEW2_FOLDS = 10


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _scores_and_labels(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Return float64 scores and boolean positives, rejecting input no metric is defined on."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.ndim != 1 or y.shape != s.shape:
        raise ValueError(f"scores and labels must be 1-D of equal length, got {s.shape}, {y.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite; score failed comparisons at the floor, not NaN")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 (impostor/attack) or 1 (genuine/bona fide)")
    positive = y.astype(bool)
    if positive.all() or not positive.any():
        raise ValueError("both classes are needed: at least one positive and one negative")
    return s, positive


def _check_rate(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value}")


# --------------------------------------------------------------------------------------------
# Shared building blocks
# --------------------------------------------------------------------------------------------


def _accept_counts(
    scores: np.ndarray, positive: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count accepted positives and negatives at every distinct threshold, highest first.

    Returns ``(thresholds, positives_accepted, negatives_accepted)`` with a leading ``+inf``
    threshold (nothing accepted), so index 0 is the "reject all" operating point and the last
    index, the lowest score, is "accept all". Counts are integers so sums stay exact.
    """
    order = np.argsort(scores, kind="stable")[::-1]
    ordered = scores[order]
    last_of_run = np.flatnonzero(np.append(ordered[1:] != ordered[:-1], True))
    pos_accepted = np.cumsum(positive[order], dtype=np.int64)[last_of_run]
    neg_accepted = (last_of_run + 1) - pos_accepted
    return (
        np.concatenate(([np.inf], ordered[last_of_run])),
        np.concatenate(([0], pos_accepted)),
        np.concatenate(([0], neg_accepted)),
    )


def _allowed_false_accepts(negatives: int, target: float) -> int:
    """Largest count ``k`` with ``k / negatives <= target``.

    Compared as the same division the rates use, so that e.g. 29 of 100 meets a 0.29 target
    even though ``0.29 * 100`` is 28.999... in binary floating point.
    """
    k = math.floor(target * negatives)
    while (k + 1) / negatives <= target:
        k += 1
    while k > 0 and k / negatives > target:
        k -= 1
    return k


def _threshold_for_false_accept_rate(
    negative_scores: np.ndarray, candidates: np.ndarray, target: float
) -> float:
    """Smallest threshold at which at most ``target`` of the negatives are accepted.

    With ``k`` negatives allowed, every threshold above the (k+1)-th highest negative score
    qualifies and nothing at or below it does. Among those, the lowest observed score in
    ``candidates`` is returned, so the threshold is a value the system really produced; when no
    observed score lies above, the next float above that negative score is returned (the
    "just above the highest impostor" case when ``k`` is 0).
    """
    k = _allowed_false_accepts(negative_scores.size, target)
    cutoff = np.sort(negative_scores)[::-1][k]
    above = candidates[candidates > cutoff]
    return float(above.min()) if above.size else float(np.nextafter(cutoff, np.inf))


def _format_rate_key(rate: float) -> str:
    """JSON key for a rate target: 1e-3 -> "0.001", never exponent notation."""
    return np.format_float_positional(rate, trim="-")


# --------------------------------------------------------------------------------------------
# Verification (ISO/IEC 19795-1 FMR / FNMR)
# --------------------------------------------------------------------------------------------


def roc(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact ROC: ``(fmr, tmr, thresholds)`` at every distinct score.

    Thresholds are strictly decreasing, starting at ``+inf`` (FMR = TMR = 0) and ending at the
    lowest score (FMR = TMR = 1); FMR and TMR are therefore non-decreasing. Tied scores form
    one operating point, since the accept rule cannot separate them.
    """
    s, genuine = _scores_and_labels(scores, labels)
    thresholds, gen_acc, imp_acc = _accept_counts(s, genuine)
    n_gen = int(genuine.sum())
    return imp_acc / (s.size - n_gen), gen_acc / n_gen, thresholds


def auc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC: P(genuine > impostor) + 0.5 P(genuine == impostor).

    This is the Mann-Whitney U statistic with mid-rank tie correction divided by
    ``n_genuine * n_impostor``, computed as the trapezoid area of the exact ROC over integer
    counts (a tie group is a diagonal segment, which is where the 0.5 comes from).
    """
    s, genuine = _scores_and_labels(scores, labels)
    _, gen_acc, imp_acc = _accept_counts(s, genuine)
    doubled_area = np.sum(np.diff(imp_acc) * (gen_acc[1:] + gen_acc[:-1]))
    n_gen = int(genuine.sum())
    return float(doubled_area) / (2.0 * n_gen * (s.size - n_gen))


def eer(scores: ArrayLike, labels: ArrayLike) -> float:
    """Equal error rate: where FMR equals FNMR on the ROC polyline.

    FNMR - FMR is non-increasing along the ROC (from +1 at "reject all" to -1 at "accept
    all"), so it crosses zero exactly once. Between the two operating points that bracket the
    crossing the ROC is taken as linear (the same polyline `auc` integrates), and the EER is
    the FMR where it meets FMR = FNMR. An exact hit on an operating point needs no
    interpolation. The value lies between the lowest half total error rate and the lowest
    max(FMR, FNMR) over the operating points.
    """
    fmr, tmr, _ = roc(scores, labels)
    gap = (1.0 - tmr) - fmr
    j = int(np.argmax(gap <= 0.0))
    if gap[j] == 0.0:
        return float(fmr[j])
    step = gap[j - 1] / (gap[j - 1] - gap[j])
    return float(fmr[j - 1] + step * (fmr[j] - fmr[j - 1]))


def rates_at_threshold(
    scores: ArrayLike, labels: ArrayLike, threshold: float
) -> tuple[float, float]:
    """``(fmr, fnmr)`` when pairs with ``score >= threshold`` are accepted."""
    s, genuine = _scores_and_labels(scores, labels)
    accepted = s >= threshold
    return float(accepted[~genuine].mean()), float((~accepted[genuine]).mean())


def fmr_is_resolvable(n_impostors: int, target: float) -> bool:
    """Whether ``n_impostors`` can measure an FMR of ``target``: at least one false match allowed.

    With fewer than ``1 / target`` impostors the only FMR at or below the target that can be
    observed is 0, so the resulting threshold is an extrapolation, not a measurement.
    """
    _check_rate("target", target)
    return n_impostors > 0 and _allowed_false_accepts(n_impostors, target) >= 1


def threshold_at_fmr(scores: ArrayLike, labels: ArrayLike, target: float) -> float:
    """Smallest threshold whose FMR is at most ``target`` (accept when ``score >= threshold``).

    With ``k`` the number of false matches the target allows, any threshold above the
    (k+1)-th highest impostor score qualifies; the one returned is the lowest observed score
    above it (so it is a score the system really produced), or the next float above that
    impostor score when no observed score lies above it. Ties are never split: impostors
    tied at the cut are all rejected, so the measured FMR can fall below the target.

    With fewer than ``1 / target`` impostors ``k`` is 0 and the threshold sits just above the
    highest impostor: its measured FMR is 0, but that does not show the true FMR meets the
    target. Check `fmr_is_resolvable` first; `verification_report` reports ``None`` then.
    """
    _check_rate("target", target)
    s, genuine = _scores_and_labels(scores, labels)
    return _threshold_for_false_accept_rate(s[~genuine], s, target)


def tar_at_far(scores: ArrayLike, labels: ArrayLike, target: float) -> float:
    """Return the true accept rate (1 - FNMR) at `threshold_at_fmr` for ``target``.

    The same caveat applies: with fewer than ``1 / target`` impostors this is the TAR at a
    measured FMR of 0, not a demonstrated TAR at the target.
    """
    s, genuine = _scores_and_labels(scores, labels)
    threshold = threshold_at_fmr(s, genuine, target)
    return float((s[genuine] >= threshold).mean())


def best_accuracy(scores: ArrayLike, labels: ArrayLike) -> tuple[float, float]:
    """``(accuracy, threshold)`` for the threshold that classifies the most pairs correctly.

    Every distinct score is tried, plus ``+inf`` ("reject all", returned as ``math.inf`` only
    when nothing better exists). Among equally accurate thresholds the highest is returned:
    it accepts the fewest impostors, the safer side for a bank.
    """
    s, genuine = _scores_and_labels(scores, labels)
    thresholds, gen_acc, imp_acc = _accept_counts(s, genuine)
    n_imp = s.size - int(genuine.sum())
    correct = gen_acc + (n_imp - imp_acc)
    best = int(np.argmax(correct))
    return float(correct[best]) / s.size, float(thresholds[best])


def is_lfw_view2_layout(n_rows: int) -> bool:
    """Whether a pair list has the shape of LFW View 2 (``pairs.txt``: 6,000 pairs).

    View 2 is 10 consecutive folds of 600 pairs (300 genuine then 300 impostor) in file order,
    and its protocol requires 10-fold cross-validated accuracy (`kfold_accuracy`).
    """
    return n_rows == LFW_VIEW2_PAIRS


def kfold_accuracy(
    scores: ArrayLike, labels: ArrayLike, folds: int = LFW_VIEW2_FOLDS
) -> tuple[float, float]:
    """Cross-validated accuracy ``(mean, std)`` over consecutive folds in the given order.

    Fold ``i`` is scored at the `best_accuracy` threshold of the other folds, so no fold is
    scored with a threshold tuned on itself (LFW View 2 "unrestricted" protocol: pass the
    scores in ``pairs.txt`` order and the 6,000 rows split into the official 10 folds of 600).
    Folds are consecutive and as equal as possible when ``len(scores)`` is not a multiple of
    ``folds``. ``std`` is the population standard deviation of the fold accuracies (``ddof=0``),
    as most published LFW figures use; the standard error the LFW README asks for (sample
    standard deviation over sqrt(folds)) equals ``std / sqrt(folds - 1)``.
    """
    s, genuine = _scores_and_labels(scores, labels)
    if not 2 <= folds <= s.size:
        raise ValueError(f"folds must be in [2, {s.size}], got {folds}")
    accuracies = np.empty(folds)
    for fold, rows in enumerate(np.array_split(np.arange(s.size), folds)):
        held_out = np.zeros(s.size, dtype=bool)
        held_out[rows] = True
        _, threshold = best_accuracy(s[~held_out], genuine[~held_out])
        accuracies[fold] = np.mean((s[held_out] >= threshold) == genuine[held_out])
    return float(accuracies.mean()), float(accuracies.std())


@dataclass(frozen=True)
class VerificationReport:
    """Verification accuracy of one run over a pair list.

    ``tar_at_far`` and ``threshold_at_far`` are keyed by the FAR target written as a decimal
    ("0.001"); a value is ``None`` when the run has too few impostors to measure that FAR
    (`fmr_is_resolvable`). The ``*_at_operating`` rates are ``None`` when no operating
    threshold was given.
    """

    pairs: int
    failed_images: int
    accuracy: float
    auc: float
    eer: float
    tar_at_far: Mapping[str, float | None]
    threshold_at_far: Mapping[str, float | None]
    operating_threshold: float | None
    fmr_at_operating: float | None
    fnmr_at_operating: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with exactly the report's keys (no NaN or infinity inside)."""
        return {
            "pairs": self.pairs,
            "failed_images": self.failed_images,
            "accuracy": self.accuracy,
            "auc": self.auc,
            "eer": self.eer,
            "tar_at_far": dict(self.tar_at_far),
            "threshold_at_far": dict(self.threshold_at_far),
            "operating_threshold": self.operating_threshold,
            "fmr_at_operating": self.fmr_at_operating,
            "fnmr_at_operating": self.fnmr_at_operating,
        }


def verification_report(
    scores: ArrayLike,
    labels: ArrayLike,
    failed_images: int,
    operating_threshold: float | None,
    fars: Sequence[float] = (1e-2, 1e-3),
) -> VerificationReport:
    """Compute the verification figures a run publishes.

    Accuracy is 10-fold cross-validated when the pair list has the LFW View 2 layout (scores
    must then be in ``pairs.txt`` order) and best-threshold accuracy otherwise, which is
    optimistic because the threshold is tuned on the same pairs it is scored on.
    ``failed_images`` is passed through for the record; the failed comparisons themselves must
    already be in ``scores`` at the floor score.
    """
    s, genuine = _scores_and_labels(scores, labels)
    if failed_images < 0:
        raise ValueError(f"failed_images must be >= 0, got {failed_images}")
    keys = [_format_rate_key(far) for far in fars]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate FAR targets: {list(fars)}")

    if is_lfw_view2_layout(s.size):
        accuracy, _ = kfold_accuracy(s, genuine, LFW_VIEW2_FOLDS)
    else:
        accuracy, _ = best_accuracy(s, genuine)

    n_impostors = int((~genuine).sum())
    tars: dict[str, float | None] = {}
    thresholds: dict[str, float | None] = {}
    for key, far in zip(keys, fars, strict=True):
        resolvable = fmr_is_resolvable(n_impostors, far)
        tars[key] = tar_at_far(s, genuine, far) if resolvable else None
        thresholds[key] = threshold_at_fmr(s, genuine, far) if resolvable else None

    fmr_op = fnmr_op = None
    if operating_threshold is not None:
        fmr_op, fnmr_op = rates_at_threshold(s, genuine, operating_threshold)

    return VerificationReport(
        pairs=int(s.size),
        failed_images=int(failed_images),
        accuracy=accuracy,
        auc=auc(s, genuine),
        eer=eer(s, genuine),
        tar_at_far=MappingProxyType(tars),
        threshold_at_far=MappingProxyType(thresholds),
        operating_threshold=None if operating_threshold is None else float(operating_threshold),
        fmr_at_operating=fmr_op,
        fnmr_at_operating=fnmr_op,
    )


# --------------------------------------------------------------------------------------------
# Identification (ISO/IEC 19795-1 rank-k rate; NIST FRVT 1:N FPIR / FNIR)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IdentificationReport:
    """1:N search accuracy over a probe set against one gallery.

    ``rank1`` and ``rank5`` are over mated probes. ``threshold_at_fpir`` and ``fnir_at_fpir``
    are ``None`` when there are too few non-mated probes to measure the FPIR target (fewer than
    ``1 / fpir``, including none).
    """

    probes: int
    gallery_size: int
    gallery_identities: int
    mated_probes: int
    non_mated_probes: int
    rank1: float
    rank5: float
    fpir: float
    threshold_at_fpir: float | None
    fnir_at_fpir: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        return {
            "probes": self.probes,
            "gallery_size": self.gallery_size,
            "gallery_identities": self.gallery_identities,
            "mated_probes": self.mated_probes,
            "non_mated_probes": self.non_mated_probes,
            "rank1": self.rank1,
            "rank5": self.rank5,
            "fpir": self.fpir,
            "threshold_at_fpir": self.threshold_at_fpir,
            "fnir_at_fpir": self.fnir_at_fpir,
        }


def _scores_per_identity(
    similarities: np.ndarray, gallery_ids: Sequence[Any]
) -> tuple[np.ndarray, list[Any]]:
    """Collapse gallery columns to one column per identity, keeping each identity's best score.

    A candidate list ranks identities, not templates, so several enrolment images of one
    person must not push other people down the ranks.
    """
    identities = list(dict.fromkeys(gallery_ids))
    if len(identities) == len(gallery_ids):
        return similarities, identities
    column = {identity: i for i, identity in enumerate(identities)}
    per_identity = np.full((similarities.shape[0], len(identities)), -np.inf)
    np.maximum.at(per_identity.T, [column[g] for g in gallery_ids], similarities.T)
    return per_identity, identities


def identification_report(
    similarities: ArrayLike,
    probe_ids: Sequence[Any],
    gallery_ids: Sequence[Any],
    fpir: float = 0.01,
) -> IdentificationReport:
    """Closed-set rank rates and open-set FNIR at a fixed FPIR for a similarity matrix.

    ``similarities[i, j]`` compares probe ``i`` with gallery entry ``j``; a probe is mated when
    its id is among ``gallery_ids``. Gallery entries sharing an id are merged (best score).

    * Rank-k rate: share of mated probes whose mate is among the k best identities. The rank is
      pessimistic on ties (an identity tied with the mate counts as ranked above it), so a
      probe whose row is all at the failure floor is never a hit.
    * FPIR / FNIR (NIST FRVT 1:N, rank 1): the threshold is the smallest one at which at most
      ``fpir`` of the non-mated probes have a top score ``>= threshold`` (same rule as
      `threshold_at_fmr`, over the non-mated top scores); FNIR is the share of mated probes
      whose mate is not at rank 1 with a score ``>= threshold``.
    """
    _check_rate("fpir", fpir)
    sims = np.asarray(similarities, dtype=np.float64)
    probe_ids, gallery_ids = list(probe_ids), list(gallery_ids)
    if sims.ndim != 2 or sims.shape != (len(probe_ids), len(gallery_ids)):
        raise ValueError(
            f"similarities must be (n_probes, n_gallery) = ({len(probe_ids)}, "
            f"{len(gallery_ids)}), got {sims.shape}"
        )
    if not np.all(np.isfinite(sims)):
        raise ValueError("similarities must be finite; score failures at the floor, not NaN")

    per_identity, identities = _scores_per_identity(sims, gallery_ids)
    column = {identity: i for i, identity in enumerate(identities)}
    mated = np.array([p in column for p in probe_ids], dtype=bool)
    if not mated.any():
        raise ValueError("no probe has a mate in the gallery; rank rates are undefined")

    mated_rows = per_identity[mated]
    mate_columns = [column[p] for p, m in zip(probe_ids, mated, strict=True) if m]
    mate_scores = mated_rows[np.arange(mated_rows.shape[0]), mate_columns]
    # Pessimistic rank: 1 + identities scoring at least as high as the mate, the mate excluded.
    ranks = np.sum(mated_rows >= mate_scores[:, None], axis=1)
    top_scores = per_identity.max(axis=1)

    non_mated_top = top_scores[~mated]
    threshold = fnir = None
    if fmr_is_resolvable(non_mated_top.size, fpir):
        threshold = _threshold_for_false_accept_rate(non_mated_top, top_scores, fpir)
        fnir = float(np.mean(~((ranks == 1) & (mate_scores >= threshold))))

    return IdentificationReport(
        probes=len(probe_ids),
        gallery_size=len(gallery_ids),
        gallery_identities=len(identities),
        mated_probes=int(mated.sum()),
        non_mated_probes=int((~mated).sum()),
        rank1=float(np.mean(ranks <= 1)),
        rank5=float(np.mean(ranks <= 5)),
        fpir=float(fpir),
        threshold_at_fpir=threshold,
        fnir_at_fpir=fnir,
    )


# --------------------------------------------------------------------------------------------
# Presentation attack detection (ISO/IEC 30107-3)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PadReport:
    """PAD error rates at one liveness threshold.

    ``apcer`` is the highest per-type APCER when attack types were given (ISO/IEC 30107-3
    reports the worst presentation attack instrument species), else the APCER over all attacks.
    ``apcer_per_type`` is empty when no types were given.
    """

    threshold: float
    attacks: int
    bona_fide: int
    apcer: float
    bpcer: float
    acer: float
    auc: float
    apcer_per_type: Mapping[str, float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        return {
            "threshold": self.threshold,
            "attacks": self.attacks,
            "bona_fide": self.bona_fide,
            "apcer": self.apcer,
            "bpcer": self.bpcer,
            "acer": self.acer,
            "auc": self.auc,
            "apcer_per_type": dict(self.apcer_per_type),
        }


def pad_report(
    scores: ArrayLike,
    is_attack: ArrayLike,
    threshold: float,
    attack_types: Sequence[Any] | None = None,
) -> PadReport:
    """APCER, BPCER, ACER and AUC of a liveness score at ``threshold`` (live when ``>=``).

    ISO/IEC 30107-3: APCER is the share of attack presentations classified as bona fide,
    BPCER the share of bona fide presentations classified as attacks. ``attack_types`` (one
    entry per sample, ignored for bona fide samples, keyed by ``str``) gives APCER per species,
    and the overall APCER is then the maximum over species, as the standard prescribes.
    ACER = (APCER + BPCER) / 2 is not a 30107-3 metric; it is the convention of PAD
    benchmarks such as OULU-NPU and is reported for comparison with them. AUC treats bona
    fide as the positive class.
    """
    s, attack = _scores_and_labels(scores, is_attack)
    live = s >= threshold
    bona_fide = ~attack
    bpcer = float(np.mean(~live[bona_fide]))

    per_type: dict[str, float] = {}
    if attack_types is None:
        apcer = float(np.mean(live[attack]))
    else:
        types = np.array([str(t) for t in attack_types], dtype=object)
        if types.shape != s.shape:
            raise ValueError(f"attack_types must have one entry per sample ({s.size})")
        for name in sorted(set(types[attack])):
            per_type[name] = float(np.mean(live[attack & (types == name)]))
        apcer = max(per_type.values())

    return PadReport(
        threshold=float(threshold),
        attacks=int(attack.sum()),
        bona_fide=int(bona_fide.sum()),
        apcer=apcer,
        bpcer=bpcer,
        acer=(apcer + bpcer) / 2.0,
        auc=auc(s, bona_fide),
        apcer_per_type=MappingProxyType(per_type),
    )
