"""The steps of ``xreg adapt``: films in, a fine-tuned network out.

Decoding at the model's size (:func:`decode_grey`), the network's input as
the sort prepares it, predictions, AdaBN (:func:`adabn`), phantoms to distil
on (:func:`render_phantoms`) and the training loop (:func:`fine_tune`): the
reviewed films' labels (a set label is right on any member), the base's own
answers on other films (distillation at temperature ``T``) and an L2 pull
towards the base weights (L2-SP), batch-norm statistics frozen.
:mod:`xreg.train.adapt` puts them together and judges the result.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xreg.errors import ConfigError
from xreg.inference.preprocess import normalise_intensity, resize_grey
from xreg.io import try_load_image
from xreg.model.card import DISTANCE_OUTPUT, MEMBERS_OUTPUT, ModelCard
from xreg.model.transforms import augment_batch

__all__ = ["DISTILL_ON", "AdaptOptions", "Film", "adabn", "decode_grey", "distill_loss",
           "energy_of", "fine_tune", "held_back", "network_input", "predict_grey",
           "render_phantoms", "set_loss"]

BODY_PART, INSTRUMENT, FRACTURE = "body_part", "instrument", "fracture"

#: Whose answers the base keeps: rendered phantoms of every class, the site's unreviewed
#: films, or both.
DISTILL_ON: tuple[str, ...] = ("phantoms", "site", "both")


@dataclass(frozen=True)
class Film:
    """One film of the site; ``truth`` is the reviewed body-part set (None: unreviewed)."""

    path: Path
    truth: tuple[str, ...] | None = None
    instrument: int | None = None
    fracture: int | None = None
    group: str = ""  # patient, study or folder: a group never straddles the split
    reviewer: str | None = None


@dataclass(frozen=True)
class AdaptOptions:
    """How to adapt; the defaults are the measured recipe (benchmarks/label_efficiency.py)."""

    epochs: int = 15           # passes over the reviewed training films ...
    min_steps: int = 60        # ... but at least this many optimiser steps
    max_steps: int = 400
    head_steps: int = 800      # optimiser steps of each training of the heads alone
    batch_size: int = 16
    lr: float | None = None    # None: 2e-4 for the whole network, 3e-3 for the heads alone
    distill: float = 1.0       # weight of the base's answers as a second target (0: off)
    distill_on: str = "phantoms"  # whose answers: phantoms | site (unreviewed films) | both
    distill_films: int = 600   # at most this many unreviewed site films are seen (whether
                               # the reviews represent the site; distillation on "site")
    phantoms: int = 300        # phantoms rendered for distillation (every class, seeded)
    temperature: float = 2.0
    anchor: float = 0.01       # L2-SP pull towards the base weights (0: off)
    layers: str = "auto"       # what trains: heads | all | auto (heads, unless replay
                               # films are given for a base with no bank and no replay file)
    replay: bool = True        # replay the features shipped beside the base's weights
    views: int = 4             # passes per reviewed film for head training (1 plain + augmented)
    adabn: bool = False        # re-estimate batch-norm statistics on the site's films first
    fine_tune: bool = True     # False with adabn: AdaBN alone (--unlabelled)
    holdout: float = 0.25      # share of reviewed groups held out for the verdict
    target_accuracy: float = 0.97
    seed: int = 0
    workers: int = 2

    def layers_for(self, replay: bool) -> str:
        if self.layers != "auto":
            return self.layers
        return "all" if replay else "heads"

    def lr_for(self, layers: str) -> float:
        if self.lr is not None:
            return self.lr
        return 2e-4 if layers == "all" else 3e-3

    def check(self) -> None:
        if not 0.0 < self.holdout < 1.0:
            raise ConfigError(f"--holdout must be between 0 and 1, got {self.holdout}")
        for name in ("epochs", "min_steps", "max_steps", "head_steps", "batch_size", "workers",
                     "views"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        for name in ("lr", "distill", "anchor", "temperature"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value < 0):
                raise ConfigError(f"{name} must be a finite number >= 0")
        if not (self.adabn or self.fine_tune):
            raise ConfigError("nothing to do: neither AdaBN nor fine-tuning")
        if self.phantoms < 0 or self.distill_films < 0:
            raise ConfigError("--phantoms must be 0 or more")
        if self.layers not in ("auto", "all", "heads"):
            raise ConfigError("layers must be auto, all or heads")
        if self.distill_on not in DISTILL_ON:
            raise ConfigError(f"distill_on must be one of {', '.join(DISTILL_ON)}")




def render_phantoms(count: int, seed: int, size: int) -> torch.Tensor:
    """``count`` phantoms of every class (as ``xreg synth`` plans them), rendered in
    memory at ``size``: grey in [0, 1], ``(count, size, size)`` float16.

    Nothing is written to disk, so nothing is left behind however adapt ends;
    rendering 300 takes a few seconds.
    """
    from xreg.inference.preprocess import resize_grey
    from xreg.synth.generate import plan_dataset, render_phantom

    if count <= 0:
        return torch.zeros((0, size, size), dtype=torch.float16)
    items = plan_dataset(count, 10_000 + seed, size=max(size, 256), formats=("jpeg",))
    arrays = [resize_grey(render_phantom(item.spec).image, size).astype(np.float16)
              for item in items]
    return torch.from_numpy(np.clip(np.stack(arrays), 0, 1).astype(np.float16))


# -- pixels -----------------------------------------------------------------------------


def decode_grey(paths: Sequence[Path], size: int, workers: int = 2,
                on_decoded: Callable[[], None] | None = None,
                cache: dict[Path, np.ndarray | None] | None = None,
                ) -> tuple[torch.Tensor, list[int]]:
    """Films at the model's size, grey in [0, 1] (N, S, S) float16, and which decoded.

    ``cache`` (path -> pixels, None: undecodable) spares a caller that adapts
    several times from the same films (the label-efficiency benchmark) the
    decoding.
    """
    def one(path: Path) -> np.ndarray | None:
        if cache is not None and path in cache:
            return cache[path]
        image = try_load_image(path, target_size=size)
        x = None if isinstance(image, str) else \
            resize_grey(image.pixels, size).astype(np.float16)
        if cache is not None:
            cache[path] = x
        return x

    kept: list[int] = []
    arrays: list[np.ndarray] = []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="xreg-adapt") as pool:
        for i, x in enumerate(pool.map(one, paths)):
            if on_decoded is not None:
                on_decoded()
            if x is not None:
                kept.append(i)
                arrays.append(x)
    stacked = np.stack(arrays) if arrays else np.zeros((0, size, size), np.float32)
    return torch.from_numpy(stacked.astype(np.float16, copy=False)), kept


def network_input(grey: torch.Tensor, card: ModelCard) -> torch.Tensor:
    """Grey [0, 1] (B, S, S) -> the network's input, exactly as the sort prepares it."""
    x = normalise_intensity(grey.float().numpy(), card.normalise)
    x = (torch.from_numpy(np.ascontiguousarray(x)) - card.mean) / card.std
    return x.unsqueeze(1).expand(-1, 3, -1, -1)


@torch.no_grad()
def predict_grey(model: nn.Module, grey: torch.Tensor, card: ModelCard,
                 batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Logits of every head for films already decoded (eval mode)."""
    model.eval()
    out: dict[str, list[torch.Tensor]] = {h.name: [] for h in card.heads}
    for start in range(0, len(grey), batch_size):
        logits = model(network_input(grey[start:start + batch_size], card))
        for name in logits:  # an ensemble's extra outputs (members, distance) too
            out.setdefault(name, []).append(logits[name].float())
    return {name: torch.cat(parts) if parts else torch.zeros((0, len(card.head(name).labels)))
            for name, parts in out.items()}


@torch.no_grad()
def adabn(model: nn.Module, grey: torch.Tensor, card: ModelCard, batch_size: int = 32,
          seed: int = 0) -> int:
    """Re-estimate every batch-norm layer's statistics on ``grey``; returns the layers."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers or len(grey) < 2:
        return 0
    saved = [(m, m.momentum) for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over every batch
    model.train()
    order = torch.randperm(len(grey), generator=torch.Generator().manual_seed(seed))
    for start in range(0, len(grey), batch_size):
        rows = order[start:start + batch_size]
        if len(rows) < 2:
            break
        model(network_input(grey[rows], card))
    for m, momentum in saved:
        m.momentum = momentum
    model.eval()
    return len(layers)


def energy_of(logits: torch.Tensor | Mapping[str, torch.Tensor]) -> np.ndarray:
    """Body-part energy per film: of its logits, or of a network's outputs (an
    ensemble's members' mean energy, as the sort reads it)."""
    if isinstance(logits, Mapping):
        members = logits.get(MEMBERS_OUTPUT)
        if members is None:
            return energy_of(logits[BODY_PART])
        return np.mean([energy_of(members[:, m]) for m in range(members.shape[1])], axis=0)
    return (-torch.logsumexp(logits, dim=1)).numpy().astype(np.float64)


def held_back(outputs: Mapping[str, torch.Tensor], card: ModelCard) -> np.ndarray:
    """Which films the card's guard holds back (energy, agreement, distance), as the
    sort's prediction layer decides."""
    from xreg.inference.predict import score_logits

    arrays = {k: v.detach().numpy() for k, v in outputs.items()}
    return np.array([s.unfamiliar is not None for s in score_logits(arrays, card)], bool)


# -- training ---------------------------------------------------------------------------


def set_loss(logits: torch.Tensor, sets: torch.Tensor) -> torch.Tensor:
    """-log P(truth in its set): a set label (``hand|wrist``) is right on any member."""
    log_p = F.log_softmax(logits, dim=1)
    return -(torch.logsumexp(log_p.masked_fill(~sets, -1e9), dim=1)).mean()


def distill_loss(student: Mapping[str, torch.Tensor], teacher: Mapping[str, torch.Tensor],
                  t: float) -> torch.Tensor:
    loss = torch.zeros(())
    for name, target in teacher.items():
        if name in (MEMBERS_OUTPUT, DISTANCE_OUTPUT):
            continue  # an ensemble's extra outputs: its heads carry what it knows
        log_q = F.log_softmax(student[name] / t, dim=1)
        p = F.softmax(target / t, dim=1)
        loss = loss + F.kl_div(log_q, p, reduction="batchmean") * t * t
    return loss


def _freeze_batch_norm(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def _binary_targets(films: Sequence[Film], name: str) -> torch.Tensor:
    return torch.tensor([-1 if getattr(f, name) is None else int(getattr(f, name))
                         for f in films], dtype=torch.long)


def _supervised(out: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
                rows: torch.Tensor) -> torch.Tensor:
    loss = set_loss(out[BODY_PART], targets[BODY_PART][rows])
    for name, y in targets.items():
        if name == BODY_PART:
            continue
        known = y[rows] >= 0
        if known.any():
            loss = loss + F.cross_entropy(out[name][known], y[rows][known])
    return loss


def _targets(films: Sequence[Film], card: ModelCard) -> dict[str, torch.Tensor]:
    """The label set of each film (a boolean row per film) and its binary labels (-1: none)."""
    labels = card.head(BODY_PART).labels
    heads = {h.name for h in card.heads}
    out = {BODY_PART: torch.tensor([[label in (f.truth or ()) for label in labels]
                                    for f in films], dtype=torch.bool)
           if films else torch.zeros((0, len(labels)), dtype=torch.bool)}
    for name in (INSTRUMENT, FRACTURE):
        if name in heads:
            out[name] = _binary_targets(films, name)
    return out


def fine_tune(model: nn.Module, card: ModelCard, grey: torch.Tensor, films: Sequence[Film],
              pool: torch.Tensor, pool_logits: dict[str, torch.Tensor], options: AdaptOptions,
              on_step: Callable[[int, int, float], None] | None = None, *,
              replay: tuple[torch.Tensor, Sequence[Film]] | None = None,
              ) -> tuple[int, list[dict[str, float]]]:
    """Fine-tune ``model`` in place on the reviewed ``films`` (their pixels ``grey``).

    ``pool`` (phantoms, unreviewed site films, replay films) with the base's
    logits ``pool_logits`` is the distillation target; ``replay`` (pixels,
    labelled films of the base's own sources) adds half a batch of those
    labels to every step. The number of steps follows the reviewed films
    alone. Returns the steps taken and a per-step log.
    """
    targets = _targets(films, card)
    replay_targets = _targets(replay[1], card) if replay else {}
    # Balanced over each film's first label, so a class reviewed twice is not drowned.
    primary = [f.truth[0] if f.truth else "" for f in films]
    freq = Counter(primary)
    weights = torch.tensor([1.0 / freq[p] for p in primary], dtype=torch.float64)
    per_epoch = math.ceil(len(films) / options.batch_size)
    steps = min(options.max_steps, max(options.min_steps, options.epochs * per_epoch))
    generator = torch.Generator().manual_seed(options.seed)
    layers = options.layers_for(replay is not None)
    if layers == "all" and getattr(model, "has_bank", False):
        # The bank holds the base's features of its training films: new features would
        # make every distance stale. Heads alone leave the features as they were.
        raise ConfigError("this model keeps a feature bank of its training films; adapt "
                          "its heads (--layers heads), not the whole network")
    trained = {n: p for n, p in model.named_parameters()
               if layers == "all" or n.startswith("heads.") or ".heads." in n}
    for n, p in model.named_parameters():
        p.requires_grad_(n in trained)
    anchor = {n: p.detach().clone() for n, p in trained.items()} if options.anchor else {}
    optimiser = torch.optim.Adam(trained.values(), lr=options.lr_for(layers))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    aug = dict(hflip=True, rot90=False, rotate=10.0, scale=0.1, shift=0.05, intensity=0.1)
    log: list[dict[str, float]] = []
    for step in range(steps):
        model.train()
        _freeze_batch_norm(model)
        rows = torch.multinomial(weights, options.batch_size, replacement=True,
                                 generator=generator)
        x = augment_batch(grey[rows].float(), generator, **aug)
        out = model(network_input(x, card))
        loss = _supervised(out, targets, rows)
        entry = {"step": float(step), "supervised": float(loss.detach())}
        if replay is not None:
            rrows = torch.randint(0, len(replay[1]), (max(1, options.batch_size // 2),),
                                  generator=generator)
            rx = augment_batch(replay[0][rrows].float(), generator, **aug)
            rloss = _supervised(model(network_input(rx, card)), replay_targets, rrows)
            loss = loss + rloss
            entry["replay"] = float(rloss.detach())
        if options.distill and len(pool):
            prow = torch.randint(0, len(pool), (options.batch_size,), generator=generator)
            px = augment_batch(pool[prow].float(), generator, **aug)
            student = model(network_input(px, card))
            kd = distill_loss(student, {k: v[prow] for k, v in pool_logits.items()},
                               options.temperature)
            loss = loss + options.distill * kd
            entry["distill"] = float(kd.detach())
        if anchor:
            drift = sum(((p - anchor[n]) ** 2).sum() for n, p in trained.items())
            loss = loss + options.anchor * drift
            entry["drift"] = float(drift.detach())
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        log.append(entry)
        if on_step is not None:
            on_step(step + 1, steps, float(loss.detach()))
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return steps, log


