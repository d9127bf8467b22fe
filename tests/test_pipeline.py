"""The face pipeline end to end on real images: detection, landmarks, quality, embeddings.

Needs the built models (`faceguard models build`, which `make test` runs first). Real photos
come from the fetched face-api package (always there after the build) and from the shared
development data (skipped when absent).
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from service.config import operating_threshold
from service.modelpack.manifest import load_manifest
from service.vision.decode import DecodeReason, ImageDecodeError
from service.vision.detect import DetectorConfig, crop_batch, halvings, nms
from service.vision.pipeline import FacePipeline, PipelineConfig, primary_face
from service.vision.types import Image
from tools.analyze import sample_images


@pytest.fixture(scope="module")
def pipeline() -> FacePipeline:
    return FacePipeline(PipelineConfig(threads=2))


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return sample_images(tmp_path_factory.mktemp("samples"))


@pytest.fixture(scope="module")
def threshold() -> float:
    return operating_threshold(load_manifest(), "1e-4")


def _jpeg(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return data.tobytes()


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [2, 2, 5, 5]], float)
    scores = np.array([0.9, 0.95, 0.5, 0.8])
    assert list(nms(boxes, scores, 0.5)) == [1, 3, 2]
    assert list(nms(boxes, scores, 0.5, mode="min")) == [1, 2]


def test_nms_matches_a_box_by_box_greedy_pass_across_blocks() -> None:
    """More boxes than one block of overlaps: the same boxes survive as in the textbook pass."""
    rng = np.random.default_rng(1)
    corners = rng.uniform(0, 400, (700, 2))
    boxes = np.round(np.concatenate([corners, corners + rng.uniform(5, 60, (700, 2))], 1))
    scores = np.round(rng.uniform(0, 1, 700), 3)

    def overlap(a: np.ndarray, b: np.ndarray, mode: str) -> float:
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
        area_a, area_b = ((x[2] - x[0] + 1) * (x[3] - x[1] + 1) for x in (a, b))
        return w * h / (min(area_a, area_b) if mode == "min" else area_a + area_b - w * h)

    for mode in ("union", "min"):
        expected: list[int] = []
        for i in np.argsort(-scores, kind="stable"):
            if all(overlap(boxes[k], boxes[i], mode) <= 0.5 for k in expected):
                expected.append(int(i))
        assert list(nms(boxes, scores, 0.5, mode)) == expected


def test_crops_sample_the_box_from_the_halved_image_and_pad_outside_with_zeros() -> None:
    """A crop equals the box's area average (one colour per 8x8 block here, whatever level it
    is sampled from) and is zero where the box leaves the image."""
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    image = np.kron(blocks, np.ones((8, 8, 1), dtype=np.uint8))  # 96 x 128, 8 px blocks
    levels = halvings(image, 3)
    assert [level.shape[:2] for level in levels] == [(96, 128), (48, 64), (24, 32), (12, 16)]
    box = np.array([[32.0, 16.0, 95.0, 79.0]])  # 64 px: blocks 4..11 across, 2..9 down
    (crop,) = crop_batch(levels, box, 8)  # 8x shrink: sampled from level 3, exactly
    assert crop.dtype == np.uint8  # rows x columns; the stage's InputSpec scales it
    assert np.allclose(crop.astype(float), blocks[2:10, 4:12], atol=0.6)
    outside = np.array([[-48.0, 0.0, 47.0, 95.0]])  # the left half of the box is off the image
    (pixels,) = crop_batch(levels, outside, 16)
    assert np.all(pixels[:, :7] == 0) and np.all(pixels[:, 9:].max(axis=-1) > 0)


def test_every_sample_photo_gives_faces_with_sane_landmarks(
    pipeline: FacePipeline, samples: list[Path]
) -> None:
    for path in samples:
        analyses = pipeline.analyse(path.read_bytes())
        assert analyses, f"no face found in {path.name}"
        for a in analyses:
            x1, y1, x2, y2 = a.face.box
            left_eye, right_eye, nose, mouth_left, mouth_right = a.face.landmarks
            assert x1 <= nose[0] <= x2 and y1 <= nose[1] <= y2
            assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
            assert max(left_eye[1], right_eye[1]) < min(mouth_left[1], mouth_right[1])
            assert 0.0 <= a.quality.score <= 100.0
            assert a.liveness is not None and 0.0 <= a.liveness.score <= 1.0
            assert np.isclose(np.linalg.norm(a.embedding.vector), 1.0, atol=1e-5)


def test_faces_are_found_in_a_large_frame_at_full_resolution_coordinates(
    pipeline: FacePipeline, samples: list[Path]
) -> None:
    image = pipeline.decode(samples[0].read_bytes())
    small = pipeline.detect(image)
    big = cv2.resize(image.rgb, None, fx=3.0, fy=3.0, interpolation=cv2.INTER_LINEAR)
    large = pipeline.detect(Image(rgb=big, format="JPEG"))
    assert len(large) == len(small)
    for a, b in zip(
        sorted(small, key=lambda f: f.box[0]), sorted(large, key=lambda f: f.box[0]), strict=True
    ):
        assert np.allclose(a.box * 3.0, b.box, atol=0.08 * 3.0 * a.width)


def test_minimum_face_size_is_honoured(samples: list[Path]) -> None:
    strict = FacePipeline(PipelineConfig(threads=1, detector=DetectorConfig(min_face=4000)))
    assert strict.analyse(samples[0].read_bytes()) == []


def test_blank_and_noise_images_have_no_face(pipeline: FacePipeline) -> None:
    assert pipeline.analyse(_jpeg(np.full((480, 640, 3), 127, np.uint8))) == []
    noise = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    assert pipeline.analyse(_jpeg(noise)) == []


def test_bad_bytes_raise_a_typed_error(pipeline: FacePipeline) -> None:
    with pytest.raises(ImageDecodeError) as err:
        pipeline.analyse(b"definitely not an image")
    assert err.value.reason == DecodeReason.UNSUPPORTED_FORMAT


def test_embedding_is_stable_under_recompression(
    pipeline: FacePipeline, samples: list[Path]
) -> None:
    image = pipeline.decode(samples[1].read_bytes())
    a = primary_face(pipeline.detect(image), image)
    again = pipeline.decode(_jpeg(image.rgb))
    b = primary_face(pipeline.detect(again), again)
    first = pipeline.analyse_faces(image, [a])[0].embedding.vector
    second = pipeline.analyse_faces(again, [b])[0].embedding.vector
    assert float(first @ second) > 0.95


def _lfw_pairs(shared: Path, same: bool, count: int) -> list[tuple[Path, Path]]:
    with (shared / "pairs" / "lfw_view1_test.csv").open() as handle:
        rows = [r for r in csv.DictReader(handle) if (r["same"] == "1") == same]
    return [(shared / r["a"], shared / r["b"]) for r in rows[:count]]


def _score(pipeline: FacePipeline, a: Path, b: Path) -> float:
    def main_face(path: Path) -> np.ndarray:
        image = pipeline.decode(path.read_bytes())
        face = primary_face(pipeline.detect(image), image)
        assert face is not None, path
        return pipeline.analyse_faces(image, [face])[0].embedding.vector

    return float(main_face(a) @ main_face(b))


def test_two_photos_of_one_person_match(
    pipeline: FacePipeline, shared_data: Path, threshold: float
) -> None:
    scores = [_score(pipeline, a, b) for a, b in _lfw_pairs(shared_data, True, 12)]
    assert sum(s >= threshold for s in scores) >= 11, scores


def test_photos_of_two_people_do_not_match(
    pipeline: FacePipeline, shared_data: Path, threshold: float
) -> None:
    scores = [_score(pipeline, a, b) for a, b in _lfw_pairs(shared_data, False, 12)]
    assert all(s < threshold for s in scores), scores


def test_group_photos_give_several_faces_and_empty_scenes_none(
    pipeline: FacePipeline, shared_data: Path
) -> None:
    with (shared_data / "detect" / "labels.csv").open() as handle:
        labels = {r["file"]: r["expected_faces"] for r in csv.DictReader(handle)}
    for name, expected in labels.items():
        faces = pipeline.analyse((shared_data / "detect" / name).read_bytes())
        if expected == "multi":
            assert len(faces) >= 2, name
        elif expected == "0":
            assert faces == [], name


def test_grayscale_faces_are_analysed(pipeline: FacePipeline, shared_data: Path) -> None:
    gray = shared_data / "faces" / "faceapi_bbt"
    found = [bool(pipeline.analyse(p.read_bytes())) for p in sorted(gray.glob("*/*.png"))[:10]]
    assert sum(found) >= 8


def test_a_probe_is_embedded_without_the_mirror_image_and_still_matches_its_template(
    pipeline: FacePipeline, samples: list[Path]
) -> None:
    image = pipeline.decode(samples[0].read_bytes())
    chips = pipeline.align(image, pipeline.detect(image)[:1])
    spec = pipeline.embedder.spec
    assert spec.flip and not spec.probe_flip  # the shipped manifest
    assert len(pipeline.embedder.runs(chips, template=True)) == 2
    assert len(pipeline.embedder.runs(chips, template=False)) == 1
    template = pipeline.embed(chips, template=True)[0].vector
    probe = pipeline.embed(chips, template=False)[0].vector
    assert not np.allclose(template, probe)
    assert float(template @ probe) > 0.9  # far above any operating threshold (~0.45-0.6)
