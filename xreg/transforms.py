"""Preprocessing derived from a model card, never re-typed at call sites.

Grey pixels in [0, 1] -> antialiased square resize to ``card.input_size`` ->
``(x - card.mean) / card.std`` -> the single channel repeated to 3.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from xreg.checkpoint import ModelCard
from xreg.errors import UnreadableImageError

__all__ = ["Preprocessor", "preprocess"]


class Preprocessor:
    """Callable ``pixels -> (3, S, S) float32 tensor`` built once from a card.

    It holds no mutable state, so one instance may be called from several
    threads at once (the sort's decode pool does).
    """

    def __init__(self, card: ModelCard) -> None:
        self.size = card.input_size
        self.mean = card.mean
        self.std = card.std

    def __call__(self, pixels: np.ndarray) -> torch.Tensor:
        """Preprocess one grey image (2-D, values in [0, 1]).

        The result is an ``expand``ed view (3 channels share memory): stack or
        copy it before writing into it.
        """
        if not isinstance(pixels, np.ndarray) or pixels.ndim != 2 or 0 in pixels.shape:
            shape = getattr(pixels, "shape", type(pixels).__name__)
            raise UnreadableImageError("not a 2-D grey image", f"got {shape}")
        # float32 is what load_image yields; anything else is converted once
        # here. A read-only array is copied too: torch warns on those.
        x = torch.from_numpy(np.require(pixels, np.float32, ["C", "W"]))
        if x.shape != (self.size, self.size):
            # torch's antialiased bilinear matches Pillow's BILINEAR resize to
            # ~1e-5 and was as fast or faster for both small and 5 MP inputs.
            x = F.interpolate(
                x[None, None], size=(self.size, self.size),
                mode="bilinear", antialias=True, align_corners=False,
            )[0, 0]
        # Out of place: when no resize was needed x shares the caller's array.
        x = (x - self.mean) / self.std
        return x.expand(3, self.size, self.size)


def preprocess(pixels: np.ndarray, card: ModelCard) -> torch.Tensor:
    """One-off form of ``Preprocessor(card)(pixels)``."""
    return Preprocessor(card)(pixels)
