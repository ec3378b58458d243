"""Drawing primitives for phantoms: shapes as polygons, drawn into thickness maps.

Anatomy is described in a *canonical frame* (the unit square, y down) and
every polygon goes through the canvas' affine transform on its way to pixels,
so pose, zoom and laterality cost nothing per pixel. Polygons are rasterised
with Pillow into their bounding box only and *added* to a float32 layer, so
overlapping bones sum like real projected thickness.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

Point = tuple[float, float]
LAYERS = ("soft", "bone", "metal", "distractor", "fracture")


def affine(
    angle_deg: float = 0.0,
    scale: float = 1.0,
    shift: Point = (0.0, 0.0),
    center: Point = (0.5, 0.5),
    mirror: bool = False,
) -> np.ndarray:
    """3x3 matrix: mirror/rotate/scale about ``center``, then translate by ``shift``."""
    a = np.deg2rad(angle_deg)
    c, s = np.cos(a) * scale, np.sin(a) * scale
    m = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    if mirror:
        m = m @ np.diag([-1.0, 1.0, 1.0])
    to0 = np.array([[1, 0, -center[0]], [0, 1, -center[1]], [0, 0, 1.0]])
    back = np.array([[1, 0, center[0] + shift[0]], [0, 1, center[1] + shift[1]], [0, 0, 1.0]])
    out: np.ndarray = back @ m @ to0
    return out


def ellipse(c: Point, rx: float, ry: float, angle_deg: float = 0.0, n: int = 40) -> np.ndarray:
    """Polygon of a rotated ellipse."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    a = np.deg2rad(angle_deg)
    return np.stack([c[0] + x * np.cos(a) - y * np.sin(a), c[1] + x * np.sin(a) + y * np.cos(a)], 1)


def capsule(p0: Point, p1: Point, r0: float, r1: float, n: int = 10) -> np.ndarray:
    """Polygon of a tapered capsule: radius ``r0`` at ``p0``, ``r1`` at ``p1``."""
    p0a, p1a = np.asarray(p0, float), np.asarray(p1, float)
    d = p1a - p0a
    length = float(np.hypot(*d)) or 1e-6
    d /= length
    nrm = np.array([-d[1], d[0]])
    t = np.linspace(-np.pi / 2, np.pi / 2, n)
    cap1 = p1a + r1 * (np.cos(t)[:, None] * d + np.sin(t)[:, None] * -nrm)
    cap0 = p0a + r0 * (-np.cos(t)[:, None] * d + np.sin(t)[:, None] * nrm)
    return np.concatenate([cap1, cap0])


def band(curve: np.ndarray, width: float | np.ndarray) -> np.ndarray:
    """Polygon of a thick polyline (``width`` may vary along the curve)."""
    curve = np.asarray(curve, float)
    tang = np.gradient(curve, axis=0)
    tang /= np.linalg.norm(tang, axis=1, keepdims=True) + 1e-9
    nrm = np.stack([-tang[:, 1], tang[:, 0]], 1)
    half = np.broadcast_to(np.asarray(width, float), (len(curve),))[:, None] / 2
    return np.concatenate([curve + nrm * half, (curve - nrm * half)[::-1]])


def arc(c: Point, rx: float, ry: float, a0: float, a1: float, n: int = 24) -> np.ndarray:
    """Points along an elliptical arc from angle ``a0`` to ``a1`` (degrees)."""
    t = np.deg2rad(np.linspace(a0, a1, n))
    return np.stack([c[0] + rx * np.cos(t), c[1] + ry * np.sin(t)], 1)


def bezier(p0: Point, p1: Point, p2: Point, n: int = 24) -> np.ndarray:
    """Points along a quadratic Bezier curve."""
    t = np.linspace(0, 1, n)[:, None]
    a, b, c = (np.asarray(p, float) for p in (p0, p1, p2))
    out: np.ndarray = (1 - t) ** 2 * a + 2 * (1 - t) * t * b + t**2 * c
    return out


def lerp(p0: Point, p1: Point, t: float) -> Point:
    """Point a fraction ``t`` of the way from ``p0`` to ``p1``."""
    return (p0[0] + (p1[0] - p0[0]) * t, p0[1] + (p1[1] - p0[1]) * t)


@dataclass
class Canvas:
    """Per-material thickness maps plus the current canonical-to-pixel transform."""

    size: int
    layers: dict[str, np.ndarray] = field(init=False)
    _stack: list[np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        self.layers = {k: np.zeros((self.size, self.size), np.float32) for k in LAYERS}
        self._stack = [np.diag([float(self.size), float(self.size), 1.0])]

    @contextmanager
    def frame(self, m: np.ndarray) -> Iterator[None]:
        """Draw the block's shapes through the extra canonical transform ``m``."""
        self._stack.append(self._stack[-1] @ m)
        try:
            yield
        finally:
            self._stack.pop()

    def to_pixels(self, pts: np.ndarray) -> np.ndarray:
        """Canonical points (N, 2) to pixel coordinates (N, 2)."""
        m = self._stack[-1]
        pts = np.asarray(pts, float)
        out: np.ndarray = pts @ m[:2, :2].T + m[:2, 2]
        return out

    def scale(self) -> float:
        """Pixels per canonical unit under the current transform."""
        return float(np.sqrt(abs(np.linalg.det(self._stack[-1][:2, :2]))))

    def poly(self, layer: str, pts: np.ndarray, value: float = 1.0, maximum: bool = False) -> None:
        """Add ``value`` inside polygon ``pts`` (canonical) to ``layer`` (or take the max)."""
        px = self.to_pixels(pts)
        self._raster(layer, px, value, maximum, lambda d, p: d.polygon(p, fill=255))

    def line(
        self, layer: str, pts: np.ndarray, width: float, value: float = 1.0, maximum: bool = False
    ) -> None:
        """Add a polyline of canonical ``width`` (drawn at least 1 px wide)."""
        px = self.to_pixels(pts)
        w = max(1, int(round(width * self.scale())))
        self._raster(
            layer,
            px,
            value,
            maximum,
            lambda d, p: d.line(p, fill=255, width=w, joint="curve"),
            pad=w,
        )

    def _raster(
        self, layer: str, px: np.ndarray, value: float, maximum: bool, draw_fn: object, pad: int = 1
    ) -> None:
        n = self.size
        x0, y0 = np.floor(px.min(0)).astype(int) - pad
        x1, y1 = np.ceil(px.max(0)).astype(int) + pad + 1
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, n), min(y1, n)
        if cx0 >= cx1 or cy0 >= cy1:
            return
        img = Image.new("L", (int(x1 - x0), int(y1 - y0)))
        local = (px - (x0, y0)).ravel().tolist()
        draw_fn(ImageDraw.Draw(img), local)  # type: ignore[operator]
        arr = np.asarray(img, np.float32)[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
        dst = self.layers[layer][cy0:cy1, cx0:cx1]
        if maximum:
            np.maximum(dst, arr * (value / 255.0), out=dst)
        else:
            dst += arr * (value / 255.0)


def bone_ellipse(
    cv: Canvas,
    c: Point,
    rx: float,
    ry: float,
    angle: float = 0.0,
    density: float = 1.0,
    cortex: float = 0.22,
) -> None:
    """A compact bone (carpal, tarsal, epiphysis): bright cortical rim, softer inside."""
    cv.poly("bone", ellipse(c, rx, ry, angle), density)
    k = 1.0 - cortex
    cv.poly("bone", ellipse(c, rx * k, ry * k, angle), -0.35 * density)


def long_bone(
    cv: Canvas, p0: Point, p1: Point, r0: float, r1: float, density: float = 1.0, wall: float = 0.32
) -> None:
    """A tubular bone shaft: cortex brighter at the rim, darker medullary canal."""
    cv.poly("bone", capsule(p0, p1, r0, r1), density)
    k = 1.0 - wall
    q0, q1 = lerp(p0, p1, 0.06), lerp(p0, p1, 0.94)
    cv.poly("bone", capsule(q0, q1, r0 * k, r1 * k), -0.65 * density)


def smooth(pts: np.ndarray, rounds: int = 2) -> np.ndarray:
    """Chaikin corner cutting: a closed polygon with rounded corners."""
    p = np.asarray(pts, float)
    for _ in range(rounds):
        q = np.roll(p, -1, axis=0)
        p = np.stack([0.75 * p + 0.25 * q, 0.25 * p + 0.75 * q], 1).reshape(-1, 2)
    return p


def bone_poly(cv: Canvas, pts: np.ndarray, density: float = 1.0, cortex: float = 0.15) -> None:
    """An irregular flat bone from a polygon (corners rounded): rim brighter than inside."""
    pts = smooth(pts)
    c = pts.mean(0)
    cv.poly("bone", pts, density)
    cv.poly("bone", c + (pts - c) * (1.0 - cortex), -0.35 * density)


def rrect(
    c: Point, w: float, h: float, angle: float = 0.0, p: float = 5.0, n: int = 40
) -> np.ndarray:
    """Rounded rectangle (superellipse) of full width ``w`` and height ``h``."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    ct, st = np.cos(t), np.sin(t)
    x = w / 2 * np.sign(ct) * np.abs(ct) ** (2 / p)
    y = h / 2 * np.sign(st) * np.abs(st) ** (2 / p)
    a = np.deg2rad(angle)
    return np.stack([c[0] + x * np.cos(a) - y * np.sin(a), c[1] + x * np.sin(a) + y * np.cos(a)], 1)


def soft(cv: Canvas, pts: np.ndarray, thickness: float) -> None:
    """Soft-tissue envelope: the union of envelopes, ``thickness`` relative to a thigh."""
    pts = smooth(pts, 3) if len(pts) < 16 else pts
    cv.poly("soft", pts, thickness, maximum=True)
