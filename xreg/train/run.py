"""``xreg train``: labelled data in, a self-describing checkpoint out.

Plan (labels, split) -> decode once -> fit -> choose thresholds on the
validation split -> score the untouched test split through the inference
path -> write the checkpoint with everything in its card. The run folder
next to the output keeps split.csv, log.csv/log.json, the decode cache and
the resumable state.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xreg.errors import CheckpointError, ConfigError, MetricsInputError
from xreg.evaluation.evaluate import Evaluation
from xreg.evaluation.metrics import youden_threshold
from xreg.evaluation.pairs import PairEvaluation
from xreg.inference.predict import resolve_device
from xreg.inference.preprocess import normalise_intensity, resize_grey
from xreg.model.checkpoint import LoadedModel, ModelCard, save_checkpoint
from xreg.model.models import build_model, load_imagenet_backbone
from xreg.train.config import TrainConfig
from xreg.train.data import decode_images
from xreg.train.loop import (
    IGNORE,
    STATE_FILE,
    Callbacks,
    EpochLog,
    Tensors,
    fit,
    predict_tensors,
)
from xreg.train.split import SPLITS
from xreg.train.tasks import Task, make_task

__all__ = ["TrainResult", "train"]


@dataclass
class TrainResult:
    """The finished run: where the checkpoint went, its card and the test scores."""

    checkpoint: Path
    sha256: str
    card: ModelCard
    run_dir: Path
    log: list[EpochLog]
    evaluation: Evaluation | PairEvaluation | None  # None when there is no test split
    dropped: list[tuple[str, str]] = field(default_factory=list)


def default_run_dir(out: Path) -> Path:
    """``weights/name.pt`` -> ``weights/name.run``."""
    return out.with_suffix(".run")


def _prepare_run_dir(run_dir: Path, out: Path, resume: bool, overwrite: bool) -> None:
    has_state = (run_dir / STATE_FILE).exists()
    if resume:
        if not has_state:
            raise ConfigError(f"nothing to resume: no {STATE_FILE} in {run_dir}")
        return
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} exists; pass --overwrite to replace it or choose "
                          "another --out")
    if has_state and not overwrite:
        raise ConfigError(f"{run_dir} holds an unfinished run; --resume continues it, "
                          "--overwrite starts again")
    if overwrite:
        for name in (STATE_FILE, "best.pt", "log.csv", "log.json", "split.csv"):
            (run_dir / name).unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)


def _init_backbone(model: Any, config: TrainConfig, cb: Callbacks) -> str:
    if config.pretrained == "none":
        return "random"
    try:
        load_imagenet_backbone(model)
        return "imagenet"
    except CheckpointError as exc:
        if not config.allow_random_init:
            raise CheckpointError(f"{exc}. Set allow_random_init: true (or pretrained: "
                                  "none) in the config to train from random weights "
                                  "instead") from None
        cb.say(f"warning: ImageNet weights unavailable ({exc}); training {config.arch} "
               "from RANDOM initial weights, expect lower accuracy")
        return "random"


def _binary_threshold(config: TrainConfig, y: np.ndarray, p: np.ndarray, head: str,
                      cb: Callbacks) -> float:
    rule = config.threshold_rule(head)
    if rule != "youden":
        return float(rule)
    known = y != IGNORE
    try:
        return youden_threshold(y[known], p[known])
    except MetricsInputError:
        cb.say(f"warning: the validation split lacks one {head} class; "
               f"{head} threshold left at 0.5")
        return 0.5


def train(
    config: TrainConfig,
    data: Path | None,
    out: Path,
    *,
    run_dir: Path | None = None,
    device: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    workers: int = 2,
    callbacks: Callbacks | None = None,
    decode_cache: Path | None = None,
) -> TrainResult:
    """Train the config's task on ``data`` and write the checkpoint to ``out``.

    ``data`` is a manifest CSV or a sort-layout folder (task body_part), or a
    pairs CSV (task hip_fracture); None trains on the config's ``datasets``.
    ``decode_cache`` (optional) is a folder of decoded films shared between runs
    (a leave-one-site-out sweep decodes each film once).
    Raises ``ConfigError`` for bad data or an occupied output,
    ``CheckpointError`` when ImageNet weights are required but unavailable.
    """
    cb = callbacks or Callbacks()
    out = Path(out)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(out)
    _prepare_run_dir(run_dir, out, resume, overwrite)
    torch_device = resolve_device(device)
    task = make_task(config, data, run_dir)
    splits = task.splits(config)
    state: dict[str, Any] | None = None
    if resume:
        state = torch.load(run_dir / STATE_FILE, map_location="cpu", weights_only=True)
        # Only the epoch budget may change on resume (to extend or cut a run short).
        # Keys a newer xreg added are compared at their defaults (the old run had none).
        saved = {**TrainConfig().to_dict(), **state.get("config", {}),
                 "max_epochs": config.max_epochs}
        if saved != config.to_dict():
            changed = sorted(k for k, v in config.to_dict().items() if saved.get(k) != v)
            raise ConfigError(f"the config changed since the run started ({', '.join(changed)}); "
                              "resume with the same config")
        if state.get("splits") != splits:
            raise ConfigError("the labelled data changed since the run started; "
                              "start a new run")
    task.write_split(run_dir / "split.csv", splits)
    rows = {s: [i for i, x in enumerate(splits) if x == s] for s in SPLITS}
    if len(rows["train"]) < 2 or not rows["val"]:
        raise ConfigError(f"too few items to train: {len(rows['train'])} train, "
                          f"{len(rows['val'])} validation")
    train_t, val_t, dropped = _load_pixels(task, rows, config, run_dir, workers, cb,
                                           decode_cache)
    # The card's mean/std: of the training films as the sort will show them.
    train_pixels = _as_sorted(train_t.pixels, config).float()
    mean, std = float(train_pixels.mean()), float(train_pixels.std())
    del train_pixels
    torch.manual_seed(config.seed)
    model = build_model(config.arch, task.heads, input_size=config.input_size,
                        dropout=config.dropout)
    init = state["init"] if state is not None else _init_backbone(model, config, cb)
    result = fit(model, train_t, val_t, config, mean=mean, std=std, run_dir=run_dir,
                 device=torch_device, state=state, callbacks=cb,
                 extra_state={"config": config.to_dict(), "splits": splits, "init": init})

    val_probs = predict_tensors(model, val_t, mean, std, torch_device)
    thresholds = {"min_confidence": config.min_confidence} if task.views == 1 else {}
    for binary in (config.balance_head, "fracture"):
        if binary in val_probs and binary not in thresholds:
            thresholds[binary] = _binary_threshold(
                config, val_t.targets[binary].numpy(), val_probs[binary][:, 1], binary, cb)
    card = ModelCard(
        name=config.name or out.stem, arch=config.arch, heads=task.heads,
        input_size=config.input_size, mean=mean, std=std, thresholds=thresholds,
        views=task.views, normalise=config.normalise,
        training={
            "task": config.task,
            "data": {"source": os.fspath(data) if data is not None else "datasets",
                     "datasets": [d.to_dict() for d in config.datasets] if data is None
                     else [], "labelled": len(task), "unreadable": len(dropped)},
            "split": {"fractions": list(config.split), "seed": config.seed,
                      "grouped_by": task.grouped_by(), "counts": task.counts(splits)},
            "recipe": config.to_dict(), "init": init,
            "epochs_run": len(result.log), "best_epoch": result.best_epoch,
            "best_epoch_accuracy": next((e.row() for e in result.log
                                         if e.epoch == result.best_epoch), {}),
            "best_val_loss": result.best_val_loss, "stopped_early": result.stopped_early,
            "device": torch_device.type, "seconds": round(result.seconds, 1),
        },
        notes="Trained with xreg train on "
              f"{os.fspath(data) if data is not None else 'the datasets of its recipe'}.",
    )
    model = model.cpu().to(memory_format=torch.contiguous_format)
    evaluation = None
    if rows["test"]:
        evaluation, metrics = task.score_test(LoadedModel(model, card, "", out), rows["test"],
                                              torch_device, workers, config)
        card = dataclasses.replace(card, metrics={"test": metrics})
    sha = save_checkpoint(out, model, card)
    # The run is done: its resumable state would only invite a stale --resume.
    (run_dir / STATE_FILE).replace(run_dir / "state.finished.pt")
    return TrainResult(out, sha, card, run_dir, result.log, evaluation, dropped)


def _as_sorted(pixels: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """Cached films -> the model's input size and grey levels, as the sort prepares them."""
    if pixels.ndim != 3 or (pixels.shape[-1] == config.input_size
                            and config.normalise == "none"):
        return pixels
    out = np.stack([normalise_intensity(resize_grey(p, config.input_size), config.normalise)
                    for p in pixels.float().numpy()]) if len(pixels) else \
        np.zeros((0, config.input_size, config.input_size), np.float32)
    return torch.from_numpy(out.astype(np.float16))


def _load_pixels(task: Task, rows: dict[str, list[int]], config: TrainConfig, run_dir: Path,
                 workers: int, cb: Callbacks, decode_cache: Path | None = None
                 ) -> tuple[Tensors, Tensors, list[tuple[str, str]]]:
    """Decode train + val once (cached); an item with an unreadable file is dropped."""
    fit_rows = rows["train"] + rows["val"]
    paths = [p for i in fit_rows for p in task.paths(i)]
    decoded = decode_images(paths, config.decode_size, cache_dir=run_dir, workers=workers,
                            on_start=cb.decode_start, on_decoded=cb.decoded,
                            shared_cache=decode_cache)
    for path, reason in decoded.dropped:
        cb.say(f"skipped unreadable {path}: {reason}")
    row_of = {file_index: n for n, file_index in enumerate(decoded.kept)}
    views = task.views
    usable: dict[int, list[int]] = {}
    for k, item in enumerate(fit_rows):
        files = [k * views + v for v in range(views)]
        if all(f in row_of for f in files):
            usable[item] = [row_of[f] for f in files]

    def tensors(split: str) -> Tensors:
        members = [i for i in rows[split] if i in usable]
        index = [usable[i] for i in members]
        pixels = torch.from_numpy(decoded.pixels[[r for rs in index for r in rs]])
        if views > 1:
            pixels = pixels.reshape(len(members), views, *pixels.shape[1:])
        weights = task.sample_weights(members, config) if split == "train" else None
        if split != "train":  # validation sees films as the sort shows them
            pixels = _as_sorted(pixels, config)
        return Tensors(pixels, task.targets(members), weights)

    train_t, val_t = tensors("train"), tensors("val")
    if len(train_t) < 2 or not len(val_t):
        raise ConfigError("too few decodable items left to train")
    return train_t, val_t, decoded.dropped
