"""Tests for the biometric accuracy metrics: hand-computed cases first, then invariants."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tools.evaluation.plots import plot_roc_det
from tools.evaluation.scores import (
    auc,
    best_accuracy,
    eer,
    fmr_is_resolvable,
    identification_report,
    is_lfw_view2_layout,
    kfold_accuracy,
    pad_report,
    rates_at_threshold,
    roc,
    tar_at_far,
    threshold_at_fmr,
    verification_report,
)

# Genuine {0.9, 0.5}, impostor {0.5, 0.1}: one genuine/impostor tie at 0.5.
TIED_SCORES = [0.9, 0.5, 0.5, 0.1]
TIED_LABELS = [1, 1, 0, 0]


# --------------------------------------------------------------------------------------------
# Verification: hand-computed cases
# --------------------------------------------------------------------------------------------


def test_perfect_separation() -> None:
    scores, labels = [0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0]
    assert auc(scores, labels) == 1.0
    assert eer(scores, labels) == 0.0
    assert best_accuracy(scores, labels) == (1.0, 0.8)


def test_fully_overlapping_scores() -> None:
    scores, labels = [0.5] * 6, [1, 1, 1, 0, 0, 0]
    fmr, tmr, thresholds = roc(scores, labels)
    np.testing.assert_array_equal(thresholds, [np.inf, 0.5])
    np.testing.assert_array_equal(fmr, [0.0, 1.0])
    np.testing.assert_array_equal(tmr, [0.0, 1.0])
    assert auc(scores, labels) == 0.5
    assert eer(scores, labels) == 0.5


def test_inverted_scores_give_worst_case() -> None:
    scores, labels = [0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]
    assert auc(scores, labels) == 0.0
    assert eer(scores, labels) == 1.0


def test_roc_of_four_pairs_with_a_tie() -> None:
    fmr, tmr, thresholds = roc(TIED_SCORES, TIED_LABELS)
    np.testing.assert_array_equal(thresholds, [np.inf, 0.9, 0.5, 0.1])
    np.testing.assert_array_equal(fmr, [0.0, 0.0, 0.5, 1.0])
    np.testing.assert_array_equal(tmr, [0.0, 0.5, 1.0, 1.0])


def test_auc_counts_a_tie_as_half() -> None:
    # Pairs (g, i): (.9,.5) win, (.9,.1) win, (.5,.5) tie, (.5,.1) win -> 3.5 / 4.
    assert auc(TIED_SCORES, TIED_LABELS) == 0.875


def test_eer_interpolates_across_the_tie() -> None:
    # Operating points 0.9: (FMR 0, FNMR .5) and 0.5: (FMR .5, FNMR 0); the segment between
    # them meets FMR = FNMR halfway, at 0.25.
    assert eer(TIED_SCORES, TIED_LABELS) == pytest.approx(0.25)


def test_eer_exactly_on_an_operating_point() -> None:
    # At threshold 0.7 FMR = FNMR = 0.5, no interpolation needed.
    assert eer([0.9, 0.6, 0.7, 0.2], [1, 1, 0, 0]) == 0.5


def test_best_accuracy_prefers_the_highest_of_equal_thresholds() -> None:
    # Thresholds 0.9 and 0.5 both classify 3 of 4 correctly; 0.9 accepts fewer impostors.
    assert best_accuracy(TIED_SCORES, TIED_LABELS) == (0.75, 0.9)


def test_best_accuracy_can_reject_everything() -> None:
    accuracy, threshold = best_accuracy([0.1, 0.9, 0.8, 0.7], [1, 0, 0, 0])
    assert (accuracy, threshold) == (0.75, np.inf)


def test_rates_at_threshold_accepts_ties() -> None:
    assert rates_at_threshold(TIED_SCORES, TIED_LABELS, 0.5) == (0.5, 0.0)
    assert rates_at_threshold(TIED_SCORES, TIED_LABELS, 0.6) == (0.0, 0.5)


def test_failed_comparisons_at_the_floor_are_counted() -> None:
    # Two genuine pairs failed (scored -1.0, tied with each other and with one impostor).
    scores = [0.8, 0.7, -1.0, -1.0, 0.1, -1.0]
    labels = [1, 1, 1, 1, 0, 0]
    assert rates_at_threshold(scores, labels, 0.5) == (0.0, 0.5)
    # Pairs: each of .8, .7 beats both impostors (4 wins); each -1 ties the -1 impostor (2 x .5).
    assert auc(scores, labels) == pytest.approx(5.0 / 8.0)


@pytest.mark.parametrize(
    ("scores", "labels"),
    [
        ([0.1, float("nan")], [1, 0]),
        ([0.1, 0.2], [1, 1]),
        ([0.1, 0.2], [1, 2]),
        ([0.1, 0.2, 0.3], [1, 0]),
    ],
)
def test_invalid_input_is_rejected(scores: list[float], labels: list[int]) -> None:
    with pytest.raises(ValueError):
        auc(scores, labels)


# --------------------------------------------------------------------------------------------
# Threshold at a target FMR
# --------------------------------------------------------------------------------------------


def test_threshold_at_fmr_is_the_lowest_score_meeting_the_target() -> None:
    genuine = [0.95, 0.9, 0.85, 0.6]
    impostor = [0.8, 0.7, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01]
    scores, labels = genuine + impostor, [1] * 4 + [0] * 10
    # 10% of 10 impostors: one false match allowed, so the threshold can drop to the lowest
    # score above the second impostor (0.7): that is 0.8 itself.
    assert threshold_at_fmr(scores, labels, 0.1) == 0.8
    assert rates_at_threshold(scores, labels, 0.8) == (0.1, 0.25)
    assert tar_at_far(scores, labels, 0.1) == 0.75
    # 20%: two allowed -> lowest score above 0.5 is 0.6 (a genuine), accepting 2 impostors.
    assert threshold_at_fmr(scores, labels, 0.2) == 0.6
    assert tar_at_far(scores, labels, 0.2) == 1.0


def test_threshold_at_fmr_does_not_split_tied_impostors() -> None:
    # Two impostors tied at 0.8: a 10% target (one false match) cannot accept just one of
    # them, so the threshold moves above both.
    scores = [0.95, 0.85, 0.8, 0.8] + [0.1] * 8
    labels = [1, 1, 0, 0] + [0] * 8
    assert threshold_at_fmr(scores, labels, 0.1) == 0.85
    assert rates_at_threshold(scores, labels, 0.85)[0] == 0.0


def test_threshold_at_fmr_uses_exact_rate_comparison() -> None:
    # 0.29 * 100 is 28.999... in floating point; 29 false matches of 100 still meet 0.29.
    impostor = np.arange(100) / 100.0
    scores = np.concatenate([[2.0], impostor])
    labels = np.r_[1, np.zeros(100)]
    threshold = threshold_at_fmr(scores, labels, 0.29)
    assert threshold == 0.71
    assert rates_at_threshold(scores, labels, threshold)[0] == 0.29


def test_too_few_impostors_sets_the_threshold_above_the_highest_one() -> None:
    scores, labels = [0.9, 0.7, 0.6, 0.5], [1, 1, 0, 0]
    assert not fmr_is_resolvable(2, 0.01)
    assert threshold_at_fmr(scores, labels, 0.01) == 0.7
    # When the highest score is an impostor there is no observed score above it.
    scores = [0.9, 0.7, 0.95, 0.5]
    threshold = threshold_at_fmr(scores, labels, 0.01)
    assert threshold == np.nextafter(0.95, np.inf)
    assert rates_at_threshold(scores, labels, threshold) == (0.0, 1.0)


def test_fmr_is_resolvable_needs_one_over_target_impostors() -> None:
    assert fmr_is_resolvable(1000, 1e-3)
    assert not fmr_is_resolvable(999, 1e-3)
    assert not fmr_is_resolvable(0, 1e-3)


@pytest.mark.parametrize("target", [0.0, 1.0, -0.1, 1.5])
def test_threshold_at_fmr_rejects_targets_outside_zero_one(target: float) -> None:
    with pytest.raises(ValueError):
        threshold_at_fmr(TIED_SCORES, TIED_LABELS, target)


# --------------------------------------------------------------------------------------------
# k-fold accuracy and the report
# --------------------------------------------------------------------------------------------


def _lfw_like(genuine_by_fold: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """10 folds of 300 genuine then 300 impostor pairs, as in LFW View 2 ``pairs.txt``."""
    impostor = np.linspace(0.1, 0.4, 300)
    scores = np.concatenate([np.concatenate([g, impostor]) for g in genuine_by_fold])
    labels = np.tile(np.r_[np.ones(300), np.zeros(300)], len(genuine_by_fold))
    return scores, labels


def test_kfold_scores_each_fold_with_a_threshold_from_the_others() -> None:
    # Fold 0's genuine pairs sit at 0.45, below every other fold's genuine scores. Trained on
    # the other nine folds the threshold is 0.6, which rejects all of fold 0's genuine pairs:
    # fold 0 scores 0.5, the others 1.0. A threshold tuned on fold 0 itself would score 1.0.
    normal = np.linspace(0.6, 0.9, 300)
    scores, labels = _lfw_like([np.full(300, 0.45)] + [normal] * 9)
    assert is_lfw_view2_layout(scores.size)
    mean, std = kfold_accuracy(scores, labels)
    assert mean == pytest.approx(0.95)
    assert std == pytest.approx(np.std([0.5] + [1.0] * 9))
    assert best_accuracy(scores, labels)[0] == 1.0


def test_kfold_on_synthetic_lfw_matches_the_class_overlap() -> None:
    rng = np.random.default_rng(7)
    scores, labels = _lfw_like([rng.normal(0.55, 0.1, 300) for _ in range(10)])
    scores[labels == 0] = rng.normal(0.25, 0.1, 3000)
    mean, std = kfold_accuracy(scores, labels)
    # Gaussians with sigma 0.1 whose means are 3 sigma apart: Bayes accuracy Phi(1.5) = 0.933.
    assert mean == pytest.approx(0.933, abs=0.02)
    assert 0.0 < std < 0.05
    assert mean <= best_accuracy(scores, labels)[0] + 0.01


def test_lfw_layout_is_exactly_6000_rows() -> None:
    assert is_lfw_view2_layout(6000)
    assert not is_lfw_view2_layout(5999)
    assert not is_lfw_view2_layout(12000)


def test_verification_report_keys_and_values() -> None:
    report = verification_report(
        TIED_SCORES, TIED_LABELS, failed_images=3, operating_threshold=0.5, fars=(0.5, 1e-2, 1e-4)
    )
    data = report.to_dict()
    assert list(data) == [
        "pairs",
        "failed_images",
        "accuracy",
        "auc",
        "eer",
        "tar_at_far",
        "threshold_at_far",
        "operating_threshold",
        "fmr_at_operating",
        "fnmr_at_operating",
    ]
    assert data["pairs"] == 4
    assert data["failed_images"] == 3
    assert data["accuracy"] == 0.75
    assert data["auc"] == 0.875
    assert data["eer"] == pytest.approx(0.25)
    assert data["tar_at_far"] == {"0.5": 1.0, "0.01": None, "0.0001": None}
    assert data["threshold_at_far"] == {"0.5": 0.5, "0.01": None, "0.0001": None}
    assert (data["fmr_at_operating"], data["fnmr_at_operating"]) == (0.5, 0.0)
    json.dumps(data, allow_nan=False)


def test_verification_report_without_operating_threshold() -> None:
    data = verification_report(TIED_SCORES, TIED_LABELS, 0, None).to_dict()
    assert data["operating_threshold"] is None
    assert data["fmr_at_operating"] is None
    assert data["fnmr_at_operating"] is None
    assert set(data["tar_at_far"]) == {"0.01", "0.001"}


def test_verification_report_uses_kfold_on_lfw_layout() -> None:
    normal = np.linspace(0.6, 0.9, 300)
    scores, labels = _lfw_like([np.full(300, 0.45)] + [normal] * 9)
    report = verification_report(scores, labels, 0, None)
    assert report.accuracy == pytest.approx(0.95)
    # 3,000 impostors resolve FAR 1e-3 (three false matches allowed).
    assert report.tar_at_far == {"0.01": 1.0, "0.001": 1.0}
    # FAR 1e-2 allows 30 false matches: the three highest impostor values (ten copies each,
    # one per fold) may pass, so the threshold is the third-highest impostor value. FAR 1e-3
    # allows 3, fewer than the ten tied at the top, so it rises to the lowest genuine score.
    assert report.threshold_at_far == {"0.01": np.linspace(0.1, 0.4, 300)[297], "0.001": 0.45}
    # Same data without the LFW layout: best-threshold accuracy.
    assert verification_report(scores[:-1], labels[:-1], 0, None).accuracy == 1.0


def test_verification_report_is_immutable() -> None:
    report = verification_report(TIED_SCORES, TIED_LABELS, 0, None)
    with pytest.raises(AttributeError):
        report.auc = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        report.tar_at_far["0.01"] = 1.0  # type: ignore[index]


# --------------------------------------------------------------------------------------------
# Identification
# --------------------------------------------------------------------------------------------

GALLERY = ["a", "b", "c", "d", "e", "f"]
#                    a    b    c    d    e    f
SIMILARITIES = [
    [0.9, 0.1, 0.2, 0.1, 0.0, 0.1],  # a: mate first                    -> rank 1
    [0.65, 0.6, 0.7, 0.1, 0.2, 0.1],  # b: two identities above the mate -> rank 3
    [0.8, 0.7, 0.1, 0.6, 0.5, 0.4],  # c: mate last                     -> rank 6
    [0.4, 0.3, 0.2, 0.7, 0.1, 0.0],  # d: mate first, but weak          -> rank 1
    [0.3, 0.6, 0.2, 0.1, 0.0, 0.1],  # x: non-mated, top 0.6
    [0.2, 0.1, 0.8, 0.1, 0.0, 0.1],  # y: non-mated, top 0.8
]
PROBES = ["a", "b", "c", "d", "x", "y"]


def test_identification_rank_rates_and_counts() -> None:
    report = identification_report(SIMILARITIES, PROBES, GALLERY, fpir=0.5)
    assert (report.probes, report.gallery_size, report.gallery_identities) == (6, 6, 6)
    assert (report.mated_probes, report.non_mated_probes) == (4, 2)
    assert report.rank1 == 0.5  # a, d
    assert report.rank5 == 0.75  # a, b, d


def test_identification_fnir_at_fpir() -> None:
    # FPIR 0.5 of 2 non-mated probes: one may be above the threshold, so it must exceed the
    # second-highest non-mated top score (0.6); the lowest top score above it is 0.7 (probe d).
    report = identification_report(SIMILARITIES, PROBES, GALLERY, fpir=0.5)
    assert report.threshold_at_fpir == 0.7
    # Mated at rank 1 with score >= 0.7: a (0.9) and d (0.7); b, c are misses -> FNIR 2/4.
    assert report.fnir_at_fpir == 0.5


def test_identification_fpir_needs_enough_non_mated_probes() -> None:
    report = identification_report(SIMILARITIES, PROBES, GALLERY)  # fpir 0.01, 2 non-mated
    assert report.threshold_at_fpir is None
    assert report.fnir_at_fpir is None
    closed_set = identification_report(SIMILARITIES[:4], PROBES[:4], GALLERY, fpir=0.5)
    assert closed_set.non_mated_probes == 0
    assert closed_set.fnir_at_fpir is None
    json.dumps(report.to_dict(), allow_nan=False)


def test_identification_tie_with_the_mate_is_not_rank_1() -> None:
    report = identification_report([[0.5, 0.5], [-1.0, -1.0]], ["a", "b"], ["a", "b"], 0.5)
    assert report.rank1 == 0.0
    assert report.rank5 == 1.0


def test_identification_merges_gallery_entries_of_one_identity() -> None:
    # Five templates of "b" above the mate "a" are one identity: "a" is rank 2, not rank 6.
    gallery = ["a", "b", "b", "b", "b", "b"]
    report = identification_report([[0.6, 0.9, 0.9, 0.8, 0.8, 0.7]], ["a"], gallery, 0.5)
    assert (report.gallery_size, report.gallery_identities) == (6, 2)
    assert (report.rank1, report.rank5) == (0.0, 1.0)
    # A probe of "b" is matched on its best template.
    report = identification_report([[0.6, 0.1, 0.95, 0.2, 0.3, 0.1]], ["b"], gallery, 0.5)
    assert report.rank1 == 1.0


def test_identification_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        identification_report([[0.1, 0.2]], ["a"], ["a"])
    with pytest.raises(ValueError):
        identification_report([[0.1]], ["z"], ["a"])


# --------------------------------------------------------------------------------------------
# Presentation attack detection
# --------------------------------------------------------------------------------------------

PAD_SCORES = [0.9, 0.8, 0.3, 0.7, 0.6, 0.2, 0.75, 0.1]
PAD_ATTACK = [0, 0, 0, 0, 1, 1, 1, 1]
PAD_TYPES = ["", "", "", "", "print", "print", "replay", "mask"]


def test_pad_pooled_rates() -> None:
    report = pad_report(PAD_SCORES, PAD_ATTACK, threshold=0.5)
    assert (report.attacks, report.bona_fide) == (4, 4)
    assert report.apcer == 0.5  # 0.6 and 0.75 pass as live
    assert report.bpcer == 0.25  # 0.3 rejected
    assert report.acer == 0.375
    # Bona fide beats attack in 4 + 4 + 2 + 3 of 16 pairs.
    assert report.auc == 13 / 16
    assert report.apcer_per_type == {}


def test_pad_apcer_is_the_worst_attack_type() -> None:
    report = pad_report(PAD_SCORES, PAD_ATTACK, threshold=0.5, attack_types=PAD_TYPES)
    assert report.apcer_per_type == {"mask": 0.0, "print": 0.5, "replay": 1.0}
    assert report.apcer == 1.0
    assert report.acer == 0.625
    data = report.to_dict()
    assert data["apcer_per_type"] == {"mask": 0.0, "print": 0.5, "replay": 1.0}
    json.dumps(data, allow_nan=False)


def test_pad_threshold_is_inclusive() -> None:
    assert pad_report(PAD_SCORES, PAD_ATTACK, threshold=0.3).bpcer == 0.0


def test_pad_rejects_mismatched_attack_types() -> None:
    with pytest.raises(ValueError):
        pad_report(PAD_SCORES, PAD_ATTACK, 0.5, attack_types=["print"])


# --------------------------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------------------------


def test_plot_writes_a_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    scores = np.r_[rng.normal(0.6, 0.1, 500), rng.normal(0.2, 0.1, 500)]
    labels = np.r_[np.ones(500), np.zeros(500)]
    path = plot_roc_det(scores, labels, tmp_path / "sub" / "roc.png", "test run")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Degenerate inputs must still draw.
    plot_roc_det([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0], tmp_path / "perfect.png", "perfect")
    plot_roc_det([0.5] * 4, [1, 1, 0, 0], tmp_path / "flat.png", "flat")


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------

# Small integer scores force many ties, the case the exact definitions care most about.
_pairs = st.integers(min_value=2, max_value=30).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(-3, 3), min_size=n, max_size=n),
        st.lists(st.integers(0, 1), min_size=n, max_size=n).filter(lambda y: 0 < sum(y) < n),
    )
)


def _brute_force_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    genuine, impostor = scores[labels == 1], scores[labels == 0]
    diff = genuine[:, None] - impostor[None, :]
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


@given(_pairs)
def test_auc_is_the_mann_whitney_probability(data: tuple[list[int], list[int]]) -> None:
    scores, labels = np.array(data[0], dtype=float), np.array(data[1])
    assert auc(scores, labels) == pytest.approx(_brute_force_auc(scores, labels), abs=1e-12)


@given(_pairs)
def test_auc_is_the_area_under_roc(data: tuple[list[int], list[int]]) -> None:
    fmr, tmr, _ = roc(*data)
    assert auc(*data) == pytest.approx(float(np.trapezoid(tmr, fmr)), abs=1e-12)


@given(_pairs)
def test_roc_is_monotone_and_spans_the_unit_square(data: tuple[list[int], list[int]]) -> None:
    fmr, tmr, thresholds = roc(*data)
    assert np.all(np.diff(thresholds) < 0)
    assert np.all(np.diff(fmr) >= 0) and np.all(np.diff(tmr) >= 0)
    assert (fmr[0], tmr[0], fmr[-1], tmr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fmr) + np.diff(tmr) > 0)  # every distinct score is its own point


@given(_pairs)
def test_eer_lies_between_best_half_total_error_and_best_max_error(
    data: tuple[list[int], list[int]],
) -> None:
    fmr, tmr, _ = roc(*data)
    fnmr = 1.0 - tmr
    value = eer(*data)
    assert np.min((fmr + fnmr) / 2) - 1e-12 <= value <= np.min(np.maximum(fmr, fnmr)) + 1e-12


@given(_pairs)
def test_swapping_classes_and_negating_scores_keeps_auc(
    data: tuple[list[int], list[int]],
) -> None:
    scores, labels = np.array(data[0], dtype=float), np.array(data[1])
    assert auc(-scores, 1 - labels) == pytest.approx(auc(scores, labels), abs=1e-12)


@given(_pairs)
def test_metrics_ignore_strictly_increasing_score_transforms(
    data: tuple[list[int], list[int]],
) -> None:
    scores, labels = np.array(data[0], dtype=float), np.array(data[1])
    warped = np.exp(scores) * 3.0 - 1.0
    assert auc(warped, labels) == pytest.approx(auc(scores, labels), abs=1e-12)
    assert eer(warped, labels) == pytest.approx(eer(scores, labels), abs=1e-12)
    assert best_accuracy(warped, labels)[0] == best_accuracy(scores, labels)[0]
    assert tar_at_far(warped, labels, 0.25) == tar_at_far(scores, labels, 0.25)


@settings(max_examples=200)
@given(_pairs, st.sampled_from([0.05, 0.1, 0.2, 0.25, 0.3, 0.5, 0.9]))
def test_threshold_at_fmr_is_minimal(data: tuple[list[int], list[int]], target: float) -> None:
    scores, labels = np.array(data[0], dtype=float), np.array(data[1])
    threshold = threshold_at_fmr(scores, labels, target)
    assert rates_at_threshold(scores, labels, threshold)[0] <= target
    # Every lower observed score (accepting more) breaks the target.
    for lower in np.unique(scores[scores < threshold]):
        assert rates_at_threshold(scores, labels, lower)[0] > target


@given(_pairs)
def test_best_accuracy_matches_its_threshold(data: tuple[list[int], list[int]]) -> None:
    scores, labels = np.array(data[0], dtype=float), np.array(data[1])
    accuracy, threshold = best_accuracy(scores, labels)
    assert accuracy == np.mean((scores >= threshold) == (labels == 1))
    # "Reject all" and "accept all" are among the candidates.
    assert accuracy >= max(np.sum(labels == 0), np.sum(labels == 1)) / labels.size
