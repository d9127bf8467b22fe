"""Structural checks of image bytes before any pixel is decoded: truncated and lying files.

A decoder pays for the pixels a header declares, not for the bytes it was given: libjpeg
fills the rows a truncated JPEG lacks with grey after a warning that Pillow does not raise, so
a 4 KB file declaring 6000x6000 cost a 36-megapixel decode. These checks read only the
container structure (JPEG markers, PNG chunks, the RIFF size) and refuse a file that

- ends before its end marker (JPEG EOI, PNG IEND) or before the size its container declares;
- holds fewer entropy-coded bytes than the pixels it declares need at the format's best
  possible compression: a Huffman-coded JPEG spends at least one bit per 8x8 block of each
  component in its first scan (two in a sequential scan: a DC code and an end-of-block code),
  and deflate expands at most 1032 times, so a PNG's IDAT data is at least 1/1032 of its
  filtered rows;
- is a JPEG of a kind no camera sends and whose cost no such bound limits: arithmetic-coded
  (which can code a flat block in almost no bits), lossless or hierarchical.

Each check is linear in the file's bytes and scans them with C-level searches.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

# Start-of-frame markers that Pillow's libjpeg accepts and whose scans are Huffman-coded:
# baseline, extended sequential and progressive.
_SOF_HUFFMAN = {0xC0: False, 0xC1: False, 0xC2: True}  # marker -> progressive
_SOF_OTHER = frozenset({0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_SOS, _EOI, _TEM = 0xDA, 0xD9, 0x01
_RST = range(0xD0, 0xD8)
# Inside entropy-coded data, 0xFF is followed by 0x00 (a stuffed byte) or a restart marker;
# anything else starts the next marker.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7]")
_DEFLATE_MAX_RATIO = 1032
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel


class Refusal(Exception):
    """The bytes cannot hold the image they declare; `reason` is "corrupt" or "unsupported"."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class _Frame:
    """A JPEG frame header: size, progressive or not, and each component's 8x8 block count."""

    width: int
    height: int
    progressive: bool
    blocks: dict[int, int]  # component id -> blocks of that component (non-interleaved)


def check_jpeg(data: bytes) -> None:
    """Walk the markers from SOI to EOI; refuse truncation, unsupported coding and any scan
    whose entropy-coded bytes are fewer than its blocks need. Raises `Refusal`."""
    pos, frame = 2, None
    first_scans: set[int] = set()  # components whose DC (or sequential) scan was seen
    while True:
        pos = _skip_fill(data, pos)
        if pos + 2 > len(data):
            raise Refusal("corrupt", "JPEG data ends before its end-of-image marker")
        marker = data[pos + 1]
        if marker == _EOI:
            break
        if marker in _RST or marker == _TEM:
            pos += 2
            continue
        if pos + 4 > len(data):
            raise Refusal("corrupt", "JPEG data ends inside a marker")
        (length,) = struct.unpack_from(">H", data, pos + 2)
        body = pos + 4
        end = pos + 2 + length
        if length < 2 or end > len(data):
            raise Refusal("corrupt", f"JPEG segment 0x{marker:02X} runs past the data")
        if marker in _SOF_OTHER:
            raise Refusal("unsupported", f"JPEG coding 0x{marker:02X} (arithmetic, lossless or "
                          "hierarchical) is not accepted")  # fmt: skip
        if marker in _SOF_HUFFMAN:
            if frame is not None:
                raise Refusal("corrupt", "JPEG has more than one frame header")
            frame = _frame(data[body:end], _SOF_HUFFMAN[marker])
        pos = end
        if marker == _SOS:
            if frame is None:
                raise Refusal("corrupt", "JPEG scan before its frame header")
            pos = _check_scan(data, data[body:end], end, frame, first_scans)
    if frame is None:
        raise Refusal("corrupt", "JPEG has no frame header")
    missing = set(frame.blocks) - first_scans
    if missing:
        raise Refusal("corrupt", f"JPEG components {sorted(missing)} are never coded")


def _skip_fill(data: bytes, pos: int) -> int:
    """Position of the next marker's 0xFF at or after `pos` (0xFF fill bytes may precede it)."""
    if pos < len(data) and data[pos] != 0xFF:
        raise Refusal("corrupt", f"JPEG marker expected at byte {pos}")
    while pos + 1 < len(data) and data[pos + 1] == 0xFF:
        pos += 1
    return pos


def _frame(header: bytes, progressive: bool) -> _Frame:
    if len(header) < 6:
        raise Refusal("corrupt", "JPEG frame header is short")
    _, height, width, count = struct.unpack_from(">BHHB", header)
    if width == 0 or height == 0 or count == 0 or len(header) < 6 + 3 * count:
        raise Refusal("corrupt", f"JPEG frame header declares {width}x{height}, {count} parts")
    sampling = [(header[6 + 3 * i], header[7 + 3 * i]) for i in range(count)]
    h_max = max(s >> 4 for _, s in sampling) or 1
    v_max = max(s & 15 for _, s in sampling) or 1
    blocks = {}
    for component, s in sampling:
        h, v = s >> 4, s & 15
        if not 1 <= h <= 4 or not 1 <= v <= 4:
            raise Refusal("corrupt", f"JPEG component {component} has sampling {h}x{v}")
        columns = -(-width * h // h_max)
        rows = -(-height * v // v_max)
        blocks[component] = -(-columns // 8) * -(-rows // 8)
    return _Frame(width, height, progressive, blocks)


def _check_scan(
    data: bytes, header: bytes, start: int, frame: _Frame, first_scans: set[int]
) -> int:
    """Check one scan's entropy-coded bytes against the least its blocks need; returns the
    position of the marker that ends them."""
    if not header or len(header) < 1 + 2 * header[0] + 3:
        raise Refusal("corrupt", "JPEG scan header is short")
    count = header[0]
    components = [header[1 + 2 * i] for i in range(count)]
    spectral_start, _, approximation = header[1 + 2 * count : 4 + 2 * count]
    if any(c not in frame.blocks for c in components):
        raise Refusal("corrupt", "JPEG scan names a component the frame lacks")
    if not frame.progressive:
        bits_per_block = 2  # a DC difference code and an end-of-block code, 1 bit each at least
    elif spectral_start == 0 and approximation >> 4 == 0:
        bits_per_block = 1  # a DC difference code
    else:
        bits_per_block = 0  # refinements and AC bands can skip blocks in runs
    if bits_per_block:
        first_scans.update(components)
    found = _NEXT_MARKER.search(data, start)
    if found is None:
        raise Refusal("corrupt", "JPEG data ends inside a scan (truncated)")
    needed_bits = bits_per_block * sum(frame.blocks[c] for c in components)
    coded = found.start() - start
    if coded * 8 < needed_bits:
        raise Refusal(
            "corrupt",
            f"JPEG scan has {coded} bytes, fewer than the {-(-needed_bits // 8)} that "
            f"{frame.width}x{frame.height} pixels need (truncated, or a lying header)",
        )
    return found.start()


def check_png(data: bytes) -> None:
    """Walk the chunks from IHDR to IEND; refuse truncation and IDAT data too short to
    inflate to the rows IHDR declares. Raises `Refusal`."""
    pos, idat, header = 8, 0, None
    while True:
        if pos + 8 > len(data):
            raise Refusal("corrupt", "PNG data ends before its IEND chunk (truncated)")
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if end > len(data):
            raise Refusal("corrupt", f"PNG chunk {kind!r} runs past the data (truncated)")
        if header is None:
            if kind != b"IHDR" or length < 13:
                raise Refusal("corrupt", "PNG does not start with its IHDR chunk")
            header = struct.unpack_from(">IIBB", data, pos + 8)
        elif kind == b"IDAT":
            idat += length
        elif kind == b"IEND":
            break
        pos = end
    width, height, depth, colour = header
    samples = _PNG_CHANNELS.get(colour)
    if samples is None or width == 0 or height == 0:
        raise Refusal("corrupt", f"PNG header declares {width}x{height}, colour type {colour}")
    raw = height * (1 + -(-width * samples * depth // 8))
    if idat * _DEFLATE_MAX_RATIO < raw:
        raise Refusal(
            "corrupt",
            f"PNG has {idat} bytes of image data; {width}x{height} pixels need at least "
            f"{-(-raw // _DEFLATE_MAX_RATIO)} (truncated, or a lying header)",
        )


def check_riff(data: bytes) -> None:
    """A WebP's RIFF header declares its length: refuse a file shorter than that."""
    (declared,) = struct.unpack_from("<I", data, 4)
    if declared + 8 > len(data):
        raise Refusal("corrupt", f"WebP declares {declared + 8} bytes, has {len(data)}")
