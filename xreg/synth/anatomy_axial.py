"""Axial and girdle joints: hip (with fractures), shoulder, spine (AP and lateral)."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np

from xreg.synth._canvas import (
    Canvas,
    Point,
    arc,
    band,
    bezier,
    bone_ellipse,
    bone_poly,
    capsule,
    ellipse,
    lerp,
    long_bone,
    rrect,
    soft,
)
from xreg.synth.anatomy import Anchors
from xreg.synth.fracture import draw_break, fracture_params, fragment_transform

Gen = np.random.Generator


def _pelvis_ap(cv: Canvas, hc: Point, r: float) -> None:
    wing = np.array(
        [
            [0.37, 0.37],
            [0.3, 0.3],
            [0.2, 0.18],
            [0.2, 0.08],
            [0.3, 0.0],
            [0.45, -0.05],
            [0.6, -0.03],
            [0.7, 0.06],
            [0.68, 0.2],
            [0.6, 0.3],
            [0.55, 0.38],
            [0.48, 0.4],
        ]
    )
    bone_poly(cv, wing, 0.5, 0.05)  # iliac wing
    cv.poly(
        "bone", band(bezier((0.68, 0.22), (0.58, 0.3), (0.52, 0.38)), 0.03), 0.5
    )  # arcuate line
    cv.poly("bone", band(arc(hc, r * 1.12, r * 1.12, 185, 350), 0.02), 0.9)  # acetabular roof
    bone_poly(
        cv, np.array([[0.74, 0.0], [0.95, -0.02], [1.05, 0.4], [0.86, 0.5], [0.76, 0.3]]), 0.4
    )
    cv.poly(
        "bone", band(bezier((0.47, 0.44), (0.66, 0.44), (0.84, 0.53)), 0.055), 0.75
    )  # sup. ramus
    cv.poly("bone", band(bezier((0.84, 0.6), (0.7, 0.72), (0.56, 0.71)), 0.04), 0.75)  # inf. ramus
    cv.poly("bone", band(bezier((0.45, 0.45), (0.46, 0.6), (0.54, 0.7)), 0.075), 0.8)  # ischium
    bone_ellipse(cv, (0.545, 0.7), 0.04, 0.03, 20, 0.7)  # tuberosity
    bone_ellipse(cv, (0.855, 0.565), 0.025, 0.06, 0, 0.8)  # symphysis
    bone_ellipse(cv, (0.52, 0.49), 0.012, 0.035, 0, 0.5)  # teardrop


def _pelvis_lat(cv: Canvas, hc: Point, r: float) -> None:
    bone_poly(
        cv,
        np.array(
            [[0.45, 0.33], [0.44, 0.12], [0.52, -0.08], [0.66, -0.05], [0.64, 0.15], [0.6, 0.34]]
        ),
        0.75,
        0.12,
    )  # ilium, end-on
    cv.poly("bone", band(arc(hc, r * 1.12, r * 1.12, 170, 360), 0.022), 0.9)
    cv.poly("bone", band(bezier((0.57, 0.44), (0.62, 0.58), (0.66, 0.72)), 0.08), 0.85)
    cv.poly("bone", band(bezier((0.55, 0.44), (0.72, 0.44), (0.9, 0.5)), 0.045), 0.75)


def draw_hip(cv: Canvas, view: str, pr: Gen, vr: Gen, fracture: str | None = None) -> Anchors:
    """Hemipelvis with acetabulum and proximal femur; optionally a neck/IT fracture."""
    k = pr.uniform(0.93, 1.07)
    neck_len = pr.uniform(0.9, 1.1)
    soft(cv, np.array([[0.05, -0.1], [1.1, -0.1], [1.1, 1.1], [0.1, 1.1]]), 0.9)
    soft(cv, capsule((0.35, 0.45), (0.4, 1.3), 0.3, 0.24), 1.2)
    r = 0.062 * k
    if view == "LAT":
        hc = (0.5, 0.4)
        base = lerp(hc, (0.42, 0.47), neck_len)
        gt, lt = (0.39, 0.47), (0.47, 0.6)
        s0, s1 = (0.41, 0.54), (0.18, 1.2)
        _pelvis_lat(cv, hc, r)
    else:
        hc = (0.45, 0.42)
        base = lerp(hc, (0.34, 0.53), neck_len)
        gt, lt = (0.29, 0.49), (0.375, 0.65)
        s0, s1 = (0.315, 0.6), (0.35, 1.2)
        _pelvis_ap(cv, hc, r)
    up = np.subtract(s0, s1)
    up = tuple(up / np.hypot(*up))
    fp = fracture_params(fracture, pr) if fracture else None
    if fp is not None and fp.kind == "neck":
        split = lerp(hc, base, 0.5)
        cut = lerp(hc, base, 0.4)
    else:
        split = lerp(gt, lt, 0.5)
        cut = split
    # proximal fragment (head, neck up to the break) stays seated in the acetabulum
    bone_ellipse(cv, hc, r, r, 0, 1.0, 0.18)
    neck_end = cut if fp is not None and fp.kind == "neck" else base
    long_bone(cv, hc, neck_end, r * 0.62, r * 0.8, 0.8, wall=0.35)
    moving = fragment_transform(fp, split, up) if fp is not None else None
    with cv.frame(moving) if moving is not None else nullcontext():
        if fp is not None and fp.kind == "neck":
            long_bone(cv, cut, base, r * 0.78, r * 0.85, 0.8, wall=0.35)
        bone_poly(
            cv,
            np.array(
                [
                    gt,
                    base,
                    (lt[0] + 0.01, lt[1] - 0.02),
                    (lt[0], lt[1] + 0.04),
                    (s0[0] - 0.04, s0[1] + 0.06),
                    (gt[0] - 0.04, gt[1] + 0.04),
                ]
            ),
            0.85,
        )
        bone_ellipse(cv, gt, 0.04 * k, 0.065 * k, 10, 0.8)
        bone_ellipse(cv, lt, 0.022 * k, 0.03 * k, -30, 0.8)
        long_bone(cv, s0, s1, 0.058 * k, 0.05 * k, 1.3, wall=0.35)
    if fp is not None:
        d = np.subtract(base, hc)
        d = d / np.hypot(*d)
        n = np.array([-d[1], d[0]])
        if fp.kind == "neck":
            a = tuple(np.asarray(split) + n * r * 1.1)
            b = tuple(np.asarray(split) - n * r * 1.1)
        else:
            a = tuple(np.asarray(gt) + (np.asarray(gt) - np.asarray(lt)) * 0.15)
            b = tuple(np.asarray(lt) + (np.asarray(lt) - np.asarray(gt)) * 0.1)
        draw_break(cv, a, b, fp, vr)
    return Anchors(
        shaft=(s0, s1, 0.058 * k),
        joint=hc,
        limb=[((0.35, 0.45), (0.4, 1.3), 0.3)],
        extra={"hip": (hc, r, base, s0, s1)},
    )


def draw_shoulder(cv: Canvas, view: str, pr: Gen, vr: Gen, fracture: str | None = None) -> Anchors:
    """AP shoulder (humeral head, glenoid, scapula, clavicle, ribs) or scapular-Y lateral."""
    k = pr.uniform(0.93, 1.07)
    soft(cv, np.array([[0.15, 0.1], [0.45, 0.05], [1.1, 0.05], [1.1, 1.1], [0.12, 1.1]]), 1.0)
    soft(cv, ellipse((0.3, 0.45), 0.2, 0.3), 0.9)
    for i in range(7):
        cx = 1.25 if view == "AP" else 0.95
        rb = arc((cx, 0.05 + 0.14 * i), 0.75, 0.32, 115, 175)
        cv.poly("bone", band(rb, 0.03), 0.35)
    if view == "LAT":
        y = (0.5, 0.48)
        cv.poly("bone", band(bezier(y, (0.52, 0.8), (0.55, 1.1)), np.linspace(0.1, 0.05, 24)), 0.7)
        cv.poly("bone", band(bezier(y, (0.4, 0.32), (0.3, 0.18)), 0.07), 0.75)  # spine/acromion
        cv.poly("bone", band(bezier(y, (0.62, 0.35), (0.7, 0.27)), 0.045), 0.75)  # coracoid
        bone_ellipse(cv, (0.6, 0.16), 0.04, 0.03, 0, 0.9)  # clavicle end-on
        hc = (0.5 + vr.uniform(-0.02, 0.02), 0.47)
        bone_ellipse(cv, hc, 0.1 * k, 0.1 * k, 0, 1.0, 0.12)
        long_bone(cv, (hc[0], hc[1] + 0.06), (0.47, 1.3), 0.055 * k, 0.045 * k, 1.2)
        return Anchors(
            shaft=((hc[0], hc[1] + 0.08), (0.47, 1.0), 0.055 * k),
            joint=hc,
            limb=[((0.5, 0.4), (0.47, 1.3), 0.2)],
            extra={"head": (hc, 0.1 * k)},
        )
    bone_poly(
        cv,
        np.array(
            [
                [0.5, 0.36],
                [0.8, 0.26],
                [0.86, 0.32],
                [0.74, 0.98],
                [0.68, 0.95],
                [0.55, 0.56],
                [0.5, 0.52],
            ]
        ),
        0.6,
        0.1,
    )  # scapula body
    bone_ellipse(cv, (0.5, 0.445), 0.025, 0.065, 0, 0.9)  # glenoid
    cv.poly(
        "bone", band(bezier((0.85, 0.28), (0.55, 0.22), (0.37, 0.29)), 0.05), 0.8
    )  # spine->acromion
    bone_ellipse(cv, (0.37, 0.29), 0.06 * k, 0.028, -5, 0.8)
    cv.poly("bone", band(bezier((0.52, 0.38), (0.54, 0.3), (0.49, 0.31)), 0.035), 0.7)  # coracoid
    cv.poly("bone", band(bezier((0.4, 0.25), (0.75, 0.12), (1.1, 0.22)), 0.045), 1.0)  # clavicle
    hc = (0.39, 0.44)
    bone_ellipse(cv, hc, 0.095 * k, 0.1 * k, 0, 1.0, 0.12)  # humeral head
    bone_ellipse(cv, (0.3, 0.45), 0.04 * k, 0.06 * k, 0, 0.6)  # gr. tuberosity
    long_bone(cv, (0.34, 0.52), (0.3, 1.3), 0.058 * k, 0.05 * k, 1.2)
    return Anchors(
        shaft=((0.34, 0.52), (0.31, 1.0), 0.058 * k),
        joint=hc,
        limb=[((0.3, 0.3), (0.3, 1.3), 0.2)],
        extra={"head": (hc, 0.095 * k)},
    )


_SEGMENTS = {  # levels in view, body width, body height, disc height, curvature
    "cervical": (7, 0.14, 0.07, 0.03, -0.05),
    "thoracic": (7, 0.17, 0.085, 0.03, 0.06),
    "lumbar": (5, 0.24, 0.12, 0.045, -0.07),
}


def draw_spine(cv: Canvas, view: str, pr: Gen, vr: Gen, fracture: str | None = None) -> Anchors:
    """Cervical, thoracic or lumbar spine: stacked bodies and discs, posterior elements."""
    seg = ("cervical", "thoracic", "lumbar")[int(pr.integers(3))]
    n, w, h, disc, curve = _SEGMENTS[seg]
    w *= pr.uniform(0.92, 1.08)
    step = h + disc
    y0 = 0.5 - step * (n - 1) / 2
    lat = view == "LAT"
    width = 1.4 if seg != "cervical" else 0.9
    soft(
        cv,
        np.array(
            [
                [0.5 - width / 2, -0.1],
                [0.5 + width / 2, -0.1],
                [0.5 + width / 2, 1.1],
                [0.5 - width / 2, 1.1],
            ]
        ),
        1.0,
    )
    levels = []
    for i in range(n):
        y = y0 + i * step
        u = (y - 0.5) / 0.5
        x = 0.5 + (curve * (1 - u * u) if lat else 0.0)
        ang = -2 * curve * u * 40 if lat else 0.0
        c = (x, y)
        levels.append((c, w, h, ang))
        bw = w * (0.85 if lat else 1.0)
        bone_poly(cv, rrect(c, bw, h, ang), 0.9, 0.12)
        if lat:
            a = np.deg2rad(ang)
            ax, nx = np.array([np.cos(a), np.sin(a)]), np.array([-np.sin(a), np.cos(a)])
            back = np.asarray(c) + ax * bw * 0.5
            sp = back + ax * w * 0.95 + nx * h * 0.45
            cv.poly(
                "bone",
                band(
                    np.stack([back - nx * h * 0.2, back + ax * w * 0.35 - nx * h * 0.1, sp]),
                    0.035 if seg != "cervical" else 0.025,
                ),
                0.75,
            )
            bone_ellipse(
                cv, tuple(back + ax * w * 0.3 + nx * h * 0.5), 0.02, 0.03, ang, 0.5
            )  # facet
        else:
            for s in (-1, 1):
                bone_ellipse(cv, (x + s * w * 0.33, y - h * 0.1), w * 0.09, h * 0.24, 0, 0.6, 0.4)
                cv.poly(
                    "bone",
                    capsule(
                        (x + s * w * 0.45, y - h * 0.05),
                        (x + s * w * (0.8 if seg == "lumbar" else 0.6), y - h * 0.1),
                        h * 0.12,
                        h * 0.09,
                    ),
                    0.55,
                )
            bone_ellipse(cv, (x, y + h * 0.35), w * 0.05, h * 0.3, 0, 0.6)  # spinous
            if seg == "thoracic":
                for s in (-1, 1):
                    rib = arc(
                        (x + s * 0.05, y + 0.15),
                        0.5,
                        0.2,
                        -100 if s > 0 else -80,
                        -20 if s > 0 else -160,
                    )
                    cv.poly("bone", band(rib, 0.025), 0.4)
    if seg == "lumbar" and not lat:
        for s in (-1, 1):
            cv.poly(
                "bone",
                band(
                    arc(
                        (0.5 + s * 0.32, 1.25),
                        0.22,
                        0.3,
                        200 if s < 0 else 270,
                        270 if s < 0 else 340,
                    ),
                    0.04,
                ),
                0.6,
            )  # iliac crests
    mid = levels[n // 2]
    return Anchors(
        shaft=((mid[0][0], levels[0][0][1]), (mid[0][0], levels[-1][0][1]), w / 2),
        joint=mid[0],
        limb=[((0.5, -0.1), (0.5, 1.1), 0.4)],
        extra={"spine": (levels, lat, seg)},
    )
