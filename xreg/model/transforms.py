"""Preprocessing for training and attributions, as torch tensors.

The same steps as :mod:`xreg.inference.preprocess` (whose resize it uses):
grey pixels in [0, 1] -> antialiased square resize to ``card.input_size`` ->
``(x - card.mean) / card.std`` -> the single channel repeated to 3.
Training caches the resized grey images (:func:`resize_grey`, the very step
inference takes) and augments whole batches with :func:`augment_batch`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from xreg.inference.preprocess import Preprocessor as _Steps
from xreg.inference.preprocess import resize_grey as _resize
from xreg.model.card import ModelCard

__all__ = ["Preprocessor", "augment_batch", "join_views", "preprocess", "resize_grey"]


class Preprocessor:
    """Callable ``pixels -> (3, S, S) float32 tensor`` built once from a card.

    A torch view of :class:`xreg.inference.preprocess.Preprocessor`, the one
    implementation the sort uses. It holds no mutable state, so one
    instance may be called from several threads at once.
    """

    def __init__(self, card: ModelCard) -> None:
        self._steps = _Steps(card)
        self.size = card.input_size

    def __call__(self, pixels: np.ndarray) -> torch.Tensor:
        """Preprocess one grey image (2-D, values in [0, 1]).

        The result is an ``expand``ed view (3 channels share memory): stack or
        copy it before writing into it.
        """
        x = torch.from_numpy(self._steps.grey(pixels))
        return x.expand(3, self.size, self.size)

    def pair(self, ap: np.ndarray, lateral: np.ndarray) -> torch.Tensor:
        """Preprocess a hip pair: ``(3, S, 2S)``, the AP on the left (thesis layout)."""
        x = torch.from_numpy(self._steps.grey_pair(ap, lateral))
        return x.expand(3, self.size, 2 * self.size)


def join_views(x: torch.Tensor) -> torch.Tensor:
    """``(..., 2, S, S)`` AP and lateral -> ``(..., S, 2S)``, AP left, lateral right."""
    return torch.cat([x[..., 0, :, :], x[..., 1, :, :]], dim=-1)


def preprocess(pixels: np.ndarray, card: ModelCard) -> torch.Tensor:
    """One-off form of ``Preprocessor(card)(pixels)``."""
    return Preprocessor(card)(pixels)


def resize_grey(pixels: np.ndarray, size: int) -> torch.Tensor:
    """A 2-D grey image as a ``(size, size)`` float32 tensor (antialiased bilinear).

    The very resize inference uses (:func:`xreg.inference.preprocess.resize_grey`),
    so training caches what the sort will show the model. Without a resize
    the result shares memory with ``pixels``.
    """
    # Writable: torch warns on read-only arrays.
    return torch.from_numpy(np.require(_resize(pixels, size), np.float32, ["C", "W"]))


def augment_batch(
    x: torch.Tensor, generator: torch.Generator, *, hflip: bool, rot90: bool,
    rotate: float = 0.0, scale: float = 0.0, shift: float = 0.0, intensity: float = 0.0,
) -> torch.Tensor:
    """Randomly flip (p=0.5) and rotate by k*90 degrees each image of ``(B, S, S)``.

    For hip pairs, ``(B, 2, S, S)``: both views of a pair get the same
    transform, and each view stays in its own half after joining.

    Draws from ``generator`` only, so a seeded epoch is reproducible. The
    thesis's augmentation; square inputs keep their shape under rotation.
    Beyond it (all off by default): a random affine map, rotation up to
    ``rotate`` degrees, zoom by up to ``scale`` (0.1: 0.9-1.1) and shift by up
    to ``shift`` of the side, with black outside the film; and, with
    ``intensity`` (e.g. 0.2), a random gamma, contrast and brightness, since
    exposure and processing differ between machines. Values stay in [0, 1].
    """
    out = x.clone()
    n = x.shape[0]
    if hflip:
        flip = torch.rand(n, generator=generator) < 0.5
        out[flip] = out[flip].flip(-1)
    if rot90:
        ks = torch.randint(0, 4, (n,), generator=generator)
        for k in (1, 2, 3):
            chosen = ks == k
            if chosen.any():
                out[chosen] = torch.rot90(out[chosen], k, dims=(-2, -1))
    if rotate or scale or shift:
        out = _random_affine(out, generator, rotate, scale, shift)
    if intensity:
        shape = (n,) + (1,) * (out.ndim - 1)

        def uniform(low: float, high: float) -> torch.Tensor:
            return low + (high - low) * torch.rand(shape, generator=generator)

        gamma = torch.exp(uniform(-intensity, intensity))
        contrast = uniform(1 - intensity, 1 + intensity)
        brightness = uniform(-intensity / 4, intensity / 4)
        out = ((out.clamp(0, 1) ** gamma - 0.5) * contrast + 0.5 + brightness).clamp(0, 1)
    return out


def _random_affine(x: torch.Tensor, generator: torch.Generator, rotate: float,
                   scale: float, shift: float) -> torch.Tensor:
    """One random rotation/zoom/shift per item of ``(B, S, S)`` or ``(B, V, S, S)``."""
    n = x.shape[0]

    def uniform(half: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator) * 2 - 1) * half

    angle = uniform(rotate) * (np.pi / 180)
    zoom = 1 + uniform(scale)
    dx, dy = uniform(2 * shift), uniform(2 * shift)  # grid units: the side is 2 long
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, dx], 1), torch.stack([sin, cos, dy], 1)], 1)
    views = x if x.ndim == 4 else x[:, None]
    grid = F.affine_grid(theta.to(views.dtype), list(views.shape), align_corners=False)
    out = F.grid_sample(views, grid, mode="bilinear", padding_mode="zeros",
                        align_corners=False)
    return out if x.ndim == 4 else out[:, 0]
