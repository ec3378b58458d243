"""Labelled images from several sources at once, each with its share of the draws.

A source is a manifest or a sort-layout folder (real films, a reviewed sort
output) or phantoms that ``xreg synth`` renders into the run folder on first
use. Patient ids and duplicate clusters are prefixed with the source's name,
so two sources never share a split group by accident. Out-of-scope phantoms
(chest, skull, abdomen, blank, photos) are labelled ``other`` when the
body-part head has that class.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Sequence
from pathlib import Path

from xreg.datasets import LabelledImage, load_labels
from xreg.errors import ConfigError
from xreg.model.models import OTHER
from xreg.train.config import DataSource

__all__ = ["load_sources", "synth_folder"]


def synth_folder(run_dir: Path, source: DataSource) -> Path:
    """Where a synth source's phantoms live inside the run folder."""
    return run_dir / f"synth-{source.name}"


def _render(folder: Path, source: DataSource) -> None:
    from xreg.synth.generate import generate_dataset

    if (folder / "labels.csv").is_file():
        return  # rendered by an earlier (interrupted) run; phantoms are seeded
    spec = dict(source.synth or {})
    generate_dataset(folder, count=spec.get("count", 1000), seed=spec.get("seed", 0),
                     size=spec.get("size", 384), out_of_scope=spec.get("out_of_scope", 0),
                     hip_pairs=spec.get("hip_pairs", 0))


def _out_of_scope(folder: Path) -> list[LabelledImage]:
    manifest = folder / "out_of_scope.csv"
    if not manifest.is_file():
        return []
    with manifest.open(newline="", encoding="utf-8") as f:
        return [LabelledImage(folder / row["path"], OTHER, 0, None, None)
                for row in csv.DictReader(f)]


def _tagged(images: Sequence[LabelledImage], name: str) -> list[LabelledImage]:
    def scoped(value: str | None) -> str | None:
        return None if value is None else f"{name}:{value}"

    return [dataclasses.replace(im, source=name, patient_id=scoped(im.patient_id),
                                dup_of=scoped(im.dup_of)) for im in images]


def load_sources(sources: Sequence[DataSource], body_parts: Sequence[str],
                 run_dir: Path) -> list[LabelledImage]:
    """Every source's labelled images, tagged with the source's name, in source order."""
    images: list[LabelledImage] = []
    for source in sources:
        if source.synth is not None:
            folder = synth_folder(run_dir, source)
            _render(folder, source)
            found = load_labels(folder / "labels.csv", body_parts)
            if OTHER in body_parts:
                found += _out_of_scope(folder)
        else:
            path = Path(source.path)
            if not path.exists():
                raise ConfigError(f"dataset {source.name!r}: no labelled data at {path}")
            found = load_labels(path, body_parts)
        images += _tagged(found, source.name)
    if not images:
        raise ConfigError("no labelled images in any dataset")
    return images
