"""JPEG 2000 at reduced resolution, for raw .jp2/.j2k files and DICOM frames.

Pillow's JPEG 2000 plugin (OpenJPEG underneath) can skip the finest wavelet
levels (its ``reduce`` attribute), so a 2000-pixel radiograph headed for a
224-pixel network costs a fraction of a full decode. Pillow hands back 8- or
16-bit samples shifted up to fill the byte and signed data offset to
unsigned; :func:`decode_codestream` undoes both so the caller sees the stored
values.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np
from PIL import Image

from xreg.io._records import check_size

_SOC_SIZ = b"\xff\x4f\xff\x51"


@dataclass(frozen=True)
class J2KHeader:
    """The parts of a codestream's main header that decoding needs."""

    rows: int
    cols: int
    components: int
    precision: int
    signed: bool
    levels: int  # wavelet decomposition levels: the most ``reduce`` can skip


def find_codestream(data: bytes) -> int:
    """Offset of the codestream (SOC marker) in a bare or boxed (.jp2) stream, or -1."""
    if data.startswith(_SOC_SIZ):
        return 0
    return data.find(_SOC_SIZ)


def parse_header(data: bytes) -> J2KHeader | None:
    """Read SIZ and COD from the main header; ``None`` if they cannot be found."""
    start = find_codestream(data)
    if start < 0:
        return None
    pos = start + 2
    size: tuple[int, int, int, int, bool] | None = None
    levels: int | None = None
    try:
        while pos + 4 <= len(data):
            marker, length = struct.unpack(">HH", data[pos : pos + 4])
            if marker == 0xFF51:  # SIZ
                xsiz, ysiz, xo, yo = struct.unpack(">IIII", data[pos + 6 : pos + 22])
                (comps,) = struct.unpack(">H", data[pos + 38 : pos + 40])
                ssiz = data[pos + 40]
                size = (
                    ysiz - yo,
                    xsiz - xo,
                    comps,
                    (ssiz & 0x7F) + 1,
                    bool(ssiz & 0x80),
                )
            elif marker == 0xFF52:  # COD
                levels = data[pos + 9]
            elif marker in (0xFF90, 0xFF93):  # SOT / SOD: main header is over
                break
            if size is not None and levels is not None:
                break
            pos += 2 + length
    except (struct.error, IndexError):
        return None
    if size is None or levels is None:
        return None
    rows, cols, comps, precision, signed = size
    return J2KHeader(rows, cols, comps, precision, signed, levels)


def reduce_levels(header: J2KHeader, target_size: int | None) -> int:
    """How many resolution levels to skip keeping the shorter side >= ``target_size``."""
    if not target_size:
        return 0
    short = min(header.rows, header.cols)
    r = 0
    while r < header.levels and -(-short // (2 ** (r + 1))) >= target_size:
        r += 1
    return r


def decode_codestream(data: bytes, header: J2KHeader, reduce: int) -> np.ndarray:
    """Decode a JPEG 2000 stream skipping ``reduce`` levels; stored values out.

    Single-component data comes back as uint16/int32 holding the codestream's
    own sample values; colour as uint8 RGB. Raises ``ValueError`` for
    precisions this path does not handle and Pillow's own errors for bad data.
    """
    check_size(header.rows, header.cols, header.components)
    if header.precision > 16 or header.components not in (1, 3):
        raise ValueError(f"{header.components} x {header.precision}-bit not handled")
    power = 1 << reduce
    expected = (-(-header.rows // power), -(-header.cols // power))
    with Image.open(io.BytesIO(data), formats=["JPEG2000"]) as im:
        if reduce:
            setattr(im, "reduce", reduce)  # noqa: B010  (J2K property shadows Image.reduce)
            # Pillow (13.0 at least) predicts the reduced size by rounding,
            # OpenJPEG takes the ceiling, and on a mismatch the decode fails
            # ("broken data stream") for sides not divisible by 2**reduce.
            # Preset the size so that either formula yields the ceiling.
            im._size = (
                expected[1] * power - power // 2,
                expected[0] * power - power // 2,
            )
        im.load()
        arr = np.asarray(im)
    if arr.shape[:2] != expected:
        raise ValueError(f"decoded {arr.shape[:2]}, expected {expected}")
    if header.components == 3:
        return arr
    shift = (8 if arr.dtype == np.uint8 else 16) - header.precision
    out = arr.astype(np.int32) >> shift if shift > 0 else arr.astype(np.int32)
    if header.signed:
        out -= 1 << (header.precision - 1)
        return out
    return out.astype(np.uint16)
