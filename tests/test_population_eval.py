"""FMR by population: the report on synthetic populations, and `faceguard eval population`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tools.evaluation.population import (
    MAX_IMAGES,
    TARGETS,
    Population,
    embed_population,
    parse_population,
    population_report,
    report_tables,
    select_people,
)

REPO = Path(__file__).resolve().parents[1]
FACEGUARD = Path(sys.executable).with_name("faceguard")


def _population(name: str, people: int, per_person: int, shared: float, seed: int) -> Population:
    """Unit embeddings: a shared population direction (weight ``shared`` raises every impostor
    score, as the East Asian sets do for the shipped embedder), a person direction and noise."""
    rng = np.random.default_rng(seed)
    dim = 64
    common = rng.normal(size=dim)
    common /= np.linalg.norm(common)
    rows = []
    for _ in range(people):
        person = rng.normal(size=dim)
        person /= np.linalg.norm(person)
        for _ in range(per_person):
            v = shared * common + person + 1.0 * rng.normal(size=dim) / np.sqrt(dim)
            rows.append(v / np.linalg.norm(v))
    vectors = np.array(rows)
    owners = np.repeat([f"{name}{i}" for i in range(people)], per_person)
    return Population(name, owners, vectors, vectors, failed_images=0)


@pytest.fixture(scope="module")
def report():
    wide = _population("wide", people=150, per_person=4, shared=0.0, seed=1)
    narrow = _population("narrow", people=150, per_person=4, shared=0.8, seed=2)
    # Shipped thresholds calibrated on the "wide" population's impostors.
    scores = wide.probes @ wide.templates.T
    impostors = np.sort(scores[wide.owners[:, None] != wide.owners[None, :]])[::-1]
    shipped = {k: float(impostors[int(t * impostors.size)]) + 1e-9 for k, t in TARGETS.items()}
    return population_report([wide, narrow], shipped, seed=0)


def test_the_population_the_thresholds_were_not_made_for_is_far_above_target(report):
    wide = report["populations"]["wide"]["at_operating"]
    narrow = report["populations"]["narrow"]["at_operating"]
    assert wide["1e-3"]["fmr_ratio"] <= 1.0
    assert narrow["1e-3"]["fmr_ratio"] > 10
    assert report["worst_at_operating"]["1e-3"] == {
        "population": "narrow",
        "fmr_ratio": narrow["1e-3"]["fmr_ratio"],
    }


def test_calibration_on_the_gallery_half_brings_the_held_out_half_near_target(report):
    for name in ("wide", "narrow"):
        own = report["populations"][name]["own_gallery"]
        assert own["gallery_people"] == own["held_out_people"] == 75
        assert own["proposals"]["1e-3"]["resolvable"]
        low, high = own["proposals"]["1e-3"]["ci"]
        assert low <= own["proposals"]["1e-3"]["threshold"] <= high
        assert own["after"]["1e-3"]["fmr_ratio"] < 2.0
        assert own["after"]["1e-3"]["tar"] is not None
    narrow = report["populations"]["narrow"]["own_gallery"]
    assert narrow["before"]["1e-3"]["fmr_ratio"] > 10
    # 75 gallery people x 4 templates: 44,400 pairs expect 4.4 false matches at 1e-4.
    assert not narrow["proposals"]["1e-4"]["resolvable"]
    assert "at least 10" in narrow["proposals"]["1e-4"]["reason"]
    assert narrow["after"]["1e-4"]["threshold"] is None
    assert report["worst_after"]["1e-3"]["fmr_ratio"] < 2.0


def test_calibration_over_several_splits_is_summarised():
    narrow = _population("narrow", people=100, per_person=4, shared=0.8, seed=7)
    report = population_report([narrow], {k: 0.5 for k in TARGETS}, seed=0, splits=3)
    summary = report["populations"]["narrow"]["own_gallery_splits"]
    assert summary["1e-3"]["splits"] == summary["1e-3"]["resolved"] == 3
    assert summary["1e-3"]["median_fmr_ratio"] <= summary["1e-3"]["max_fmr_ratio"] < 3
    assert summary["1e-3"]["mean_fmr_ratio"] <= summary["1e-3"]["max_fmr_ratio"]
    assert summary["1e-5"]["resolved"] == 0 and summary["1e-5"]["median_fmr_ratio"] is None
    assert report_tables(report)[2].row_count == 1


def test_a_small_population_can_keep_most_people_in_the_gallery():
    small = _population("small", people=12, per_person=40, shared=0.8, seed=8)
    report = population_report([small], {k: 0.5 for k in TARGETS}, seed=0, held_out=2, splits=2)
    own = report["populations"]["small"]["own_gallery"]
    assert (own["gallery_people"], own["held_out_people"]) == (10, 2)
    assert own["proposals"]["1e-3"]["resolvable"]  # 10 people, 78,000 pairs
    assert own["after"]["1e-3"]["tar"] is not None
    with pytest.raises(ValueError, match="at least 2 on each side"):
        population_report([small], {k: 0.5 for k in TARGETS}, seed=0, held_out=11)


def test_one_threshold_fits_the_reference_exactly_and_not_the_other_population(report):
    gap = report["gap"]
    assert gap["reference"] == "wide" and gap["cohort_k"] == 0
    assert gap["populations"]["wide"]["1e-3"]["fmr_ratio"] <= 1.0
    assert gap["populations"]["narrow"]["1e-3"]["fmr_ratio"] > 10
    assert report["gap_as_norm"] is None


def test_as_norm_against_the_own_gallery_narrows_the_gap():
    wide = _population("wide", people=100, per_person=4, shared=0.0, seed=5)
    narrow = _population("narrow", people=100, per_person=4, shared=0.8, seed=6)
    report = population_report([wide, narrow], {k: 0.5 for k in TARGETS}, seed=0, cohort_k=20)
    raw, normalised = report["gap"]["populations"], report["gap_as_norm"]["populations"]
    assert report["gap_as_norm"]["cohort_k"] == 20
    assert raw["narrow"]["1e-3"]["fmr_ratio"] > 10
    assert normalised["narrow"]["1e-3"]["fmr_ratio"] < 3
    own_raw = report["gap"]["tar_at_own_fit"]["narrow"]["1e-3"]
    own_normalised = report["gap_as_norm"]["tar_at_own_fit"]["narrow"]["1e-3"]
    assert 0.0 < own_raw <= 1.0 and 0.0 < own_normalised <= 1.0


def test_population_arguments_are_checked(tmp_path: Path):
    assert parse_population(f"kiosk={tmp_path}") == ("kiosk", tmp_path)
    for bad in ("kiosk", f"={tmp_path}", "kiosk=", f"kiosk={tmp_path / 'missing'}"):
        with pytest.raises(ValueError):
            parse_population(bad)
    tree = {f"p{i}": [f"p{i}/{j}.jpg" for j in range(1 + i % 3)] for i in range(30)}
    sample = select_people(tree, max_people=5, per_person=2, seed=4)
    assert len(sample) == 5 and all(2 >= len(v) >= 2 for v in sample.values())
    assert sample == select_people(tree, max_people=5, per_person=2, seed=4)
    assert select_people(tree, None, None, seed=0) == tree
    huge = {f"p{i}": [f"p{i}/{j}.jpg" for j in range(MAX_IMAGES // 10 + 1)] for i in range(10)}
    with pytest.raises(ValueError, match="--people"):
        embed_population("huge", tmp_path, huge, lambda path: pytest.fail("embedded"))


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FACEGUARD), "eval", "population", *args],
        capture_output=True, text=True, cwd=REPO, timeout=900,
        env={**os.environ, "COLUMNS": "250"},
    )  # fmt: skip


def test_cli_reports_kpop_far_above_target_at_the_shipped_thresholds(shared_data: Path):
    faces = shared_data / "faces"
    result = _run(
        "--faces", f"kpop={faces / 'kpop'}", "--faces", f"bbt={faces / 'faceapi_bbt'}",
        "--images-per-person", "6", "--min-people", "3", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    kpop = report["populations"]["kpop"]
    assert kpop["people"] == 12 and kpop["images"] == 72
    assert kpop["at_operating"]["1e-3"]["fmr_ratio"] > 10
    assert report["worst_at_operating"]["1e-3"]["population"] == "kpop"
    assert kpop["own_gallery"]["gallery_people"] == 6
    # 36 gallery templates: 540 pairs cannot resolve 1e-3.
    assert not kpop["own_gallery"]["proposals"]["1e-3"]["resolvable"]
    bbt = report["populations"]["bbt"]
    assert bbt["at_operating"]["1e-4"]["fmr_ratio"] is None  # too few impostors
    assert report["embedder"]["members"] == ["mobilefacenet"]
    assert report["gap"]["reference"] == "kpop" and report["gap_as_norm"] is None
    assert kpop["own_gallery_splits"] is None
    table = _run("--faces", f"bbt={faces / 'faceapi_bbt'}", "--splits", "2")
    assert table.returncode == 0, table.stderr
    assert "over splits" in table.stdout and "at the operating thresholds" in table.stdout


def test_cli_refuses_bad_populations_and_embedders(shared_data: Path, tmp_path: Path):
    result = _run("--faces", "no-equals-sign")
    assert result.returncode == 2 and "NAME=DIR" in result.stderr
    (tmp_path / "alone").mkdir()
    result = _run("--faces", f"empty={tmp_path}")
    assert result.returncode == 1 and "0 people were found" in result.stderr
    faces = shared_data / "faces" / "faceapi_bbt"
    result = _run("--faces", f"bbt={faces}", "--members", "no_such_model")
    assert result.returncode == 1 and "unknown embedder" in result.stderr
    for option, value in (
        ("--splits", "0"),
        ("--images-per-person", "0"),
        ("--cohort", "-5"),
        ("--max-interval-ratio", "0.5"),
    ):
        result = _run("--faces", f"bbt={faces}", option, value)
        assert result.returncode == 1 and "at least" in result.stderr, option


def test_cli_counts_an_unreadable_image_as_failed(shared_data: Path, tmp_path: Path):
    source = shared_data / "faces" / "faceapi_bbt"
    for person in ("amy", "penny", "raj", "sheldon"):
        (tmp_path / person).mkdir()
        for image in sorted((source / person).iterdir())[:2]:
            (tmp_path / person / image.name).symlink_to(image)
    (tmp_path / "amy" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    result = _run("--faces", f"four={tmp_path}", "--json")
    assert result.returncode == 0, result.stderr
    four = json.loads(result.stdout)["populations"]["four"]
    assert four["images"] == 9 and four["failed_images"] == 1
    assert four["impostor_comparisons"] == 8 * 8 - 8 - 8  # 8 faces, 4 people of 2
    assert four["own_gallery"]["gallery_people"] == 2
    shutil.rmtree(tmp_path / "sheldon")
    result = _run("--faces", f"three={tmp_path}")
    assert result.returncode == 1 and "at least 4 are needed" in result.stderr
