"""Adapting the whole network on pixels (``xreg adapt --layers all``).

For a base without a feature bank: the reviewed films train every layer,
the base's answers on phantoms (rendered in memory) and on the site's
unreviewed films are a second target, labelled films of the base's sources
(``--replay-data``) join the batches, and an L2 pull keeps the weights near
the base. The default (heads over frozen features) is :mod:`xreg.train.adapt`.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from xreg.errors import ConfigError
from xreg.evaluation.calibrate import choose_operating_point
from xreg.model.card import ModelCard
from xreg.model.checkpoint import LoadedModel
from xreg.model.labels import BODY_PARTS, OTHER
from xreg.train.finetune import (
    BODY_PART,
    AdaptOptions,
    Film,
    adabn,
    decode_grey,
    energy_of,
    fine_tune,
    predict_grey,
    render_phantoms,
)
from xreg.train.sites import GUARD_COVERAGE

__all__ = ["adapt_pixels"]

#: Nine-class films the hold-out needs before it may move ``min_confidence``.
MIN_NINE_TO_CHOOSE = 20


def adapt_pixels(base: LoadedModel, reviewed: Sequence[Film], train_idx: Sequence[int],
                 hold_idx: Sequence[int], unreviewed: Sequence[Film], options: AdaptOptions,
                 replay: Sequence[Film], stage: Callable[[str, int], Callable[[], None] | None],
                 cache: dict[Any, np.ndarray | None] | None,
                 phantoms: torch.Tensor | None,
                 ) -> tuple[nn.Module, ModelCard, dict[str, torch.Tensor],
                            list[tuple[str, ...]], dict[str, torch.Tensor], dict[str, Any],
                            int, list[dict[str, float]]]:
    """The adapted network, its card, the base's and its hold-out outputs, the hold-out
    truth, counts, steps and log."""
    card = base.card
    rng = np.random.default_rng(options.seed)
    pool_films = list(unreviewed) if options.distill_on in ("site", "both") else []
    if len(pool_films) > options.distill_films:
        pick = sorted(rng.choice(len(pool_films), options.distill_films, replace=False))
        pool_films = [pool_films[i] for i in pick]
    paths = [f.path for f in reviewed] + [f.path for f in pool_films] + [f.path for f in replay]
    grey, kept = decode_grey(paths, card.input_size, options.workers,
                             stage("decoding", len(paths)), cache)
    row_of = {i: n for n, i in enumerate(kept)}
    n_rev, n_pool = len(reviewed), len(pool_films)

    def take(indices: Sequence[int]) -> tuple[torch.Tensor, list[int]]:
        ok = [i for i in indices if i in row_of]
        return grey[[row_of[i] for i in ok]] if ok else grey[:0], ok

    train_grey, train_ok = take(train_idx)
    hold_grey, hold_ok = take(hold_idx)
    if not train_ok or not hold_ok:
        raise ConfigError("too few reviewed films could be decoded for a train and a "
                          "hold-out split")
    train_films = [reviewed[i] for i in train_ok]
    hold_truth = [reviewed[i].truth or () for i in hold_ok]
    site_grey, _ = take(range(n_rev + n_pool))
    pool_grey, _ = take(range(n_rev, n_rev + n_pool))
    if options.fine_tune and options.distill and options.distill_on in ("phantoms", "both"):
        if phantoms is None:
            stage("rendering phantoms", 0)
            phantoms = render_phantoms(options.phantoms, options.seed, card.input_size)
        pool_grey = torch.cat([pool_grey, phantoms.to(pool_grey.dtype)])
    replay_grey, replay_ok = take(range(n_rev + n_pool, len(paths)))

    model = copy.deepcopy(base.model).cpu().eval()
    before = predict_grey(model, hold_grey, card)
    if options.adabn:
        adabn(model, site_grey, card, seed=options.seed)
    steps, log = 0, []
    if options.fine_tune:
        teacher_grey = torch.cat([pool_grey, replay_grey]) if len(replay_grey) else pool_grey
        teacher = predict_grey(model, teacher_grey, card) if options.distill else {}
        replay_films = [replay[i - n_rev - n_pool] for i in replay_ok]
        advance = stage("training", 0)
        steps, log = fine_tune(model, card, train_grey, train_films, teacher_grey, teacher,
                               options, (lambda s, n, loss: advance()) if advance else None,
                               replay=(replay_grey, replay_films) if replay_films else None)
    after = predict_grey(model, hold_grey, card)
    adapted_card = _calibrated(model, card, train_grey, train_films, after, hold_truth, options)
    counts = {"train": len(train_films), "holdout": len(hold_ok),
              "distilled_on": int(len(pool_grey)), "replay": len(replay_ok),
              "undecodable": len(paths) - len(kept)}
    return model, adapted_card, before, hold_truth, after, counts, steps, log


def _calibrated(model: nn.Module, card: ModelCard, train_grey: torch.Tensor,
                train_films: Sequence[Film], hold: Mapping[str, torch.Tensor],
                hold_truth: Sequence[tuple[str, ...]], options: AdaptOptions) -> ModelCard:
    """The card with ``min_confidence`` chosen on the hold-out and the guard re-measured.

    ``min_confidence`` moves only when the hold-out has at least
    :data:`MIN_NINE_TO_CHOOSE` films of the nine classes and a threshold meets
    the targets there. The energy guard becomes the larger of the base's limit
    and the ``GUARD_COVERAGE`` quantile of the adapted model's energy over the
    reviewed musculoskeletal films.
    """
    labels = card.head(BODY_PART).labels
    probs = torch.softmax(hold[BODY_PART], dim=1).numpy()
    y = [labels.index(t[0]) for t in hold_truth]
    thresholds = dict(card.thresholds)
    if sum(t[0] in BODY_PARTS for t in hold_truth) >= MIN_NINE_TO_CHOOSE:
        try:
            point = choose_operating_point(labels, probs, y, truth_sets=hold_truth,
                                           target_accuracy=options.target_accuracy)
            if point.met:
                thresholds["min_confidence"] = point.threshold
        except ConfigError:
            pass  # nothing to choose from: keep the base's
    msk = [i for i, f in enumerate(train_films) if f.truth and f.truth[0] != OTHER]
    energies = list(energy_of(predict_grey(model, train_grey[msk], card))) if msk else []
    energies += [e for e, t in zip(energy_of(hold), hold_truth) if t and t[0] != OTHER]
    guard = dict(card.guard)
    if energies and card.guard.get("energy_max") is not None:
        site = float(np.quantile(energies, GUARD_COVERAGE))
        guard = {**guard, "energy_max": round(max(float(card.guard["energy_max"]), site), 4),
                 "site_quantile": round(site, 4), "site_films": len(energies),
                 "calibrated_on": "the larger of the base's limit and the quantile over "
                                  "the site's reviewed musculoskeletal films"}
    return dataclasses.replace(card, thresholds=thresholds, guard=guard)
