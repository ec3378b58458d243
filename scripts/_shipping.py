"""Helpers shared by the scripts that rebuild the shipped checkpoints."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from xreg.model.checkpoint import load_checkpoint, save_checkpoint

#: The first line of every shipped card's notes (and of its Markdown model card).
PHANTOM_NOTE = ("Trained on synthetic phantoms (xreg synth) only; not validated on real "
                "radiographs. Not for clinical use or research conclusions.")


def ci(value: list[float | None]) -> str:
    """``0.912 (0.870-0.950)`` from a ``[value, low, high]`` list; n/a when undefined."""
    if value[0] is None:
        return "n/a"
    return f"{value[0]:.3f} ({value[1]:.3f}-{value[2]:.3f})"


def ship_card(path: str | os.PathLike[str], out: str | os.PathLike[str],
              data_description: str) -> str:
    """Rewrite a trained checkpoint for shipping: the phantom warning as its notes and the
    training data described by how it was made, not by a local path. Returns sha256."""
    loaded = load_checkpoint(path)
    training: dict[str, Any] = dict(loaded.card.training)
    training["data"] = {**training.get("data", {}), "source": data_description}
    card = dataclasses.replace(loaded.card, notes=PHANTOM_NOTE, training=training)
    return save_checkpoint(out, loaded.model, card)
