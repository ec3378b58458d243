"""Site augmentation step ``hardware``: paste metal onto a real film of any class.

The only hardware-rich source is a tightly framed shoulder-implant collection,
so a model learns "metal = shoulder" and files a knee prosthesis from another
hospital as a shoulder. Pasting the phantom renderer's hardware (screws,
plates, nails, k-wires, suture anchors, hip and knee prostheses; drawn by
:mod:`xreg.synth.hardware` into a :class:`~xreg.synth._canvas.Canvas`) onto
films of every body part breaks that shortcut. The training loop marks every
film that got metal as ``instrument`` (see ``xreg/train/loop.py``).

Metal is drawn at a random position, scale and angle; it is the brightest
thing on a radiograph (bone bright): a nearly uniform level between the film's
99.5th percentile and 1.0, with a rim softened by a 0.5-1.5 px blur. The step
is pure: ``(image, rng) -> image``, float32 ``(H, W)`` in [0, 1].
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from xreg.errors import ConfigError
from xreg.synth._canvas import Canvas, affine
from xreg.synth.anatomy import Anchors
from xreg.synth.hardware import draw_instrument

__all__ = ["KINDS", "hardware"]

Image = NDArray[np.float32]

# Canonical anchors (the unit square, y down), shaped like the renderer's: a long
# bone from (0.5, 0.25) to (0.5, 0.95), a hip (head, neck, femoral shaft) and a knee.
_SHAFT = ((0.5, 0.25), (0.5, 0.95), 0.06)
_HIP = ((0.45, 0.42), 0.062, (0.35, 0.52), (0.315, 0.6), (0.35, 1.2))
_KNEE = ((0.5, 0.535), 0.075, 0.59, 0.24)

#: kind -> (draw share, canvas scale range: film side per canonical unit, centre).
#: Screws and k-wires come out small and thin, plates and nails elongated (up to
#: about half the side), prostheses large (up to about 40% of the side).
KINDS: dict[str, tuple[float, tuple[float, float], tuple[float, float]]] = {
    "screws": (0.2, (0.35, 0.9), (0.5, 0.3)),
    "plate": (0.2, (0.5, 1.0), (0.5, 0.45)),
    "nail": (0.12, (0.35, 0.7), (0.5, 0.6)),
    "kwire": (0.15, (0.4, 1.0), (0.5, 0.3)),
    "anchor": (0.08, (0.6, 1.4), (0.5, 0.3)),
    "hip_prosthesis": (0.125, (0.45, 0.72), (0.42, 0.62)),
    "knee_prosthesis": (0.125, (0.9, 1.6), (0.5, 0.62)),
}
_NAMES = tuple(KINDS)
_SHARES = np.array([KINDS[k][0] for k in _NAMES]) / sum(KINDS[k][0] for k in _NAMES)


def _cv2() -> Any:
    try:
        import cv2
    except ImportError:  # pragma: no cover - the train extra has it
        raise ConfigError('site augmentation needs OpenCV: pip install "xreg[train]"') from None
    cv2.setNumThreads(1)
    return cv2


class _FastCanvas(Canvas):
    """The renderer's canvas with polygons filled by OpenCV (several times faster than
    Pillow at a film's size); same additive semantics, anti-aliasing aside."""

    def poly(self, layer: str, pts: NDArray[np.float64], value: float = 1.0,
             maximum: bool = False) -> None:
        cv2 = _cv2()
        px = self.to_pixels(pts)
        n = self.size
        x0, y0 = np.maximum(np.floor(px.min(0)).astype(int) - 1, 0)
        x1, y1 = np.minimum(np.ceil(px.max(0)).astype(int) + 2, n)
        if x0 >= x1 or y0 >= y1:
            return
        buf = np.zeros((y1 - y0, x1 - x0), np.uint8)
        local = np.round((px - (x0, y0)) * 16).astype(np.int32)  # 4 bits of sub-pixel
        cv2.fillPoly(buf, [local], 1, cv2.LINE_8, 4)
        dst = self.layers[layer][y0:y1, x0:x1]
        if maximum:
            np.maximum(dst, buf * np.float32(value), out=dst)
        else:
            dst += buf * np.float32(value)


def _anchors(kind: str, rng: np.random.Generator) -> Anchors:
    extra: dict[str, Any] = {"head": ((0.5, 0.3), 0.1)}
    if kind == "hip_prosthesis" or (kind in ("screws", "plate", "nail") and rng.random() < 0.25):
        extra["hip"] = _HIP  # cannulated screws, a sliding hip screw, a cephalomedullary nail
    if kind == "knee_prosthesis":
        extra["knee"] = _KNEE
    shaft = (_HIP[3], _HIP[4], 0.058) if "hip" in extra else _SHAFT
    return Anchors(shaft=shaft, joint=(0.5, 0.25), extra=extra)


def _content_point(x: Image, rng: np.random.Generator) -> tuple[float, float]:
    """A point (x, y in pixels) on the film rather than its border, if one is found."""
    h, w = x.shape
    level = float(np.median(x[::4, ::4]))
    for _ in range(6):
        px, py = rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h
        if x[int(py), int(px)] >= level:
            break
    return px, py


def _draw(cv: Canvas, kind: str, rng: np.random.Generator, s0: float, s1: float,
          centre: tuple[float, float], target: tuple[float, float],
          shape: tuple[int, int]) -> NDArray[np.float32]:
    scale = rng.uniform(s0, s1) * min(shape) / cv.size
    m = affine(float(rng.uniform(-180, 180)), scale,
               (target[0] - centre[0], target[1] - centre[1]), centre,
               mirror=bool(rng.random() < 0.5))
    with cv.frame(m):
        draw_instrument(cv, kind, "LAT" if rng.random() < 0.3 else "AP", _anchors(kind, rng), rng)
    layer = cv.layers["metal"][:shape[0], :shape[1]]
    return np.clip(layer, 0.0, 1.0, out=layer)


def hardware(x: Image, rng: np.random.Generator) -> Image:
    """Paste one piece of hardware (sometimes two) at metal brightness onto the film."""
    cv2 = _cv2()
    x = np.asarray(x, np.float32)
    h, w = x.shape
    n = max(h, w)
    cv = _FastCanvas(n)
    pieces = 2 if rng.random() < 0.2 else 1
    for _ in range(pieces):
        kind = str(rng.choice(_NAMES, p=_SHARES))
        _, (s0, s1), centre = KINDS[kind]
        px, py = _content_point(x, rng)
        _draw(cv, kind, rng, s0, s1, centre, (px / n, py / n), (h, w))
    mask = cv.layers["metal"][:h, :w]
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):  # drawn off the film (cannot happen from the centre, but be sure)
        return x.copy()
    # Work in the pieces' box (plus the blur's reach) only.
    y0, y1 = max(rows[0] - 4, 0), min(rows[-1] + 5, h)
    x0, x1 = max(cols[0] - 4, 0), min(cols[-1] + 5, w)
    box = np.ascontiguousarray(mask[y0:y1, x0:x1])
    alpha = np.maximum(cv2.GaussianBlur(box, (0, 0), float(rng.uniform(0.5, 1.5))), box)
    # A cached film may overshoot [0, 1] a little after resampling: clamp the reference.
    top = min(max(float(np.quantile(x[::2, ::2], 0.995)), 0.0), 1.0)
    level = rng.uniform(top + 0.3 * (1.0 - top), 1.0)
    # Nearly uniform: a faint gradient across the piece, as thickness varies.
    tilt = math.radians(float(rng.uniform(0, 360)))
    ramp = (math.cos(tilt) * np.arange(x1 - x0, dtype=np.float32)[None, :] / w
            + math.sin(tilt) * np.arange(y1 - y0, dtype=np.float32)[:, None] / h)
    value = level - np.float32(rng.uniform(0.0, 0.02)) * (ramp - ramp.min())
    out = x.copy()
    patch = out[y0:y1, x0:x1]
    out[y0:y1, x0:x1] = np.clip(patch + alpha * (value - patch), 0.0, 1.0)
    return out
