"""`FacePipeline`: image bytes in, one `FaceAnalysis` per face out.

decode -> detect -> quality -> align -> liveness -> embed. Every model is built once, when the
pipeline is built, from the manifest's verified files by the registry (`registry.build_model`,
the detector by `registry.build_detector` from the manifest's `[detector]` table); the per-face
stages run batched across all faces of the image. Each stage is also a method of its own so the
benchmark can time it and callers that already hold decoded pixels can skip decoding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service.modelpack.manifest import MODELS_DIR, Manifest, load_manifest
from service.vision.antispoof import AntiSpoofModel
from service.vision.decode import DecodeLimits, decode_image
from service.vision.detect import DetectorConfig
from service.vision.embed import FusedEmbedder, FusionSpec
from service.vision.facemesh import FaceMesh
from service.vision.liveness_cues import FrameCues, cues_from_mesh
from service.vision.parallel import SideBySide
from service.vision.quality import QualityPolicy, assess_quality
from service.vision.registry import build_detector, build_model, detector_version
from service.vision.types import Embedding, Face, FaceAnalysis, Image, Liveness, Quality


@dataclass(frozen=True)
class PipelineConfig:
    """Pipeline settings; `threads` is how many model runs one call may make side by side."""

    threads: int = 2
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    decode: DecodeLimits = field(default_factory=DecodeLimits)
    quality: QualityPolicy = field(default_factory=QualityPolicy)
    liveness: bool = True
    facemesh: bool = True  # dense landmarks for the streamed liveness cues, when in the manifest


def fusion_spec(manifest: Manifest) -> FusionSpec:
    table = manifest.section("embedder")
    return FusionSpec(
        version=str(table["version"]),
        members=tuple(table["members"]),
        weights=tuple(float(w) for w in table["weights"]),
        flip=bool(table["flip"]),
        probe_flip=bool(table.get("probe_flip", table["flip"])),
    )


def primary_face(faces: list[Face], image: Image) -> Face | None:
    """The face a single-subject photo or frame is about: the one nearest the image centre.

    Distance is measured in units of each face's own size, so a large face slightly off centre
    still wins over a small face in the background, while a bystander beside the subject
    (common in press photos and at a kiosk) does not take over however large it is.
    """
    if not faces:
        return None
    centre = np.array([image.width / 2.0, image.height / 2.0])

    def distance(face: Face) -> float:
        offset = np.linalg.norm(face.centre - centre)
        return float(offset / np.sqrt(max(face.width * face.height, 1.0)))

    return min(faces, key=distance)


class FacePipeline:
    """The face pipeline over the models named in the manifest."""

    def __init__(
        self,
        config: PipelineConfig = PipelineConfig(),
        manifest: Manifest | None = None,
        models_dir: Path = MODELS_DIR,
    ) -> None:
        self.config = config
        manifest = manifest or load_manifest()
        models = manifest.models
        self.side_by_side = SideBySide(config.threads)
        self.detector = build_detector(manifest, self.side_by_side, models_dir)
        spec = fusion_spec(manifest)
        members = [build_model(models[n], "embedder", models_dir) for n in spec.members]
        self.embedder = FusedEmbedder(spec, members)
        self.model_versions = {"detector": detector_version(manifest), "embedder": spec.version}
        self.liveness_model: AntiSpoofModel | None = None
        liveness_name = manifest.section("liveness").get("model")
        if config.liveness and liveness_name:
            self.liveness_model = build_model(models[liveness_name], "liveness", models_dir)
            self.model_versions["liveness"] = liveness_name
        self.facemesh: FaceMesh | None = None
        mesh_name = manifest.section("facemesh").get("model")
        if config.facemesh and mesh_name:
            self.facemesh = build_model(models[mesh_name], "landmarks", models_dir)
            self.model_versions["facemesh"] = mesh_name

    def decode(self, data: bytes) -> Image:
        return decode_image(data, self.config.decode)

    def detect(self, image: Image) -> list[Face]:
        return self.detector(image.rgb, self.config.detector)

    def quality(self, image: Image, faces: list[Face]) -> list[Quality]:
        return [assess_quality(image, face, self.config.quality) for face in faces]

    def align(self, image: Image, faces: list[Face]) -> list[np.ndarray]:
        return self.embedder.chips(image.rgb, [f.landmarks for f in faces])

    def embed(self, chips: list[np.ndarray], template: bool = True) -> list[Embedding]:
        """Embeddings of aligned chips, as gallery templates or (`template=False`) as probes.

        The two may differ in test-time augmentation (the manifest's `flip` and `probe_flip`):
        a template is made once at enrolment, a probe on every request. The embedder's runs
        (each member, the faces and their mirror images) go side by side.
        """
        vectors = self.embedder(chips, self.side_by_side, template)
        return [Embedding(vector=v, model=self.embedder.spec.version) for v in vectors]

    def liveness(self, image: Image, faces: list[Face]) -> list[Liveness | None]:
        """The passive liveness score of each face (None each without a liveness model)."""
        model = self.liveness_model
        return model(model.crops(image.rgb, faces)) if model else [None] * len(faces)

    def analyse_faces(
        self, image: Image, faces: list[Face], template: bool = True
    ) -> list[FaceAnalysis]:
        """Quality, liveness and embedding (see `embed`) for faces already detected; the
        liveness model runs beside the embedder."""
        if not faces:
            return []
        qualities = self.quality(image, faces)
        chips = self.align(image, faces)
        embeddings, liveness = self.side_by_side.run(
            lambda: self.embed(chips, template), lambda: self.liveness(image, faces)
        )
        return [
            FaceAnalysis(face=f, quality=q, liveness=lv, embedding=e)
            for f, q, lv, e in zip(faces, qualities, liveness, embeddings, strict=True)
        ]

    def cues(self, image: Image, face: Face) -> FrameCues | None:
        """Pose, eye openness and tracked landmarks of one face; None without a mesh model."""
        if self.facemesh is None:
            return None
        return cues_from_mesh(self.facemesh.mesh_and_score(image.rgb, face)[0])

    def analyse(self, data: bytes) -> list[FaceAnalysis]:
        """Every face in the image bytes, best detector score first.

        Raises `ImageDecodeError` for bytes that are not an acceptable image.
        """
        image = self.decode(data)
        return self.analyse_faces(image, self.detect(image))
