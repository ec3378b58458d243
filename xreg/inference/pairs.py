"""Batched inference for two-view (hip) models: an AP and a lateral film per input.

Each pair is decoded in a thread pool (both films at the model's size),
joined side by side (AP left, lateral right, as in the thesis) and scored in
batches. A pair with an unreadable film gets that reason, never a score.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xreg.errors import ConfigError
from xreg.inference.predict import decide, softmax
from xreg.inference.preprocess import Preprocessor
from xreg.inference.runtime import Model, as_model
from xreg.io import try_load_image

if TYPE_CHECKING:
    from xreg.model.checkpoint import LoadedModel

__all__ = ["PairPrediction", "decode_pair", "predict_pairs"]


@dataclass(frozen=True)
class PairPrediction:
    """The model's output for one (AP, lateral) pair, or why there is none."""

    ap: Path
    lateral: Path
    status: str  # ok | unreadable
    probabilities: dict[str, dict[str, float]] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    error: str | None = None


def decode_pair(ap: Path, lateral: Path, preprocess: Preprocessor) -> np.ndarray | str:
    """The joined ``(3, S, 2S)`` input, or the reason one film cannot be used."""
    images = []
    for role, path in (("AP", ap), ("lateral", lateral)):
        image = try_load_image(path, target_size=preprocess.size)
        if isinstance(image, str):
            return f"{role} film: {image}"
        images.append(image.pixels)
    return preprocess.pair(images[0], images[1])


def predict_pairs(
    pairs: Sequence[tuple[Path, Path]],
    loaded: Model | LoadedModel,
    *,
    batch_size: int = 16,
    workers: int = 2,
    device: Any = None,
    on_decoded: Callable[[], None] | None = None,
) -> list[PairPrediction]:
    """Score each (AP, lateral) pair with a two-view checkpoint, in input order."""
    if loaded.card.views != 2:
        raise ConfigError(f"model {loaded.card.name!r} takes one film, not an AP + lateral "
                          "pair; use a hip fracture checkpoint")
    model = as_model(loaded, device)
    preprocess = Preprocessor(model.card)
    results: list[PairPrediction] = []
    with ThreadPoolExecutor(max_workers=max(1, workers),
                            thread_name_prefix="xreg-pair-decode") as pool:
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            decoded = list(pool.map(lambda p: decode_pair(p[0], p[1], preprocess), chunk))
            if on_decoded is not None:
                for _ in chunk:
                    on_decoded()
            ready = [t for t in decoded if isinstance(t, np.ndarray)]
            probs: dict[str, list[list[float]]] = {}
            if ready:
                logits = model.runtime.run(np.stack(ready))
                probs = {h.name: softmax(logits[h.name]).tolist() for h in model.card.heads}
            k = 0
            for (ap, lateral), item in zip(chunk, decoded):
                if isinstance(item, str):
                    results.append(PairPrediction(ap, lateral, "unreadable", error=item))
                    continue
                p = {h.name: dict(zip(h.labels, probs[h.name][k])) for h in model.card.heads}
                k += 1
                results.append(PairPrediction(ap, lateral, "ok", p, decide(p, model.card)))
    return results
