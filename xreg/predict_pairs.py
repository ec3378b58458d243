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

import torch

from xreg.checkpoint import LoadedModel
from xreg.errors import ConfigError
from xreg.io import try_load_image
from xreg.predict import decide, inference_model
from xreg.transforms import Preprocessor

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


def decode_pair(ap: Path, lateral: Path, preprocess: Preprocessor) -> torch.Tensor | str:
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
    loaded: LoadedModel,
    *,
    batch_size: int = 16,
    workers: int = 2,
    device: torch.device | None = None,
    on_decoded: Callable[[], None] | None = None,
) -> list[PairPrediction]:
    """Score each (AP, lateral) pair with a two-view checkpoint, in input order."""
    if loaded.card.views != 2:
        raise ConfigError(f"model {loaded.card.name!r} takes one film, not an AP + lateral "
                          "pair; use a hip fracture checkpoint")
    device = device or torch.device("cpu")
    preprocess = Preprocessor(loaded.card)
    model = inference_model(loaded.model, device)
    results: list[PairPrediction] = []
    with ThreadPoolExecutor(max_workers=max(1, workers),
                            thread_name_prefix="xreg-pair-decode") as pool:
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            decoded = list(pool.map(lambda p: decode_pair(p[0], p[1], preprocess), chunk))
            if on_decoded is not None:
                for _ in chunk:
                    on_decoded()
            ready = [t for t in decoded if isinstance(t, torch.Tensor)]
            probs: dict[str, list[list[float]]] = {}
            if ready:
                x = torch.stack(ready).to(device, memory_format=torch.channels_last)
                with torch.inference_mode():
                    logits = model(x)
                probs = {h.name: torch.softmax(logits[h.name].float(), 1).cpu().tolist()
                         for h in loaded.card.heads}
            k = 0
            for (ap, lateral), item in zip(chunk, decoded):
                if isinstance(item, str):
                    results.append(PairPrediction(ap, lateral, "unreadable", error=item))
                    continue
                p = {h.name: dict(zip(h.labels, probs[h.name][k])) for h in loaded.card.heads}
                k += 1
                results.append(PairPrediction(ap, lateral, "ok", p, decide(p, loaded.card)))
    return results
