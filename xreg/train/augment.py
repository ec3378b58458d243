"""Site augmentation: make every source look like any hospital's films.

A model trained on several sources learns each source's *look* as its class
(small, equalised films = spine; tight crops = shoulder) unless the look stops
telling the sources apart. So each training film is randomly re-acquired and
re-processed the ways hospitals differ: framing (random resized crops down to
a single joint, letterbox and padding, collimation borders, arbitrary
rotation), processing (CLAHE and global equalisation, gamma and window,
inversion), export (down-then-up sampling, JPEG recompression) and annotation
(burned-in text and side markers), plus noise and blur. Two opt-in steps
break the shortcuts a look cannot hide: ``hardware`` pastes the phantom
renderer's metal onto films of every class (:mod:`xreg.train.augment_metal`;
the loop then labels the film ``instrument``) and ``restyle`` gives a film
another site's grey levels and low-frequency spectrum
(:mod:`xreg.train.augment_style`; its references come from a
:class:`~xreg.train.augment_style.StyleBank` of training films).

Every step is a pure function of ``(image, rng)``: float32 ``(H, W)`` in [0, 1]
in, the same range out. :func:`augment_film` applies the enabled steps, each
with its own probability, and resizes to the model's input; a seeded
``numpy.random.Generator`` makes it reproducible. OpenCV does the pixel work
(the ``train`` extra); the sort never imports this module.
"""

from __future__ import annotations

import math
import string
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Literal, overload

import numpy as np
from numpy.typing import NDArray

from xreg.errors import ConfigError
from xreg.train.augment_metal import hardware
from xreg.train.augment_style import StyleBank, restyle

__all__ = ["OPT_IN", "STEPS", "SITE_DEFAULTS", "augment_film", "check_steps"]

Image = NDArray[np.float32]


def _cv2() -> Any:
    try:
        import cv2
    except ImportError:  # pragma: no cover - the train extra has it
        raise ConfigError('site augmentation needs OpenCV: pip install "xreg[train]"') from None
    cv2.setNumThreads(1)  # the decode and training threads already use the cores
    return cv2


def _u8(x: Image) -> NDArray[np.uint8]:
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _f32(x: NDArray[np.uint8]) -> Image:
    return x.astype(np.float32) / 255.0


def _fill(rng: np.random.Generator) -> float:
    """Border colour: mostly black, sometimes white or mid grey, as films show."""
    return float(rng.choice([0.0, 0.0, 0.0, 1.0, 0.5]))


# -- geometry ---------------------------------------------------------------------------

def crop(x: Image, rng: np.random.Generator, min_area: float = 0.25) -> Image:
    """A random box of ``min_area``..1 of the film, aspect 3:4..4:3 (down to one joint)."""
    h, w = x.shape
    for _ in range(10):
        area = rng.uniform(min_area, 1.0) * h * w
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        ch, cw = int(round(math.sqrt(area / aspect))), int(round(math.sqrt(area * aspect)))
        if 8 <= ch <= h and 8 <= cw <= w:
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            return x[top:top + ch, left:left + cw]
    return x


def rotate(x: Image, rng: np.random.Generator) -> Image:
    """Any angle; the corners the film no longer covers take a border colour."""
    cv2 = _cv2()
    h, w = x.shape
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), float(rng.uniform(-180, 180)), 1.0)
    return cv2.warpAffine(x, matrix, (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=_fill(rng))


def letterbox(x: Image, rng: np.random.Generator) -> Image:
    """The film shrunk (aspect changed too) onto a larger canvas of a border colour."""
    cv2 = _cv2()
    h, w = x.shape
    sh, sw = rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0)
    nh, nw = max(8, int(h * sh)), max(8, int(w * sw))
    small = cv2.resize(x, (nw, nh), interpolation=cv2.INTER_AREA)
    out = np.full((h, w), _fill(rng), np.float32)
    top, left = int(rng.integers(0, h - nh + 1)), int(rng.integers(0, w - nw + 1))
    out[top:top + nh, left:left + nw] = small
    return out


def collimate(x: Image, rng: np.random.Generator) -> Image:
    """Collimation: bands of 0-18% of the side on some edges take a border colour."""
    out = x.copy()
    h, w = x.shape
    value = _fill(rng)
    for edge in range(4):
        if rng.random() < 0.6:
            side = h if edge < 2 else w
            k = int(side * rng.uniform(0.02, 0.18))
            if edge == 0:
                out[:k] = value
            elif edge == 1:
                out[h - k:] = value
            elif edge == 2:
                out[:, :k] = value
            else:
                out[:, w - k:] = value
    return out


# -- processing -------------------------------------------------------------------------

def window(x: Image, rng: np.random.Generator) -> Image:
    """A random gamma and window (contrast, brightness): another exposure and LUT."""
    lo, hi = rng.uniform(-0.1, 0.25), rng.uniform(0.75, 1.1)
    gamma = math.exp(rng.uniform(-0.6, 0.6))
    return np.clip((np.clip(x, 0, 1) ** gamma - lo) / (hi - lo), 0, 1).astype(np.float32)


def clahe(x: Image, rng: np.random.Generator) -> Image:
    """Contrast-limited adaptive equalisation, as many exports apply it."""
    cv2 = _cv2()
    tiles = int(rng.integers(2, 9))
    op = cv2.createCLAHE(clipLimit=float(rng.uniform(1.0, 4.0)), tileGridSize=(tiles, tiles))
    return _f32(op.apply(_u8(x)))


def equalise(x: Image, rng: np.random.Generator) -> Image:
    """Global histogram equalisation."""
    return _f32(_cv2().equalizeHist(_u8(x)))


def invert(x: Image, rng: np.random.Generator) -> Image:
    """Bone dark: a MONOCHROME1 film shown raw, or an inverted export."""
    return (1.0 - x).astype(np.float32)


def resample(x: Image, rng: np.random.Generator) -> Image:
    """Down to 20-70% and back up: a small archive copy of a large film."""
    cv2 = _cv2()
    h, w = x.shape
    f = rng.uniform(0.2, 0.7)
    small = cv2.resize(x, (max(8, int(w * f)), max(8, int(h * f))),
                       interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def jpeg(x: Image, rng: np.random.Generator) -> Image:
    """JPEG recompression at quality 20-90."""
    cv2 = _cv2()
    ok, data = cv2.imencode(".jpg", _u8(x), [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(20, 91))])
    return _f32(cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)) if ok else x


def text(x: Image, rng: np.random.Generator) -> Image:
    """Burned-in annotations: side markers (L, R), short labels and a marker box."""
    cv2 = _cv2()
    out = x.copy()
    h, w = x.shape
    for _ in range(int(rng.integers(1, 4))):
        if rng.random() < 0.5:
            label = str(rng.choice(["L", "R", "LT", "RT", "AP", "PA", "LAT"]))
        else:
            alphabet = list(string.ascii_uppercase + string.digits + " :/.-")
            label = "".join(rng.choice(alphabet, int(rng.integers(3, 14))))
        scale = rng.uniform(0.3, 1.6) * min(h, w) / 256
        thick = max(1, int(round(scale * 2)))
        org = (int(rng.integers(0, max(1, w - 20))), int(rng.integers(10, h)))
        value = float(rng.uniform(0.85, 1.0)) if rng.random() < 0.85 else 0.0
        if rng.random() < 0.25:  # a lead marker: a filled box with the letter cut out
            (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
            x0, y0 = max(0, org[0] - 3), max(0, org[1] - th - 3)
            out[y0:org[1] + 4, x0:org[0] + tw + 3] = value
            value = 1.0 - value
        # OpenCV draws text on 8-bit images only: draw a coverage mask, blend in float.
        mask = np.zeros((h, w), np.uint8)
        cv2.putText(mask, label, org, cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thick,
                    cv2.LINE_AA)
        alpha = mask.astype(np.float32) / 255.0
        out = out * (1.0 - alpha) + value * alpha
    return np.clip(out, 0, 1).astype(np.float32)


def noise(x: Image, rng: np.random.Generator) -> Image:
    """Quantum noise: Gaussian, sigma 0.01-0.05."""
    sigma = rng.uniform(0.01, 0.05)
    return np.clip(x + rng.normal(0, sigma, x.shape).astype(np.float32), 0, 1)


def blur(x: Image, rng: np.random.Generator) -> Image:
    """Unsharpness: a Gaussian blur of sigma 0.5-1.8 pixels of the model's input."""
    return np.clip(_cv2().GaussianBlur(x, (0, 0), float(rng.uniform(0.5, 1.8))), 0, 1)


#: Step name -> function, in the order they are applied: framing, then what the
#: acquisition shows (metal) and the site's look, then the processing a
#: workstation applies, then annotation, export and noise.
STEPS: Mapping[str, Callable[[Image, np.random.Generator], Image]] = MappingProxyType({
    "crop": crop, "rotate": rotate, "letterbox": letterbox, "collimate": collimate,
    "hardware": hardware, "restyle": restyle,
    "window": window, "clahe": clahe, "equalise": equalise, "text": text,
    "invert": invert, "blur": blur, "noise": noise, "resample": resample, "jpeg": jpeg,
})
_GEOMETRY = ("crop", "rotate", "letterbox", "collimate")
#: Steps that are off unless a recipe names them: they are not in SITE_DEFAULTS
#: (so ``default`` and the saved recipes of runs started before them, which a
#: resume compares, stay as they were) and draw their coin only when enabled
#: (so the other steps see the same random numbers as without them).
OPT_IN: tuple[str, ...] = ("hardware", "restyle")

#: The probabilities ``site_augment: default`` stands for (configs may set each;
#: ``{default: true, hardware: 0.3}`` is these plus ``hardware``). A step not
#: listed has probability 0.
SITE_DEFAULTS: Mapping[str, float] = MappingProxyType({
    "crop": 0.5, "rotate": 0.3, "letterbox": 0.25, "collimate": 0.25,
    "window": 0.5, "clahe": 0.3, "equalise": 0.15, "text": 0.3, "invert": 0.05,
    "blur": 0.2, "noise": 0.2, "resample": 0.3, "jpeg": 0.3,
})


def check_steps(steps: Mapping[str, float | bool]) -> dict[str, float]:
    """Validate ``{step: probability}``; ``ConfigError`` names an unknown step or bad value.

    A ``default: true`` entry starts from :data:`SITE_DEFAULTS`, which the
    other entries then override (``default: false`` starts from nothing).
    """
    if not isinstance(steps, Mapping):
        raise ConfigError("train config key 'site_augment': must be a mapping of step "
                          f"to probability (steps: {', '.join(STEPS)})")
    out: dict[str, float] = {}
    if "default" in steps:
        if not isinstance(steps["default"], bool):
            raise ConfigError("train config key 'site_augment': default must be true or "
                              f"false, got {steps['default']!r}")
        out = dict(SITE_DEFAULTS) if steps["default"] else {}
    for name, p in steps.items():
        if name == "default":
            continue
        if name not in STEPS:
            raise ConfigError(f"train config key 'site_augment': unknown step {name!r} "
                              f"(known: {', '.join(STEPS)})")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise ConfigError(f"train config key 'site_augment': {name} must be a "
                              f"probability in [0, 1], got {p!r}")
        out[name] = float(p)
    return out


@overload
def augment_film(x: Image, size: int, steps: Mapping[str, float], rng: np.random.Generator,
                 *, bank: StyleBank | None = ..., return_flags: Literal[False] = ...
                 ) -> Image: ...


@overload
def augment_film(x: Image, size: int, steps: Mapping[str, float], rng: np.random.Generator,
                 *, bank: StyleBank | None = ..., return_flags: Literal[True]
                 ) -> tuple[Image, dict[str, bool]]: ...


def augment_film(x: Image, size: int, steps: Mapping[str, float],
                 rng: np.random.Generator, *, bank: StyleBank | None = None,
                 return_flags: bool = False) -> Image | tuple[Image, dict[str, bool]]:
    """One film (float32 ``(H, W)`` in [0, 1]) through the enabled steps, at ``size``.

    Framing runs at the cached resolution (a crop keeps the detail it needs),
    the rest at the model's input size, where processing and export leave
    their traces. Each step draws its own coin, in :data:`STEPS` order.
    ``bank`` holds the reference looks ``restyle`` borrows (synthetic ones
    without it). With ``return_flags`` the result is ``(film, flags)``, where
    ``flags["hardware"]`` says metal was pasted (the film now shows an instrument).
    """
    cv2 = _cv2()
    x = np.asarray(x, np.float32)
    for name in _GEOMETRY:
        if rng.random() < steps.get(name, 0.0):
            x = STEPS[name](x, rng)
    x = cv2.resize(x, (size, size), interpolation=cv2.INTER_AREA
                   if min(x.shape) > size else cv2.INTER_LINEAR)
    flags = {"hardware": False}
    for name, step in STEPS.items():
        p = steps.get(name, 0.0)
        if name in _GEOMETRY or (name in OPT_IN and p <= 0.0) or rng.random() >= p:
            continue
        if name == "restyle":
            x = restyle(x, rng, bank)
        else:
            x = step(x, rng)
        if name == "hardware":
            flags["hardware"] = True
    x = np.clip(x, 0.0, 1.0).astype(np.float32, copy=False)
    return (x, flags) if return_flags else x
