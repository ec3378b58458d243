"""Site augmentation step ``restyle``: give a film the look of another site.

Each source's look (exposure, processing, contrast histogram) names its class
unless a film can borrow another source's look. Two transfers, one or both per
film:

* **histogram matching**: the film's grey levels mapped (monotonically) onto a
  reference's grey-level distribution, partly (strength 0.5-1);
* **Fourier domain adaptation** (FDA; Yang & Soatto, CVPR 2020): the film's
  low-frequency amplitude spectrum, a window of half-side beta = 0.01-0.05 of
  the side around zero frequency, blended (0.5-1) towards a reference's; the
  phase, and with it the anatomy, is kept.

References come from a :class:`StyleBank`: quantiles and low-frequency
amplitudes of a sample of the training split's own films across sources,
built once per run (:func:`build_bank`, called by ``xreg/train/loop.py``) and
passed down as an argument; no module state. Without a bank the step still
restyles, towards a synthetic reference: a random smooth monotone grey-level
curve, and the film's own low-frequency amplitude scaled by random factors.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["StyleBank", "build_bank", "fourier", "histmatch", "restyle"]

Image = NDArray[np.float32]
QUANTILES = 256  # grey-level quantiles a reference keeps
_PROBS = (np.arange(QUANTILES, dtype=np.float64) + 0.5) / QUANTILES
BETA = (0.01, 0.05)  # FDA's window half-side, a fraction of the film's side


def _fft() -> object:
    try:
        import scipy.fft as fft  # float32 transforms, about twice numpy's speed
    except ImportError:  # pragma: no cover - the train extra has SciPy
        fft = np.fft
    return fft


def _window(n: int) -> int:
    """The largest FDA window half-side (in frequency bins) for a film side ``n``."""
    return max(1, math.ceil(BETA[1] * n))


def _low(spectrum: NDArray[np.complex64], k: int) -> NDArray[np.complex64]:
    """Rows 0..k and -k..-1, columns 0..k of an ``rfft2`` spectrum: (2k+1, k+1)."""
    return np.concatenate([spectrum[:k + 1, :k + 1], spectrum[-k:, :k + 1]])


@dataclass(frozen=True)
class StyleBank:
    """Reference looks: ``quantiles`` (N, 256) grey levels at probabilities
    (k + 0.5) / 256, and ``amplitude`` (N, 2K+1, K+1) low-frequency ``|rfft2|``
    divided by the film's pixel count (so films of any size compare)."""

    quantiles: NDArray[np.float32]
    amplitude: NDArray[np.float32]

    def __len__(self) -> int:
        return int(self.quantiles.shape[0])


def build_bank(films: Iterable[Image]) -> StyleBank:
    """A bank of the given films' looks (float ``(H, W)`` in [0, 1], ideally at the
    model's input size and sampled across sources)."""
    fft = _fft()
    quantiles, amplitude = [], []
    k = None
    for film in films:
        x = np.asarray(film, np.float32)
        k = _window(min(x.shape)) if k is None else k
        quantiles.append(np.quantile(x, _PROBS).astype(np.float32))
        spec = fft.rfft2(x)  # type: ignore[attr-defined]
        amplitude.append((np.abs(_low(spec, k)) / x.size).astype(np.float32))
    if not quantiles:
        raise ValueError("a style bank needs at least one film")
    return StyleBank(np.stack(quantiles), np.stack(amplitude))


def _synthetic_quantiles(rng: np.random.Generator) -> NDArray[np.float64]:
    """A random smooth monotone quantile function: another site's grey levels."""
    knots = np.concatenate([[0.0], np.cumsum(rng.dirichlet(np.full(6, 2.0)))])
    curve = np.interp(_PROBS, np.linspace(0, 1, 7), knots)
    lo, hi = rng.uniform(0.0, 0.15), rng.uniform(0.8, 1.0)
    out: NDArray[np.float64] = lo + (hi - lo) * curve
    return out


def histmatch(x: Image, rng: np.random.Generator,
              reference: NDArray[np.floating] | None = None) -> Image:
    """Map the film's grey levels onto ``reference`` quantiles (256 of them,
    at probabilities (k + 0.5) / 256), or a synthetic curve's, strength 0.5-1."""
    ref = _synthetic_quantiles(rng) if reference is None else np.asarray(reference, np.float64)
    u8 = np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)
    counts = np.bincount(u8.ravel(), minlength=256)
    cdf = (np.cumsum(counts) - counts / 2) / u8.size  # each level's mid-rank probability
    lut = np.interp(cdf, _PROBS, ref).astype(np.float32)
    strength = np.float32(rng.uniform(0.5, 1.0))
    out = x + strength * (lut[u8] - x)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def fourier(x: Image, rng: np.random.Generator,
            reference: NDArray[np.floating] | None = None) -> Image:
    """Swap the film's low-frequency amplitude for ``reference``'s (a bank row,
    ``|rfft2|`` / pixels), or for its own scaled at random; keep the phase."""
    fft = _fft()
    x = np.asarray(x, np.float32)
    h, w = x.shape
    spec = fft.rfft2(x)  # type: ignore[attr-defined]
    big = 2 * (min(h, w) // 2) - 1  # the window must fit the spectrum
    k = min(max(1, round(rng.uniform(*BETA) * min(h, w))), max(1, big // 2))
    if reference is not None:
        bank_k = (reference.shape[0] - 1) // 2
        k = min(k, bank_k)
        rows = np.r_[0:k + 1, reference.shape[0] - k:reference.shape[0]]
        target = reference[rows, :k + 1].astype(np.float32) * np.float32(x.size)
    own = np.abs(_low(spec, k))
    if reference is None:
        target = own * np.exp(rng.normal(0.0, 0.35, own.shape)).astype(np.float32)
        target[0, 0] = own[0, 0] * np.float32(math.exp(rng.normal(0.0, 0.1)))
    lam = np.float32(rng.uniform(0.5, 1.0))
    ratio = (own + lam * (target - own)) / np.maximum(own, np.float32(1e-6))
    spec[:k + 1, :k + 1] *= ratio[:k + 1]
    spec[-k:, :k + 1] *= ratio[k + 1:]
    out = fft.irfft2(spec, s=(h, w))  # type: ignore[attr-defined]
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def restyle(x: Image, rng: np.random.Generator, bank: StyleBank | None = None) -> Image:
    """Another site's look: histogram matching (40%), FDA (30%) or both (30%),
    towards one reference drawn from ``bank`` (or synthetic references)."""
    i = int(rng.integers(len(bank))) if bank is not None and len(bank) else None
    u = rng.random()
    out = np.asarray(x, np.float32)
    if u >= 0.4:
        out = fourier(out, rng, None if i is None or bank is None else bank.amplitude[i])
    if u < 0.4 or u >= 0.7:
        out = histmatch(out, rng, None if i is None or bank is None else bank.quantiles[i])
    return out
