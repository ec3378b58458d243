"""Adapt a model to one hospital from a few reviewed films (``xreg adapt``).

The base model (the shipped default, or any checkpoint) learns the films a
person reviewed in one sorted folder, and keeps what it knew:

* **reviews only.** A film's truth is its latest review; a label the model
  gave and nobody confirmed is never training truth.
* **heads over frozen features** (the default, :mod:`xreg.train.adapt_heads`):
  every member's heads train on the reviews, on the base's *replayed*
  training films (shipped beside the weights as features and labels,
  :mod:`xreg.train.replay`; ``--replay-data`` adds films) and towards the
  base's own answers on them (distillation), near the base's heads (L2-SP).
  The site's reviewed films join the feature bank, and ``min_confidence``
  and the guard are chosen on out-of-fold answers for at most 4% wrong
  folder, never looser than the base's.
* **the whole network** (``layers="all"``, :mod:`xreg.train.adapt_images`)
  for a base without a feature bank.

The reviewed films are split by patient (else study, else source folder),
stratified by class (:mod:`xreg.train.adapt_split`). The procedure trained
on the train part is judged on the hold-out (before/after); the model
written is the same procedure on every reviewed film, judged on the replay
hold-out (films the base knew): it is refused if it sorts the site's hold-out
worse than the base, or forgets (:func:`~xreg.train.adapt_result.judge`).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from xreg.errors import ConfigError
from xreg.model.card import ModelCard
from xreg.model.checkpoint import LoadedModel
from xreg.model.ensemble import EnsembleNet, unit_features
from xreg.train.adapt_heads import (
    Labelled,
    answer,
    choose_guard,
    cross_outputs,
    extend_bank,
    site_features,
    train_heads,
)
from xreg.train.adapt_images import adapt_pixels
from xreg.train.adapt_result import (
    AdaptResult,
    adapted_card,
    forgetting,
    holdout_figures,
    judge,
    sort_figures,
)
from xreg.train.adapt_split import group_split, site_films, split_notes, unlike_reviewed
from xreg.train.finetune import AdaptOptions, Film, decode_grey, render_phantoms
from xreg.train.replay import ReplaySet, replay_from_grey, shipped_replay

__all__ = ["AdaptOptions", "AdaptResult", "Film", "adapt", "group_split", "site_films",
           "sort_figures", "write_adapted"]

#: Share of ``--replay-data`` films (by patient) kept aside to measure forgetting.
REPLAY_HOLDOUT = 0.2


def adapt(base: LoadedModel, reviewed: Sequence[Film], unreviewed: Sequence[Film] = (),
          options: AdaptOptions = AdaptOptions(), *, replay: Sequence[Film] = (),
          on_stage: Callable[[str, int], None] | None = None,
          on_advance: Callable[[], None] | None = None,
          cache: dict[Any, np.ndarray | None] | None = None,
          phantoms: torch.Tensor | None = None,
          replay_set: ReplaySet | None = None,
          ) -> AdaptResult:
    """Adapt ``base`` to the site of ``reviewed``/``unreviewed``; the base stays untouched.

    ``replay``: labelled films of the base's sources (``--replay-data``);
    ``replay_set``: replay features to use instead of the shipped file (with
    ``options.replay``). ``on_stage(name, total)`` and ``on_advance()`` report
    progress. Writing the result is the caller's (:func:`write_adapted`).
    """
    options.check()
    started = time.perf_counter()
    torch.manual_seed(options.seed)
    if not reviewed:
        raise ConfigError("no reviewed films: review some in xreg serve (or import reviews "
                          "with xreg registry import-reviews) first")
    train_idx, hold_idx = group_split(reviewed, options.holdout, options.seed)
    notes = split_notes(reviewed, train_idx, hold_idx)

    def stage(name: str, total: int) -> Callable[[], None] | None:
        if on_stage is not None:
            on_stage(name, total)
        return on_advance

    has_bank = isinstance(base.model, EnsembleNet) and base.model.has_bank
    shipped = replay_set if replay_set is not None else (
        shipped_replay(base.card, base.path) if options.replay else None)
    layers = options.layers
    if layers == "auto":
        layers = "all" if replay and shipped is None and not has_bank else "heads"
    per_class = dict(sorted(Counter("|".join(f.truth or ()) for f in reviewed).items()))
    common = {"reviewed": len(reviewed), "per_class": per_class,
              "reviewers": sorted({f.reviewer for f in reviewed if f.reviewer})}
    forgot = None
    if layers == "all":
        model, card, before_out, hold_truth, after_out, counts, steps, log = adapt_pixels(
            base, reviewed, train_idx, hold_idx, unreviewed,
            dataclasses.replace(options, layers="all"), replay, stage, cache, phantoms)
        before = holdout_figures(base.card, before_out, hold_truth)
        after = holdout_figures(card, after_out, hold_truth)
        method = "fine-tuned (whole network)" + (" after AdaBN" if options.adabn else "")
        replay_entry: dict[str, Any] = {}
    else:
        model, card, before, after, forgot, counts, steps = _adapt_heads(
            base, reviewed, train_idx, hold_idx, unreviewed, options, replay, shipped,
            stage, cache, phantoms)
        log = []
        method = "heads over frozen features" + (" with replay" if counts["replay"] else "")
        replay_entry = dict(base.card.replay) if shipped is not None and \
            replay_set is None else {}
    counts = {**common, **counts}
    accepted, verdict = judge(before, after, forgot, counts.get("unlike_reviewed"))
    seconds = time.perf_counter() - started
    final_card = adapted_card(card, base, options, counts, before, after, seconds, method,
                              forgot, replay_entry)
    return AdaptResult(LoadedModel(model, final_card, "", base.path), base, before, after,
                       accepted, verdict, counts, seconds, steps, log, forgot, notes)


def _adapt_heads(base: LoadedModel, reviewed: Sequence[Film], train_idx: Sequence[int],
                 hold_idx: Sequence[int], unreviewed: Sequence[Film], options: AdaptOptions,
                 replay_films: Sequence[Film], shipped: ReplaySet | None,
                 stage: Callable[[str, int], Callable[[], None] | None],
                 cache: dict[Any, np.ndarray | None] | None, phantoms: torch.Tensor | None,
                 ) -> tuple[nn.Module, ModelCard, dict[str, Any], dict[str, Any],
                            dict[str, Any] | None, dict[str, Any], int]:
    card = base.card
    # The site's unreviewed films (a seeded sample): whether the reviews represent the
    # site, and the base's answers on them when distilling on the site.
    pool_films = _sample(unreviewed, options.distill_films, options.seed)
    distill_site = options.distill_on in ("site", "both")
    paths = [f.path for f in reviewed] + [f.path for f in pool_films] + \
        [f.path for f in replay_films]
    grey, kept = decode_grey(paths, card.input_size, options.workers,
                             stage("decoding", len(paths)), cache)
    row_of = {i: n for n, i in enumerate(kept)}
    n_rev, n_pool = len(reviewed), len(pool_films)
    ok = [i for i in range(n_rev) if i in row_of]
    train_ok = [i for i in train_idx if i in row_of]
    hold_ok = [i for i in hold_idx if i in row_of]
    if not train_ok or not hold_ok:
        raise ConfigError("too few reviewed films could be decoded for a train and a "
                          "hold-out split")
    stage("features", 0)
    views = site_features(base.model, card, grey[[row_of[i] for i in ok]], options.views,
                          options.seed)
    at = {i: n for n, i in enumerate(ok)}
    labels = card.head("body_part").labels

    def plain(idx: Sequence[int]) -> list[torch.Tensor]:
        rows = torch.as_tensor([at[i] for i in idx], dtype=torch.long)
        return [f[rows] for f in views[0]]

    def site(idx: Sequence[int]) -> Labelled:
        rows = torch.as_tensor([at[i] for i in idx], dtype=torch.long)
        feats = [torch.cat([view[m][rows] for view in views]) for m in range(len(views[0]))]
        return Labelled.of_films(feats, [reviewed[i] for i in idx] * len(views), labels)

    extra = [i for i in range(n_rev + n_pool, len(paths)) if i in row_of]
    reference = shipped
    if extra:
        given = _replay_of(base, [replay_films[i - n_rev - n_pool] for i in extra],
                           grey[[row_of[i] for i in extra]], options.seed)
        reference = given if reference is None else reference.join(given)
    replay_train = Labelled.of_replay(reference.take(~reference.holdout)) \
        if reference is not None else None
    pool: list[torch.Tensor] = []
    pool_rows = [row_of[i] for i in range(n_rev, n_rev + n_pool) if i in row_of]
    unlike = None
    if pool_rows:
        others = site_features(base.model, card, grey[pool_rows])[0]
        unlike = unlike_reviewed(unit_features(plain(ok)),
                                 [reviewed[i].group or str(reviewed[i].path) for i in ok],
                                 unit_features(others))
        pool = others if distill_site else []
    if reference is None and options.distill and options.distill_on in ("phantoms", "both"):
        stage("rendering phantoms", 0)
        rendered = phantoms if phantoms is not None else \
            render_phantoms(options.phantoms, options.seed, card.input_size)
        drawn = site_features(base.model, card, rendered)[0] if len(rendered) else []
        pool = [torch.cat([p, d]) for p, d in zip(pool, drawn)] if pool else drawn
    advance = stage("training heads", 0)

    def fit(idx: Sequence[int]) -> tuple[nn.Module, ModelCard]:
        groups = [reviewed[i].group or str(reviewed[i].path) for i in idx]
        cross = cross_outputs(base.model, site(idx), len(views), groups, plain(idx),
                              options, replay=replay_train, pool=pool)
        model = copy.deepcopy(base.model)
        train_heads(model, site(idx), options, replay=replay_train, pool=pool,
                    on_step=None)
        if advance is not None:
            advance()
        rows = extend_bank(model, plain(idx))
        fitted = card
        if rows and isinstance(model, EnsembleNet):
            fitted = dataclasses.replace(card, guard={
                **card.guard, "bank": {**card.guard["bank"], "films": rows, "k": model.k}})
        if cross is not None:
            fitted, _ = choose_guard(fitted, cross, [reviewed[i].truth or () for i in idx])
        return model, fitted

    hold_truth = [reviewed[i].truth or () for i in hold_ok]
    before = holdout_figures(card, answer(base.model, plain(hold_ok)), hold_truth)
    judged, judged_card = fit(train_ok)
    after = holdout_figures(judged_card, answer(judged, plain(hold_ok)), hold_truth)
    model, final_card = fit(ok)
    forgot = None
    if reference is not None and reference.holdout.any():
        held = reference.take(reference.holdout)
        truth = held.truth_sets()
        forgot = forgetting(holdout_figures(card, answer(base.model, held.member_features()),
                                            truth),
                            holdout_figures(final_card, answer(model,
                                                               held.member_features()), truth))
    counts = {"train": len(train_ok), "holdout": len(hold_ok), "views": len(views),
              "unreviewed_seen": len(pool_rows), "unlike_reviewed": unlike,
              "distilled_on": int(len(pool[0])) if pool else 0,
              "replay": int((~reference.holdout).sum()) if reference is not None else 0,
              "replay_holdout": int(reference.holdout.sum()) if reference is not None else 0,
              "replay_shipped": shipped is not None,
              "bank": int(model.bank.shape[0]) if isinstance(model, EnsembleNet) else 0,
              "undecodable": len(paths) - len(kept)}
    return model, final_card, before, after, forgot, counts, options.head_steps


def _sample(films: Sequence[Film], count: int, seed: int) -> list[Film]:
    """At most ``count`` of ``films``, the same ones for the same films and seed."""
    def key(film: Film) -> str:
        return hashlib.sha256(f"{seed}:{film.path}".encode()).hexdigest()

    return sorted(films, key=key)[:count] if len(films) > count else list(films)


def _replay_of(base: LoadedModel, films: Sequence[Film], grey: torch.Tensor, seed: int
               ) -> ReplaySet:
    """``--replay-data`` films as replay features; a fifth of their groups held out."""
    def held(film: Film) -> bool:
        key = film.group or str(film.path)
        return int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:8], 16) \
            < REPLAY_HOLDOUT * 0xFFFFFFFF

    return replay_from_grey(base.model, base.card, grey, [f.truth or () for f in films],
                            [f.instrument for f in films], [f.fracture for f in films],
                            ["replay-data"] * len(films), [held(f) for f in films])


def write_adapted(result: AdaptResult, out: Path) -> tuple[str, Path, Path]:
    """Write the adapted checkpoint, its ONNX export, its replay file (heads adapted
    over the base's features keep the base's) and a Markdown card beside it.

    Each file is written to a temporary name and renamed into place: a killed
    process leaves either no ``out`` or a whole one (its export is checked
    against its sha256 when loaded, so a stale ``.onnx`` is never used).
    Returns the checkpoint's sha256 and the ONNX and card paths.
    """
    import shutil

    from xreg.inference.export import export_onnx
    from xreg.inference.runtime import onnx_path
    from xreg.model.checkpoint import _write_atomic, save_checkpoint
    from xreg.train.adapt_card import card_markdown
    from xreg.train.replay import replay_path

    out = Path(out)
    onnx = onnx_path(out)
    onnx.unlink(missing_ok=True)  # an export of an earlier model must not outlive it
    card = result.loaded.card
    if card.replay and result.base.path is not None:
        source = Path(result.base.path).parent / str(card.replay["file"])
        target = replay_path(out)
        if source.resolve() != target.resolve():
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.copyfile(source, tmp)
            tmp.replace(target)
        card = dataclasses.replace(card, replay={**card.replay, "file": target.name})
    sha = save_checkpoint(out, result.loaded.model, card)
    export_onnx(out, onnx)
    card_md = out.with_suffix(".md")
    _write_atomic(card_md, card_markdown({**result.to_dict(), "card": card.to_dict(),
                                          "base_sha256": result.base.sha256,
                                          "log_steps": result.steps}, sha).encode())
    return sha, onnx, card_md
