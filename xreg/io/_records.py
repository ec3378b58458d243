"""The records image loading returns, and the size guard shared by every decoder."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from xreg.errors import UnreadableImageError

#: Decompression-bomb guard: images with more pixels than this (per frame,
#: all samples counted) are refused before any pixel data is decoded.
MAX_PIXELS: int = 150_000_000


@dataclass(frozen=True)
class ImageMeta:
    """What the decoder learned about a file besides its pixels.

    ``format`` is ``"dicom"``, ``"png"``, ``"jpeg"``, ``"tiff"`` or ``"jp2"``;
    ``photometric`` the DICOM Photometric Interpretation or the Pillow mode;
    ``reduced_by`` the whole factor decoding shrank the image by;
    ``warning`` a short note when the pixels were recovered from a damaged
    file (e.g. ``"truncated JPEG: 99.6% of the picture decoded, ..."``), else
    ``None``.

    ``dicom`` holds selected header fields as strings (see
    :data:`xreg.io.dicom.DICOM_FIELDS`); it includes ``PatientID``, which the
    caller must hash and never log.
    """

    format: str
    original_shape: tuple[int, int]
    frames: int = 1
    photometric: str = ""
    bits_stored: int = 8
    reduced_by: int = 1
    dicom: Mapping[str, str] = field(default_factory=dict)
    warning: str | None = None


@dataclass(frozen=True)
class XrayImage:
    """A decoded radiograph: float32 2-D pixels in [0, 1], bone bright."""

    pixels: np.ndarray
    meta: ImageMeta


def check_size(rows: int, cols: int, samples: int = 1) -> None:
    """Refuse an image whose header claims more than :data:`MAX_PIXELS` pixels."""
    if rows <= 0 or cols <= 0:
        raise UnreadableImageError("corrupt data", f"image dimensions {rows}x{cols}")
    if rows * cols * max(samples, 1) > MAX_PIXELS:
        raise UnreadableImageError(
            "image too large", f"{rows}x{cols}x{samples} exceeds {MAX_PIXELS} pixels"
        )
