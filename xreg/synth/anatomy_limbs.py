"""Hand, wrist, elbow and knee phantoms (AP and lateral).

Boundary rules are encoded in the framing: a hand shows every fingertip, a
wrist is the same hand zoomed on the carpus so the fingertips fall outside
the image (foot and ankle do the same in ``anatomy_foot``).
"""

from __future__ import annotations

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

Gen = np.random.Generator


def _dir(angle: float) -> np.ndarray:
    a = np.deg2rad(angle)
    return np.array([np.sin(a), -np.cos(a)])


def ray(
    cv: Canvas,
    base: Point,
    angles: list[float],
    lengths: list[float],
    radii: list[float],
    density: float = 0.8,
    tissue: float = 0.6,
) -> Point:
    """A chain of small tubular bones (metacarpal + phalanges); returns the tip."""
    p = np.asarray(base, float)
    start = p.copy()
    for ang, ln, r in zip(angles, lengths, radii):
        q = p + _dir(ang) * ln
        long_bone(cv, tuple(p), tuple(q), r * 1.25, r * 0.95, density, wall=0.4)
        bone_ellipse(cv, tuple(q - _dir(ang) * r * 0.3), r * 1.2, r * 0.8, ang, 0.35)
        p = q + _dir(ang) * r * 0.9  # joint space
    tip = p + _dir(angles[-1]) * radii[-1] * 1.2
    soft(cv, capsule(tuple(start), tuple(tip), radii[0] * 2.6, radii[-1] * 1.9), tissue)
    return (float(tip[0]), float(tip[1]))


def _forearm_distal(cv: Canvas, lat: bool, k: float) -> tuple[Point, Point]:
    """Distal radius and ulna meeting the carpus near y=0.76; returns radius shaft ends."""
    if lat:
        long_bone(cv, (0.49, 0.79), (0.50, 1.3), 0.046 * k, 0.036 * k, 1.0)
        long_bone(cv, (0.515, 0.80), (0.52, 1.3), 0.026 * k, 0.024 * k, 0.9)
        bone_ellipse(cv, (0.49, 0.785), 0.05 * k, 0.024 * k, -8, 1.0)
    else:
        long_bone(cv, (0.43, 0.8), (0.44, 1.3), 0.05 * k, 0.034 * k, 1.0)
        bone_poly(cv, np.array([[0.38, 0.775], [0.47, 0.765], [0.475, 0.81], [0.39, 0.82]]), 0.9)
        long_bone(cv, (0.565, 0.805), (0.56, 1.3), 0.027 * k, 0.022 * k, 0.9)
        bone_ellipse(cv, (0.565, 0.795), 0.028 * k, 0.02 * k, 0, 0.9)
    soft(cv, capsule((0.49, 0.74), (0.5, 1.3), 0.12 * k, 0.12 * k), 0.85)
    return (0.43, 0.8) if not lat else (0.49, 0.79), (0.44, 1.3)


_CARPALS_AP = [
    ((0.43, 0.745), 0.032, 0.018, -35),
    ((0.485, 0.75), 0.022, 0.02, 0),
    ((0.53, 0.745), 0.019, 0.017, 10),
    ((0.55, 0.73), 0.012, 0.012, 0),
    ((0.405, 0.70), 0.022, 0.019, -20),
    ((0.445, 0.698), 0.017, 0.016, 0),
    ((0.487, 0.70), 0.021, 0.03, 0),
    ((0.528, 0.702), 0.022, 0.026, 10),
]


def draw_hand(cv: Canvas, view: str, pr: Gen, vr: Gen, fracture: str | None = None) -> Anchors:
    """PA/lateral hand: carpals, metacarpals, phalanges, every fingertip inside."""
    k = pr.uniform(0.92, 1.08)
    return framed(
        cv, affine(0, 1.3, (0, 0.03), center=(0.5, 0.62)), lambda: _hand(cv, view, pr, vr, k)
    )


def _hand(cv: Canvas, view: str, pr: Gen, vr: Gen, k: float) -> Anchors:
    lat = view == "LAT"
    r0, r1 = _forearm_distal(cv, lat, k)
    spread = vr.uniform(0.6, 1.3)
    finger = None
    if not lat:
        for c, rx, ry, a in _CARPALS_AP:
            bone_ellipse(cv, c, rx * k * 1.15, ry * k * 1.2, a, 0.8)
        soft(cv, ellipse((0.49, 0.62), 0.12 * k, 0.12, 0), 0.8)
        bases = [(0.452, 0.675), (0.49, 0.672), (0.525, 0.675), (0.556, 0.68)]
        fan = [-7.0, 0.0, 6.0, 12.0]
        lens = [
            (0.165, 0.1, 0.06, 0.042),
            (0.16, 0.108, 0.068, 0.044),
            (0.152, 0.1, 0.064, 0.042),
            (0.135, 0.082, 0.048, 0.038),
        ]
        for i, (b, f, ln) in enumerate(zip(bases, fan, lens)):
            ang = f * spread
            a4 = [ang, ang * 1.5, ang * 1.7, ang * 1.8]
            tip = ray(cv, b, a4, [x * k for x in ln], [0.013 * k, 0.011 * k, 0.0085 * k, 0.007 * k])
            if i == 2:
                finger = ((b[0] + tip[0]) / 2 * 0.7 + tip[0] * 0.3, b[1] - 0.19 * k)
        th = -38 - 8 * spread
        ray(
            cv,
            (0.41, 0.69),
            [th, th - 5, th - 8],
            [0.095 * k, 0.07 * k, 0.045 * k],
            [0.015 * k, 0.012 * k, 0.009 * k],
            tissue=0.65,
        )
        bone_ellipse(cv, (0.39, 0.59), 0.007, 0.006, 0, 0.5)  # sesamoid
        shaft = ((0.49, 0.672), (0.49 + 0.16 * np.sin(0), 0.51), 0.016 * k)
    else:
        for c, rx, ry in [
            ((0.49, 0.74), 0.04, 0.025),
            ((0.50, 0.70), 0.035, 0.03),
            ((0.475, 0.715), 0.025, 0.02),
            ((0.515, 0.725), 0.02, 0.02),
        ]:
            bone_ellipse(cv, c, rx * k, ry * k, 0, 0.85)
        soft(cv, ellipse((0.5, 0.6), 0.07 * k, 0.14, 0), 0.85)
        flex = vr.uniform(0, 10)
        for j in range(4):
            dx = (j - 1.5) * 0.006
            th = 2 + j * 1.5
            ray(
                cv,
                (0.5 + dx, 0.675),
                [th, th + flex, th + 2 * flex, th + 2.5 * flex],
                [0.16 * k, 0.1 * k, 0.063 * k, 0.042 * k],
                [0.013 * k, 0.011 * k, 0.0085 * k, 0.007 * k],
                0.6,
                0.5,
            )
        ray(
            cv,
            (0.475, 0.69),
            [-30, -25, -20],
            [0.095 * k, 0.07 * k, 0.045 * k],
            [0.015 * k, 0.012 * k, 0.009 * k],
            tissue=0.65,
        )
        finger = (0.52, 0.45)
        shaft = ((0.5, 0.675), (0.51, 0.52), 0.016 * k)
    return Anchors(
        shaft=shaft,
        joint=(0.49, 0.73),
        limb=[(r0, r1, 0.12 * k)],
        finger=finger,
        extra={"radius": (r0, r1, 0.05 * k)},
    )


def draw_wrist(cv: Canvas, view: str, pr: Gen, vr: Gen, fracture: str | None = None) -> Anchors:
    """The hand zoomed on the carpus: distal radius/ulna, carpals, metacarpal bases only."""
    k = pr.uniform(0.92, 1.08)
    zoom = vr.uniform(2.1, 2.5)
    m = affine(0, zoom, (0.01, -0.19), center=(0.49, 0.74))
    with cv.frame(m):
        a = _hand(cv, view, pr, vr, k)
    # hardware goes on the distal radius; re-express anchors in the zoomed frame

    def tr(p: Point) -> Point:
        q = m @ np.array([p[0], p[1], 1.0])
        return (float(q[0]), float(q[1]))

    r0, r1, r = a.extra["radius"]
    return Anchors(
        shaft=(tr(r0), tr(r1), r * zoom),
        joint=tr(a.joint),
        limb=[(tr(r0), tr(r1), 0.12 * k * zoom)],
        finger=None,
    )


def draw_elbow(cv: Canvas, view: str, pr: Gen, vr: Gen, fracture: str | None = None) -> Anchors:
    """AP (extended) or lateral (flexed ~90 degrees) elbow."""
    k = pr.uniform(0.92, 1.08)
    return framed(
        cv, affine(0, 1.3, (0, -0.04), center=(0.52, 0.56)), lambda: _elbow(cv, view, k, vr)
    )


def _elbow(cv: Canvas, view: str, k: float, vr: Gen) -> Anchors:
    long_bone(cv, (0.5, 0.45), (0.49, -0.3), 0.05 * k, 0.045 * k, 1.2)  # humerus
    if view == "LAT":
        soft(cv, capsule((0.5, 0.55), (0.48, -0.3), 0.14 * k, 0.13 * k), 0.7)
        soft(cv, capsule((0.5, 0.58), (1.3, 0.62), 0.13 * k, 0.1 * k), 0.6)
        bone_poly(
            cv, np.array([[0.45, 0.4], [0.56, 0.42], [0.6, 0.5], [0.56, 0.58], [0.48, 0.56]]), 0.9
        )
        bone_ellipse(cv, (0.55, 0.54), 0.048 * k, 0.045 * k, 0, 0.8)  # trochlea/capitulum
        bone_ellipse(cv, (0.55, 0.54), 0.03 * k, 0.028 * k, 0, 0.4)
        ang = vr.uniform(-8, 8)
        with cv.frame(affine(ang, 1.0, center=(0.55, 0.55))):
            bone_poly(
                cv,
                np.array(
                    [
                        [0.42, 0.5],
                        [0.47, 0.48],
                        [0.52, 0.56],
                        [0.6, 0.6],
                        [0.65, 0.655],
                        [0.47, 0.64],
                        [0.43, 0.58],
                    ]
                ),
                1.0,
            )  # olecranon
            long_bone(cv, (0.55, 0.63), (1.3, 0.66), 0.03 * k, 0.02 * k, 1.0)  # ulna
            bone_ellipse(cv, (0.62, 0.575), 0.025 * k, 0.03, 0, 0.9)  # radial head
            long_bone(cv, (0.63, 0.585), (1.3, 0.6), 0.022 * k, 0.03 * k, 0.9)  # radius
        return Anchors(
            shaft=((0.5, 0.42), (0.49, 0.0), 0.05 * k),
            joint=(0.55, 0.55),
            limb=[((0.5, 0.55), (0.48, -0.3), 0.14 * k), ((0.5, 0.58), (1.3, 0.62), 0.13 * k)],
        )
    soft(cv, capsule((0.5, -0.3), (0.52, 1.3), 0.17 * k, 0.12 * k), 0.7)
    bone_poly(
        cv,
        np.array([[0.44, 0.38], [0.56, 0.38], [0.62, 0.5], [0.6, 0.56], [0.4, 0.56], [0.37, 0.5]]),
        1.0,
    )  # condyles
    bone_ellipse(cv, (0.5, 0.45), 0.028 * k, 0.028, 0, -0.5)  # olecranon fossa
    bone_ellipse(cv, (0.455, 0.555), 0.04 * k, 0.025, 0, 0.7)  # trochlea
    bone_ellipse(cv, (0.555, 0.55), 0.035 * k, 0.025, 0, 0.7)  # capitulum
    bone_ellipse(cv, (0.57, 0.6), 0.035 * k, 0.016, 0, 0.9)  # radial head
    long_bone(cv, (0.57, 0.62), (0.6, 1.3), 0.02 * k, 0.032 * k, 0.9)  # radius
    bone_poly(cv, np.array([[0.42, 0.56], [0.52, 0.575], [0.51, 0.66], [0.45, 0.68]]), 0.9)
    long_bone(cv, (0.47, 0.6), (0.46, 1.3), 0.034 * k, 0.02 * k, 1.0)  # ulna
    return Anchors(
        shaft=((0.5, 0.42), (0.49, 0.0), 0.05 * k),
        joint=(0.5, 0.57),
        limb=[((0.5, -0.3), (0.52, 1.3), 0.17 * k)],
    )


def draw_knee(cv: Canvas, view: str, pr: Gen, vr: Gen, fracture: str | None = None) -> Anchors:
    """AP or lateral knee: distal femur, patella, proximal tibia and fibula."""
    k = pr.uniform(0.93, 1.07)
    return framed(
        cv, affine(0, 1.4, (0, -0.04), center=(0.5, 0.57)), lambda: _knee(cv, view, k, vr)
    )


def _knee(cv: Canvas, view: str, k: float, vr: Gen) -> Anchors:
    if view == "LAT":
        soft(cv, capsule((0.47, -0.3), (0.52, 1.3), 0.26 * k, 0.2 * k), 1.0)
        long_bone(cv, (0.5, 0.42), (0.45, -0.3), 0.065 * k, 0.06 * k, 1.3)  # femur
        bone_poly(
            cv,
            np.array(
                [[0.43, 0.36], [0.57, 0.36], [0.61, 0.48], [0.58, 0.58], [0.44, 0.6], [0.41, 0.5]]
            ),
            1.0,
        )
        bone_ellipse(cv, (0.51, 0.53), 0.075 * k, 0.065 * k, 0, 0.7)  # condyles,
        bone_ellipse(cv, (0.495, 0.54), 0.07 * k, 0.06 * k, 0, 0.7)  # overlapping
        bone_ellipse(cv, (0.66, 0.45), 0.03 * k, 0.065 * k, 15, 1.0)  # patella, anterior
        f = vr.uniform(0, 12)
        with cv.frame(affine(-f, 1.0, center=(0.5, 0.6))):
            bone_poly(
                cv,
                np.array(
                    [[0.4, 0.62], [0.6, 0.615], [0.6, 0.7], [0.57, 0.76], [0.47, 0.78], [0.42, 0.7]]
                ),
                1.0,
            )  # plateau
            long_bone(cv, (0.52, 0.72), (0.51, 1.3), 0.06 * k, 0.05 * k, 1.2)  # tibia
            bone_ellipse(cv, (0.42, 0.69), 0.025 * k, 0.028, 0, 0.9)  # fibular head
            long_bone(cv, (0.42, 0.71), (0.45, 1.3), 0.015 * k, 0.014 * k, 0.8)
        return Anchors(
            shaft=((0.51, 0.72), (0.51, 1.1), 0.06 * k),
            joint=(0.5, 0.6),
            limb=[((0.47, -0.3), (0.52, 1.3), 0.26 * k)],
            extra={"knee": ((0.505, 0.53), 0.075 * k, 0.61, 0.2 * k)},
        )
    soft(cv, capsule((0.5, -0.3), (0.5, 1.3), 0.27 * k, 0.21 * k), 1.0)
    long_bone(cv, (0.5, 0.42), (0.49, -0.3), 0.065 * k, 0.06 * k, 1.3)  # femur
    bone_poly(
        cv,
        np.array(
            [[0.43, 0.36], [0.57, 0.36], [0.62, 0.48], [0.615, 0.56], [0.38, 0.56], [0.38, 0.48]]
        ),
        0.9,
    )  # metaphysis
    bone_ellipse(cv, (0.44, 0.535), 0.06 * k, 0.04, 0, 0.7)  # condyles
    bone_ellipse(cv, (0.565, 0.535), 0.055 * k, 0.04, 0, 0.7)
    bone_ellipse(cv, (0.5, 0.54), 0.017, 0.022, 0, -0.5)  # notch
    bone_ellipse(cv, (0.51, 0.47), 0.045 * k, 0.055 * k, 0, 0.5)  # patella
    bone_poly(
        cv,
        np.array(
            [[0.37, 0.59], [0.63, 0.59], [0.62, 0.63], [0.57, 0.7], [0.43, 0.7], [0.38, 0.63]]
        ),
        1.0,
    )  # plateau
    cv.poly("bone", np.array([[0.485, 0.59], [0.495, 0.565], [0.505, 0.59]]), 0.5)  # spines
    long_bone(cv, (0.5, 0.68), (0.5, 1.3), 0.06 * k, 0.05 * k, 1.2)  # tibia
    bone_ellipse(cv, (0.62, 0.66), 0.026 * k, 0.026, 0, 0.9)  # fibular head
    long_bone(cv, (0.62, 0.68), (0.6, 1.3), 0.016 * k, 0.014 * k, 0.8, wall=0.4)
    return Anchors(
        shaft=((0.5, 0.68), (0.5, 1.1), 0.06 * k),
        joint=(0.5, 0.58),
        limb=[((0.5, -0.3), (0.5, 1.3), 0.27 * k)],
        extra={"knee": ((0.5, 0.535), 0.075 * k, 0.59, 0.24 * k)},
    )
