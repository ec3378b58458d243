"""Find radiographs by content and decode them into bone-bright float32 pixels.

Modules: ``detect`` (magic bytes, folder walk), ``dicom`` and ``raster``
(decoders), ``j2k`` (reduced-resolution JPEG 2000), ``pixels`` (pure array
functions). Only the names below are public.
"""

from __future__ import annotations

from xreg.io._records import MAX_PIXELS, ImageMeta, XrayImage
from xreg.io.detect import IMAGE_SUFFIXES, find_images, sniff_format
from xreg.io.load import load_image, try_load_image

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_PIXELS",
    "ImageMeta",
    "XrayImage",
    "find_images",
    "load_image",
    "sniff_format",
    "try_load_image",
]
