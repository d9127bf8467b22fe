"""Running the face pipeline over evaluation data: pairs files, identity trees, spoof folders.

Each unique image is analysed once; an image in which no face is found stays in the statistics
as a failed comparison (cosine floor, i.e. a non-match), as biometric test protocols require,
instead of being dropped and flattering the figures.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.progress import Progress

from service.vision.decode import ImageDecodeError
from service.vision.pipeline import FacePipeline, primary_face
from service.vision.types import Face, FaceAnalysis

log = logging.getLogger(__name__)

FAILED_SCORE = -1.0
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".bmp", ".webp"}


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    same: bool


def read_pairs(path: Path) -> list[Pair]:
    """Pairs from a CSV file with the columns `a,b,same`."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"a", "b", "same"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        return [Pair(r["a"], r["b"], r["same"].strip() in {"1", "true", "True"}) for r in reader]


def analyse_primary(pipeline: FacePipeline, path: Path) -> FaceAnalysis | None:
    """The analysis of the main face in an image file, or None when there is none."""
    try:
        image = pipeline.decode(path.read_bytes())
    except (OSError, ImageDecodeError) as exc:
        log.warning("%s: %s", path, exc)
        return None
    face = primary_face(pipeline.detect(image), image)
    return pipeline.analyse_faces(image, [face])[0] if face else None


def analyse_all(
    pipeline: FacePipeline, root: Path, names: Iterable[str], label: str = "analysing"
) -> dict[str, FaceAnalysis | None]:
    """Analyse each distinct image once, with a progress bar on the terminal."""
    unique = sorted(set(names))
    results: dict[str, FaceAnalysis | None] = {}
    with Progress(transient=True) as progress:
        task = progress.add_task(label, total=len(unique))
        for name in unique:
            results[name] = analyse_primary(pipeline, root / name)
            progress.advance(task)
    return results


def pair_scores(
    pairs: Sequence[Pair], analyses: dict[str, FaceAnalysis | None]
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine score and label of every pair; a pair with a failed image scores FAILED_SCORE."""
    scores = np.empty(len(pairs))
    for i, pair in enumerate(pairs):
        a, b = analyses[pair.a], analyses[pair.b]
        scores[i] = float(a.embedding.vector @ b.embedding.vector) if a and b else FAILED_SCORE
    return scores, np.array([p.same for p in pairs], dtype=np.int8)


def identity_tree(root: Path) -> dict[str, list[str]]:
    """Images per person in a folder-per-person tree, in sorted order (paths relative to root)."""
    people: dict[str, list[str]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        images = sorted(
            str(f.relative_to(root)) for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES
        )
        if images:
            people[folder.name] = images
    return people


@dataclass(frozen=True)
class IdentificationData:
    similarities: np.ndarray
    probe_ids: list[str]
    gallery_ids: list[str]
    failed_images: int


def identification_scores(
    people: dict[str, list[str]], analyses: dict[str, FaceAnalysis | None]
) -> IdentificationData:
    """Gallery = each person's first image; probes = the rest.

    People with a single image are non-mated probes (their only image is the probe). A gallery
    image without a face leaves that person out of the gallery, which makes their other images
    non-mated probes; a probe without a face scores FAILED_SCORE against everyone.
    """
    gallery_ids, gallery_vectors, probe_ids, probe_names = [], [], [], []
    for person, images in people.items():
        first = analyses[images[0]]
        if len(images) == 1:
            probe_ids.append(person)
            probe_names.append(images[0])
            continue
        if first is not None:
            gallery_ids.append(person)
            gallery_vectors.append(first.embedding.vector)
        probe_ids += [person] * (len(images) - 1)
        probe_names += images[1:]
    gallery = np.stack(gallery_vectors)
    sims = np.full((len(probe_names), len(gallery_ids)), FAILED_SCORE)
    for i, name in enumerate(probe_names):
        analysis = analyses[name]
        if analysis is not None:
            sims[i] = gallery @ analysis.embedding.vector
    failed = sum(1 for a in analyses.values() if a is None)
    return IdentificationData(sims, probe_ids, gallery_ids, failed)


def liveness_scores(pipeline: FacePipeline, root: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """Live score and attack label for every image under `root/live` and `root/spoof`.

    A crop in which no face is detected is scored as the whole image, since the liveness
    model judges the face region and these sets are often tight crops already; without a
    liveness model there is nothing to measure.
    """
    if pipeline.liveness_model is None:
        raise ValueError("the pipeline has no liveness model")
    scores, attacks, undetected = [], [], 0
    for label in ("live", "spoof"):
        for path in sorted((root / label).iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            image = pipeline.decode(path.read_bytes())
            face = primary_face(pipeline.detect(image), image)
            if face is None:
                undetected += 1
                face = whole_image_face(image.width, image.height)
            scores.append(pipeline.liveness(image, [face])[0].score)
            attacks.append(label == "spoof")
    return np.array(scores), np.array(attacks), undetected


def whole_image_face(width: int, height: int) -> Face:
    """A pseudo-detection covering the whole image (for crops that are already a face)."""
    box = np.array([0, 0, width, height], dtype=np.float32)
    return Face(box=box, score=0.0, landmarks=np.zeros((5, 2), dtype=np.float32))
