"""Radiopaque instruments (metal) and non-instrument look-alikes (distractors).

Instruments go into the ``metal`` layer, which the renderer maps to near
saturation with sharp edges; distractors go into the ``distractor`` layer,
which is attenuating but always rendered below the metal level, so a model
has to learn that bright is not the same as instrument.
"""

from __future__ import annotations

import numpy as np

from xreg.synth._canvas import Canvas, Point, arc, band, bezier, capsule, ellipse, lerp, rrect
from xreg.synth.anatomy import Anchors

Gen = np.random.Generator

_COMPATIBLE: dict[str, tuple[str, ...]] = {
    "hand": ("screws", "plate", "kwire"),
    "wrist": ("screws", "plate", "kwire", "anchor"),
    "foot": ("screws", "plate", "kwire"),
    "ankle": ("screws", "plate", "kwire"),
    "elbow": ("screws", "plate", "kwire", "anchor"),
    "knee": ("screws", "plate", "nail", "kwire", "knee_prosthesis", "anchor"),
    "hip": ("screws", "plate", "nail", "kwire", "hip_prosthesis"),
    "shoulder": ("screws", "plate", "nail", "kwire", "anchor"),
    "spine": ("spinal_rods", "screws"),
}
# What a surgeon would have used instead when an instrument makes no sense there.
_NEAREST = {
    "hip_prosthesis": "plate",
    "knee_prosthesis": "plate",
    "spinal_rods": "plate",
    "nail": "plate",
    "anchor": "screws",
}


def compatible_instruments(body_part: str) -> tuple[str, ...]:
    """Instruments that plausibly appear in ``body_part`` radiographs."""
    return _COMPATIBLE[body_part]


def resolve_instrument(body_part: str, instrument: str) -> str:
    """``instrument`` if it fits ``body_part``, else the nearest sensible one.

    Prostheses swap between hip and knee; the spine gets rods; elsewhere nails
    and prostheses become plates and anchors become screws.
    """
    ok = _COMPATIBLE[body_part]
    if instrument in ok:
        return instrument
    if body_part == "spine":
        return "spinal_rods"
    if body_part == "hip" and instrument == "knee_prosthesis":
        return "hip_prosthesis"
    if body_part == "knee" and instrument == "hip_prosthesis":
        return "knee_prosthesis"
    alt = _NEAREST.get(instrument, "screws")
    return alt if alt in ok else ok[0]


def _unit(p0: Point, p1: Point) -> tuple[np.ndarray, np.ndarray]:
    d = np.subtract(p1, p0).astype(float)
    d /= np.hypot(*d) + 1e-9
    return d, np.array([-d[1], d[0]])


def screw(cv: Canvas, head: Point, tip: Point, r: float, head_size: float = 1.0) -> None:
    """A threaded screw from ``head`` to ``tip`` of thread radius ``r``."""
    d, n = _unit(head, tip)
    length = float(np.hypot(*np.subtract(tip, head)))
    m = max(4, int(length / (r * 0.9)))
    t = np.linspace(0, length, 2 * m + 1)
    rad = np.where(np.arange(len(t)) % 2 == 0, r, r * 0.6)
    rad[-1] = r * 0.3
    core = np.asarray(head) + t[:, None] * d
    cv.poly(
        "metal", np.concatenate([core + n * rad[:, None], (core - n * rad[:, None])[::-1]]), 1.0
    )
    hc = np.asarray(head) - d * r * 0.5
    cv.poly(
        "metal",
        rrect(
            tuple(hc), r * 2.4 * head_size, r * 1.3, float(np.degrees(np.arctan2(n[1], n[0]))), 4
        ),
        1.0,
    )


def _across(
    shaft: tuple[Point, Point, float], t: float, tilt: float, side: float
) -> tuple[Point, Point]:
    """Entry and exit points of a line crossing the shaft at fraction ``t``."""
    p0, p1, r = shaft
    d, n = _unit(p0, p1)
    a = np.deg2rad(tilt)
    v = n * np.cos(a) + d * np.sin(a)
    c = np.asarray(lerp(p0, p1, t))
    return tuple(c + side * v * r * 1.25), tuple(c - side * v * r * 1.15)


def _screws(cv: Canvas, a: Anchors, hr: Gen) -> None:
    if "hip" in a.extra:  # cannulated screws along the neck, from below the trochanter
        hc, r, base, s0, _ = a.extra["hip"]
        d, n = _unit(base, hc)
        for off in np.linspace(-0.5, 0.5, int(hr.integers(2, 4))):
            start = np.asarray(base) - d * r * 1.3 + n * off * r * 0.9
            screw(cv, tuple(start), tuple(np.asarray(hc) + n * off * r * 0.8), r * 0.16)
        return
    side = float(hr.choice([-1, 1]))
    for t in np.linspace(0.08, 0.3, int(hr.integers(1, 4))):
        e, x = _across(a.shaft, float(t + hr.uniform(-0.03, 0.03)), hr.uniform(-25, 25), side)
        screw(cv, e, x, a.shaft[2] * 0.16)


def _plate(cv: Canvas, a: Anchors, hr: Gen) -> None:
    p0, p1, r = a.shaft
    d, n = _unit(p0, p1)
    side = float(hr.choice([-1, 1]))
    ln = float(np.hypot(*np.subtract(p1, p0))) * hr.uniform(0.45, 0.8)
    start = np.asarray(p0) + d * r * 0.4 + n * side * r * 0.55
    end = start + d * ln
    w = r * 0.75
    cv.poly("metal", capsule(tuple(start), tuple(end), w / 2, w / 2, 6), 1.0)
    holes = int(max(3, ln / (r * 0.9)))
    for i, t in enumerate(np.linspace(0.06, 0.94, holes)):
        c = start + d * ln * t
        cv.poly(
            "metal",
            ellipse(tuple(c), w * 0.22, w * 0.3, float(np.degrees(np.arctan2(d[1], d[0])))),
            -1.0,
        )
        if i % 2 == 0 or hr.random() < 0.3:
            screw(cv, tuple(c + n * side * r * 0.5), tuple(c - n * side * r * 1.5), r * 0.16)
    if "hip" in a.extra:  # sliding hip screw: barrel + lag screw into the head
        _lag_screw(cv, a, 1.6, 1.4)


def _lag_screw(cv: Canvas, a: Anchors, back: float, head_size: float) -> None:
    """A lag screw from below the femoral neck's base up into the head."""
    hc, hrad, base, _, _ = a.extra["hip"]
    dd, _ = _unit(base, hc)
    screw(cv, tuple(np.asarray(base) - dd * hrad * back),
          tuple(np.asarray(hc) + dd * hrad * 0.5), hrad * 0.22, head_size)


def _nail(cv: Canvas, a: Anchors, hr: Gen) -> None:
    p0, p1, r = a.shaft
    d, n = _unit(p0, p1)
    length = float(np.hypot(*np.subtract(p1, p0)))
    top = np.asarray(p0) - d * r * (1.5 if "hip" in a.extra else 0.3)
    end = np.asarray(p0) + d * length * hr.uniform(0.8, 1.1)
    cv.poly("metal", capsule(tuple(top), tuple(end), r * 0.38, r * 0.32, 8), 1.0)
    for t in (0.12, 0.85):
        e, x = _across((tuple(top), tuple(end), r), t, 0, 1.0)
        screw(cv, e, x, r * 0.15)
    if "hip" in a.extra:
        _lag_screw(cv, a, 1.4, 1.3)


def _kwire(cv: Canvas, a: Anchors, hr: Gen) -> None:
    for _ in range(int(hr.integers(1, 4))):
        e, x = _across(a.shaft, hr.uniform(0.0, 0.25), hr.uniform(25, 55) * hr.choice([-1, 1]), 1.0)
        e2 = np.asarray(e) + np.subtract(e, x) * 0.6
        cv.line("metal", np.array([e2, x]), max(a.shaft[2] * 0.09, 0.0035), 1.0)


def _anchor(cv: Canvas, a: Anchors, hr: Gen) -> None:
    c, rad = a.extra.get("head", (a.joint, a.shaft[2]))
    for _ in range(int(hr.integers(1, 3))):
        ang = hr.uniform(0, 2 * np.pi)
        v = np.array([np.cos(ang), np.sin(ang)])
        tip = np.asarray(c) + v * rad * 0.3
        screw(cv, tuple(tip + v * rad * 0.55), tuple(tip), rad * 0.08, 0.8)


def _hip_prosthesis(cv: Canvas, a: Anchors, hr: Gen) -> None:
    hc, r, base, s0, s1 = a.extra["hip"]
    cup = arc(hc, r * 1.12, r * 1.12, 180 + hr.uniform(-15, 5), 360 + hr.uniform(-5, 15))
    cv.poly("metal", band(cup, r * 0.22), 1.0)
    cv.poly("metal", ellipse(hc, r * 0.78, r * 0.78), 1.0)
    cv.poly("metal", capsule(hc, base, r * 0.28, r * 0.35), 1.0)
    stem_end = lerp(s0, s1, hr.uniform(0.45, 0.6))
    top = lerp(base, s0, 0.3)
    cv.poly("metal", np.concatenate([capsule(top, stem_end, r * 0.55, r * 0.22)]), 1.0)
    cv.poly("metal", capsule(base, top, r * 0.4, r * 0.55), 1.0)


def _knee_prosthesis(cv: Canvas, a: Anchors, hr: Gen, lat: bool) -> None:
    (cx, cy), cr, plateau, width = a.extra["knee"]
    if lat:
        cv.poly("metal", band(arc((cx, cy), cr * 1.05, cr * 1.05, -40, 200), cr * 0.22), 1.0)
        cv.poly(
            "metal",
            band(np.array([(cx - cr, cy - cr * 0.6), (cx - cr * 0.2, cy - cr * 0.2)]), cr * 0.15),
            1.0,
        )
    else:
        for s in (-1, 1):
            cv.poly(
                "metal",
                band(arc((cx + s * width * 0.25, cy), width * 0.26, cr * 0.6, 0, 180), cr * 0.25),
                1.0,
            )
        cv.poly("metal", rrect((cx, cy - cr * 0.5), width * 0.95, cr * 0.25, 0, 6), 1.0)
    ty = plateau + cr * 0.35
    cv.poly("metal", rrect((cx, ty), width * 0.95, cr * 0.22, 0, 8), 1.0)
    cv.poly("metal", capsule((cx, ty), (cx, ty + cr * 1.4), cr * 0.25, cr * 0.15), 1.0)


def _spinal(cv: Canvas, a: Anchors, hr: Gen, rods: bool) -> None:
    levels, lat, seg = a.extra["spine"]
    k = int(hr.integers(2, min(5, len(levels)) + 1))
    i0 = int(hr.integers(0, len(levels) - k + 1))
    heads: list[list[np.ndarray]] = [[], []]
    for c, w, h, ang in levels[i0 : i0 + k]:
        r = h * 0.09
        if lat:
            t = np.deg2rad(ang)
            ax = np.array([np.cos(t), np.sin(t)])
            head = np.asarray(c) + ax * w * 0.75
            screw(cv, tuple(head), tuple(np.asarray(c) - ax * w * 0.25), r, 1.3)
            heads[0].append(head - ax * r)
        else:
            for j, s in enumerate((-1, 1)):
                head = np.asarray(c) + np.array([s * w * 0.38, -h * 0.1])
                screw(
                    cv,
                    tuple(head),
                    tuple(np.asarray(c) + np.array([s * w * 0.08, h * 0.05])),
                    r,
                    1.3,
                )
                heads[j].append(head)
    if rods:
        for hs in heads:
            if len(hs) >= 2:
                pts = np.array(hs)
                ext = (pts[-1] - pts[0]) * 0.12
                pts = np.concatenate([[pts[0] - ext], pts, [pts[-1] + ext]])
                cv.poly("metal", band(pts, levels[0][2] * 0.13), 1.0)


def draw_instrument(cv: Canvas, instrument: str, view: str, a: Anchors, hr: Gen) -> None:
    """Draw ``instrument`` (already resolved for the body part) at the anchors."""
    if instrument == "screws" and "spine" in a.extra:
        _spinal(cv, a, hr, rods=False)
    elif instrument == "spinal_rods":
        _spinal(cv, a, hr, rods=True)
    elif instrument == "hip_prosthesis":
        _hip_prosthesis(cv, a, hr)
    elif instrument == "knee_prosthesis":
        _knee_prosthesis(cv, a, hr, view == "LAT")
    else:
        {"screws": _screws, "plate": _plate, "nail": _nail, "kwire": _kwire, "anchor": _anchor}[
            instrument
        ](cv, a, hr)


def _somewhere(a: Anchors, vr: Gen) -> np.ndarray:
    """A point on the soft tissue near the joint (the joint is always in view)."""
    p0, p1, r = a.limb[int(vr.integers(len(a.limb)))]
    far = p1 if np.hypot(*np.subtract(p1, a.joint)) > np.hypot(*np.subtract(p0, a.joint)) else p0
    d = np.subtract(far, a.joint)
    c = np.asarray(a.joint) + d / (np.hypot(*d) + 1e-9) * vr.uniform(0.0, 0.2)
    out: np.ndarray = c + vr.uniform(-1, 1, 2) * min(r * 0.6, 0.12)
    return out


def draw_distractor(cv: Canvas, kind: str, a: Anchors, vr: Gen) -> None:
    """Draw one non-instrument object: cast, IV line, ring, ECG electrode, button, zip."""
    if kind == "cast":
        for p0, p1, r in a.limb:
            q0 = lerp(a.joint, p0, 0.15) if np.hypot(*np.subtract(a.joint, p0)) < 0.3 else p0
            q1 = lerp(q0, p1, 0.7)
            cv.poly("distractor", capsule(q0, q1, r * 1.35, r * 1.3), 0.55)
            cv.poly("distractor", capsule(q0, q1, r * 1.22, r * 1.17), -0.4)
    elif kind == "iv_line":
        pts = [vr.uniform(0.0, 1.0, 2) for _ in range(3)]
        pts[0][1], pts[2][1] = vr.uniform(-0.05, 0.2), vr.uniform(0.8, 1.05)
        curve = bezier(tuple(pts[0]), tuple(pts[1]), tuple(pts[2]), 40)
        cv.line("distractor", curve, 0.005, 0.5)
        c = curve[int(vr.integers(8, 32))]
        cv.poly("distractor", rrect(tuple(c), 0.02, 0.04, vr.uniform(0, 180)), 0.35)
    elif kind == "ring":
        c = np.asarray(a.finger) if a.finger is not None else _somewhere(a, vr)
        cv.poly("distractor", rrect(tuple(c), 0.042, 0.011, vr.uniform(-8, 8), 3), 0.9)
    elif kind == "ecg_electrode":
        for _ in range(int(vr.integers(1, 4))):
            c = tuple(_somewhere(a, vr))
            cv.poly("distractor", ellipse(c, 0.028, 0.028), 0.15)
            cv.poly("distractor", ellipse(c, 0.007, 0.007), 0.9)
            cv.line(
                "distractor",
                bezier(c, tuple(vr.uniform(0, 1, 2)), tuple(vr.uniform(0, 1, 2))),
                0.004,
                0.35,
            )
    elif kind == "button":
        c0 = _somewhere(a, vr)
        step = np.array([0.0, 0.07 if c0[1] < 0.5 else -0.07])  # a button row, towards the centre
        for i in range(int(vr.integers(2, 5))):
            c = c0 + step * i
            cv.poly("distractor", ellipse(tuple(c), 0.014, 0.014), 0.6)
            for dx, dy in ((-1, -1), (1, -1), (-1, 1), (1, 1)):
                cv.poly(
                    "distractor",
                    ellipse((c[0] + dx * 0.004, c[1] + dy * 0.004), 0.002, 0.002),
                    -0.5,
                )
    elif kind == "zip":
        z0 = _somewhere(a, vr)
        d = np.array([np.sin(vr.uniform(-0.4, 0.4)), 1.0 if z0[1] < 0.5 else -1.0])
        for t in np.arange(0, vr.uniform(0.2, 0.45), 0.009):
            c = z0 + d * t
            cv.poly(
                "distractor",
                rrect(tuple(c + [0.003 * (-1) ** int(t / 0.009), 0]), 0.012, 0.005),
                0.6,
            )
        cv.poly("distractor", rrect(tuple(z0 - d * 0.02), 0.02, 0.03), 0.6)
    else:
        raise ValueError(f"unknown distractor {kind!r}")
