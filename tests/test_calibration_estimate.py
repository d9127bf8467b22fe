"""The gallery FMR estimator: sampling cross-person pairs, thresholds, intervals, refusals."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest

from service.calibration.estimate import (
    MIN_EXCEEDANCES,
    MIN_PEOPLE,
    estimated_fmr,
    impostor_sample,
    propose_thresholds,
    sample_impostor_scores,
)
from tools.evaluation.scores import threshold_at_fmr


def _gallery(people: int, per_person: int, dim: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(people * per_person, dim)) * rng.uniform(0.5, 2.0, (1, 1))
    owners = [f"p{i // per_person}" for i in range(people * per_person)]
    return vectors, owners


def _normal_sample(people: int, pairs: int, seed: int):
    """Independent N(0, 1) impostor scores spread over random pairs of ``people`` people."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, people, pairs)
    b = (a + rng.integers(1, people, pairs)) % people
    return impostor_sample(rng.normal(size=pairs), a, b)


def test_all_pairs_are_every_cross_owner_pair_of_unit_vectors():
    vectors, owners = _gallery(people=5, per_person=3)
    sample = sample_impostor_scores(vectors, owners, max_pairs=10_000, seed=1)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    expected = [
        float(unit[i] @ unit[j])
        for i in range(15)
        for j in range(i + 1, 15)
        if owners[i] != owners[j]
    ]
    assert sample.pairs == sample.gallery_pairs == len(expected) == 105 - 5 * 3
    assert sample.people == 5
    np.testing.assert_allclose(sample.scores, sorted(expected, reverse=True), atol=1e-6)
    assert np.all(sample.owner_a != sample.owner_b)


@pytest.mark.parametrize("max_pairs", [2_000, 20_000])  # rejection draws; choice among all
def test_random_sample_has_distinct_cross_owner_pairs_and_is_reproducible(max_pairs):
    vectors, owners = _gallery(people=30, per_person=10)
    first = sample_impostor_scores(vectors, owners, max_pairs=max_pairs, seed=7)
    again = sample_impostor_scores(vectors, owners, max_pairs=max_pairs, seed=7)
    other = sample_impostor_scores(vectors, owners, max_pairs=max_pairs, seed=8)
    assert first.pairs == max_pairs
    assert first.gallery_pairs == 300 * 299 // 2 - 30 * 45
    np.testing.assert_array_equal(first.scores, again.scores)
    assert not np.array_equal(first.scores, other.scores)
    assert np.all(first.owner_a != first.owner_b)
    # Distinct pairs: drawing with replacement would repeat thousands; float32 cosines of
    # different pairs coincide only a few times.
    assert len(np.unique(first.scores)) >= max_pairs - 20


def test_one_owner_or_bad_vectors_are_refused():
    vectors, _ = _gallery(people=1, per_person=4)
    with pytest.raises(ValueError, match="two people"):
        sample_impostor_scores(vectors, ["a"] * 4, max_pairs=10, seed=0)
    with pytest.raises(ValueError, match="owners"):
        sample_impostor_scores(vectors, ["a", "b"], max_pairs=10, seed=0)
    vectors[0] = 0.0
    with pytest.raises(ValueError, match="non-zero"):
        sample_impostor_scores(vectors, ["a", "b", "c", "d"], max_pairs=10, seed=0)


def test_threshold_matches_the_known_quantile_and_the_project_metric():
    sample = _normal_sample(people=200, pairs=400_000, seed=3)
    proposals = propose_thresholds(sample, [1e-3, 1e-4], resamples=50)
    for proposal in proposals:
        truth = NormalDist().inv_cdf(1.0 - proposal.target_fmr)
        assert proposal.resolvable and proposal.reason == ""
        assert proposal.threshold == pytest.approx(truth, abs=0.08)
        assert proposal.ci_low <= proposal.threshold <= proposal.ci_high
        assert estimated_fmr(sample, proposal.threshold) <= proposal.target_fmr
        assert estimated_fmr(sample, np.nextafter(proposal.threshold, -np.inf)) > (
            proposal.target_fmr
        )
        scores = np.concatenate([sample.scores, [10.0]])
        labels = np.concatenate([np.zeros(sample.pairs), [1]])
        project = threshold_at_fmr(scores, labels, proposal.target_fmr)
        assert proposal.threshold <= project  # the lowest of the thresholds with that FMR
        assert estimated_fmr(sample, proposal.threshold) == estimated_fmr(sample, project)
        assert (proposal.impostor_pairs, proposal.people) == (400_000, 200)


def test_interval_covers_the_truth_in_most_seeds():
    target = 1e-3
    truth = NormalDist().inv_cdf(1.0 - target)
    covered = 0
    for seed in range(20):
        sample = _normal_sample(people=60, pairs=60_000, seed=100 + seed)
        (proposal,) = propose_thresholds(sample, [target], resamples=100, seed=seed)
        covered += proposal.ci_low <= truth <= proposal.ci_high
    assert covered >= 16


def test_interval_covers_the_truth_in_most_seeds_when_people_differ():
    """Person effects (a look-alike scores high against everyone): offsets N(0, 0.5^2) per
    person make the population's impostor scores N(0, 1.5) for any two distinct people."""
    target = 1e-3
    truth = np.sqrt(1.5) * NormalDist().inv_cdf(1.0 - target)
    covered = 0
    for seed in range(20):
        rng = np.random.default_rng(500 + seed)
        offset = rng.normal(scale=0.5, size=60)
        a = rng.integers(0, 60, 60_000)
        b = (a + rng.integers(1, 60, 60_000)) % 60
        sample = impostor_sample(rng.normal(size=60_000) + offset[a] + offset[b], a, b)
        (proposal,) = propose_thresholds(sample, [target], resamples=100, seed=seed)
        covered += proposal.ci_low <= truth <= proposal.ci_high
    assert covered >= 14  # about 82% of 40 seeds in a longer run: see propose_thresholds


def test_people_interval_is_wider_than_pairs_pretend_when_people_differ():
    """A population with a person effect: the bootstrap over people must see it."""
    rng = np.random.default_rng(5)
    people, pairs = 40, 100_000
    offset = rng.normal(scale=0.5, size=people)
    a = rng.integers(0, people, pairs)
    b = (a + rng.integers(1, people, pairs)) % people
    correlated = impostor_sample(rng.normal(size=pairs) + offset[a] + offset[b], a, b)
    independent = _normal_sample(people=people, pairs=pairs, seed=5)
    (wide,) = propose_thresholds(correlated, [1e-3], resamples=100)
    (narrow,) = propose_thresholds(independent, [1e-3], resamples=100)
    assert wide.ci_high - wide.ci_low > 2 * (narrow.ci_high - narrow.ci_low)


def test_unresolvable_targets_are_refused_with_the_reason():
    sample = _normal_sample(people=50, pairs=50_000, seed=2)
    fine, too_rare = propose_thresholds(sample, [1e-3, 1e-4])
    assert fine.resolvable and fine.threshold is not None
    assert not too_rare.resolvable
    assert too_rare.threshold is too_rare.ci_low is too_rare.ci_high is None
    assert f"at least {MIN_EXCEEDANCES}" in too_rare.reason
    few_people = _normal_sample(people=MIN_PEOPLE - 1, pairs=1_000_000, seed=2)
    (refused,) = propose_thresholds(few_people, [1e-3])
    assert not refused.resolvable and f"at least {MIN_PEOPLE}" in refused.reason
    (studied,) = propose_thresholds(few_people, [1e-3], min_people=MIN_PEOPLE - 1)
    assert studied.resolvable and studied.threshold is not None


def test_a_tail_made_of_one_look_alike_couple_is_refused():
    """Ten people, one couple of look-alikes: the 1e-3 tail is that couple alone, and a gallery
    without them would put the threshold far lower: the people do not pin it down."""
    rng = np.random.default_rng(9)
    a = rng.integers(0, 10, 200_000)
    b = (a + rng.integers(1, 10, 200_000)) % 10
    couple = ((a == 0) & (b == 1)) | ((a == 1) & (b == 0))
    sample = impostor_sample(rng.normal(size=a.size) + 3.0 * couple, a, b)
    (refused,) = propose_thresholds(sample, [1e-3])
    assert not refused.resolvable and refused.threshold is None
    assert "uncertain" in refused.reason and "at most 5x" in refused.reason
    (studied,) = propose_thresholds(sample, [1e-3], max_interval_ratio=np.inf)
    assert studied.resolvable and studied.ci_low < studied.threshold
    assert estimated_fmr(sample, studied.ci_low) > 5 * 1e-3
    spread = _normal_sample(people=10, pairs=200_000, seed=9)  # no couple: resolvable
    assert propose_thresholds(spread, [1e-3])[0].resolvable


def test_estimated_fmr_counts_ties_as_accepted():
    sample = impostor_sample(np.array([0.5, 0.5, 0.1, 0.2]), [0, 1, 2, 3], [1, 2, 3, 0])
    assert estimated_fmr(sample, 0.5) == 0.5
    assert estimated_fmr(sample, 0.2) == 0.75
    assert estimated_fmr(sample, 0.6) == 0.0
    assert estimated_fmr(sample, -1.0) == 1.0


def test_bad_arguments_are_refused():
    sample = _normal_sample(people=20, pairs=1_000, seed=0)
    with pytest.raises(ValueError, match="target"):
        propose_thresholds(sample, [0.0])
    with pytest.raises(ValueError, match="confidence"):
        propose_thresholds(sample, [1e-2], confidence=1.0)
    with pytest.raises(ValueError, match="different people"):
        impostor_sample(np.array([0.1]), [1], [1])
    with pytest.raises(ValueError, match="finite"):
        impostor_sample(np.array([np.nan]), [0], [1])
