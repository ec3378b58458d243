"""Peripheral joints: hand, wrist, foot, ankle, elbow, knee (AP and lateral).

Boundary rules are encoded in the framing: a hand or foot shows every tip,
a wrist or ankle is the same limb zoomed on the carpus/talus so the tips fall
outside the image.
"""

from __future__ import annotations

import numpy as np

from xreg.synth._canvas import (Canvas, Point, affine, bone_ellipse, bone_poly, capsule, ellipse,
                                long_bone, soft)
from xreg.synth.anatomy import Anchors

Gen = np.random.Generator


def _dir(angle: float) -> np.ndarray:
    a = np.deg2rad(angle)
    return np.array([np.sin(a), -np.cos(a)])


def _ray(cv: Canvas, base: Point, angles: list[float], lengths: list[float],
         radii: list[float], density: float = 0.8, tissue: float = 0.35) -> Point:
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
    soft(cv, capsule((0.49, 0.74), (0.5, 1.3), 0.12 * k, 0.12 * k), 0.55)
    return (0.43, 0.8) if not lat else (0.49, 0.79), (0.44, 1.3)


_CARPALS_AP = [((0.43, 0.745), 0.032, 0.018, -35), ((0.485, 0.75), 0.022, 0.02, 0),
               ((0.53, 0.745), 0.019, 0.017, 10), ((0.55, 0.73), 0.012, 0.012, 0),
               ((0.405, 0.70), 0.022, 0.019, -20), ((0.445, 0.698), 0.017, 0.016, 0),
               ((0.487, 0.70), 0.021, 0.03, 0), ((0.528, 0.702), 0.022, 0.026, 10)]


def draw_hand(cv: Canvas, view: str, pr: Gen, vr: Gen, fracture: str | None = None) -> Anchors:
    """PA/lateral hand: carpals, metacarpals, phalanges, every fingertip inside."""
    k = pr.uniform(0.92, 1.08)
    with cv.frame(affine(0, 1.3, (0, 0.03), center=(0.5, 0.62))):
        return _hand(cv, view, pr, vr, k)


def _hand(cv: Canvas, view: str, pr: Gen, vr: Gen, k: float) -> Anchors:
    lat = view == "LAT"
    r0, r1 = _forearm_distal(cv, lat, k)
    spread = vr.uniform(0.6, 1.3)
    finger = None
    if not lat:
        for c, rx, ry, a in _CARPALS_AP:
            bone_ellipse(cv, c, rx * k * 1.15, ry * k * 1.2, a, 0.8)
        soft(cv, ellipse((0.49, 0.62), 0.12 * k, 0.12, 0), 0.5)
        bases = [(0.452, 0.675), (0.49, 0.672), (0.525, 0.675), (0.556, 0.68)]
        fan = [-7.0, 0.0, 6.0, 12.0]
        lens = [(0.165, 0.1, 0.06, 0.042), (0.16, 0.108, 0.068, 0.044),
                (0.152, 0.1, 0.064, 0.042), (0.135, 0.082, 0.048, 0.038)]
        for i, (b, f, ln) in enumerate(zip(bases, fan, lens)):
            ang = f * spread
            a4 = [ang, ang * 1.5, ang * 1.7, ang * 1.8]
            tip = _ray(cv, b, a4, [x * k for x in ln], [0.013 * k, 0.011 * k, 0.0085 * k, 0.007 * k])
            if i == 2:
                finger = ((b[0] + tip[0]) / 2 * 0.7 + tip[0] * 0.3, b[1] - 0.19 * k)
        a = -38 - 8 * spread
        _ray(cv, (0.41, 0.69), [a, a - 5, a - 8], [0.095 * k, 0.07 * k, 0.045 * k],
             [0.015 * k, 0.012 * k, 0.009 * k], tissue=0.4)
        bone_ellipse(cv, (0.39, 0.59), 0.007, 0.006, 0, 0.5)  # sesamoid
        shaft = ((0.49, 0.672), (0.49 + 0.16 * np.sin(0), 0.51), 0.016 * k)
    else:
        for c, rx, ry in [((0.49, 0.74), 0.04, 0.025), ((0.50, 0.70), 0.035, 0.03),
                          ((0.475, 0.715), 0.025, 0.02), ((0.515, 0.725), 0.02, 0.02)]:
            bone_ellipse(cv, c, rx * k, ry * k, 0, 0.85)
        soft(cv, ellipse((0.5, 0.6), 0.07 * k, 0.14, 0), 0.55)
        flex = vr.uniform(0, 10)
        for j in range(4):
            dx = (j - 1.5) * 0.006
            a = 2 + j * 1.5
            _ray(cv, (0.5 + dx, 0.675), [a, a + flex, a + 2 * flex, a + 2.5 * flex],
                 [0.16 * k, 0.1 * k, 0.063 * k, 0.042 * k],
                 [0.013 * k, 0.011 * k, 0.0085 * k, 0.007 * k], 0.6, 0.25)
        _ray(cv, (0.475, 0.69), [-30, -25, -20], [0.095 * k, 0.07 * k, 0.045 * k],
             [0.015 * k, 0.012 * k, 0.009 * k], tissue=0.4)
        finger = (0.52, 0.45)
        shaft = ((0.5, 0.675), (0.51, 0.52), 0.016 * k)
    return Anchors(shaft=shaft, joint=(0.49, 0.73), limb=[(r0, r1, 0.12 * k)], finger=finger,
                   extra={"radius": (r0, r1, 0.05 * k)})


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

    r0, r1, r = a.extra["radius"]  # type: ignore[misc]
    return Anchors(shaft=(tr(r0), tr(r1), r * zoom), joint=tr(a.joint),
                   limb=[(tr(r0), tr(r1), 0.12 * k * zoom)], finger=None)


def draw_foot(cv: Canvas, view: str, pr: Gen, vr: Gen, fracture: str | None = None) -> Anchors:
    """Dorsoplantar/lateral foot: tarsals, metatarsals, phalanges, every toe tip inside."""
    k = pr.uniform(0.92, 1.06)
    if view == "LAT":
        with cv.frame(affine(0, 1.0, (0, 0.05))):
            return _foot_lat(cv, k, vr)
    with cv.frame(affine(0, 1.05, (0, 0.0), center=(0.5, 0.58))):
        return _foot_dp(cv, k, vr)


def _foot_dp(cv: Canvas, k: float, vr: Gen) -> Anchors:
    soft(cv, ellipse((0.5, 0.62), 0.13 * k, 0.3, 0), 0.6)
    bone_ellipse(cv, (0.545, 0.86), 0.06 * k, 0.09, 5, 1.0)          # calcaneus
    bone_ellipse(cv, (0.47, 0.76), 0.05 * k, 0.055, -10, 0.9)         # talus
    bone_ellipse(cv, (0.45, 0.69), 0.045 * k, 0.022, -15, 0.85)       # navicular
    bone_ellipse(cv, (0.56, 0.69), 0.035 * k, 0.035, 10, 0.85)        # cuboid
    for c, rx, ry in [((0.415, 0.635), 0.022, 0.03), ((0.455, 0.628), 0.016, 0.024),
                      ((0.49, 0.635), 0.017, 0.024)]:
        bone_ellipse(cv, c, rx * k, ry, 0, 0.8)                         # cuneiforms
    bases = [(0.415, 0.6), (0.455, 0.6), (0.49, 0.605), (0.525, 0.62), (0.56, 0.64)]
    fan = [-6.0, -2.0, 2.0, 6.0, 11.0]
    mt = [0.16, 0.19, 0.18, 0.17, 0.15]
    spread = vr.uniform(0.7, 1.2)
    for i, (b, f, ln) in enumerate(zip(bases, fan, mt)):
        a = f * spread
        if i == 0:
            tip = _ray(cv, b, [a, a + 4, a + 6], [ln * k, 0.065 * k, 0.045 * k],
                       [0.021 * k, 0.016 * k, 0.013 * k], 0.9, 0.45)
            bone_ellipse(cv, (b[0] - 0.008, b[1] - ln * k + 0.02), 0.009, 0.011, 0, 0.5)
            bone_ellipse(cv, (b[0] + 0.014, b[1] - ln * k + 0.02), 0.009, 0.011, 0, 0.5)
        else:
            tip = _ray(cv, b, [a, a * 1.3, a * 1.4, a * 1.5],
                       [ln * k, 0.05 * k, 0.025 * k, 0.02 * k],
                       [0.011 * k, 0.009 * k, 0.008 * k, 0.007 * k], 0.8, 0.35)
    del tip
    return Anchors(shaft=((0.415, 0.6), (0.405, 0.44), 0.021 * k), joint=(0.47, 0.7),
                   limb=[((0.5, 0.9), (0.5, 0.35), 0.13 * k)])


def _foot_lat(cv: Canvas, k: float, vr: Gen) -> Anchors:
    """Lateral foot, heel left, toes right; also the base of the lateral ankle."""
    long_bone(cv, (0.33, 0.46), (0.31, -0.8), 0.045, 0.04, 1.1)          # tibia
    long_bone(cv, (0.29, 0.5), (0.28, -0.8), 0.018, 0.016, 0.8)          # fibula, posterior
    bone_poly(cv, np.array([[0.27, 0.42], [0.39, 0.42], [0.385, 0.46], [0.28, 0.47]]), 1.0)
    soft(cv, capsule((0.31, 0.5), (0.3, -0.8), 0.085, 0.08), 0.65)
    soft(cv, np.array([[0.15, 0.55], [0.2, 0.48], [0.42, 0.46], [0.62, 0.54], [0.86, 0.63],
                       [0.88, 0.69], [0.6, 0.7], [0.25, 0.7], [0.14, 0.66]]), 0.55)
    bone_ellipse(cv, (0.34, 0.5), 0.065 * k, 0.04, 8, 0.95)           # talus dome
    bone_ellipse(cv, (0.24, 0.6), 0.085 * k, 0.045, 15, 1.0)           # calcaneus
    bone_ellipse(cv, (0.42, 0.53), 0.03 * k, 0.028, 20, 0.85)          # navicular
    bone_ellipse(cv, (0.38, 0.6), 0.035 * k, 0.025, 10, 0.8)           # cuboid
    bone_ellipse(cv, (0.475, 0.555), 0.035 * k, 0.026, 20, 0.8)        # cuneiforms
    for j in range(5):
        y0, dy = 0.56 + j * 0.012, j * 0.006
        b = (0.5, y0)
        t = (0.5 + 0.23 * k, 0.645 + dy)
        long_bone(cv, b, t, 0.014, 0.011, 0.55, wall=0.4)
        ph = _ray(cv, (t[0] + 0.01, t[1] - 0.005), [80, 100, 110],
                  [0.045 * k, 0.025 * k, 0.02 * k], [0.009, 0.008, 0.007], 0.5, 0.3)
        del ph
    return Anchors(shaft=((0.33, 0.44), (0.32, -0.2), 0.045), joint=(0.34, 0.5),
                   limb=[((0.31, 0.5), (0.3, -0.8), 0.085)], extra={"fibula": (0.29, 0.47)})


def draw_ankle(cv: Canvas, view: str, pr: Gen, vr: Gen, fracture: str | None = None) -> Anchors:
    """Mortise AP or lateral ankle: distal tibia/fibula, talus, calcaneus; toes cropped."""
    k = pr.uniform(0.92, 1.06)
    if view == "LAT":
        zoom = vr.uniform(1.9, 2.3)
        m = affine(0, zoom, (0.14, 0.02), center=(0.34, 0.5))
        with cv.frame(m):
            a = _foot_lat(cv, k, vr)
        tr = _transformer(m)
        return Anchors(shaft=(tr(a.shaft[0]), tr(a.shaft[1]), a.shaft[2] * zoom),
                       joint=tr(a.joint), limb=[(tr((0.31, 0.5)), tr((0.3, -0.8)), 0.085 * zoom)])
    soft(cv, capsule((0.5, 0.72), (0.5, -0.2), 0.2 * k, 0.17 * k), 0.7)
    soft(cv, ellipse((0.5, 0.85), 0.18 * k, 0.12), 0.7)
    long_bone(cv, (0.47, 0.5), (0.47, -0.2), 0.085 * k, 0.065 * k, 1.2)               # tibia
    bone_poly(cv, np.array([[0.37, 0.48], [0.58, 0.48], [0.575, 0.59], [0.42, 0.595],
                            [0.40, 0.67], [0.375, 0.655], [0.365, 0.56]]), 1.0)       # plafond + medial malleolus
    long_bone(cv, (0.605, 0.66), (0.58, -0.2), 0.024 * k, 0.02 * k, 0.9, wall=0.4)    # fibula
    bone_ellipse(cv, (0.61, 0.64), 0.03 * k, 0.05, -5, 0.9)                            # lateral malleolus
    bone_poly(cv, np.array([[0.41, 0.64], [0.44, 0.605], [0.5, 0.6], [0.57, 0.61], [0.595, 0.66],
                            [0.58, 0.72], [0.42, 0.72]]), 0.95)                        # talus
    bone_ellipse(cv, (0.5, 0.8), 0.095 * k, 0.065, 0, 0.8)                             # calcaneus
    return Anchors(shaft=((0.6, 0.62), (0.585, 0.1), 0.025 * k), joint=(0.49, 0.61),
                   limb=[((0.5, 0.75), (0.5, -0.2), 0.19 * k)], extra={"tibia": (0.47, 0.5)})


def _transformer(m: np.ndarray):  # type: ignore[no-untyped-def]
    def tr(p: Point) -> Point:
        q = m @ np.array([p[0], p[1], 1.0])
        return (float(q[0]), float(q[1]))
    return tr


def draw_elbow(cv: Canvas, view: str, pr: Gen, vr: Gen, fracture: str | None = None) -> Anchors:
    """AP (extended) or lateral (flexed ~90 degrees) elbow."""
    k = pr.uniform(0.92, 1.08)
    long_bone(cv, (0.5, 0.45), (0.49, -0.3), 0.05 * k, 0.045 * k, 1.2)               # humerus
    if view == "LAT":
        soft(cv, capsule((0.5, 0.55), (0.48, -0.3), 0.14 * k, 0.13 * k), 0.7)
        soft(cv, capsule((0.5, 0.58), (1.3, 0.62), 0.13 * k, 0.1 * k), 0.6)
        bone_poly(cv, np.array([[0.45, 0.4], [0.56, 0.42], [0.6, 0.5], [0.56, 0.58], [0.48, 0.56]]), 0.9)
        bone_ellipse(cv, (0.55, 0.54), 0.048 * k, 0.045 * k, 0, 0.8)                  # trochlea/capitulum
        bone_ellipse(cv, (0.55, 0.54), 0.03 * k, 0.028 * k, 0, 0.4)
        ang = vr.uniform(-8, 8)
        with cv.frame(affine(ang, 1.0, center=(0.55, 0.55))):
            bone_poly(cv, np.array([[0.42, 0.5], [0.47, 0.48], [0.52, 0.56], [0.6, 0.6],
                                    [0.65, 0.655], [0.47, 0.64], [0.43, 0.58]]), 1.0)  # olecranon
            long_bone(cv, (0.55, 0.63), (1.3, 0.66), 0.03 * k, 0.02 * k, 1.0)           # ulna
            bone_ellipse(cv, (0.62, 0.575), 0.025 * k, 0.03, 0, 0.9)                    # radial head
            long_bone(cv, (0.63, 0.585), (1.3, 0.6), 0.022 * k, 0.03 * k, 0.9)          # radius
        return Anchors(shaft=((0.5, 0.42), (0.49, 0.0), 0.05 * k), joint=(0.55, 0.55),
                       limb=[((0.5, 0.55), (0.48, -0.3), 0.14 * k), ((0.5, 0.58), (1.3, 0.62), 0.13 * k)])
    soft(cv, capsule((0.5, -0.3), (0.52, 1.3), 0.17 * k, 0.12 * k), 0.7)
    bone_poly(cv, np.array([[0.44, 0.38], [0.56, 0.38], [0.62, 0.5], [0.6, 0.56], [0.4, 0.56],
                            [0.37, 0.5]]), 1.0)                                        # condyles
    bone_ellipse(cv, (0.5, 0.45), 0.028 * k, 0.028, 0, -0.5)                            # olecranon fossa
    bone_ellipse(cv, (0.455, 0.555), 0.04 * k, 0.025, 0, 0.7)                           # trochlea
    bone_ellipse(cv, (0.555, 0.55), 0.035 * k, 0.025, 0, 0.7)                           # capitulum
    bone_ellipse(cv, (0.57, 0.6), 0.035 * k, 0.016, 0, 0.9)                             # radial head
    long_bone(cv, (0.57, 0.62), (0.6, 1.3), 0.02 * k, 0.032 * k, 0.9)                   # radius
    bone_poly(cv, np.array([[0.42, 0.56], [0.52, 0.575], [0.51, 0.66], [0.45, 0.68]]), 0.9)
    long_bone(cv, (0.47, 0.6), (0.46, 1.3), 0.034 * k, 0.02 * k, 1.0)                   # ulna
    return Anchors(shaft=((0.5, 0.42), (0.49, 0.0), 0.05 * k), joint=(0.5, 0.57),
                   limb=[((0.5, -0.3), (0.52, 1.3), 0.17 * k)])


def draw_knee(cv: Canvas, view: str, pr: Gen, vr: Gen, fracture: str | None = None) -> Anchors:
    """AP or lateral knee: distal femur, patella, proximal tibia and fibula."""
    k = pr.uniform(0.93, 1.07)
    if view == "LAT":
        soft(cv, capsule((0.47, -0.3), (0.52, 1.3), 0.26 * k, 0.2 * k), 1.0)
        long_bone(cv, (0.5, 0.42), (0.45, -0.3), 0.065 * k, 0.06 * k, 1.3)             # femur
        bone_poly(cv, np.array([[0.43, 0.36], [0.57, 0.36], [0.61, 0.48], [0.58, 0.58],
                                [0.44, 0.6], [0.41, 0.5]]), 1.0)
        bone_ellipse(cv, (0.51, 0.53), 0.075 * k, 0.065 * k, 0, 0.7)                    # condyles,
        bone_ellipse(cv, (0.495, 0.54), 0.07 * k, 0.06 * k, 0, 0.7)                     # overlapping
        bone_ellipse(cv, (0.66, 0.45), 0.03 * k, 0.065 * k, 15, 1.0)                    # patella, anterior
        f = vr.uniform(0, 12)
        with cv.frame(affine(-f, 1.0, center=(0.5, 0.6))):
            bone_poly(cv, np.array([[0.4, 0.62], [0.6, 0.615], [0.6, 0.7], [0.57, 0.76],
                                    [0.47, 0.78], [0.42, 0.7]]), 1.0)                    # plateau
            long_bone(cv, (0.52, 0.72), (0.51, 1.3), 0.06 * k, 0.05 * k, 1.2)           # tibia
            bone_ellipse(cv, (0.42, 0.69), 0.025 * k, 0.028, 0, 0.9)                    # fibular head
            long_bone(cv, (0.42, 0.71), (0.45, 1.3), 0.015 * k, 0.014 * k, 0.8)
        return Anchors(shaft=((0.51, 0.72), (0.51, 1.1), 0.06 * k), joint=(0.5, 0.6),
                       limb=[((0.47, -0.3), (0.52, 1.3), 0.26 * k)],
                       extra={"knee": ((0.505, 0.53), 0.075 * k, 0.61, 0.2 * k)})
    soft(cv, capsule((0.5, -0.3), (0.5, 1.3), 0.27 * k, 0.21 * k), 1.0)
    long_bone(cv, (0.5, 0.42), (0.49, -0.3), 0.065 * k, 0.06 * k, 1.3)                 # femur
    bone_poly(cv, np.array([[0.43, 0.36], [0.57, 0.36], [0.62, 0.48], [0.615, 0.56],
                            [0.38, 0.56], [0.38, 0.48]]), 0.9)                          # metaphysis
    bone_ellipse(cv, (0.44, 0.535), 0.06 * k, 0.04, 0, 0.7)                             # condyles
    bone_ellipse(cv, (0.565, 0.535), 0.055 * k, 0.04, 0, 0.7)
    bone_ellipse(cv, (0.5, 0.54), 0.017, 0.022, 0, -0.5)                                # notch
    bone_ellipse(cv, (0.51, 0.47), 0.045 * k, 0.055 * k, 0, 0.5)                        # patella
    bone_poly(cv, np.array([[0.37, 0.59], [0.63, 0.59], [0.62, 0.63], [0.57, 0.7],
                            [0.43, 0.7], [0.38, 0.63]]), 1.0)                          # plateau
    cv.poly("bone", np.array([[0.485, 0.59], [0.495, 0.565], [0.505, 0.59]]), 0.5)     # spines
    long_bone(cv, (0.5, 0.68), (0.5, 1.3), 0.06 * k, 0.05 * k, 1.2)                     # tibia
    bone_ellipse(cv, (0.62, 0.66), 0.026 * k, 0.026, 0, 0.9)                            # fibular head
    long_bone(cv, (0.62, 0.68), (0.6, 1.3), 0.016 * k, 0.014 * k, 0.8, wall=0.4)
    return Anchors(shaft=((0.5, 0.68), (0.5, 1.1), 0.06 * k), joint=(0.5, 0.58),
                   limb=[((0.5, -0.3), (0.5, 1.3), 0.27 * k)],
                   extra={"knee": ((0.5, 0.535), 0.075 * k, 0.59, 0.24 * k)})
