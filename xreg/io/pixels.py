"""Pure pixel functions ``(array, ...) -> array`` shared by the DICOM and raster decoders.

Shrinking happens on the integer data first (cheap, no full-resolution float
copy); everything after that works on small float32 arrays.
"""

from __future__ import annotations

import numpy as np

# ITU-R BT.601 luma weights, the same ones Pillow's RGB -> L conversion uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def reduction_factor(shape: tuple[int, int], target_size: int | None) -> int:
    """Largest whole factor that keeps the shorter side at or above ``target_size``."""
    if not target_size or target_size <= 0:
        return 1
    return max(1, min(shape[0], shape[1]) // target_size)


def downsample(arr: np.ndarray, factor: int) -> np.ndarray:
    """Block-mean shrink of the first two axes by ``factor``; float32 out.

    Rows and columns that do not fill a whole block are dropped (at most
    ``factor - 1`` of each). Integers are summed in a wide integer type by
    strided adds, which is several times faster than a reshape-and-mean.
    """
    if factor <= 1:
        return arr
    rows, cols = arr.shape[0] // factor, arr.shape[1] // factor
    if rows == 0 or cols == 0:
        return arr.astype(np.float32)
    arr = arr[: rows * factor, : cols * factor]
    if arr.dtype.kind == "u" and arr.dtype.itemsize <= 2 and factor < 256:
        acc_type: type[np.generic] = np.uint32
    elif arr.dtype.kind == "i" and arr.dtype.itemsize <= 2 and factor < 256:
        acc_type = np.int32
    elif arr.dtype.kind in "iub":
        acc_type = np.int64
    else:
        acc_type = np.float32
    acc = arr[0::factor].astype(acc_type)
    for i in range(1, factor):
        acc += arr[i::factor]
    out = acc[:, 0::factor].copy()
    for j in range(1, factor):
        out += acc[:, j::factor]
    return out.astype(np.float32) * np.float32(1.0 / (factor * factor))


def to_grey(arr: np.ndarray) -> np.ndarray:
    """Luminance of an ``(rows, cols, 3)`` RGB array (any numeric type); float32 out."""
    if arr.ndim == 2:
        return arr.astype(np.float32, copy=False)
    rgb = arr[..., :3].astype(np.float32, copy=False)
    return np.asarray(rgb @ _LUMA, dtype=np.float32)


def rescale(arr: np.ndarray, slope: float = 1.0, intercept: float = 0.0) -> np.ndarray:
    """Linear modality transform ``arr * slope + intercept`` in float32."""
    out = arr.astype(np.float32)
    if slope != 1.0:
        out *= np.float32(slope)
    if intercept != 0.0:
        out += np.float32(intercept)
    return out


def window(
    arr: np.ndarray, center: float, width: float, function: str = "LINEAR"
) -> np.ndarray:
    """DICOM VOI windowing (PS3.3 C.11.2.1.2) onto [0, 1]; float32 out.

    ``function`` is the VOI LUT Function: LINEAR, LINEAR_EXACT or SIGMOID.
    Raises ``ValueError`` for a width the standard does not allow.
    """
    x = arr.astype(np.float32, copy=False)
    function = function.upper() or "LINEAR"
    if function == "SIGMOID":
        if width <= 0:
            raise ValueError(f"window width {width} must be > 0")
        with np.errstate(over="ignore"):
            out = 1.0 / (
                1.0 + np.exp(np.float32(-4.0 / width) * (x - np.float32(center)))
            )
        return np.asarray(out, dtype=np.float32)
    if function == "LINEAR_EXACT":
        if width <= 0:
            raise ValueError(f"window width {width} must be > 0")
        out = (x - np.float32(center)) * np.float32(1.0 / width) + np.float32(0.5)
    elif function == "LINEAR":
        if width < 1:
            raise ValueError(f"window width {width} must be >= 1")
        if width == 1:
            return (x > center - 0.5).astype(np.float32)
        out = (x - np.float32(center - 0.5)) * np.float32(
            1.0 / (width - 1)
        ) + np.float32(0.5)
    else:
        raise ValueError(f"unknown VOI LUT function {function}")
    return np.clip(out, 0.0, 1.0, out=out)


def normalise_range(arr: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``[low, high]`` linearly onto [0, 1], clipping outside; float32 out."""
    out = arr.astype(np.float32)
    if high <= low:
        return np.zeros_like(out)
    out -= np.float32(low)
    out /= np.float32(high - low)  # divide, not multiply: exact for x / 65535
    return np.clip(out, 0.0, 1.0, out=out)


def normalise_minmax(arr: np.ndarray) -> np.ndarray:
    """Map the image's own min..max onto [0, 1] (constant image -> zeros)."""
    if arr.size == 0:
        return arr.astype(np.float32)
    finite = arr if arr.dtype.kind in "iub" else np.nan_to_num(arr)
    return normalise_range(finite, float(finite.min()), float(finite.max()))


def invert(arr: np.ndarray) -> np.ndarray:
    """``1 - arr`` for [0, 1] data (MONOCHROME1 -> bone bright)."""
    return np.float32(1.0) - arr


def orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF/TIFF Orientation tag (1-8) exactly as ``ImageOps.exif_transpose`` does."""
    if orientation == 2:
        out = arr[:, ::-1]
    elif orientation == 3:
        out = arr[::-1, ::-1]
    elif orientation == 4:
        out = arr[::-1]
    elif orientation == 5:
        out = arr.swapaxes(0, 1)
    elif orientation == 6:
        out = np.rot90(arr, -1)
    elif orientation == 7:
        out = arr[::-1, ::-1].swapaxes(0, 1)
    elif orientation == 8:
        out = np.rot90(arr, 1)
    else:
        return arr
    return np.ascontiguousarray(out)
