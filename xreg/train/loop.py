"""The training loop: seeded epochs, validation, early stopping, resumable state.

Every epoch draws its sampling order, augmentation and dropout from
generators seeded by (seed, epoch) alone, and the run's state (model,
optimiser, scheduler, early-stopping counters, log) is saved atomically after
each epoch. So an interrupted run resumed with ``resume=True`` continues
exactly where it stopped and ends with the same weights as an uninterrupted
one (on the CPU; CUDA kernels need not be deterministic).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from xreg.errors import CheckpointError
from xreg.inference.preprocess import normalise_intensity
from xreg.model.models import MultiHeadNet
from xreg.model.transforms import augment_batch, join_views
from xreg.train.batches import site_batch, style_bank, with_hardware
from xreg.train.config import TrainConfig

__all__ = ["Callbacks", "EpochLog", "FitResult", "Tensors", "fit", "predict_tensors",
           "set_label_loss"]

STATE_FILE, BEST_FILE = "state.pt", "best.pt"
IGNORE = -100  # instrument label unknown: left out of that head's loss


@dataclass(frozen=True)
class EpochLog:
    """One epoch's figures, as written to log.csv / log.json.

    ``accuracy`` maps ``train_<head>`` and ``val_<head>`` to the share of
    labelled images the head got right (NaN when a split has no labels).
    """

    epoch: int
    lr: float
    train_loss: float
    val_loss: float
    seconds: float
    best: bool
    accuracy: dict[str, float] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """Flat dict for CSV/JSON; NaN becomes None (JSON has no NaN)."""
        flat: dict[str, Any] = {k: v for k, v in asdict(self).items() if k != "accuracy"}
        for key, value in self.accuracy.items():
            flat[f"{key}_acc"] = None if math.isnan(value) else value
        return flat


@dataclass
class Callbacks:
    """Optional progress hooks; the library itself never prints."""

    message: Callable[[str], None] | None = None
    decode_start: Callable[[int], None] | None = None  # images to decode (cache miss)
    decoded: Callable[[], None] | None = None
    epoch_start: Callable[[int, int, int], None] | None = None  # epoch, max_epochs, steps
    step: Callable[[float, float], None] | None = None  # running loss, first head accuracy
    epoch_end: Callable[[EpochLog], None] | None = None

    def say(self, text: str) -> None:
        if self.message is not None:
            self.message(text)


@dataclass
class Tensors:
    """One split in memory: grey pixels (N, S, S) and one label tensor per head.

    A label of ``IGNORE`` (-100) means unknown: left out of that head's loss.
    A 2-D target (N, classes) is a set label: 1 marks each candidate class,
    an all-zero row is unknown. ``weights`` (optional) are per-item draw
    weights for the training sampler.
    """

    pixels: torch.Tensor
    targets: dict[str, torch.Tensor]
    weights: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.pixels.shape[0])


@dataclass
class FitResult:
    """What :func:`fit` leaves: the best weights are loaded into the model."""

    log: list[EpochLog] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = math.inf
    stopped_early: bool = False
    seconds: float = 0.0


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_log(run_dir: Path, log: list[EpochLog]) -> None:
    """log.csv and log.json: one row per finished epoch."""
    rows = [e.row() for e in log]
    _write_text_atomic(run_dir / "log.json", json.dumps(rows, indent=1) + "\n")
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for r in rows for k in r))
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _write_text_atomic(run_dir / "log.csv", buf.getvalue())


def _inputs(x: torch.Tensor, mean: float, std: float, device: torch.device) -> torch.Tensor:
    if x.ndim == 4:  # (B, 2, S, S) hip pairs -> (B, S, 2S), AP left
        x = join_views(x)
    x = ((x.to(device, torch.float32) - mean) / std)[:, None]
    return x.expand(-1, 3, -1, -1).contiguous(memory_format=torch.channels_last)


def _sample_order(train: Tensors, config: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    n = config.samples_per_epoch or len(train)
    if train.weights is not None:
        return torch.multinomial(train.weights, n, replacement=True, generator=gen)
    if not config.weighted_sampling:
        return torch.randperm(n, generator=gen)
    if config.balance_head not in train.targets:
        return torch.randperm(n, generator=gen)
    # Each class of the balanced head (unknown counted as its own) gets an equal share.
    classes, inverse, counts = torch.unique(train.targets[config.balance_head],
                                            return_inverse=True, return_counts=True)
    weights = (1.0 / counts.double())[inverse]
    return torch.multinomial(weights, n, replacement=True, generator=gen)


def _batches(order: torch.Tensor, size: int) -> list[torch.Tensor]:
    chunks = [order[i:i + size] for i in range(0, len(order), size)]
    if len(chunks) > 1 and len(chunks[-1]) < 2:
        chunks.pop()  # batch norm cannot train on a batch of one
    return chunks


def set_label_loss(logits: torch.Tensor, members: torch.Tensor,
                   smoothing: float = 0.0, primary_weight: float = 0.0) -> torch.Tensor:
    """Mean over labelled rows of ``-log(sum of the set's probabilities)``.

    ``members`` is (B, C) with a value > 0 for each candidate class (2 marks
    the primary label, the reviewer's first choice); all-zero rows are
    unknown and contribute nothing. A set of one is ordinary cross-entropy
    and takes ``smoothing`` (the thesis's label smoothing); a larger set is
    left unsmoothed, so its loss never pulls probability towards classes
    outside it. ``primary_weight`` > 0 adds that much of ``-log p(primary)``
    to a larger set's loss: a mild lean towards the first choice, still
    entirely inside the set.
    """
    known = members.sum(1) > 0
    if not bool(known.any()):
        return logits.sum() * 0.0
    logp = torch.log_softmax(logits[known].float(), dim=1)
    m = members[known].to(logp.dtype)
    in_set = torch.logsumexp(logp.masked_fill(m <= 0, -math.inf), dim=1)
    single = (m > 0).sum(1) == 1
    eps = smoothing * single.to(logp.dtype)
    loss = -(1 - eps) * in_set - eps * logp.mean(1)
    if primary_weight:
        primary = logp.gather(1, m.argmax(1, keepdim=True))[:, 0]
        loss = loss - primary_weight * (~single).to(logp.dtype) * primary
    return loss.mean()


def _in_set(pred: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(labelled rows, right among them) for a 1-D label or a 2-D set target."""
    if y.ndim == 2:
        known = y.sum(1) > 0
        return known, y[known].gather(1, pred[known, None])[:, 0] > 0
    known = y != IGNORE
    return known, pred[known] == y[known]


def _losses(logits: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
            smoothing: float, primary_weight: float = 0.0) -> torch.Tensor:
    loss = torch.zeros((), device=next(iter(logits.values())).device)
    for name, y in targets.items():
        # Label smoothing is the thesis's for the body part head only.
        eps = smoothing * (name == "body_part")
        if y.ndim == 2:
            loss = loss + set_label_loss(logits[name], y, eps, primary_weight)
        elif bool((y != IGNORE).any()):
            loss = loss + F.cross_entropy(logits[name], y, ignore_index=IGNORE,
                                          label_smoothing=eps)
    return loss


@torch.no_grad()
def predict_tensors(model: MultiHeadNet, data: Tensors, mean: float, std: float,
                    device: torch.device, batch_size: int = 64
                    ) -> dict[str, NDArray[np.float64]]:
    """Softmax probabilities per head for a split held in memory (eval mode)."""
    model.eval()
    out: dict[str, list[torch.Tensor]] = {h.name: [] for h in model.head_specs}
    for start in range(0, len(data), batch_size):
        logits = model(_inputs(data.pixels[start:start + batch_size], mean, std, device))
        for name, value in logits.items():
            out[name].append(torch.softmax(value.float(), 1).cpu())
    return {k: torch.cat(v).double().numpy() for k, v in out.items()}


def _validate(model: MultiHeadNet, val: Tensors, mean: float, std: float,
              device: torch.device) -> tuple[float, dict[str, float]]:
    """Unsmoothed validation log loss (summed over heads) and accuracy per head."""
    probs = predict_tensors(model, val, mean, std, device)
    loss, accuracy = 0.0, {}
    for name, target in val.targets.items():
        y = target.numpy()
        accuracy[f"val_{name}"] = math.nan
        if y.ndim == 2:  # a set label: the probability of the set
            known = y.sum(1) > 0
            p_set = (probs[name] * (y > 0)).sum(1)
            right = y[np.arange(len(y)), probs[name].argmax(1)] > 0
        else:
            known = y != IGNORE
            p_set = probs[name][np.arange(len(y)), np.where(known, y, 0)]
            right = probs[name].argmax(1) == y
        if known.any():
            loss += float(-np.log(np.clip(p_set[known], 1e-12, 1.0)).mean())
            accuracy[f"val_{name}"] = float(right[known].mean())
    return loss, accuracy


def fit(
    model: MultiHeadNet,
    train: Tensors,
    val: Tensors,
    config: TrainConfig,
    *,
    mean: float,
    std: float,
    run_dir: Path,
    device: torch.device,
    state: Mapping[str, Any] | None = None,
    extra_state: Mapping[str, Any] | None = None,
    callbacks: Callbacks | None = None,
) -> FitResult:
    """Train ``model`` on ``train`` with early stopping on ``val``'s loss.

    ``state`` is a saved ``state.pt`` to continue from. ``extra_state`` is
    stored alongside (e.g. the config and init) so a resume can check it.
    On return the best epoch's weights are loaded into ``model``.
    """
    cb = callbacks or Callbacks()
    model.to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=list(config.milestones), gamma=config.gamma)
    result = FitResult()
    bad_epochs, start_epoch = 0, 1
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        result.log = [EpochLog(**e) for e in json.loads(state["log"])]
        result.best_epoch, result.best_val_loss = state["best_epoch"], state["best_val_loss"]
        bad_epochs, start_epoch = state["bad_epochs"], state["epoch"] + 1
        result.seconds = sum(e.seconds for e in result.log)
    steps = len(_batches(torch.arange(config.samples_per_epoch or len(train)),
                         config.batch_size))
    bank = style_bank(train, config)
    for epoch in range(start_epoch, config.max_epochs + 1):
        if bad_epochs >= config.patience:
            result.stopped_early = True
            break
        started = time.monotonic()
        torch.manual_seed(config.seed * 100_003 + epoch)  # dropout
        gen = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        order = _sample_order(train, config, gen)
        if cb.epoch_start is not None:
            cb.epoch_start(epoch, config.max_epochs, steps)
        model.train()
        lr = float(optimizer.param_groups[0]["lr"])
        total, seen = 0.0, 0
        right: dict[str, int] = dict.fromkeys(train.targets, 0)
        labelled: dict[str, int] = dict.fromkeys(train.targets, 0)
        for idx in _batches(order, config.batch_size):
            films, pasted = site_batch(train.pixels[idx], config, gen, bank)
            x = augment_batch(films, gen,
                              hflip=config.hflip, rot90=config.rot90, rotate=config.rotate,
                              scale=config.scale, shift=config.shift,
                              intensity=config.intensity)
            if config.normalise != "none":
                x = torch.from_numpy(normalise_intensity(x.numpy(), config.normalise))
            targets = {k: v.to(device) for k, v in with_hardware(
                {k: v[idx] for k, v in train.targets.items()}, pasted).items()}
            logits = model(_inputs(x, mean, std, device))
            loss = _losses(logits, targets, config.label_smoothing, config.primary_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
            for name, y in targets.items():
                known, hit = _in_set(logits[name].argmax(1), y)
                labelled[name] += int(known.sum())
                right[name] += int(hit.sum())
            if cb.step is not None:
                first = next(iter(right))
                cb.step(total / seen, right[first] / max(labelled[first], 1))
        scheduler.step()
        val_loss, accuracy = _validate(model, val, mean, std, device)
        accuracy = {**{f"train_{k}": right[k] / labelled[k] if labelled[k] else math.nan
                       for k in train.targets}, **accuracy}
        best = val_loss < result.best_val_loss
        if best:
            result.best_val_loss, result.best_epoch, bad_epochs = val_loss, epoch, 0
            _save_atomic({k: v.detach().cpu() for k, v in model.state_dict().items()},
                         run_dir / BEST_FILE)
        else:
            bad_epochs += 1
        entry = EpochLog(epoch, lr, total / max(seen, 1), val_loss,
                         time.monotonic() - started, best, accuracy)
        result.log.append(entry)
        result.seconds += entry.seconds
        write_log(run_dir, result.log)
        _save_atomic({
            **(extra_state or {}),
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "epoch": epoch,
            "best_epoch": result.best_epoch, "best_val_loss": result.best_val_loss,
            "bad_epochs": bad_epochs, "log": json.dumps([asdict(e) for e in result.log]),
        }, run_dir / STATE_FILE)
        if cb.epoch_end is not None:
            cb.epoch_end(entry)
    try:
        best_state = torch.load(run_dir / BEST_FILE, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise CheckpointError(f"cannot read the best epoch's weights in {run_dir}: "
                              f"{exc}") from None
    model.load_state_dict(best_state)
    return result
