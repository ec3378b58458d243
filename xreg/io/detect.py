"""Recognise image files by content and walk folders for them."""

from __future__ import annotations

import os
import stat
import struct
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

#: Bytes to read from the start of a file to sniff its format.
SNIFF_BYTES = 512

#: Suffixes that make a file a candidate even when its content does not sniff
#: (so that a corrupt ``x.dcm`` is reported as unreadable, not silently ignored).
IMAGE_SUFFIXES = frozenset(
    {".dcm", ".dicom", ".dic", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".jp2", ".j2k"}
)

_DICOM_VRS = frozenset(
    b"AE AS AT CS DA DS DT FL FD IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV "
    b"TM UC UI UL UN UR US UT UV".split()
)
# Groups a dataset without preamble plausibly starts with: file meta, or
# (when the meta is missing) the identifying group 0008.
_FIRST_GROUPS = (0x0002, 0x0008)


def _looks_like_bare_dicom(head: bytes) -> bool:
    """A preamble-less DICOM stream starts with a group 0002/0008 element."""
    if len(head) < 8:
        return False
    for order in ("<", ">"):
        group, element = struct.unpack(order + "HH", head[:4])
        if group not in _FIRST_GROUPS or element > 0x2000:
            continue
        if head[4:6] in _DICOM_VRS:  # explicit VR
            return True
        if order == "<":  # implicit VR: a 32-bit length that fits a header value
            (length,) = struct.unpack("<I", head[4:8])
            if length <= 0x400 or length == 0xFFFFFFFF:
                return True
    return False


def sniff_format(head: bytes) -> str | None:
    """Name the image format of a file from its first bytes, or ``None``.

    Returns ``"dicom"``, ``"png"``, ``"jpeg"``, ``"tiff"`` or ``"jp2"`` (JPEG
    2000, boxed or bare codestream). Needs at least 132 bytes to see a DICOM
    preamble; preamble-less DICOM is recognised from its first element.
    """
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head.startswith((b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")):
        return "jp2"
    if _looks_like_bare_dicom(head):
        return "dicom"
    return None


def _is_under(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def _sniff_file(path: Path) -> str | None:
    try:
        with path.open("rb") as f:
            return sniff_format(f.read(SNIFF_BYTES))
    except OSError:
        return None


def _walk(
    folder: Path, excluded: Sequence[Path]
) -> Iterator[tuple[Path, os.stat_result]]:
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                if not excluded or not _is_under(path.resolve(), excluded):
                    yield from _walk(path, excluded)
                continue
            st = entry.stat()  # follows file symlinks; a broken link raises
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue  # symlink to a directory, fifo, socket...
        if excluded and _is_under(path.resolve(), excluded):
            continue
        yield path, st


def find_images(
    root: Path,
    *,
    exclude: Sequence[Path] = (),
    min_age: float = 0.0,
    now: float | None = None,
) -> list[Path]:
    """List image files under ``root`` in a deterministic (sorted) order.

    A file counts when its content sniffs as an image or its suffix is an
    image suffix. Hidden files and folders, anything under ``exclude``
    (compared after resolving), symlinked folders, and files modified less
    than ``min_age`` seconds before ``now`` (still being written) are skipped.
    """
    root = Path(root)
    excluded = [Path(p).resolve() for p in exclude]
    if _is_under(root.resolve(), excluded):
        return []
    now = time.time() if now is None else now
    found: list[Path] = []
    for path, st in _walk(root, excluded):
        if min_age > 0 and now - st.st_mtime < min_age:
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES or _sniff_file(path) is not None:
            found.append(path)
    return found
