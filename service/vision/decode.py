"""Turn untrusted request bytes into an `Image`, or a typed `ImageDecodeError`.

This is the first code that touches client data, so it is written as a boundary:

- The format is sniffed from the content's magic bytes, never from a name or a MIME type, and
  only JPEG, PNG, WebP, PNM (PBM/PGM/PPM) and BMP are handed to Pillow, each to its own plugin
  only, which keeps the rest of Pillow's parsers out of reach of client bytes.
- Size is bounded twice before any pixel is decoded: the byte length, then the pixel count read
  from the header (Pillow opens lazily), so a decompression bomb is refused without allocating.
- A decoder pays for the pixels a header declares, so the bytes must be able to hold them
  (`service.vision.preflight` refuses a JPEG, PNG or WebP that ends before its end marker or
  holds fewer bytes than its pixels need at the format's best compression), and pixels the
  pipeline does not need are not decoded: a JPEG whose long side is at least twice
  `reduce_to_side` is decoded at 1/2, 1/4 or 1/8 scale by libjpeg's scaled inverse DCT (Pillow's
  draft mode), keeping its long side at or above `reduce_to_side`. Formats without reduced
  decoding (PNG, WebP, BMP, PNM) are decoded whole, so they have a lower pixel limit.
- Pillow, not OpenCV, does the decoding: it reads the header without decoding (so the limits
  apply first), raises typed errors on truncated data, and exposes EXIF. `cv2.imdecode` has no
  header-only mode and answers any failure with a bare None (OpenCV 4 even filled the missing
  rows of a truncated JPEG with grey). Both use libjpeg-turbo: about 2 ms for a 640x480 JPEG.
- Every output is RGB uint8 HxWx3 with EXIF orientation applied. Transparent pixels are
  composited over white (what a viewer shows for a cut-out photo); 16-bit samples are scaled,
  not clipped, to 8 bits. ICC profiles are ignored: pixel values are used as stored.
- Whatever the bytes, only `ImageDecodeError` comes out; its `reason` is a stable code that the
  API maps to a status (`IMAGE_TOO_LARGE` to RESOURCE_EXHAUSTED, the others to INVALID_ARGUMENT).

Process-wide Pillow settings are deliberately left alone, because other code in the process may
rely on them: `Image.MAX_IMAGE_PIXELS` stays as Pillow's own second line of defence above our
lower limit (its `DecompressionBombError`, and its warning when warnings are errors, both map to
`IMAGE_TOO_LARGE`), and `ImageFile.LOAD_TRUNCATED_IMAGES` must stay False, Pillow's default, or
truncated files would decode silently.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from PIL import Image as PILImage
from PIL import ImageOps, UnidentifiedImageError

from service.vision.preflight import Refusal, check_jpeg, check_png, check_riff
from service.vision.types import Image

logger = logging.getLogger(__name__)


class DecodeReason(StrEnum):
    """Why bytes were refused; a `str`, so it compares equal to the bare code."""

    EMPTY = "IMAGE_EMPTY"
    TOO_LARGE = "IMAGE_TOO_LARGE"
    UNSUPPORTED_FORMAT = "IMAGE_UNSUPPORTED_FORMAT"
    CORRUPT = "IMAGE_CORRUPT"


class ImageDecodeError(Exception):
    """The bytes are not an image this service accepts; `reason` says why, for machines."""

    def __init__(self, reason: DecodeReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class DecodeLimits:
    """Upper bounds on one request image, checked before any pixel is decoded, and the size
    JPEGs are reduced to while decoding.

    40 MP covers any phone or kiosk camera. A JPEG that large is decoded at 1/4 scale, its
    decoded RGB array at most 2560 px on its long side; other formats are decoded at full size
    and limited to `max_full_pixels` (2 MP, 1600x1250: such a PNG costs a worker about 3 times
    what a 640x480 kiosk JPEG does, as much as a 40 MP JPEG decoded at 1/4 scale;
    `faceguard bench images`). `reduce_to_side` is twice the detector's
    working size (`detector.max_side`), so crops for the embedder keep twice the resolution
    detection had.
    """

    max_bytes: int = 15 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_full_pixels: int = 2_000_000
    reduce_to_side: int = 1280


# Magic bytes -> (Pillow plugin name, format name reported in `Image.format`).
# Checked in order; WebP also needs "WEBP" at offset 8, handled in `_sniff`.
_MAGIC: tuple[tuple[bytes, str, str], ...] = (
    (b"\xff\xd8\xff", "JPEG", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG", "PNG"),
    (b"RIFF", "WEBP", "WEBP"),
    (b"BM", "BMP", "BMP"),
    *((b"P" + kind, "PPM", "PNM") for kind in (b"1", b"2", b"3", b"4", b"5", b"6")),
)

# 16-bit greyscale arrives from Pillow as mode "I;16*" (PNG) or "I" (PNM, scaled to 0..65535);
# Pillow's own convert("L") clips these at 255, so they are scaled with numpy instead.
_HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
_LOW_DEPTH_MODES = frozenset({"1", "L", "P", "RGB", "CMYK", "YCbCr"})
_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})


def decode_image(data: bytes, limits: DecodeLimits = DecodeLimits()) -> Image:
    """Decode request bytes into an RGB uint8 `Image` with EXIF orientation applied.

    Raises `ImageDecodeError` and nothing else for any content of `data`.
    """
    if not data:
        raise ImageDecodeError(DecodeReason.EMPTY, "no bytes")
    if len(data) > limits.max_bytes:
        raise ImageDecodeError(
            DecodeReason.TOO_LARGE, f"{len(data)} bytes > limit {limits.max_bytes}"
        )
    plugin, format_name = _sniff(data)
    pil = _open_header(data, plugin)
    _check_dimensions(pil.size, limits, reducible=plugin == "JPEG")
    _check_structure(data, plugin)
    if plugin == "JPEG":
        _reduce(pil, limits.reduce_to_side)
    rgb = _decode_pixels(pil)
    rgb.flags.writeable = False  # `Image` is immutable; stages must copy before drawing on it
    return Image(rgb=rgb, format=format_name)


def _sniff(data: bytes) -> tuple[str, str]:
    """Name the format from magic bytes; anything unlisted is refused before Pillow sees it."""
    for magic, plugin, format_name in _MAGIC:
        if data.startswith(magic):
            if plugin == "WEBP" and data[8:12] != b"WEBP":
                continue
            return plugin, format_name
    raise ImageDecodeError(DecodeReason.UNSUPPORTED_FORMAT, f"unknown signature {data[:12]!r}")


_PREFLIGHT = {"JPEG": check_jpeg, "PNG": check_png, "WEBP": check_riff}
_PREFLIGHT_REASONS = {
    "corrupt": DecodeReason.CORRUPT,
    "unsupported": DecodeReason.UNSUPPORTED_FORMAT,
}


def _check_structure(data: bytes, plugin: str) -> None:
    """Refuse truncated files and headers that declare more pixels than the bytes can hold."""
    check = _PREFLIGHT.get(plugin)
    if check is None:  # BMP and PNM: Pillow reads them as raw rows and stops at the data's end
        return
    try:
        check(data)
    except Refusal as exc:
        raise ImageDecodeError(_PREFLIGHT_REASONS[exc.reason], exc.detail) from None


def _open_header(data: bytes, plugin: str) -> PILImage.Image:
    """Parse only the header with the one plugin the magic bytes chose (Pillow opens lazily)."""
    try:
        return PILImage.open(io.BytesIO(data), formats=[plugin])
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning) as exc:
        raise ImageDecodeError(DecodeReason.TOO_LARGE, str(exc)) from exc
    except UnidentifiedImageError as exc:
        # The signature matched, so the plugin rejected a broken header, not a foreign format.
        raise ImageDecodeError(DecodeReason.CORRUPT, f"unreadable {plugin} header") from exc
    except Exception as exc:  # parsers raise many types on hostile input: all mean corrupt
        raise _corrupt(plugin, exc) from exc


def _check_dimensions(size: tuple[int, int], limits: DecodeLimits, reducible: bool) -> None:
    """Refuse empty or oversized pixel grids using the header's dimensions alone; images that
    are decoded whole (`reducible` False) have the lower `max_full_pixels` limit."""
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageDecodeError(DecodeReason.CORRUPT, f"header declares {width}x{height}")
    limit = limits.max_pixels if reducible else min(limits.max_pixels, limits.max_full_pixels)
    if width * height > limit:
        raise ImageDecodeError(
            DecodeReason.TOO_LARGE, f"{width}x{height} = {width * height} pixels > limit {limit}"
        )


def reduction(size: tuple[int, int], reduce_to_side: int) -> int:
    """The largest JPEG scale denominator (1, 2, 4 or 8) that keeps the long side of `size`
    at or above `reduce_to_side`."""
    long_side = max(size)
    return next(f for f in (8, 4, 2, 1) if f == 1 or long_side // f >= reduce_to_side)


def _reduce(pil: PILImage.Image, reduce_to_side: int) -> None:
    """Ask libjpeg for a reduced decode (Pillow's draft mode): pixels never decoded cost
    nothing, where decoding them and then shrinking would cost the full decode."""
    factor = reduction(pil.size, reduce_to_side)
    if factor > 1:
        width, height = pil.size
        pil.draft(None, (width // factor, height // factor))


def _decode_pixels(pil: PILImage.Image) -> np.ndarray:
    """Decode all pixel data, apply EXIF orientation and normalise to RGB uint8."""
    plugin = pil.format
    try:
        pil.load()  # raises on truncated or inconsistent data (LOAD_TRUNCATED_IMAGES is False)
        ImageOps.exif_transpose(pil, in_place=True)  # in place: saves a copy when upright
        return _to_rgb(pil)
    except ImageDecodeError:
        raise
    except MemoryError:
        raise  # a process condition, not a property of the bytes: the limits bound allocation
    except Exception as exc:  # decoders raise many types on hostile input: all mean corrupt
        raise _corrupt(plugin, exc) from exc


def _to_rgb(pil: PILImage.Image) -> np.ndarray:
    """Map every mode the accepted plugins produce to a C-contiguous HxWx3 uint8 array."""
    if pil.mode in _HIGH_DEPTH_MODES:
        grey16 = np.clip(np.asarray(pil, dtype=np.int64), 0, 65535)
        grey8 = (grey16 >> 8).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey8[:, :, None], 3, axis=2))
    if pil.mode in _ALPHA_MODES or pil.has_transparency_data:
        rgba = pil.convert("RGBA")
        white = PILImage.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(PILImage.alpha_composite(white, rgba).convert("RGB"))
    if pil.mode in _LOW_DEPTH_MODES:
        return np.asarray(pil if pil.mode == "RGB" else pil.convert("RGB"))
    raise ImageDecodeError(DecodeReason.UNSUPPORTED_FORMAT, f"pixel mode {pil.mode}")


def _corrupt(plugin: str | None, exc: Exception) -> ImageDecodeError:
    """Wrap a parser failure, keeping its type in the log for diagnosing real-world files."""
    logger.debug("rejecting %s data: %s: %s", plugin, type(exc).__name__, exc)
    return ImageDecodeError(DecodeReason.CORRUPT, f"broken {plugin} data: {exc}")
