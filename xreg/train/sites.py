"""Training for every hospital: leave a site out, calibrate on held-out films.

A site is one source of a multi-source recipe (``datasets:``). The figure
that predicts a new hospital is the leave-one-site-out one: train without
site S, sort S's films. This module holds the steps the shipped default's
rebuild (``scripts/make_site_weights.py``) and the sweep
(``benchmarks/site_generalisation.py``) share: a recipe without one site,
the operating point (``min_confidence``) and the unfamiliar-film guard chosen
on held-out films, and the sort figures of a set of films.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xreg.datasets import LabelledImage, load_labels
from xreg.errors import ConfigError
from xreg.evaluation.calibrate import choose_operating_point
from xreg.evaluation.evaluate import Evaluation, evaluate_images
from xreg.model.checkpoint import LoadedModel
from xreg.model.labels import BODY_PARTS, EXTENDED_BODY_PARTS, OTHER
from xreg.train.config import TrainConfig

__all__ = ["GUARD_COVERAGE", "calibrate", "common_root", "drop_unlabelled_heads",
           "split_images", "without_site"]

#: Share of held-out familiar films the guard lets through (the rest go to review).
GUARD_COVERAGE = 0.99


def without_site(config: TrainConfig, site: str) -> TrainConfig:
    """The recipe with dataset ``site`` left out entirely (``ConfigError`` if absent)."""
    kept = tuple(d for d in config.datasets if d.name != site)
    if len(kept) == len(config.datasets):
        raise ConfigError(f"the recipe has no dataset {site!r} "
                          f"(it has {', '.join(d.name for d in config.datasets)})")
    return dataclasses.replace(config, datasets=kept,
                               name=f"{config.name or 'model'}-without-{site}")


def drop_unlabelled_heads(config: TrainConfig) -> TrainConfig:
    """The recipe without the heads no manifest of its datasets labels.

    Leaving out the only site with fracture labels (FracAtlas) leaves a
    fracture head nothing to learn from; such a fold trains without it.
    Phantom sources label body part, instrument and view, never fracture.
    """
    labels = EXTENDED_BODY_PARTS if config.body_parts == "extended" else BODY_PARTS
    labelled = {"body_part"}
    for source in config.datasets:
        if source.synth is not None:
            labelled |= {"instrument", "view"}
            continue
        for im in load_labels(Path(source.path), labels):
            labelled |= {name for name, value in (("instrument", im.instrument),
                                                  ("fracture", im.fracture),
                                                  ("view", im.view)) if value is not None}
    heads = tuple(h for h in config.heads if h in labelled)
    return config if heads == tuple(config.heads) else dataclasses.replace(config, heads=heads)


def split_images(run_dir: Path, split: str, labels: Sequence[str],
                 source: str | None = None) -> list[LabelledImage]:
    """The films of one split of a finished run (its ``split.csv``), one source or all."""
    images = load_labels(run_dir / "split.csv", labels)
    with (run_dir / "split.csv").open(newline="") as f:
        meta = {row["path"]: row for row in csv.DictReader(f)}
    return [im for im in images if meta[str(im.path)]["split"] == split
            and (source is None or meta[str(im.path)].get("source") == source)]


def calibrate(loaded: LoadedModel, val: Sequence[LabelledImage], *,
              target_accuracy: float = 0.97, max_outside: float = 0.10,
              coverage: float = GUARD_COVERAGE, workers: int = 2,
              ) -> tuple[LoadedModel, dict[str, Any]]:
    """``min_confidence`` and the guard, chosen on held-out (validation) films.

    ``min_confidence``: :func:`choose_operating_point` (label sets count as
    right). The guard: the ``coverage`` quantile of the body-part energy of
    validation films that are musculoskeletal (not ``other``), so about 1% of
    familiar films are held back and anything stranger than that waits in
    ``_review`` as an ``unfamiliar film``.
    """
    card = loaded.card
    labels = card.head("body_part").labels
    root = common_root(val)
    ev = evaluate_images(loaded, val, root=root, data="validation", min_confidence=0.0,
                         n_resamples=200, seed=0, workers=workers)
    sets = {p: im.body_parts for p, im in zip(ev.paths, _in_order(ev, val, root))}
    try:
        point = choose_operating_point(labels, ev.body_part_probs, ev.body_part_true,
                                       truth_sets=[sets[p] for p in ev.paths],
                                       target_accuracy=target_accuracy,
                                       max_outside=max_outside)
        threshold, chosen = point.threshold, point.to_dict()
    except ConfigError as exc:  # a model too weak to sort anything: keep its threshold
        threshold = card.thresholds.get("min_confidence", 0.5)
        chosen = {"threshold": threshold, "not_calibrated": str(exc)}
    # The evaluation's own pass gave every film's energy: no second pass over the films.
    msk = ev.body_part_true != labels.index(OTHER) if OTHER in labels else \
        np.ones(len(ev.body_part_true), dtype=bool)
    energy = ev.energy[msk & np.isfinite(ev.energy)]
    limit = float(np.quantile(energy, coverage)) if len(energy) else None
    # An ensemble's other tests (agreement, feature distance) are kept as they were set.
    kept = {k: v for k, v in card.guard.items()
            if k not in ("energy_max", "coverage", "films", "calibrated_on")}
    guard = kept if limit is None else {
        **kept,
        "energy_max": round(limit, 4), "coverage": coverage, "films": int(len(energy)),
        "calibrated_on": "validation films of the training sites (not other)"}
    new = dataclasses.replace(card, thresholds={**card.thresholds,
                                                "min_confidence": threshold},
                              guard=guard)
    summary = {"min_confidence": chosen, "guard": guard}
    return LoadedModel(loaded.model, new, loaded.sha256, loaded.path), summary


def common_root(images: Sequence[LabelledImage]) -> Path:
    """The deepest folder holding every film (paths in an evaluation are shown from it)."""
    if not images:
        return Path()
    return Path(os.path.commonpath([str(Path(im.path).parent) for im in images]))


def _in_order(ev: Evaluation, images: Sequence[LabelledImage], root: Path
              ) -> list[LabelledImage]:
    """``images`` in the evaluation's path order (paths shown relative to ``root``)."""
    by_path: dict[str, LabelledImage] = {}
    for im in images:
        by_path[str(im.path)] = im
        try:
            by_path[str(Path(im.path).relative_to(root))] = im
        except ValueError:
            pass
    out = []
    for p in ev.paths:
        found = by_path.get(p)
        if found is None:
            raise ConfigError(f"evaluated film {p} is not among the given images")
        out.append(found)
    return out
