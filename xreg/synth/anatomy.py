"""Anatomy of the phantoms: which bones each body part and view shows, and where.

Each ``draw_*`` function draws one body part in a canonical frame (unit square,
y down, a *right* limb; the renderer mirrors for left) and returns
:class:`Anchors`, the places where hardware and distractors can sit. Per-patient
proportions come from ``pr`` (seeded by ``patient_seed``), per-view jitter from
``vr`` (seeded by ``seed``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xreg.synth._canvas import Canvas, Point

Shaft = tuple[Point, Point, float]  # (end near the joint, far end, outer radius)


@dataclass
class Anchors:
    """Where hardware and distractors may be placed, in canonical coordinates."""

    shaft: Shaft  # main long bone: plates, nails, screws, k-wires
    joint: Point  # centre of the joint in view: anchors
    limb: list[Shaft] = field(default_factory=list)  # soft-tissue envelope (casts)
    finger: Point | None = None  # where a ring can sit
    extra: dict[str, Any] = field(default_factory=dict)  # part-specific sites (tuples)
    frame: np.ndarray = field(default_factory=lambda: np.eye(3))  # canonical frame of the above


def framed(cv: Canvas, m: np.ndarray, draw: Callable[[], Anchors]) -> Anchors:
    """Run ``draw`` through the extra transform ``m`` and remember it in the anchors."""
    with cv.frame(m):
        a = draw()
    a.frame = m @ a.frame
    return a


DrawFn = Callable[[Canvas, str, np.random.Generator, np.random.Generator, "str | None"], Anchors]


def draw_anatomy(
    cv: Canvas,
    body_part: str,
    view: str,
    pr: np.random.Generator,
    vr: np.random.Generator,
    fracture: str | None = None,
) -> Anchors:
    """Draw ``body_part`` in ``view`` onto ``cv``; return its hardware anchors."""
    from xreg.synth import anatomy_axial, anatomy_foot, anatomy_limbs

    table: dict[str, DrawFn] = {
        "hand": anatomy_limbs.draw_hand,
        "wrist": anatomy_limbs.draw_wrist,
        "foot": anatomy_foot.draw_foot,
        "ankle": anatomy_foot.draw_ankle,
        "elbow": anatomy_limbs.draw_elbow,
        "knee": anatomy_limbs.draw_knee,
        "hip": anatomy_axial.draw_hip,
        "shoulder": anatomy_axial.draw_shoulder,
        "spine": anatomy_axial.draw_spine,
    }
    return table[body_part](cv, view, pr, vr, fracture)
