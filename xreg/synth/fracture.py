"""Hip fractures: how the fragments move and how the break line looks.

The displacement comes from the *patient* generator, so the AP and lateral
views of one patient show the same fracture. The break itself is an irregular
dark gap (cortical break) with an optional bright impaction band, and is also
drawn into the ``fracture`` layer that becomes ``masks["fracture"]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xreg.synth._canvas import Canvas, Point, affine, band


@dataclass(frozen=True)
class FractureParams:
    """Per-patient displacement of the distal fragment relative to the head."""

    kind: str  # "neck" or "intertrochanteric"
    angulation: float  # degrees the distal fragment rotates (varus/external rotation)
    shortening: float  # canonical units the shaft rides up
    shift: float  # sideways translation at the fracture
    impacted: bool  # bright band where the fragments overlap
    roughness: float  # amplitude of the irregular break line


def fracture_params(kind: str, pr: np.random.Generator) -> FractureParams:
    """Draw one patient's fracture displacement (Garden-like spread of severity)."""
    severity = pr.uniform(0.35, 1.0)
    return FractureParams(
        kind=kind,
        angulation=float(pr.choice([-1, 1]) * severity * pr.uniform(6, 16)),
        shortening=float(severity * pr.uniform(0.012, 0.035)),
        shift=float(severity * pr.uniform(-0.02, 0.02)),
        impacted=bool(pr.random() < 0.4),
        roughness=float(pr.uniform(0.004, 0.01)),
    )


def fragment_transform(fp: FractureParams, pivot: Point, up: Point) -> np.ndarray:
    """Canonical transform that displaces the distal fragment about ``pivot``.

    ``up`` is the unit shaft direction pointing towards the head; shortening
    moves the shaft along it.
    """
    sx = up[0] * fp.shortening + up[1] * fp.shift
    sy = up[1] * fp.shortening - up[0] * fp.shift
    return affine(fp.angulation, 1.0, (sx, sy), center=pivot)


def draw_break(
    cv: Canvas, a: Point, b: Point, fp: FractureParams, rng: np.random.Generator
) -> None:
    """Irregular cortical break from ``a`` to ``b`` plus its mask band."""
    n = 14
    t = np.linspace(0, 1, n)[:, None]
    pts = (1 - t) * np.asarray(a) + t * np.asarray(b)
    d = np.asarray(b, float) - np.asarray(a, float)
    nrm = np.array([-d[1], d[0]]) / (np.hypot(*d) + 1e-9)
    wiggle = rng.normal(0, fp.roughness, n)
    wiggle[[0, -1]] *= 0.3
    pts = pts + wiggle[:, None] * nrm
    # extend the line a little beyond the cortex so both cortices are broken
    ext = d / (np.hypot(*d) + 1e-9) * 0.012
    pts = np.concatenate([[pts[0] - ext], pts, [pts[-1] + ext]])
    cv.poly("bone", band(pts, 0.009), -0.9)
    if fp.impacted:
        cv.poly("bone", band(pts + nrm * 0.012, 0.01), 0.5)
    cv.poly("fracture", band(pts, 0.06), 1.0, maximum=True)
