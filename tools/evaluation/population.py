"""False match rate by population, before and after calibration on the population's own gallery.

A threshold calibrated on one population promises an FMR that another population may not get:
the impostor score distribution of faces from one ancestry, one photo style, one age group
sits higher or lower. Following NIST's demographic reports (FRVT part 3), each population's
FMR at the operating thresholds is divided by the target and the worst ratio is the headline.

Comparisons are scored as the service scores them: the probe embedding of one image (as a
verify or identify request makes it) against the template of another (as enrolment makes it).
Impostors are every cross-person probe-template pair of a population, genuines every pair of
two different images of one person.

Calibration on the population's own gallery: its people are split in two halves at random;
the estimator (service/calibration/estimate.py) proposes thresholds from the template pairs of
one half (the enrolled gallery), and FMR and TAR are measured on the other half, whose people it
never saw.

The gap between populations at equal TAR (`reference_gap`): one threshold per target, set so
that the first population's held-out half meets the target exactly, applied to every
population's held-out half. Optionally with every score normalised by adaptive score
normalisation (`as_norm`) against a cohort of the population's own gallery half, to see how much
that narrows the gap.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from service.calibration.estimate import (
    MAX_INTERVAL_FMR_RATIO,
    MIN_PEOPLE,
    propose_thresholds,
    sample_impostor_scores,
)
from tools.evaluation.scores import fmr_is_resolvable, threshold_at_fmr

TARGETS = {"1e-3": 1e-3, "1e-4": 1e-4, "1e-5": 1e-5}
# Template pairs of the gallery half handed to the estimator.
MAX_CALIBRATION_PAIRS = 5_000_000
# People with a face found, fewest per population: each half of the split needs two.
MIN_SPLIT_PEOPLE = 4
# Images of one population: every probe is scored against every template (an n x n matrix of
# float32, 1.6 GB at this size); sample larger trees with --people / --images-per-person.
MAX_IMAGES = 20_000

# The unit template and probe of an image's main face; None: no face.
Embed = Callable[[Path], tuple[np.ndarray, np.ndarray] | None]


@dataclass(frozen=True, eq=False)
class Population:
    """One population's embedded images: row ``i`` of both arrays is image ``i`` of
    ``owners[i]``; images without a face are counted in ``failed_images`` only."""

    name: str
    owners: np.ndarray
    templates: np.ndarray
    probes: np.ndarray
    failed_images: int

    @property
    def people(self) -> int:
        return int(np.unique(self.owners).size)


def parse_population(text: str) -> tuple[str, Path]:
    """``NAME=DIR`` of a `--faces` option: a population name and its folder-per-person tree."""
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder:
        raise ValueError(f"expected NAME=DIR, got {text!r}")
    path = Path(folder)
    if not path.is_dir():
        raise ValueError(f"{path} is not a folder")
    return name, path


def select_people(
    tree: Mapping[str, list[str]], max_people: int | None, per_person: int | None, seed: int
) -> dict[str, list[str]]:
    """A seeded sample of at most ``max_people`` people, each with their first ``per_person``
    images; with a cap on people, only people with two images or more (they have genuine
    pairs) are sampled. No cap: everyone."""
    names = sorted(tree)
    if max_people is not None:
        multi = [n for n in names if len(tree[n]) >= 2]
        if len(multi) > max_people:
            chosen = np.random.default_rng(seed).choice(len(multi), max_people, replace=False)
            multi = [multi[i] for i in sorted(chosen)]
        names = multi
    return {n: tree[n][:per_person] if per_person else tree[n] for n in names}


def embed_population(
    name: str, root: Path, tree: Mapping[str, list[str]], embed: Embed
) -> Population:
    """Template and probe of every image of the tree (each image embedded once)."""
    count = sum(len(images) for images in tree.values())
    if count > MAX_IMAGES:
        raise ValueError(
            f"population {name}: {count} images, at most {MAX_IMAGES}: sample it with --people"
        )
    owners, templates, probes, failed = [], [], [], 0
    for person, images in tree.items():
        for image in images:
            found = embed(root / image)
            if found is None:
                failed += 1
                continue
            owners.append(person)
            templates.append(found[0])
            probes.append(found[1])
    if len(set(owners)) < MIN_SPLIT_PEOPLE:
        raise ValueError(
            f"population {name}: faces of {len(set(owners))} people were found, at least "
            f"{MIN_SPLIT_PEOPLE} are needed (two in each half of the split)"
        )
    return Population(name, np.array(owners), np.stack(templates), np.stack(probes), failed)


def _top_k_moments(
    vectors: np.ndarray, cohort: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each vector's ``k`` highest cohort scores."""
    scores = vectors @ cohort.T
    top = -np.sort(-scores, axis=1)[:, :k]
    return top.mean(axis=1), np.maximum(top.std(axis=1), 1e-6)


def as_norm(
    scores: np.ndarray,
    probe_moments: tuple[np.ndarray, np.ndarray],
    template_moments: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """Adaptive score normalisation of a probes x templates score matrix: the mean of the score
    z-normalised by the probe's and by the template's top-k cohort score moments."""
    (mp, sp), (mt, st) = probe_moments, template_moments
    return 0.5 * ((scores - mp[:, None]) / sp[:, None] + (scores - mt[None, :]) / st[None, :])


@dataclass(frozen=True)
class Comparisons:
    """Impostor and genuine probe-template scores of a set of people."""

    impostors: np.ndarray
    genuine: np.ndarray


def compare(population: Population, rows: np.ndarray, cohort_k: int = 0) -> Comparisons:
    """Every probe of ``rows`` against every template of ``rows`` of another image; with
    ``cohort_k``, AS-norm scores against a cohort of the population's other rows."""
    owners = population.owners[rows]
    scores = population.probes[rows] @ population.templates[rows].T
    if cohort_k:
        cohort = population.templates[~rows]
        k = min(cohort_k, len(cohort))
        scores = as_norm(
            scores,
            _top_k_moments(population.probes[rows], cohort, k),
            _top_k_moments(population.templates[rows], cohort, k),
        )
    same = owners[:, None] == owners[None, :]
    np.fill_diagonal(same, False)
    different = owners[:, None] != owners[None, :]
    return Comparisons(impostors=scores[different], genuine=scores[same])


def rates(comparisons: Comparisons, thresholds: Mapping[str, float | None]) -> dict[str, Any]:
    """Per target: threshold, FMR, FMR / target (None when too few impostors to observe one
    false match at the target), TAR."""
    out: dict[str, Any] = {}
    for key, threshold in thresholds.items():
        target = TARGETS[key]
        if threshold is None:
            out[key] = {"threshold": None, "fmr": None, "fmr_ratio": None, "tar": None}
            continue
        fmr = float((comparisons.impostors >= threshold).mean())
        resolvable = fmr_is_resolvable(comparisons.impostors.size, target)
        out[key] = {
            "threshold": round(float(threshold), 6),
            "fmr": fmr,
            "fmr_ratio": round(fmr / target, 2) if resolvable else None,
            "tar": round(float((comparisons.genuine >= threshold).mean()), 4)
            if comparisons.genuine.size
            else None,
        }
    return out


def split_people(owners: np.ndarray, seed: int, held_out: int | None = None) -> np.ndarray:
    """Rows of the gallery: a random half of the people, or all but ``held_out`` of them (at
    least two people stay on each side); the rest are held out."""
    people = np.unique(owners)
    if held_out is not None and not 2 <= held_out <= people.size - 2:
        raise ValueError(
            f"{held_out} people held out of {people.size}: at least 2 on each side of the split"
        )
    np.random.default_rng(seed).shuffle(people)
    keep = people.size // 2 if held_out is None else people.size - held_out
    return np.isin(owners, people[:keep])


def calibrate_on_own_gallery(
    population: Population,
    shipped: Mapping[str, float | None],
    *,
    seed: int,
    min_people: int = MIN_PEOPLE,
    held_out: int | None = None,
    max_interval_ratio: float = MAX_INTERVAL_FMR_RATIO,
) -> dict[str, Any]:
    """Thresholds proposed on a random half of the people (or all but ``held_out``), FMR and
    TAR on the others at the shipped thresholds (``before``) and the proposed ones (``after``)."""
    gallery = split_people(population.owners, seed, held_out)
    sample = sample_impostor_scores(
        population.templates[gallery],
        list(population.owners[gallery]),
        max_pairs=MAX_CALIBRATION_PAIRS,
        seed=seed,
    )
    proposals = propose_thresholds(
        sample,
        list(TARGETS.values()),
        seed=seed,
        min_people=min_people,
        max_interval_ratio=max_interval_ratio,
    )
    held_out = compare(population, ~gallery)
    proposed = dict(zip(TARGETS, (p.threshold for p in proposals), strict=True))
    return {
        "gallery_people": int(np.unique(population.owners[gallery]).size),
        "held_out_people": int(np.unique(population.owners[~gallery]).size),
        "gallery_pairs": sample.pairs,
        "held_out_impostors": int(held_out.impostors.size),
        "proposals": {
            key: {
                "threshold": p.threshold,
                "ci": [p.ci_low, p.ci_high] if p.resolvable else None,
                "resolvable": p.resolvable,
                "reason": p.reason,
            }
            for key, p in zip(TARGETS, proposals, strict=True)
        },
        "before": rates(held_out, shipped),
        "after": rates(held_out, proposed),
    }


def reference_gap(populations: Sequence[Population], *, seed: int, cohort_k: int) -> dict[str, Any]:
    """FMR / target and TAR of every population's held-out half at the thresholds that give
    exactly the target on the first (reference) population's held-out half: how far one
    threshold is from fitting every population, at the reference's TAR. With ``cohort_k`` the
    scores are AS-normalised, each population's cohort being its own gallery half."""
    held_out = {p.name: compare(p, ~split_people(p.owners, seed), cohort_k) for p in populations}
    thresholds = _exact_fit(held_out[populations[0].name])
    return {
        "reference": populations[0].name,
        "cohort_k": cohort_k,
        "populations": {name: rates(c, thresholds) for name, c in held_out.items()},
        # Discrimination within each population, whatever the threshold: its TAR at its own
        # exact-fit thresholds (normalisation that only shifts scores leaves this unchanged).
        "tar_at_own_fit": {
            name: {k: f["tar"] for k, f in rates(c, _exact_fit(c)).items()}
            for name, c in held_out.items()
        },
    }


def _exact_fit(comparisons: Comparisons) -> dict[str, float | None]:
    """Per target, the threshold at which these comparisons meet it exactly (None: too few
    impostors or no genuine pair)."""
    scores = np.concatenate([comparisons.impostors, comparisons.genuine])
    labels = np.concatenate(
        [np.zeros(comparisons.impostors.size), np.ones(comparisons.genuine.size)]
    )
    return {
        key: threshold_at_fmr(scores, labels, target)
        if comparisons.genuine.size and fmr_is_resolvable(comparisons.impostors.size, target)
        else None
        for key, target in TARGETS.items()
    }


def _over_splits(repeats: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per target: median, mean and highest FMR / target after calibration, and the median TAR,
    over the splits whose gallery resolved the target (the mean is the one to read when few
    people are held out: their FMR is near 0 unless two of them look alike)."""
    summary: dict[str, Any] = {}
    for key in TARGETS:
        found = [r["after"][key] for r in repeats if r["after"][key]["fmr_ratio"] is not None]
        ratios = [f["fmr_ratio"] for f in found]
        summary[key] = {
            "splits": len(repeats),
            "resolved": len(found),
            "median_fmr_ratio": round(float(np.median(ratios)), 2) if found else None,
            "mean_fmr_ratio": round(float(np.mean(ratios)), 2) if found else None,
            "max_fmr_ratio": max(ratios) if found else None,
            "median_tar": round(float(np.median([f["tar"] for f in found])), 4) if found else None,
        }
    return summary


def _worst(reports: Mapping[str, Mapping[str, Any]], pick: Callable[[Mapping], Mapping | None]):
    """Per target: the population with the highest FMR / target and that ratio."""
    worst: dict[str, Any] = {}
    for key in TARGETS:
        found = [
            (figures[key]["fmr_ratio"], name)
            for name, report in reports.items()
            if (figures := pick(report)) and figures[key]["fmr_ratio"] is not None
        ]
        ratio, name = max(found) if found else (None, None)
        worst[key] = {"population": name, "fmr_ratio": ratio}
    return worst


def population_report(
    populations: Sequence[Population],
    shipped: Mapping[str, float | None],
    *,
    seed: int,
    cohort_k: int = 0,
    min_people: int = MIN_PEOPLE,
    splits: int = 1,
    held_out: int | None = None,
    max_interval_ratio: float = MAX_INTERVAL_FMR_RATIO,
) -> dict[str, Any]:
    """The per-population figures and the worst ratios, as one JSON-ready dict.

    ``own_gallery`` is the split of ``seed``; with ``splits`` > 1, ``own_gallery_splits``
    summarises the calibrated figures over the splits of seeds ``seed`` .. ``seed + splits - 1``
    (one split of a small population is a noisy figure). ``held_out``: people left out of the
    gallery in those splits (default half), so that a small population keeps enough people to
    calibrate on.
    """
    reports: dict[str, dict[str, Any]] = {}
    for population in populations:
        everyone = compare(population, np.ones(len(population.owners), dtype=bool))
        repeats = [
            calibrate_on_own_gallery(
                population,
                shipped,
                seed=s,
                min_people=min_people,
                held_out=held_out,
                max_interval_ratio=max_interval_ratio,
            )
            for s in range(seed, seed + splits)
        ]
        reports[population.name] = {
            "people": population.people,
            "images": len(population.owners) + population.failed_images,
            "failed_images": population.failed_images,
            "impostor_comparisons": int(everyone.impostors.size),
            "genuine_comparisons": int(everyone.genuine.size),
            "impostor_mean": round(float(everyone.impostors.mean()), 4),
            "at_operating": rates(everyone, shipped),
            "own_gallery": repeats[0],
            "own_gallery_splits": _over_splits(repeats) if splits > 1 else None,
        }
    return {
        "populations": reports,
        "gap": reference_gap(populations, seed=seed, cohort_k=0),
        "gap_as_norm": reference_gap(populations, seed=seed, cohort_k=cohort_k)
        if cohort_k
        else None,
        "worst_at_operating": _worst(reports, lambda r: r["at_operating"]),
        "worst_before": _worst(reports, lambda r: r["own_gallery"]["before"]),
        "worst_after": _worst(reports, lambda r: r["own_gallery"]["after"]),
    }


def _ratio_cell(figures: Mapping[str, Any] | None, key: str) -> str:
    if not figures or figures[key]["threshold"] is None:
        return "-"
    ratio, tar = figures[key]["fmr_ratio"], figures[key]["tar"]
    shown = "n/r" if ratio is None else f"{ratio:g}x"
    return f"{shown} (TAR {tar:.3f})" if tar is not None else shown


def report_tables(report: Mapping[str, Any]) -> list[Table]:
    """The report as tables: FMR / target (TAR) per population at the operating thresholds,
    and on the held-out half before and after calibration on the gallery half. ``n/r``: too
    few impostors to observe one false match at that target; ``-``: no threshold (the
    estimator refused the target on the gallery half, or the embedder has none shipped)."""
    operating = Table(title="FMR / target (TAR) at the operating thresholds, all pairs")
    split = Table(title="held-out half: shipped thresholds -> calibrated on the gallery half")
    for column in ("population", "people", "impostor pairs", "impostor mean"):
        operating.add_column(column)
    for column in ("population", "gallery / held-out people"):
        split.add_column(column)
    for key in TARGETS:
        operating.add_column(f"at {key}")
        split.add_column(f"before {key}")
        split.add_column(f"after {key}")
    for name, figures in report["populations"].items():
        own = figures["own_gallery"]
        operating.add_row(
            name, str(figures["people"]), str(figures["impostor_comparisons"]),
            f"{figures['impostor_mean']:.3f}",
            *(_ratio_cell(figures["at_operating"], key) for key in TARGETS),
        )  # fmt: skip
        cells = []
        for key in TARGETS:
            cells += [_ratio_cell(own["before"], key), _ratio_cell(own["after"], key)]
        split.add_row(name, f"{own['gallery_people']} / {own['held_out_people']}", *cells)
    worst = [
        f"worst {label} {key}: {w[key]['population']} {w[key]['fmr_ratio']}x"
        for label, field in (("at operating", "worst_at_operating"), ("after", "worst_after"))
        for key, w in [(k, report[field]) for k in TARGETS]
        if w[key]["population"]
    ]
    split.caption = "; ".join(worst)
    tables = [operating, split]
    if any(f["own_gallery_splits"] for f in report["populations"].values()):
        tables.append(_splits_table(report["populations"]))
    return tables + [_gap_table(report[key]) for key in ("gap", "gap_as_norm") if report[key]]


def _splits_table(populations: Mapping[str, Any]) -> Table:
    table = Table(title="calibrated on the gallery, over splits: median / mean / max FMR / target")
    table.add_column("population")
    for key in TARGETS:
        table.add_column(f"at {key}")
    for name, figures in populations.items():
        cells = []
        for key in TARGETS:
            f = figures["own_gallery_splits"][key]
            cells.append(
                f"{f['median_fmr_ratio']:g}x / {f['mean_fmr_ratio']:g}x / {f['max_fmr_ratio']:g}x"
                f" (TAR {f['median_tar']:.3f}"
                f", {f['resolved']} of {f['splits']})"
                if f["resolved"]
                else f"- (0 of {f['splits']})"
            )
        table.add_row(name, *cells)
    return table


def _gap_table(gap: Mapping[str, Any]) -> Table:
    scores = f"AS-norm (top-{gap['cohort_k']} cohort)" if gap["cohort_k"] else "raw"
    table = Table(
        title=f"held-out halves at the thresholds that fit {gap['reference']} exactly ({scores})"
    )
    table.add_column("population")
    for key in TARGETS:
        table.add_column(f"at {key}")
    for key in TARGETS:
        table.add_column(f"TAR at own {key}")
    for name, figures in gap["populations"].items():
        own = gap["tar_at_own_fit"][name]
        table.add_row(
            name,
            *(_ratio_cell(figures, key) for key in TARGETS),
            *("-" if own[key] is None else f"{own[key]:.3f}" for key in TARGETS),
        )
    return table
