"""Decode PNG, JPEG, TIFF and JPEG 2000 files through Pillow."""

from __future__ import annotations

import struct
import zlib
from typing import IO

import numpy as np
from PIL import Image, UnidentifiedImageError

from xreg.errors import UnreadableImageError
from xreg.io import j2k, pixels
from xreg.io._records import ImageMeta, XrayImage, check_size

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


def _load_pillow(fp: IO[bytes], fmt: str, target_size: int | None) -> XrayImage:
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
    )
    return XrayImage(pixels.orient(out, orientation), meta)


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

    Truncated data is an error (Pillow's ``LOAD_TRUNCATED_IMAGES`` is left
    alone); EXIF/TIFF orientation is applied to the output.
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
