"""Thumbnails and previews of placed films, built on first request, cached by content.

Cached under ``OUT/_thumbs/<size>/<sha[:2]>/<sha>.jpg``, never inside the
class folders (a sort-layout folder must hold only films). Written to a temp
name and renamed, so a half-written thumbnail is never served.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from xreg.io import try_load_image

__all__ = ["THUMBS_DIR", "thumbnail"]

THUMBS_DIR = "_thumbs"


def thumbnail_path(out_root: Path, sha256: str, size: int) -> Path:
    return out_root / THUMBS_DIR / str(size) / sha256[:2] / f"{sha256}.jpg"


def thumbnail(out_root: Path, film: Path, sha256: str, size: int = 256) -> Path | str:
    """The cached JPEG of ``film`` whose longer side is ``size``; or why there is none."""
    target = thumbnail_path(out_root, sha256, size)
    if target.is_file():
        return target
    image = try_load_image(film, target_size=size)
    if isinstance(image, str):
        return image
    grey = (np.clip(image.pixels, 0, 1) * 255).round().astype(np.uint8)
    picture = Image.fromarray(grey, "L")
    picture.thumbnail((size, size), Image.Resampling.LANCZOS)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    picture.save(tmp, "JPEG", quality=85)
    tmp.replace(target)
    return target
