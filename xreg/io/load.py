"""``load_image``: route a file to the decoder its content calls for."""

from __future__ import annotations

import io
import os
from typing import IO

from xreg.errors import UnreadableImageError
from xreg.io._records import XrayImage
from xreg.io.detect import SNIFF_BYTES, sniff_format


def _decode(fp: IO[bytes], target_size: int | None) -> XrayImage:
    head = fp.read(SNIFF_BYTES)
    if not head:
        raise UnreadableImageError("empty file")
    fmt = sniff_format(head)
    if fmt is None:
        raise UnreadableImageError("not an image")
    fp.seek(0)
    if fmt == "dicom":
        from xreg.io.dicom import load_dicom  # pydicom is only imported when needed

        return load_dicom(fp, target_size)
    from xreg.io.raster import load_raster

    return load_raster(fp, fmt, target_size)


def load_image(
    source: str | os.PathLike[str] | bytes, target_size: int | None = None
) -> XrayImage:
    """Decode a radiograph into float32 pixels in [0, 1], bone bright.

    ``source`` is a path or the whole file content. With ``target_size`` the
    image is decoded or shrunk by a whole factor (JPEG draft, JPEG 2000
    resolution levels, block means) while its shorter side stays at least
    ``target_size``; ``meta.reduced_by`` says by how much. Raises
    :class:`~xreg.errors.UnreadableImageError` with a short reason.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode(io.BytesIO(source), target_size)
    try:
        # One read into memory: decoders then work on views of these bytes.
        with open(source, "rb") as f:
            data = f.read()
        return _decode(io.BytesIO(data), target_size)
    except IsADirectoryError:
        raise UnreadableImageError("not an image", "a directory") from None
    except FileNotFoundError:
        raise UnreadableImageError("file not found") from None
    except PermissionError:
        raise UnreadableImageError("permission denied") from None


def try_load_image(
    source: str | os.PathLike[str] | bytes, target_size: int | None = None
) -> XrayImage | str:
    """:func:`load_image`, or the short reason it failed, for callers that go on.

    A folder holds odd files: one that cannot be decoded (or read, or that
    crashes its decoder) must cost that file, never the run.
    """
    try:
        return load_image(source, target_size)
    except UnreadableImageError as exc:
        return exc.reason
    except OSError as exc:
        if exc.errno is not None:  # the disk said no; a decoder's OSError has no errno
            return f"cannot read file ({exc.strerror})"
        return f"decoder failed ({type(exc).__name__})"
    except (MemoryError, RecursionError):
        return "image too large"
    except Exception as exc:  # noqa: BLE001 - see above
        return f"decoder failed ({type(exc).__name__})"
