"""Render a :class:`PhantomSpec` into a :class:`Phantom` radiograph.

Anatomy, hardware and distractors are drawn as per-material thickness maps
(``_canvas``); this module turns them into an image: Beer-Lambert attenuation,
trabecular texture, scatter, exposure and gamma, quantum noise, collimation
and a burned-in laterality marker. Randomness comes from three generators,
all seeded from the spec: the view (``seed``: pose, exposure, noise), the
patient's anatomy and the patient's implant (``patient_seed``, or ``seed``
when it is None), so the AP and lateral of one patient share proportions,
implant and fracture.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import gaussian_filter

from xreg.errors import XregError
from xreg.synth._canvas import Canvas, affine
from xreg.synth.anatomy import draw_anatomy
from xreg.synth.hardware import draw_distractor, draw_instrument, resolve_instrument
from xreg.synth.spec import (
    BODY_PARTS,
    DISTRACTORS,
    FRACTURES,
    INSTRUMENTS,
    VIEWS,
    Phantom,
    PhantomSpec,
)

METAL_LEVEL = 0.95  # instruments render at or above this
NON_METAL_MAX = 0.9  # everything else (bone, casts, rings, markers) stays below
_POSE_ROT = {"hand": 10.0, "foot": 10.0, "spine": 6.0, "hip": 6.0}


def _check(spec: PhantomSpec) -> None:
    problems = []
    if spec.body_part not in BODY_PARTS:
        problems.append(f"body_part {spec.body_part!r} not in {BODY_PARTS}")
    if spec.view not in VIEWS:
        problems.append(f"view {spec.view!r} not in {VIEWS}")
    if spec.laterality not in ("L", "R"):
        problems.append(f"laterality {spec.laterality!r} not 'L' or 'R'")
    if spec.instrument is not None and spec.instrument not in INSTRUMENTS:
        problems.append(f"instrument {spec.instrument!r} not in {INSTRUMENTS}")
    bad = [d for d in spec.distractors if d not in DISTRACTORS]
    if bad:
        problems.append(f"distractors {bad} not in {DISTRACTORS}")
    if spec.fracture is not None and (spec.fracture not in FRACTURES or spec.body_part != "hip"):
        problems.append(f"fracture {spec.fracture!r} needs body_part 'hip' and one of {FRACTURES}")
    if spec.size < 64:
        problems.append(f"size {spec.size} is below 64")
    if problems:
        raise XregError("invalid phantom spec: " + "; ".join(problems))


def render_phantom(spec: PhantomSpec) -> Phantom:
    """Draw one phantom radiograph; the same spec always gives the same pixels."""
    _check(spec)
    vr = np.random.default_rng([spec.seed, 0])
    pseed = spec.seed if spec.patient_seed is None else spec.patient_seed
    pr = np.random.default_rng([pseed, 1])
    hr = np.random.default_rng([pseed, 2])
    n = spec.size
    cv = Canvas(n)
    rot = _POSE_ROT.get(spec.body_part, 12.0)
    pose = affine(
        vr.uniform(-rot, rot),
        vr.uniform(0.92, 1.04),
        tuple(vr.uniform(-0.03, 0.03, 2)),
        mirror=spec.laterality == "L",
    )
    with cv.frame(pose):
        anchors = draw_anatomy(cv, spec.body_part, spec.view, pr, vr, spec.fracture)
        with cv.frame(anchors.frame):
            if spec.instrument is not None:
                inst = resolve_instrument(spec.body_part, spec.instrument)
                draw_instrument(cv, inst, spec.view, anchors, hr)
            for d in spec.distractors:
                draw_distractor(cv, d, anchors, vr)
    image, field = _form_image(cv, vr)
    _burn_marker(image, spec.laterality, vr, field)
    masks = {
        "hardware": (cv.layers["metal"] > 0.5) & field,
        "distractor": (cv.layers["distractor"] > 0.05) & field,
        "fracture": (cv.layers["fracture"] > 0.5) & field,
    }
    return Phantom(image=image, spec=spec, masks=masks)


def _lowres_blur(a: np.ndarray, factor: int, sigma: float) -> np.ndarray:
    """Heavy Gaussian blur computed at 1/``factor`` resolution (cheap)."""
    n = a.shape[0]
    small = Image.fromarray(a).reduce(factor)
    blurred = gaussian_filter(np.asarray(small), sigma, mode="nearest")
    return np.array(Image.fromarray(blurred).resize((n, n), Image.Resampling.BILINEAR))


def _blur3(a: np.ndarray, passes: int) -> np.ndarray:
    """Small separable [1, 2, 1] / 4 blur (sigma ~0.7 px per pass), cheaper than scipy."""
    for _ in range(passes):
        for ax in (0, 1):
            b = a * np.float32(0.5)
            lo = [slice(None)] * 2
            hi = [slice(None)] * 2
            lo[ax], hi[ax] = slice(0, -1), slice(1, None)
            b[tuple(hi)] += a[tuple(lo)] * np.float32(0.25)
            b[tuple(lo)] += a[tuple(hi)] * np.float32(0.25)
            a = b
    return a


def _noise(vr: np.random.Generator, n: int, grain: int) -> np.ndarray:
    """Zero-mean, unit-ish band-limited noise with blobs about ``grain`` px wide."""
    m = max(8, n // grain)
    small = vr.standard_normal((m, m), dtype=np.float32)
    return np.array(Image.fromarray(small).resize((n, n), Image.Resampling.BILINEAR))


def _form_image(cv: Canvas, vr: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n = cv.size
    px = n / 512.0
    L = cv.layers
    soft = _lowres_blur(L["soft"], 8, 1.2)
    # blur is linear, so bone and distractors share one pass (edge softness of the focal spot)
    np.clip(L["bone"], 0, None, out=L["bone"])
    dense = L["bone"] * np.float32(vr.uniform(0.8, 1.2))
    mu_dist = np.float32(vr.uniform(1.4, 1.8))
    if L["distractor"].any():
        dense += np.clip(L["distractor"], 0, None) * mu_dist
    dense = _blur3(dense, max(1, round(px * 1.3)))
    tex = _noise(vr, n, int(vr.integers(3, 6)))
    tex *= np.float32(vr.uniform(0.12, 0.25))
    tex += 1.0
    dense *= tex
    dense += soft * np.float32(vr.uniform(0.3, 0.5))
    # tone curve 1 - exp(-att), gamma and window through one lookup table
    lo, hi = vr.uniform(0.0, 0.08), vr.uniform(0.78, NON_METAL_MAX - 0.02)
    gamma = vr.uniform(0.6, 1.1)
    grid = np.linspace(0.0, 8.0, 4097, dtype=np.float32)
    lut = (lo + (hi - lo) * (1.0 - np.exp(-grid)) ** gamma).astype(np.float32)
    idx = np.minimum(dense * np.float32(512.0), np.float32(4096)).astype(np.int32)
    img = lut[idx]
    heel = vr.uniform(-0.12, 0.12, 2) / n  # uneven exposure (anode heel effect)
    ramp = np.arange(n, dtype=np.float32) - n / 2
    img *= (1.0 + np.float32(heel[0]) * ramp)[None, :] + (np.float32(heel[1]) * ramp)[:, None]
    sc = np.float32(vr.uniform(0.05, 0.2))
    img = img * (1 - sc) + _lowres_blur(img, 8, 4.0) * sc  # scatter
    grain = vr.random((n, n), dtype=np.float32)  # uniform quantum noise: cheaper than normal
    grain -= 0.5
    img += grain * np.float32(vr.uniform(0.004, 0.02) * 3.46)
    np.clip(img, 0.0, NON_METAL_MAX, out=img)
    metal = L["metal"]
    if metal.any():
        # drawn metal pixels are fully metal (thin k-wires too); the blur only softens the rim
        mm = np.maximum(
            np.clip(_blur3(metal, max(1, round(px * 0.6))) * 2.5, 0, 1), np.clip(metal * 2.0, 0, 1)
        )
        level = np.float32(vr.uniform(0.975, 1.0))
        img += mm * (level - img - grain * np.float32(0.03))
    field = _collimation(vr, n)
    outside = np.float32(vr.uniform(0.0, 0.06))
    if not field.all():
        img[~field] = outside
    return np.clip(img, 0.0, 1.0, out=img), field


def _collimation(vr: np.random.Generator, n: int) -> np.ndarray:
    """Boolean field of view: a slightly rotated rectangle (or the whole image)."""
    if vr.random() < 0.4:
        return np.ones((n, n), bool)
    m = vr.uniform(0.0, 0.05, 4)
    img = Image.new("1", (n, n))
    rect = np.array([[m[0], m[1]], [1 - m[2], m[1]], [1 - m[2], 1 - m[3]], [m[0], 1 - m[3]]]) * n
    a = np.deg2rad(vr.uniform(-2, 2))
    c = np.array([n / 2, n / 2])
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    pts = (rect - c) @ rot.T + c
    ImageDraw.Draw(img).polygon([tuple(p) for p in pts], fill=1)
    return np.asarray(img, bool)


def _burn_marker(img: np.ndarray, side: str, vr: np.random.Generator, field: np.ndarray) -> None:
    """A lead-letter marker: patient's right on the viewer's left, left on the right."""
    n = img.shape[0]
    fs = max(8, int(n * vr.uniform(0.045, 0.065)))
    font = ImageFont.load_default(size=fs)
    w = int(fs * 1.2)
    stamp = Image.new("L", (w, w), 0)
    d = ImageDraw.Draw(stamp)
    d.rectangle([0, 0, w - 1, w - 1], outline=255, width=max(1, fs // 12))
    d.text((w / 2, w / 2), side, fill=255, font=font, anchor="mm")
    ys = np.nonzero(field.any(1))[0]
    xs = np.nonzero(field.any(0))[0]
    margin = int(n * 0.07)
    top = vr.random() < 0.7
    y = int(ys[0] + margin * vr.uniform(0.6, 1.5)) if top else int(ys[-1] - margin * 1.5 - w)
    inset = margin * vr.uniform(0.6, 1.4)
    x = int(xs[0] + inset) if side == "R" else int(xs[-1] - inset - w)
    y, x = int(np.clip(y, 0, n - w)), int(np.clip(x, 0, n - w))
    s = np.asarray(stamp, np.float32) / 255.0
    region = img[y : y + w, x : x + w]
    region[:] = np.maximum(region, s * vr.uniform(0.8, 0.88))
