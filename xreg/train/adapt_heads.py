"""Adapting the heads over frozen features: what ``xreg adapt`` does by default.

The base's backbones stay as they were, so every film is its penultimate
features, computed once: the site's reviewed films (a few augmented views
each), its unreviewed films, and the replayed training films of the base
(shipped as features, :mod:`xreg.train.replay`). Each member's heads are
trained on the reviews, on the replayed labels, and towards the base's own
answers on the replayed and unreviewed films (distillation), with an L2 pull
towards the base's heads. Seconds per training on a CPU, so the guard can be
chosen on out-of-fold answers (:func:`cross_outputs`), and the site's
reviewed films join the feature bank, so that "unlike the training films"
means unlike what the adapted model learned from.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xreg.model.card import DISTANCE_OUTPUT, MEMBERS_OUTPUT, ModelCard
from xreg.model.ensemble import EnsembleNet, unit_features
from xreg.model.labels import OTHER
from xreg.train.adapt_result import holdout_figures
from xreg.train.finetune import (
    BODY_PART,
    FRACTURE,
    INSTRUMENT,
    AdaptOptions,
    Film,
    distill_loss,
    energy_of,
    network_input,
    set_loss,
)
from xreg.train.replay import ReplaySet, backbone_features
from xreg.train.sites import GUARD_COVERAGE

__all__ = ["Labelled", "answer", "choose_guard", "cross_outputs", "extend_bank",
           "site_features", "train_heads"]

#: Wrong folder the guard is chosen for on out-of-fold answers (the target is 0.05).
WRONG_TARGET = 0.04
#: Stricter-only candidates: a threshold never falls below the base's.
CONFIDENCE_GRID = (0.5, 0.6, 0.7, 0.8, 0.9)
AGREE_GRID = (0.3, 0.4, 0.5, 0.6, 0.7)
#: ``agree_min`` may loosen to these shares of the base's: members that learned the
#: site's reviews together disagree where neither was taught, which the folds show.
AGREE_LOOSER = (0.5, 0.75)
#: ``distance_max`` may also loosen: the site's reviewed films join the bank, but a
#: film of the site has far fewer near neighbours there than a film of the base's sites.
DISTANCE_SCALES = (0.7, 0.85, 1.0, 1.2, 1.4, 1.7, 2.0, 2.5)
#: Reviewed films the folds need before a limit may loosen past the base's: a couple of
#: dozen say too little (at K = 25 a loosened guard filed 10% of the rest wrongly).
MIN_TO_LOOSEN = 40
#: A guard sorting at least this share of the best's right films counts as good as it
#: (1.0: only ties. On the pseudo-hospital of benchmarks/adapt_new_site.py at K = 50 and
#: 200, two review samples each, 0.95 sorted 0-6 points fewer right, at most 0.5 fewer wrong).
NEAR_BEST = 1.0
#: Groups the threshold choice's cross-validation uses.
FOLDS = 4
AUG = dict(hflip=True, rot90=False, rotate=10.0, scale=0.1, shift=0.05, intensity=0.1)


@dataclass(frozen=True)
class Labelled:
    """Films as features with their labels (-1: unknown) and sampling weights."""

    feats: list[Tensor]
    truth: Tensor        # (N, C) bool
    instrument: Tensor   # (N,) long
    fracture: Tensor
    weight: Tensor       # (N,) float64: each film's draw weight

    def __len__(self) -> int:
        return int(self.truth.shape[0])

    def rows(self, index: Sequence[int] | Tensor) -> Labelled:
        idx = torch.as_tensor(index, dtype=torch.long)
        return Labelled([f[idx] for f in self.feats], self.truth[idx], self.instrument[idx],
                        self.fracture[idx], self.weight[idx])

    @classmethod
    def of_films(cls, feats: list[Tensor], films: Sequence[Film], labels: Sequence[str]
                 ) -> Labelled:
        primary = [f.truth[0] if f.truth else "" for f in films]
        freq = Counter(primary)
        return cls(feats, torch.tensor([[lab in (f.truth or ()) for lab in labels]
                                        for f in films], dtype=torch.bool).reshape(
                       len(films), len(labels)),
                   _known(f.instrument for f in films), _known(f.fracture for f in films),
                   torch.tensor([1.0 / freq[p] for p in primary], dtype=torch.float64))

    @classmethod
    def of_replay(cls, replay: ReplaySet) -> Labelled:
        n = len(replay)
        sites = Counter(int(s) for s in replay.site)
        return cls(replay.member_features(), torch.from_numpy(replay.truth.copy()),
                   torch.from_numpy(replay.instrument.astype(np.int64)),
                   torch.from_numpy(replay.fracture.astype(np.int64)),
                   torch.tensor([1.0 / sites[int(s)] for s in replay.site] if n else [],
                                dtype=torch.float64))


def _known(values: Any) -> Tensor:
    return torch.tensor([-1 if v is None else int(v) for v in values], dtype=torch.long)


def member_heads(model: nn.Module) -> list[nn.ModuleDict]:
    if isinstance(model, EnsembleNet):
        return [m.heads for m in model.member_nets]
    return [model.heads]  # type: ignore[list-item]


@torch.no_grad()
def answer(model: nn.Module, feats: Sequence[Tensor], batch_size: int = 512
           ) -> dict[str, Tensor]:
    """The network's outputs for films given as members' features (eval mode)."""
    model.eval()
    parts: list[dict[str, Tensor]] = []
    n = int(feats[0].shape[0]) if feats else 0
    for start in range(0, n, batch_size):
        chunk = [f[start:start + batch_size].float() for f in feats]
        if isinstance(model, EnsembleNet):
            parts.append(model.answer(chunk))
        else:
            parts.append({k: h(chunk[0]) for k, h in member_heads(model)[0].items()})
    if not parts:
        return {}
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


@torch.no_grad()
def site_features(model: nn.Module, card: ModelCard, grey: Tensor, views: int = 1,
                  seed: int = 0, batch_size: int = 64) -> list[list[Tensor]]:
    """Members' features of ``grey`` films: ``views`` passes, the first plain, the
    others augmented (as training augments). Returns ``[view][member] (N, d)``."""
    from xreg.model.transforms import augment_batch

    model.eval()
    generator = torch.Generator().manual_seed(seed)
    out: list[list[Tensor]] = []
    for v in range(views):
        parts: list[list[Tensor]] = []
        for start in range(0, len(grey), batch_size):
            x = grey[start:start + batch_size].float()
            if v:
                x = augment_batch(x, generator, **AUG)
            parts.append(backbone_features(model, network_input(x, card)))
        out.append([torch.cat([p[m] for p in parts]).float()
                    for m in range(len(parts[0]))] if parts else [])
    return out


def extend_bank(model: nn.Module, feats: Sequence[Tensor]) -> int:
    """Add films (members' features) to an ensemble's feature bank; returns its rows."""
    if not isinstance(model, EnsembleNet) or not model.has_bank or not len(feats[0]):
        return int(model.bank.shape[0]) if isinstance(model, EnsembleNet) else 0
    joined = unit_features([f.float() for f in feats])
    model.set_bank(torch.cat([model.bank.float(), joined]), model.k)
    return int(model.bank.shape[0])


# -- training --------------------------------------------------------------------------


def _supervised(out: Mapping[str, Tensor], batch: Labelled) -> Tensor:
    loss = set_loss(out[BODY_PART], batch.truth)
    for name, y in ((INSTRUMENT, batch.instrument), (FRACTURE, batch.fracture)):
        known = y >= 0
        if name in out and known.any():
            loss = loss + F.cross_entropy(out[name][known], y[known])
    return loss


def train_heads(model: nn.Module, site: Labelled, options: AdaptOptions, *,
                replay: Labelled | None = None, pool: Sequence[Tensor] = (),
                on_step: Callable[[], None] | None = None) -> list[dict[str, float]]:
    """Train every member's heads in place: reviews, replayed labels, and the base's
    answers on the replayed and ``pool`` films (distillation), near the base."""
    heads = member_heads(model)
    teacher = [copy.deepcopy(h).eval() for h in heads]
    kd_feats: list[Tensor | None] = []
    for m in range(len(heads)):
        parts = ([replay.feats[m]] if replay is not None and len(replay) else []) + \
            ([pool[m]] if len(pool) else [])
        kd_feats.append(torch.cat(parts) if parts else None)
    with torch.no_grad():
        kd_targets = [{k: h(f) for k, h in t.items()} if f is not None else {}
                      for t, f in zip(teacher, kd_feats)]
    params = [p for h in heads for p in h.parameters()]
    anchor = [p.detach().clone() for p in params]
    optimiser = torch.optim.Adam(params, lr=options.lr_for("heads"))
    steps = options.head_steps
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    generator = torch.Generator().manual_seed(options.seed)
    batch = max(options.batch_size, 64)
    log: list[dict[str, float]] = []
    for h in heads:
        h.eval()  # no dropout: fixed features, and torch's dropout costs more than the rest
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny layers: one thread beats two that wait on each other
    try:
        for step in range(steps):
            rows = torch.multinomial(site.weight, batch, replacement=True, generator=generator)
            parts = [site.rows(rows)]
            if replay is not None and len(replay):
                parts.append(replay.rows(torch.multinomial(replay.weight, batch,
                                                           replacement=True,
                                                           generator=generator)))
            first = kd_feats[0] if kd_feats else None
            krows = torch.randint(0, len(first), (batch,), generator=generator) \
                if first is not None and len(first) and options.distill else None
            loss = torch.zeros(())
            for m, h in enumerate(heads):
                # One pass per head over every row of the step: reviews, replay, distillation.
                chunks = [p.feats[m] for p in parts]
                kd_m = kd_feats[m]
                if krows is not None and kd_m is not None:
                    chunks.append(kd_m[krows])
                out = {k: layer(torch.cat(chunks)) for k, layer in h.items()}
                for n, p in enumerate(parts):
                    loss = loss + _supervised({k: v[n * batch:(n + 1) * batch]
                                               for k, v in out.items()}, p)
                if krows is not None and kd_m is not None:
                    loss = loss + options.distill * distill_loss(
                        {k: v[len(parts) * batch:] for k, v in out.items()},
                        {k: v[krows] for k, v in kd_targets[m].items()}, options.temperature)
            if options.anchor:
                loss = loss + options.anchor * sum(((p - a) ** 2).sum()
                                                   for p, a in zip(params, anchor))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            log.append({"step": float(step), "loss": float(loss.detach())})
            if on_step is not None:
                on_step()
    finally:
        torch.set_num_threads(threads)
    for h in heads:
        h.eval()
    return log


# -- choosing the guard on out-of-fold answers -----------------------------------------


def _folds(groups: Sequence[str], folds: int, seed: int) -> list[int]:
    keyed = sorted(set(groups), key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
    fold_of = {g: i % folds for i, g in enumerate(keyed)}
    return [fold_of[g] for g in groups]


def cross_outputs(base: nn.Module, site: Labelled, views: int, groups: Sequence[str],
                  plain: list[Tensor], options: AdaptOptions, *, replay: Labelled | None,
                  pool: Sequence[Tensor] = ()) -> dict[str, Tensor] | None:
    """Each reviewed film's answer from heads trained without its group (and a bank
    holding the other groups' films): what the rest of the site will see.

    ``site`` holds ``views`` rows per film (view-major); ``plain`` the films'
    unaugmented features. None with fewer than two groups.
    """
    n = len(groups)
    k = min(FOLDS, len(set(groups)))
    if k < 2:
        return None
    fold = np.array(_folds(groups, k, options.seed))
    parts: list[tuple[np.ndarray, dict[str, Tensor]]] = []
    for f in range(k):
        inside = np.flatnonzero(fold != f)
        rows = [v * n + i for v in range(views) for i in inside]
        model = copy.deepcopy(base)
        train_heads(model, site.rows(rows), options, replay=replay, pool=pool)
        extend_bank(model, [p[torch.as_tensor(inside)] for p in plain])
        out = np.flatnonzero(fold == f)
        parts.append((out, answer(model, [p[torch.as_tensor(out)] for p in plain])))
    order = np.concatenate([idx for idx, _ in parts])
    joined = {key: torch.cat([o[key] for _, o in parts]) for key in parts[0][1]}
    inverse = torch.as_tensor(np.argsort(order))
    return {key: v[inverse] for key, v in joined.items()}


def choose_guard(card: ModelCard, outputs: Mapping[str, Tensor],
                 truth: Sequence[tuple[str, ...]]) -> tuple[ModelCard, dict[str, Any]]:
    """``min_confidence``, ``agree_min`` and ``distance_max`` for at most
    :data:`WRONG_TARGET` wrong folder on the out-of-fold answers, sorting the most.
    ``min_confidence`` is never looser than the base's; ``distance_max`` and
    ``agree_min`` may be (:data:`DISTANCE_SCALES`, :data:`AGREE_LOOSER`; with at least
    :data:`MIN_TO_LOOSEN` reviewed films), and among
    the guards sorting as many as the best the one nearest the base's is kept. The energy
    limit becomes the larger of the base's and the :data:`GUARD_COVERAGE` quantile over
    the reviewed musculoskeletal films."""
    loosen = len(truth) >= MIN_TO_LOOSEN
    guard = dict(card.guard)
    msk = [i for i, t in enumerate(truth) if t and t[0] != OTHER]
    if msk and guard.get("energy_max") is not None:
        site = float(np.quantile(energy_of(dict(outputs))[msk], GUARD_COVERAGE))
        guard["energy_max"] = round(max(float(guard["energy_max"]), site), 4)
    base_conf = float(card.thresholds.get("min_confidence", 0.5))
    confs = sorted({base_conf, *(c for c in CONFIDENCE_GRID if c > base_conf)})
    agrees: list[float | None] = [None]
    if guard.get("agree_min") is not None and MEMBERS_OUTPUT in outputs:
        a0 = float(guard["agree_min"])
        agrees = sorted({a0, *(a for a in AGREE_GRID if a > a0),
                         *(round(a0 * s, 4) for s in AGREE_LOOSER if loosen)})
    dists: list[float | None] = [None]
    if guard.get("distance_max") is not None and DISTANCE_OUTPUT in outputs:
        dists = [round(float(guard["distance_max"]) * s, 4) for s in DISTANCE_SCALES
                 if loosen or s <= 1.0]
    trials = []
    for conf, agree, dist in itertools.product(confs, agrees, dists):
        g = {**guard, **({"agree_min": agree} if agree is not None else {}),
             **({"distance_max": dist} if dist is not None else {})}
        trial = replace(card, thresholds={**card.thresholds, "min_confidence": conf}, guard=g)
        fig = holdout_figures(trial, outputs, truth)
        right, wrong, n = fig["correct"], fig["wrong"], fig["films"]
        trials.append((trial, {"min_confidence": conf, "agree_min": agree,
                               "distance_max": dist, "films": n, "right": right,
                               "wrong": wrong, "met": wrong <= WRONG_TARGET * n}))
    met = [t for t in trials if t[1]["met"]]
    if not met:  # nothing meets the target: the fewest wrong
        return min(trials, key=lambda t: (t[1]["wrong"], -t[1]["right"]))
    # Of the guards sorting as many as the best, the one nearest the base's: the
    # base's limits were set on thousands of films, the folds hold a few dozen, and a
    # looser distance lets through films of classes nobody reviewed, which they cannot show.
    most = max(t[1]["right"] for t in met)
    near = [t for t in met if t[1]["right"] >= NEAR_BEST * most]
    a0 = float(guard.get("agree_min") or 0.0)
    d0 = float(guard.get("distance_max") or 1.0)

    def change(t: tuple[ModelCard, dict[str, Any]]) -> tuple[float, float, float, int]:
        c = t[1]
        return (abs(float(np.log((c["distance_max"] or d0) / d0))),
                abs((c["agree_min"] or 0.0) - a0), c["min_confidence"] - base_conf,
                -c["right"])

    return min(near, key=change)
