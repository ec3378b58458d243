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
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xreg.checkpoint import LoadedModel, ModelCard, save_checkpoint
from xreg.datasets import LabelledImage, load_labels
from xreg.errors import CheckpointError, ConfigError, MetricsInputError
from xreg.evaluate import Evaluation, evaluate_images
from xreg.metrics import youden_threshold
from xreg.models import KNOWN_HEADS, HeadSpec, build_model, load_imagenet_backbone
from xreg.predict import resolve_device
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
from xreg.train.split import SPLITS, assign_splits, write_split

__all__ = ["TrainResult", "train"]


@dataclass
class TrainResult:
    """The finished run: where the checkpoint went, its card and the test scores."""

    checkpoint: Path
    sha256: str
    card: ModelCard
    run_dir: Path
    log: list[EpochLog]
    evaluation: Evaluation | None  # None when the split has no test images
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


def _label(im: LabelledImage, head: HeadSpec) -> int:
    """The image's label index for ``head``, or IGNORE when unknown."""
    if head.name == "body_part":
        return head.labels.index(im.body_part)
    if head.name == "instrument":
        return IGNORE if im.instrument is None else im.instrument
    value = getattr(im, head.name, None)
    return IGNORE if value is None else head.labels.index(value)


def _tensors(images: Sequence[LabelledImage], members: Sequence[int], pixels: torch.Tensor,
             heads: Sequence[HeadSpec]) -> Tensors:
    return Tensors(pixels, {
        h.name: torch.tensor([_label(images[i], h) for i in members], dtype=torch.long)
        for h in heads})


def _counts(images: Sequence[LabelledImage], splits: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in SPLITS:
        members = [im for im, s in zip(images, splits) if s == name]
        out[name] = {
            "images": len(members),
            "body_part": dict(sorted(Counter(im.body_part for im in members).items())),
            "instrument": dict(sorted(Counter(
                "unknown" if im.instrument is None else str(im.instrument)
                for im in members).items())),
            "view": dict(sorted(Counter(im.view or "unknown" for im in members).items())),
        }
    return out


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


def _instrument_threshold(config: TrainConfig, y: np.ndarray, p: np.ndarray,
                          cb: Callbacks) -> float:
    if config.instrument_threshold != "youden":
        return float(config.instrument_threshold)
    known = y != IGNORE
    try:
        return youden_threshold(y[known], p[known])
    except MetricsInputError:
        cb.say("warning: the validation split lacks one instrument class; "
               "instrument threshold left at 0.5")
        return 0.5


def train(
    config: TrainConfig,
    data: Path,
    out: Path,
    *,
    run_dir: Path | None = None,
    device: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    workers: int = 2,
    callbacks: Callbacks | None = None,
) -> TrainResult:
    """Train a body part + instrument model on ``data`` and write it to ``out``.

    ``data`` is a manifest CSV or a sort-layout folder. Raises ``ConfigError``
    for bad data or an occupied output, ``CheckpointError`` when ImageNet
    weights are required but unavailable.
    """
    cb = callbacks or Callbacks()
    out = Path(out)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(out)
    _prepare_run_dir(run_dir, out, resume, overwrite)
    torch_device = resolve_device(device)
    heads = tuple(KNOWN_HEADS[name] for name in config.heads)
    images = load_labels(data, heads[0].labels)
    for head in heads[1:]:
        if all(_label(im, head) == IGNORE for im in images):
            raise ConfigError(f"the config trains a {head.name!r} head but {data} labels "
                              f"no image's {head.name}")
    splits = assign_splits(images, config.split, config.seed)
    state: dict[str, Any] | None = None
    if resume:
        state = torch.load(run_dir / STATE_FILE, map_location="cpu", weights_only=True)
        if state.get("config") != config.to_dict():
            changed = sorted(k for k, v in config.to_dict().items()
                             if state.get("config", {}).get(k) != v)
            raise ConfigError(f"the config changed since the run started ({', '.join(changed)}); "
                              "resume with the same config")
        if state.get("splits") != splits:
            raise ConfigError("the labelled data changed since the run started; "
                              "start a new run")
    write_split(run_dir / "split.csv", images, splits)
    rows = {s: [i for i, x in enumerate(splits) if x == s] for s in SPLITS}
    if len(rows["train"]) < 2 or not rows["val"]:
        raise ConfigError(f"too few images to train: {len(rows['train'])} train, "
                          f"{len(rows['val'])} validation")
    fit_rows = rows["train"] + rows["val"]
    decoded = decode_images([images[i] for i in fit_rows], config.input_size,
                            cache_dir=run_dir, workers=workers,
                            on_start=cb.decode_start, on_decoded=cb.decoded)
    for path, reason in decoded.dropped:
        cb.say(f"skipped unreadable {path}: {reason}")
    # Map each decoded row back to its image index and split.
    kept = [fit_rows[k] for k in decoded.kept]
    position = {img: n for n, img in enumerate(kept)}
    pixels = decoded.pixels
    by_split = {s: [i for i in rows[s] if i in position] for s in ("train", "val")}
    if len(by_split["train"]) < 2 or not by_split["val"]:
        raise ConfigError("too few decodable images left to train")

    def tensors(split: str) -> Tensors:
        members = by_split[split]
        chosen = torch.from_numpy(pixels[[position[i] for i in members]])
        return _tensors(images, members, chosen, heads)

    train_t, val_t = tensors("train"), tensors("val")
    train_pixels = train_t.pixels.float()
    mean, std = float(train_pixels.mean()), float(train_pixels.std())
    del train_pixels
    torch.manual_seed(config.seed)
    model = build_model(config.arch, heads, input_size=config.input_size,
                        dropout=config.dropout)
    init = state["init"] if state is not None else _init_backbone(model, config, cb)
    result = fit(model, train_t, val_t, config, mean=mean, std=std, run_dir=run_dir,
                 device=torch_device, state=state, callbacks=cb,
                 extra_state={"config": config.to_dict(), "splits": splits, "init": init})

    val_probs = predict_tensors(model, val_t, mean, std, torch_device)
    thresholds = {"min_confidence": config.min_confidence}
    if "instrument" in val_probs:
        thresholds["instrument"] = _instrument_threshold(
            config, val_t.targets["instrument"].numpy(), val_probs["instrument"][:, 1], cb)
    counts = _counts(images, splits)
    card = ModelCard(
        name=config.name or out.stem, arch=config.arch, heads=heads,
        input_size=config.input_size, mean=mean, std=std, thresholds=thresholds,
        training={
            "data": {"source": os.fspath(data), "labelled": len(images),
                     "unreadable": len(decoded.dropped)},
            "split": {"fractions": list(config.split), "seed": config.seed,
                      "grouped_by": "patient_id" if any(im.patient_id for im in images)
                      else "image", "counts": counts},
            "recipe": config.to_dict(), "init": init,
            "epochs_run": len(result.log), "best_epoch": result.best_epoch,
            "best_epoch_accuracy": next((e.row() for e in result.log
                                         if e.epoch == result.best_epoch), {}),
            "best_val_loss": result.best_val_loss, "stopped_early": result.stopped_early,
            "device": torch_device.type, "seconds": round(result.seconds, 1),
        },
        notes=f"Trained with xreg train on {os.fspath(data)}.",
    )
    model = model.cpu().to(memory_format=torch.contiguous_format)
    evaluation = None
    if rows["test"]:
        root = Path(data) if Path(data).is_dir() else Path(data).parent
        loaded = LoadedModel(model, card, "", out)
        evaluation = evaluate_images(
            loaded, [images[i] for i in rows["test"]], root=root, data=os.fspath(data),
            device=torch_device, workers=workers, n_resamples=config.resamples,
            seed=config.seed)
        test = evaluation.to_dict()
        metrics = {"test": {k: test[k] for k in ("counts", "body_part", "instrument")}}
        card = dataclasses.replace(card, metrics=metrics)
    sha = save_checkpoint(out, model, card)
    # The run is done: its resumable state would only invite a stale --resume.
    (run_dir / STATE_FILE).replace(run_dir / "state.finished.pt")
    return TrainResult(out, sha, card, run_dir, result.log, evaluation, decoded.dropped)
