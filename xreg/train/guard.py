"""The day-one guard: members that must agree and a memory of the training films.

At a hospital it never saw, a model files films confidently into wrong
folders; confidence cannot tell (FINDINGS.md). Two things can, measured on
leave-one-site-out folds (``benchmarks/selective_prediction.py``): members
trained differently that disagree, and a film's distance from every film the
model learned from. This module builds both into one network
(:class:`~xreg.model.ensemble.EnsembleNet`): it joins trained members, keeps
the unit features of a sample of their training films as a bank (derived
numbers, never the films), and sets the thresholds on validation films of the
training sites, so that a chosen share of familiar films passes each test.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from xreg.datasets import LabelledImage
from xreg.errors import ConfigError
from xreg.inference.predict import SourceFile, decode_source
from xreg.inference.preprocess import Preprocessor
from xreg.model.card import MEMBERS_OUTPUT, ModelCard
from xreg.model.checkpoint import LoadedModel
from xreg.model.ensemble import EnsembleNet, join_members
from xreg.model.labels import OTHER

__all__ = ["AGREE_COVERAGE", "BANK_FILMS", "DISTANCE_COVERAGE", "KNN_K", "ensemble_card",
           "fit_guard", "fracture_classes", "guard_inputs", "join_loaded"]

#: Training films whose features the bank keeps, and which neighbour counts.
BANK_FILMS = 2000  # as many as the leave-one-site-out comparison used
KNN_K = 5
#: Shares of familiar validation films that each test lets through.
DISTANCE_COVERAGE = 0.98
AGREE_COVERAGE = 0.97


def fracture_classes(train: Sequence[LabelledImage], *, min_films: int = 30,
                     min_positive: int = 5) -> list[str]:
    """Body parts with enough fracture-labelled training films for the call to mean much.

    Fracture labels come from one source (FracAtlas): spine (2 films there),
    chest and the shoulder-implant crops were never labelled, and the head
    fires on them at other hospitals. Elsewhere the registry records unknown.
    """
    films: dict[str, list[int]] = {}
    for im in train:
        if im.fracture is not None and im.body_part != OTHER:
            films.setdefault(im.body_part, []).append(int(im.fracture))
    return sorted(c for c, v in films.items() if len(v) >= min_films and sum(v) >= min_positive)


def guard_inputs(images: Sequence[LabelledImage], card: ModelCard, workers: int = 2
                 ) -> tuple[np.ndarray, list[LabelledImage]]:
    """The films as the sort feeds them to the model, ``(N, 3, S, S)``, and those decoded."""
    preprocess = Preprocessor(card)

    def one(im: LabelledImage) -> np.ndarray | None:
        stat = im.path.stat()
        return decode_source(SourceFile(im.path, stat.st_size, stat.st_mtime_ns),
                             preprocess).tensor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        tensors = list(pool.map(one, images))
    kept = [(t, im) for t, im in zip(tensors, images) if t is not None]
    if not kept:
        raise ConfigError("none of the films could be decoded")
    return np.stack([t for t, _ in kept]).astype(np.float32), [im for _, im in kept]


def _forward(net: EnsembleNet, x: np.ndarray, batch: int = 64
             ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    outs: dict[str, list[np.ndarray]] = {}
    joined = []
    net.eval()
    with torch.inference_mode():
        for start in range(0, len(x), batch):
            xb = torch.from_numpy(x[start:start + batch])
            _, unit = net.features(xb)
            joined.append(unit.numpy())
            for key, value in net(xb).items():
                outs.setdefault(key, []).append(value.numpy())
    return {k: np.concatenate(v) for k, v in outs.items()}, np.concatenate(joined)


def join_loaded(members: Sequence[LoadedModel]) -> EnsembleNet:
    """Trained members (checkpoints) as one network, without a bank yet."""
    return join_members([(m.model, m.card) for m in members])  # type: ignore[misc]


def ensemble_card(members: Sequence[LoadedModel], name: str) -> ModelCard:
    """The first member's card, naming every member's arch and recipe."""
    first = members[0].card
    return dataclasses.replace(
        first, name=name, members=tuple(m.card.arch for m in members),
        training={**first.training,
                  "members": [{"name": m.card.name, "arch": m.card.arch,
                               "sha256": m.sha256, "recipe": m.card.training.get("recipe")}
                              for m in members]})


def fit_guard(net: EnsembleNet, card: ModelCard, train: Sequence[LabelledImage],
              val: Sequence[LabelledImage], *, bank_films: int = BANK_FILMS, k: int = KNN_K,
              distance_coverage: float = DISTANCE_COVERAGE,
              agree_coverage: float = AGREE_COVERAGE, seed: int = 0, workers: int = 2,
              ) -> tuple[ModelCard, dict[str, Any]]:
    """Fill the bank from ``train`` and set ``distance_max``/``agree_min`` on ``val``.

    The bank holds the joined unit features of up to ``bank_films`` training
    films (a seeded sample). ``distance_max`` lets ``distance_coverage`` of
    the musculoskeletal validation films through, ``agree_min``
    ``agree_coverage`` of them. The energy guard and ``min_confidence`` are
    set afterwards by :func:`xreg.train.sites.calibrate`, which keeps these.
    """
    rng = np.random.default_rng(seed)
    picked = [train[i] for i in sorted(rng.choice(len(train), min(bank_films, len(train)),
                                                  replace=False))]
    x_train, _ = guard_inputs(picked, card, workers)
    _, joined = _forward(net, x_train)
    net.set_bank(torch.from_numpy(joined), k)
    x_val, val_kept = guard_inputs(val, card, workers)
    outs, _ = _forward(net, x_val)
    labels = card.head("body_part").labels
    msk = np.array([im.body_part != OTHER for im in val_kept], bool)
    distance = outs["distance"][msk]
    guard: dict[str, Any] = {
        **card.guard,
        "bank": {"films": int(joined.shape[0]), "dim": int(joined.shape[1]), "k": int(k)},
        "distance_max": round(float(np.quantile(distance, distance_coverage)), 4),
        "distance_coverage": distance_coverage}
    if MEMBERS_OUTPUT in outs:
        votes = np.exp(outs[MEMBERS_OUTPUT] - outs[MEMBERS_OUTPUT].max(2, keepdims=True))
        votes /= votes.sum(2, keepdims=True)
        label = outs["body_part"].argmax(1)
        least = votes[np.arange(len(label)), :, label].min(1)[msk]
        guard.update(agree_min=round(float(np.quantile(least, 1 - agree_coverage)), 4),
                     agree_coverage=agree_coverage)
    summary = {"bank_films": int(joined.shape[0]), "validation_films": int(msk.sum()),
               "labels": len(labels), **{k2: v for k2, v in guard.items() if k2 != "bank"}}
    guard.setdefault("energy_max", 1e6)  # replaced when the energy guard is calibrated
    return dataclasses.replace(card, guard=guard), summary
