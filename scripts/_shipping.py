"""Helpers shared by the scripts that rebuild the shipped checkpoints."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
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


def no_local_paths(training: dict[str, Any]) -> dict[str, Any]:
    """Dataset paths of this machine become their file names in the shipped card."""
    def plain(sources: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**d, "path": Path(d["path"]).name} if d.get("path") else d for d in sources]

    data = {**training["data"], "datasets": plain(training["data"].get("datasets", []))}
    recipe = {**training["recipe"], "datasets": plain(training["recipe"].get("datasets", []))}
    members = [{**m, "recipe": {**m["recipe"], "datasets": plain(m["recipe"].get("datasets", []))}}
               if m.get("recipe") else m for m in training.get("members", [])]
    return {**training, "data": data, "recipe": recipe,
            **({"members": members} if members else {})}


def confusion_rows(conf: dict[str, Any]) -> list[str]:
    """Markdown rows of a truth-by-destination table (empty truths left out)."""
    dest = conf["destination"]
    rows = ["| truth | " + " | ".join(dest) + " |", "|---|" + "---|" * len(dest)]
    for name, row in zip(conf["truth"], conf["matrix"]):
        if sum(row):
            rows.append(f"| {name} | " + " | ".join(str(v) if v else "." for v in row) + " |")
    return rows
