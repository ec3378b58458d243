"""Training batches: cached films through site augmentation, and the targets that follow.

Split from :mod:`xreg.train.loop`: the per-batch augmentation (which may paste
metal onto a film, making its instrument target positive) and the bank of
reference looks the ``restyle`` step draws from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from xreg.inference.preprocess import resize_grey
from xreg.model.labels import INSTRUMENT_LABELS
from xreg.train.augment import augment_film
from xreg.train.augment_style import StyleBank, build_bank
from xreg.train.config import TrainConfig

if TYPE_CHECKING:
    from xreg.train.loop import Tensors

__all__ = ["site_batch", "style_bank", "with_hardware"]


def site_batch(pixels: torch.Tensor, config: TrainConfig, gen: torch.Generator,
                bank: StyleBank | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached films ``(B, C, C)`` -> ``(B, S, S)`` float32 at the model's input size,
    and a ``(B,)`` bool mask of the films that had metal pasted on.

    With site augmentation each film is re-framed and re-processed (its own
    NumPy generator seeded from ``gen``, so a seeded epoch is reproducible;
    ``bank`` lends ``restyle`` its reference looks); without it, a cache larger
    than the input is resized as the sort resizes.
    """
    size = config.input_size
    pasted = torch.zeros(pixels.shape[0], dtype=torch.bool)
    if not config.site_augment and pixels.shape[-1] == size:
        return pixels.float(), pasted
    out = np.empty((pixels.shape[0], size, size), np.float32)
    films = pixels.float().numpy()
    for i, film in enumerate(films):
        if config.site_augment:
            seed = int(torch.randint(0, 2**62, (1,), generator=gen))
            out[i], flags = augment_film(film, size, config.site_augment,
                                         np.random.default_rng(seed), bank=bank,
                                         return_flags=True)
            pasted[i] = flags["hardware"]
        else:
            out[i] = resize_grey(film, size)
    return torch.from_numpy(out), pasted


def with_hardware(targets: dict[str, torch.Tensor], pasted: torch.Tensor
                   ) -> dict[str, torch.Tensor]:
    """The batch's targets with ``instrument`` positive where metal was pasted on.

    The pasted film shows hardware whatever its own label said (unknown or
    none); other heads are untouched. A set target (2-D) becomes the
    positive class alone.
    """
    y = targets.get("instrument")
    if y is None or not bool(pasted.any()):
        return targets
    y = y.clone()
    positive = INSTRUMENT_LABELS.index("instrument")
    mask = pasted.to(y.device)
    if y.ndim == 2:
        y[mask] = 0
        y[mask, positive] = 1
    else:
        y[mask] = positive
    return {**targets, "instrument": y}


def style_bank(train: Tensors, config: TrainConfig) -> StyleBank | None:
    """Reference looks for ``restyle``: up to 128 training films at the input size,
    drawn (seeded) by the sampler's weights, so every source is represented."""
    if config.site_augment.get("restyle", 0.0) <= 0 or train.pixels.ndim != 3 or not len(train):
        return None
    gen = torch.Generator().manual_seed(config.seed * 7_919 + 17)
    n = min(128, len(train))
    if train.weights is not None and int((train.weights > 0).sum()) >= n:
        idx = torch.multinomial(train.weights.double(), n, replacement=False, generator=gen)
    else:
        idx = torch.randperm(len(train), generator=gen)[:n]
    films = train.pixels[idx].float().numpy()
    return build_bank(resize_grey(film, config.input_size) for film in films)
