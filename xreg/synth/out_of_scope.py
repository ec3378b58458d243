"""Radiographs xreg should *not* sort into a body part: chest, skull, abdomen, blank.

Rough but recognisable phantoms for calibrating the "out of scope" decision
(they should land in ``_review/``). Same image formation as the in-scope
phantoms, so the model cannot tell them apart by noise or contrast alone.
"""

from __future__ import annotations

import numpy as np

from xreg.errors import XregError
from xreg.synth._canvas import (
    Canvas,
    affine,
    arc,
    band,
    bezier,
    bone_ellipse,
    bone_poly,
    ellipse,
    rrect,
)
from xreg.synth.render import _burn_marker, _form_image

OUT_OF_SCOPE = ("chest", "skull", "abdomen", "blank")
#: Out-of-scope kinds in the order ``xreg synth --out-of-scope`` cycles through;
#: "photo" is a colour picture, not a radiograph at all.
OUT_OF_SCOPE_FILES = (*OUT_OF_SCOPE, "photo")


def _chest(cv: Canvas, rng: np.random.Generator) -> None:
    cv.poly("soft", rrect((0.5, 0.55), 1.1, 1.2, 0, 6), 1.6, maximum=True)
    for s in (-1, 1):
        lung = np.array(
            [
                [0.5 + s * 0.06, 0.12],
                [0.5 + s * 0.3, 0.2],
                [0.5 + s * 0.42, 0.6],
                [0.5 + s * 0.4, 0.85],
                [0.5 + s * 0.08, 0.75],
            ]
        )
        cv.poly("soft", lung, -0.85)
        for i in range(10):
            y = 0.16 + i * 0.065
            cv.poly(
                "bone",
                band(
                    arc(
                        (0.5 + s * 0.02, y + 0.12),
                        0.4,
                        0.16,
                        250 if s > 0 else 200,
                        340 if s > 0 else 290,
                    ),
                    0.022,
                ),
                0.35,
            )
        cv.poly(
            "bone",
            band(
                bezier((0.5 + s * 0.04, 0.13), (0.5 + s * 0.2, 0.08), (0.5 + s * 0.4, 0.12)), 0.03
            ),
            0.7,
        )  # clavicles
    cv.poly("soft", ellipse((0.46 + rng.uniform(-0.02, 0.02), 0.68), 0.17, 0.13, -15), 0.6)  # heart
    for i in range(12):
        cv.poly("bone", rrect((0.5, 0.1 + i * 0.07), 0.07, 0.05), 0.45)


def _skull(cv: Canvas, rng: np.random.Generator) -> None:
    lateral = rng.random() < 0.5
    rx, ry = (0.4, 0.33) if lateral else (0.34, 0.38)
    c = (0.5, 0.42)
    cv.poly("soft", ellipse(c, rx + 0.03, ry + 0.03), 0.8, maximum=True)
    cv.poly("bone", ellipse(c, rx, ry), 0.9)
    cv.poly("bone", ellipse(c, rx - 0.025, ry - 0.025), -0.75)
    if lateral:
        bone_poly(
            cv, np.array([[0.12, 0.5], [0.35, 0.6], [0.4, 0.8], [0.25, 0.92], [0.12, 0.75]]), 0.5
        )
        cv.poly("bone", band(bezier((0.3, 0.93), (0.55, 1.0), (0.62, 0.72)), 0.05), 0.8)  # mandible
        bone_ellipse(cv, (0.55, 0.5), 0.03, 0.02, 0, 0.4)  # sella
    else:
        for s in (-1, 1):
            bone_ellipse(cv, (0.5 + s * 0.13, 0.52), 0.08, 0.07, 0, 0.35, 0.3)  # orbits
        cv.poly("bone", band(bezier((0.25, 0.8), (0.5, 1.05), (0.75, 0.8)), 0.05), 0.8)


def _abdomen(cv: Canvas, rng: np.random.Generator) -> None:
    cv.poly("soft", rrect((0.5, 0.5), 1.1, 1.2, 0, 6), 1.0, maximum=True)
    for i in range(5):
        cv.poly("bone", rrect((0.5, 0.15 + i * 0.12), 0.12, 0.085), 0.8)
    for s in (-1, 1):
        bone_poly(
            cv,
            np.array(
                [
                    [0.5 + s * 0.08, 0.75],
                    [0.5 + s * 0.35, 0.62],
                    [0.5 + s * 0.45, 0.78],
                    [0.5 + s * 0.3, 1.0],
                    [0.5 + s * 0.1, 1.0],
                ]
            ),
            0.5,
        )  # iliac wings
    for _ in range(int(rng.integers(6, 14))):  # bowel gas
        p = rng.uniform(0.15, 0.85, 2)
        cv.poly(
            "soft",
            ellipse(
                tuple(p), rng.uniform(0.02, 0.06), rng.uniform(0.015, 0.04), rng.uniform(0, 180)
            ),
            -0.5,
        )


def render_out_of_scope(kind: str, seed: int, size: int = 1024) -> np.ndarray:
    """A float32 [0, 1] radiograph of something that is not a musculoskeletal joint."""
    if kind not in OUT_OF_SCOPE:
        raise XregError(f"out-of-scope kind {kind!r} not in {OUT_OF_SCOPE}")
    rng = np.random.default_rng([seed, 3])
    cv = Canvas(size)
    pose = affine(rng.uniform(-6, 6), rng.uniform(0.9, 1.05), tuple(rng.uniform(-0.03, 0.03, 2)))
    with cv.frame(pose):
        if kind == "chest":
            _chest(cv, rng)
        elif kind == "skull":
            _skull(cv, rng)
        elif kind == "abdomen":
            _abdomen(cv, rng)
        else:
            cv.layers["soft"] += np.float32(rng.uniform(0.0, 1.5))
    np.clip(cv.layers["soft"], 0, None, out=cv.layers["soft"])
    image, field = _form_image(cv, rng)
    if kind != "blank" or rng.random() < 0.5:
        _burn_marker(image, str(rng.choice(["L", "R"])), rng, field)
    return image


def render_photo(seed: int, size: int = 1024) -> np.ndarray:
    """A (size, size, 3) uint8 colour picture of smooth blobs: someone's photograph.

    Users drop phone pictures and screenshots into imaging shares; they must
    end up in ``_review``, not in a body part folder.
    """
    rng = np.random.default_rng([seed, 4])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    image = np.zeros((size, size, 3), np.float32)
    image += rng.uniform(0.2, 0.8, 3).astype(np.float32)  # background colour
    for _ in range(int(rng.integers(4, 9))):
        cx, cy = rng.uniform(0, 1, 2)
        radius = rng.uniform(0.08, 0.35)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius ** 2))
        image += blob[..., None] * rng.uniform(-0.6, 0.6, 3).astype(np.float32)
    image += rng.normal(0, 0.02, image.shape).astype(np.float32)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
