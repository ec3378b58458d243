"""Decode PNG, JPEG, TIFF and JPEG 2000 files through Pillow."""

from __future__ import annotations

import io
import math
import struct
import zlib
from typing import IO

import numpy as np
from PIL import Image, UnidentifiedImageError

from xreg.errors import UnreadableImageError
from xreg.io import j2k, pixels
from xreg.io._records import ImageMeta, XrayImage, check_size

#: A JPEG whose file ends early is decoded when at least this share of its
#: picture survives; below it the file is "truncated file" as before.
MIN_RECOVERED: float = 0.99

_EOI = b"\xff\xd9"
_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF", "jp2": "JPEG2000"}
_ORIENTATION_TAG = 0x0112
_BITS = {"1": 1, "I": 32, "F": 32}
_DECODE_ERRORS = (
    Image.DecompressionBombError,
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    zlib.error,
    IndexError,
    TypeError,
    KeyError,
)


def _classify(exc: BaseException) -> UnreadableImageError:
    if isinstance(exc, Image.DecompressionBombError):
        return UnreadableImageError(
            "image too large", "Pillow decompression-bomb limit"
        )
    if isinstance(exc, EOFError) or "truncated" in str(exc).lower():
        return UnreadableImageError("truncated file", type(exc).__name__)
    if isinstance(exc, UnidentifiedImageError):
        return UnreadableImageError("corrupt data", "Pillow cannot identify the image")
    return UnreadableImageError("corrupt data", type(exc).__name__)


def _bits(mode: str) -> int:
    if mode.startswith("I;16"):
        return 16
    return _BITS.get(mode, 8)


def to_array(im: Image.Image) -> tuple[np.ndarray, float | None]:
    """Pixels of a loaded image as a 2-D array and the value that means white.

    ``None`` for the white value asks for min..max normalisation (float or
    32-bit data of unknown range).
    """
    mode = im.mode
    if mode.startswith("I;16"):
        arr = np.asarray(im)
        return arr.astype(arr.dtype.newbyteorder("=")), 65535.0
    if mode == "I":
        arr = np.asarray(im)
        if arr.size and arr.min() >= 0 and arr.max() <= 65535:
            return arr, 65535.0  # 16-bit data Pillow widened to 32 bits
        return arr, None
    if mode == "F":
        arr = np.asarray(im)
        if arr.size and np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1:
            return arr, 1.0
        return arr, None
    if mode != "L":
        try:
            im = im.convert("L")  # drops alpha; palette and colour via BT.601 luma
        except ValueError:
            im = im.convert("RGB").convert("L")
    return np.asarray(im), 255.0


def scale_to_unit(arr: np.ndarray, white: float | None) -> np.ndarray:
    """Map raster values onto [0, 1] by the format's white value (or min..max)."""
    if white is None:
        return pixels.normalise_minmax(arr)
    return pixels.normalise_range(arr, 0.0, white)


def _draft_scale(before: tuple[int, int], after: tuple[int, int]) -> int:
    for scale in (8, 4, 2):
        if all(-(-b // scale) == a for b, a in zip(before, after)):
            return scale
    return 1


def _orientation(im: Image.Image) -> int:
    """The EXIF/TIFF Orientation tag, 1 (as stored) when absent or malformed."""
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
        return int(value) if int(value) in range(1, 9) else 1
    except (TypeError, ValueError, OSError, SyntaxError, struct.error):
        return 1  # a broken EXIF block should not cost the image


def _mcu_shape(im: Image.Image, scale: int) -> tuple[int, int]:
    """Rows and columns of one JPEG MCU in the (draft-scaled) output."""
    layers = getattr(im, "layer", None) or [("", 1, 1, 0)]
    if len(layers) == 1:  # a single-component scan codes one block per MCU
        h = v = 1
    else:
        h = max(layer[1] for layer in layers)
        v = max(layer[2] for layer in layers)
    return max(8 * v // scale, 1), max(8 * h // scale, 1)


def _ceil_to(n: int, step: int) -> int:
    return -(-n // step) * step


def recovered_fraction(
    fill: np.ndarray,
    mcu: tuple[int, int],
    scale: int = 1,
    shape: tuple[int, int] | None = None,
) -> float:
    """Share of a JPEG picture that precedes libjpeg's fill of a cut-off scan.

    ``fill`` marks the decoded pixels equal to the decoder's fill value and
    ``mcu`` is the MCU size in those pixels. Missing MCUs run, in MCU order,
    from an MCU boundary to the end of the picture: whole MCU rows at the
    bottom and the right part of the MCU row above; fill-coloured pixels off
    that grid are real content. A draft decode (``scale`` 2..8 of the
    original ``shape``) is measured in original pixels, so that the share
    does not depend on the scale.
    """
    rows, cols = fill.shape
    mcu_rows, mcu_cols = mcu
    full = np.asarray(fill.all(axis=1))
    top = 0 if full.all() else rows - int(np.argmin(full[::-1]))
    top = min(_ceil_to(top, mcu_rows), rows)  # whole fill rows start on the grid
    band, left = top, cols
    if top > 0:
        band = mcu_rows * ((top - 1) // mcu_rows)
        run = np.asarray(fill[band:top].all(axis=0))
        left = 0 if run.all() else cols - int(np.argmin(run[::-1]))
        left = min(_ceil_to(left, mcu_cols), cols)
    height, width = shape or (rows, cols)
    top, band = min(top * scale, height), min(band * scale, height)
    left = min(left * scale, width)
    missing = (height - top) * width + (top - band) * (width - left)
    return float(1.0 - missing / (height * width))


def _decode_pillow(
    fp: IO[bytes], fmt: str, target_size: int | None, truncated: bool = False
) -> XrayImage:
    warning = None
    with Image.open(fp, formats=[_PIL_FORMATS[fmt]]) as im:
        cols, rows = im.size
        check_size(rows, cols)
        mode = im.mode
        frames = int(getattr(im, "n_frames", 1) or 1)
        reduced = 1
        if fmt == "jpeg":
            # Decode straight to grey, and at 1/2..1/8 scale when allowed.
            im.draft("L", (target_size, target_size) if target_size else im.size)
            reduced = _draft_scale((cols, rows), im.size)
        im.load()
        if truncated:
            warning = _truncation_warning(im, reduced, (rows, cols))
        orientation = _orientation(im)
        arr, white = to_array(im)
    factor = pixels.reduction_factor(arr.shape, target_size)
    out = scale_to_unit(pixels.downsample(arr, factor), white)
    meta = ImageMeta(
        format=fmt,
        original_shape=(rows, cols),
        frames=frames,
        photometric=mode,
        bits_stored=_bits(mode),
        reduced_by=reduced * factor,
        warning=warning,
    )
    return XrayImage(pixels.orient(out, orientation), meta)


def _truncation_warning(im: Image.Image, scale: int, shape: tuple[int, int]) -> str:
    """The warning for a JPEG decoded past its end, or the error if too little."""
    # libjpeg decodes missing blocks as all-zero coefficients: flat mid-grey
    # (127 in the inverted CMYK Pillow reads).
    value = 127 if im.mode == "CMYK" else 128
    raw = np.asarray(im)
    fill = raw == value if raw.ndim == 2 else (raw == value).all(axis=2)
    share = recovered_fraction(fill, _mcu_shape(im, scale), scale, shape)
    percent = math.floor(round(share * 1000, 6)) / 10  # never rounds up to 99%
    if share < MIN_RECOVERED:
        raise UnreadableImageError("truncated file", f"{percent}% of the picture")
    return (
        f"truncated JPEG: {percent}% of the picture decoded, "
        "file ends before its end-of-image marker"
    )


def _load_pillow(fp: IO[bytes], fmt: str, target_size: int | None) -> XrayImage:
    start = fp.tell()
    try:
        return _decode_pillow(fp, fmt, target_size)
    except OSError as exc:
        if fmt != "jpeg" or "truncated" not in str(exc).lower():
            raise
        error = _classify(exc)
    # libjpeg reads a cut-off scan up to an end-of-image marker and fills the
    # rest; appending one (to a copy) decodes it without touching Pillow's
    # process-wide LOAD_TRUNCATED_IMAGES, which thread pools would race on.
    fp.seek(start)
    try:
        return _decode_pillow(io.BytesIO(fp.read() + _EOI), fmt, target_size, True)
    except _DECODE_ERRORS:
        raise error from None


def _load_j2k(data: bytes, target_size: int | None) -> XrayImage:
    header = j2k.parse_header(data)
    if header is None:
        raise UnreadableImageError("corrupt data", "no JPEG 2000 main header")
    check_size(header.rows, header.cols, header.components)
    levels = j2k.reduce_levels(header, target_size)
    try:
        arr = j2k.decode_codestream(data, header, levels)
    except (OSError, ValueError):
        if not levels:
            raise
        levels = 0  # e.g. image offsets make the reduced size unpredictable
        arr = j2k.decode_codestream(data, header, levels)
    factor = pixels.reduction_factor(arr.shape[:2], target_size)
    small = pixels.downsample(arr, factor)
    if header.components == 3:
        out = pixels.normalise_range(pixels.to_grey(small), 0.0, 255.0)
    elif header.signed:
        out = pixels.normalise_minmax(small)
    else:
        out = pixels.normalise_range(small, 0.0, 2**header.precision - 1)
    meta = ImageMeta(
        format="jp2",
        original_shape=(header.rows, header.cols),
        photometric="RGB" if header.components == 3 else "L",
        bits_stored=header.precision,
        reduced_by=2**levels * factor,
    )
    return XrayImage(out, meta)


def load_raster(fp: IO[bytes], fmt: str, target_size: int | None = None) -> XrayImage:
    """Decode a PNG/JPEG/TIFF/JPEG 2000 file object into an :class:`XrayImage`.

    Truncated data is an error, except a JPEG that ends early with at least
    :data:`MIN_RECOVERED` of its picture decoded: that one is returned with
    ``meta.warning`` set (Pillow's ``LOAD_TRUNCATED_IMAGES`` is left alone).
    EXIF/TIFF orientation is applied to the output.
    """
    try:
        if fmt == "jp2":
            image = _load_j2k(fp.read(), target_size)
        else:
            image = _load_pillow(fp, fmt, target_size)
    except UnreadableImageError:
        raise
    except _DECODE_ERRORS as exc:
        raise _classify(exc) from None
    return XrayImage(np.ascontiguousarray(image.pixels, dtype=np.float32), image.meta)
