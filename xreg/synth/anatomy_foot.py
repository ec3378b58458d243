"""Foot and ankle phantoms (dorsoplantar/AP and lateral).

A foot shows every toe tip; an ankle is the same lateral foot zoomed on the
talus (toes outside the image) or a mortise view of the distal tibia and fibula.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from xreg.synth._canvas import (
    Canvas,
    Point,
    affine,
    bone_ellipse,
    bone_poly,
    capsule,
    ellipse,
    long_bone,
    soft,
)
from xreg.synth.anatomy import Anchors, framed
from xreg.synth.anatomy_limbs import ray

Gen = np.random.Generator


def draw_foot(cv: Canvas, view: str, pr: Gen, vr: Gen, fracture: str | None = None) -> Anchors:
    """Dorsoplantar/lateral foot: tarsals, metatarsals, phalanges, every toe tip inside."""
    k = pr.uniform(0.92, 1.06)
    if view == "LAT":
        a = framed(cv, affine(0, 1.0, (0, 0.05)), lambda: _foot_lat(cv, k, vr))
        a.shaft = ((0.5, 0.565), (0.72, 0.645), 0.016)  # first metatarsal, not the tibia
        return a
    return framed(cv, affine(0, 1.3, (0, -0.02), center=(0.5, 0.6)), lambda: _foot_dp(cv, k, vr))


def _foot_dp(cv: Canvas, k: float, vr: Gen) -> Anchors:
    soft(cv, ellipse((0.5, 0.62), 0.13 * k, 0.3, 0), 0.9)
    bone_ellipse(cv, (0.535, 0.83), 0.065 * k, 0.085, 5, 1.0)  # calcaneus
    bone_ellipse(cv, (0.48, 0.765), 0.055 * k, 0.06, -10, 0.9)  # talus
    bone_ellipse(cv, (0.45, 0.7), 0.05 * k, 0.027, -15, 0.85)  # navicular
    bone_ellipse(cv, (0.555, 0.695), 0.04 * k, 0.04, 10, 0.85)  # cuboid
    for c, rx, ry in [
        ((0.415, 0.64), 0.024, 0.032),
        ((0.455, 0.632), 0.018, 0.026),
        ((0.49, 0.638), 0.019, 0.026),
    ]:
        bone_ellipse(cv, c, rx * k, ry, 0, 0.8)  # cuneiforms
    bases = [(0.415, 0.6), (0.455, 0.6), (0.49, 0.605), (0.525, 0.62), (0.56, 0.64)]
    fan = [-6.0, -2.0, 2.0, 6.0, 11.0]
    mt = [0.16, 0.19, 0.18, 0.17, 0.15]
    spread = vr.uniform(0.7, 1.2)
    for i, (b, f, ln) in enumerate(zip(bases, fan, mt)):
        a = f * spread
        if i == 0:
            tip = ray(
                cv,
                b,
                [a, a + 4, a + 6],
                [ln * k, 0.065 * k, 0.045 * k],
                [0.021 * k, 0.016 * k, 0.013 * k],
                0.9,
                0.7,
            )
            bone_ellipse(cv, (b[0] - 0.008, b[1] - ln * k + 0.02), 0.009, 0.011, 0, 0.5)
            bone_ellipse(cv, (b[0] + 0.014, b[1] - ln * k + 0.02), 0.009, 0.011, 0, 0.5)
        else:
            tip = ray(
                cv,
                b,
                [a, a * 1.3, a * 1.4, a * 1.5],
                [ln * k, 0.05 * k, 0.025 * k, 0.02 * k],
                [0.011 * k, 0.009 * k, 0.008 * k, 0.007 * k],
                0.8,
                0.6,
            )
    del tip
    return Anchors(
        shaft=((0.415, 0.6), (0.405, 0.44), 0.021 * k),
        joint=(0.47, 0.7),
        limb=[((0.5, 0.9), (0.5, 0.35), 0.13 * k)],
    )


def _foot_lat(cv: Canvas, k: float, vr: Gen) -> Anchors:
    """Lateral foot, heel left, toes right; also the base of the lateral ankle."""
    long_bone(cv, (0.33, 0.46), (0.31, -0.8), 0.045, 0.04, 1.1)  # tibia
    long_bone(cv, (0.29, 0.5), (0.28, -0.8), 0.018, 0.016, 0.8)  # fibula, posterior
    bone_poly(cv, np.array([[0.27, 0.42], [0.39, 0.42], [0.385, 0.46], [0.28, 0.47]]), 1.0)
    soft(cv, capsule((0.31, 0.5), (0.3, -0.8), 0.085, 0.08), 0.65)
    soft(
        cv,
        np.array(
            [
                [0.15, 0.55],
                [0.2, 0.48],
                [0.42, 0.46],
                [0.62, 0.54],
                [0.86, 0.63],
                [0.88, 0.69],
                [0.6, 0.7],
                [0.25, 0.7],
                [0.14, 0.66],
            ]
        ),
        0.8,
    )
    bone_ellipse(cv, (0.34, 0.51), 0.07 * k, 0.045, 8, 0.95)  # talus dome
    bone_ellipse(cv, (0.27, 0.585), 0.1 * k, 0.055, 12, 1.0)  # calcaneus
    bone_ellipse(cv, (0.43, 0.535), 0.035 * k, 0.032, 20, 0.85)  # navicular
    bone_ellipse(cv, (0.39, 0.6), 0.045 * k, 0.03, 10, 0.8)  # cuboid
    bone_ellipse(cv, (0.48, 0.555), 0.04 * k, 0.03, 20, 0.8)  # cuneiforms
    for j in range(5):
        y0, dy = 0.56 + j * 0.012, j * 0.006
        b = (0.5, y0)
        t = (0.5 + 0.23 * k, 0.645 + dy)
        long_bone(cv, b, t, 0.014, 0.011, 0.55, wall=0.4)
        ph = ray(
            cv,
            (t[0] + 0.01, t[1] - 0.005),
            [80, 100, 110],
            [0.045 * k, 0.025 * k, 0.02 * k],
            [0.009, 0.008, 0.007],
            0.5,
            0.3,
        )
        del ph
    return Anchors(
        shaft=((0.33, 0.44), (0.32, -0.2), 0.045),
        joint=(0.34, 0.5),
        limb=[((0.31, 0.5), (0.3, -0.8), 0.085)],
        extra={"fibula": (0.29, 0.47)},
    )


def draw_ankle(cv: Canvas, view: str, pr: Gen, vr: Gen, fracture: str | None = None) -> Anchors:
    """Mortise AP or lateral ankle: distal tibia/fibula, talus, calcaneus; toes cropped."""
    k = pr.uniform(0.92, 1.06)
    if view == "LAT":
        zoom = vr.uniform(1.9, 2.3)
        m = affine(0, zoom, (0.14, 0.02), center=(0.34, 0.5))
        with cv.frame(m):
            a = _foot_lat(cv, k, vr)
        tr = _transformer(m)
        return Anchors(
            shaft=(tr(a.shaft[0]), tr(a.shaft[1]), a.shaft[2] * zoom),
            joint=tr(a.joint),
            limb=[(tr((0.31, 0.5)), tr((0.3, -0.8)), 0.085 * zoom)],
        )
    soft(cv, capsule((0.5, 0.72), (0.5, -0.2), 0.2 * k, 0.17 * k), 0.7)
    soft(cv, ellipse((0.5, 0.85), 0.18 * k, 0.12), 0.7)
    long_bone(cv, (0.47, 0.5), (0.47, -0.2), 0.085 * k, 0.065 * k, 1.2)  # tibia
    bone_poly(
        cv,
        np.array(
            [
                [0.37, 0.48],
                [0.58, 0.48],
                [0.575, 0.59],
                [0.42, 0.595],
                [0.40, 0.67],
                [0.375, 0.655],
                [0.365, 0.56],
            ]
        ),
        1.0,
    )  # plafond + medial malleolus
    long_bone(cv, (0.605, 0.66), (0.58, -0.2), 0.024 * k, 0.02 * k, 0.9, wall=0.4)  # fibula
    bone_ellipse(cv, (0.61, 0.64), 0.03 * k, 0.05, -5, 0.9)  # lateral malleolus
    bone_poly(
        cv,
        np.array(
            [
                [0.41, 0.64],
                [0.44, 0.605],
                [0.5, 0.6],
                [0.57, 0.61],
                [0.595, 0.66],
                [0.58, 0.72],
                [0.42, 0.72],
            ]
        ),
        0.95,
    )  # talus
    bone_ellipse(cv, (0.5, 0.765), 0.095 * k, 0.06, 0, 0.6)  # calcaneus
    return Anchors(
        shaft=((0.6, 0.62), (0.585, 0.1), 0.025 * k),
        joint=(0.49, 0.61),
        limb=[((0.5, 0.75), (0.5, -0.2), 0.19 * k)],
        extra={"tibia": (0.47, 0.5)},
    )


def _transformer(m: np.ndarray) -> Callable[[Point], Point]:
    def tr(p: Point) -> Point:
        q = m @ np.array([p[0], p[1], 1.0])
        return (float(q[0]), float(q[1]))

    return tr
