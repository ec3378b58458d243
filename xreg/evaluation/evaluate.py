"""Evaluate a checkpoint on labelled images: thesis metrics with bootstrap CIs.

The model's probabilities are collected per head, then scored in one pure
step (:func:`score`): body part as a multiclass head (log loss, MCC, kappa,
accuracy, per-class AUC, confusion), instrument and fracture as binary heads
at the card's thresholds, and the folders ``xreg sort`` would choose (see
:mod:`xreg.evaluation.sorting`), overall and, when the films name their
site, per site (:mod:`xreg.evaluation.sites`). Files that cannot be decoded
are listed, never dropped silently.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from numpy.typing import NDArray

from xreg.datasets import LabelledImage, load_labels
from xreg.errors import ConfigError
from xreg.evaluation.bootstrap import json_number
from xreg.evaluation.metrics import Estimate, MulticlassReport, binary_metrics, multiclass_metrics
from xreg.evaluation.sites import SiteFigures, has_sites, site_figures, sites_to_dict
from xreg.evaluation.sorting import (
    RISK_COVERAGE_THRESHOLDS,
    CoverageRow,
    SortingReport,
    risk_coverage,
    score_sorting,
)
from xreg.inference.predict import SourceFile, predict_files, resolve_device
from xreg.model.checkpoint import LoadedModel, ModelCard, load_checkpoint

__all__ = ["Evaluation", "Misclassified", "Skipped", "evaluate", "evaluate_images", "score"]

BODY_PART, INSTRUMENT, FRACTURE = "body_part", "instrument", "fracture"
T = TypeVar("T")


@dataclass(frozen=True)
class Misclassified:
    """One wrong decision: which head, the truth, the decision and its probability."""

    path: str
    head: str
    true: str
    predicted: str
    probability: float


@dataclass(frozen=True)
class Skipped:
    """A labelled file the model never saw, and why (``unreadable`` or ``failed``)."""

    path: str
    status: str
    reason: str


@dataclass(eq=False)
class Evaluation:
    """The result of :func:`evaluate`; arrays are in the order of ``paths``.

    ``instrument`` is None when no evaluated image has an instrument label;
    ``instrument_true``/``instrument_prob`` then are empty. Likewise
    ``fracture``, which is also None for a card without a fracture head.
    ``sorting`` is the outcome of ``xreg sort`` at ``sorting.min_confidence``
    and ``risk_coverage`` the same at other thresholds. ``sources`` names each
    film's site (None: none); ``sites`` holds per-site figures when any film
    names one (see :func:`xreg.evaluation.sites.site_figures`).
    """

    checkpoint: str
    sha256: str
    card: ModelCard
    data: str
    paths: list[str]
    body_part_labels: tuple[str, ...]
    body_part_true: NDArray[np.int64]
    body_part_probs: NDArray[np.float64]
    body_part: MulticlassReport
    instrument_threshold: float
    instrument_true: NDArray[np.int64]
    instrument_prob: NDArray[np.float64]
    instrument: dict[str, Estimate] | None
    misclassified: list[Misclassified]
    skipped: list[Skipped] = field(default_factory=list)
    fracture_threshold: float = 0.5
    fracture_true: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    fracture_prob: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    fracture: dict[str, Estimate] | None = None
    sorting: SortingReport | None = None
    risk_coverage: list[CoverageRow] = field(default_factory=list)
    sources: list[str | None] = field(default_factory=list)
    sites: dict[str, SiteFigures] = field(default_factory=dict)
    # Body-part energy of each film (nan where none): what the unfamiliar-film guard reads.
    energy: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))

    @property
    def note(self) -> str:
        """The first line of the card's notes (e.g. that the weights are random)."""
        return self.card.notes.strip().splitlines()[0] if self.card.notes.strip() else ""

    def to_dict(self) -> dict[str, Any]:
        """Stable JSON-able summary; undefined metrics (nan) become null."""
        bp = self.body_part
        return {
            "checkpoint": {"name": self.checkpoint, "sha256": self.sha256,
                           "note": self.note},
            "data": self.data,
            "counts": {"labelled": len(self.paths) + len(self.skipped),
                       "evaluated": len(self.paths), "skipped": len(self.skipped),
                       "instrument_labelled": int(self.instrument_true.size)},
            "body_part": {
                "labels": list(bp.labels),
                "log_loss": bp.log_loss.to_json(), "mcc": bp.mcc.to_json(),
                "cohen_kappa": bp.cohen_kappa.to_json(), "accuracy": bp.accuracy.to_json(),
                "auc_per_class": {k: json_number(v) for k, v in bp.auc_per_class.items()},
                "confusion": bp.confusion.tolist(),
            },
            "instrument": None if self.instrument is None else {
                "threshold": self.instrument_threshold,
                "labelled": int(self.instrument_true.size),
                "positive": int(self.instrument_true.sum()),
                **{k: v.to_json() for k, v in self.instrument.items()},
            },
            "fracture": None if self.fracture is None else {
                "threshold": self.fracture_threshold,
                "labelled": int(self.fracture_true.size),
                "positive": int(self.fracture_true.sum()),
                **{k: v.to_json() for k, v in self.fracture.items()},
            },
            "sorting": None if self.sorting is None else self.sorting.to_dict(),
            "risk_coverage": [row.to_dict() for row in self.risk_coverage],
            "sites": sites_to_dict(self.sites),
            "misclassified": [vars(m) for m in self.misclassified],
            "skipped": [vars(s) for s in self.skipped],
        }


def _score_binary(
    card: ModelCard, head: str, paths: Sequence[str], truth: Sequence[int | None],
    prob: Sequence[float], n_resamples: int, seed: int,
) -> tuple[float, NDArray[np.int64], NDArray[np.float64], dict[str, Estimate] | None,
           list[Misclassified]]:
    """A binary head at the card's threshold: labelled truths, their probabilities,
    the metrics (None when nothing is labelled) and the wrong decisions."""
    threshold = card.thresholds.get(head, 0.5)
    known = [i for i, t in enumerate(truth) if t is not None]
    yt = np.asarray([truth[i] for i in known], dtype=np.int64)
    yp = np.asarray([prob[i] for i in known], dtype=np.float64)
    if not known:
        return threshold, yt, yp, None, []
    names = card.head(head).labels
    metrics = binary_metrics(yt, yp, threshold, n_resamples=n_resamples, seed=seed)
    wrong = []
    for i, t, p in zip(known, yt, yp):
        pred = int(p >= threshold)
        if pred != t:
            wrong.append(Misclassified(paths[i], head, names[t], names[pred],
                                       float(p if pred else 1 - p)))
    return threshold, yt, yp, metrics, wrong


def score(
    card: ModelCard,
    paths: Sequence[str],
    body_part_true: Sequence[int],
    body_part_probs: NDArray[np.float64],
    instrument_true: Sequence[int | None],
    instrument_prob: Sequence[float],
    *,
    fracture_true: Sequence[int | None] = (),
    fracture_prob: Sequence[float] = (),
    body_part_sets: Sequence[Sequence[str]] | None = None,
    sources: Sequence[str | None] = (),
    held: Sequence[bool] = (),
    energies: Sequence[float] = (),
    min_confidence: float | None = None,
    data: str = "",
    sha256: str = "",
    skipped: Sequence[Skipped] = (),
    n_resamples: int = 5000,
    seed: int = 0,
) -> Evaluation:
    """Score collected probabilities (pure: no model, no files).

    ``body_part_probs`` is (N, K) in the order of the card's body_part labels;
    ``instrument_true`` holds 0, 1 or None (unknown; left out of the
    instrument metrics); ``instrument_prob`` is P(instrument); ``fracture_*``
    likewise (empty, or all None, when not evaluated). ``body_part_sets`` is
    each image's set of acceptable labels (default: the primary one), used by
    the lenient sort figures. The sort outcome uses ``min_confidence``, by
    default the card's (0 when it has none), as ``xreg sort`` does.
    ``sources`` names each image's site (empty: none); when any image names
    one, the sort outcome and the AUCs are also scored per site. ``held``
    marks films the card's unfamiliar-film guard sends to review (empty: none).
    """
    labels = card.head(BODY_PART).labels
    y = np.asarray(body_part_true, dtype=np.int64)
    probs = np.asarray(body_part_probs, dtype=np.float64).reshape(len(y), len(labels))
    # float32 softmax rows sum to 1 only within rounding, which sklearn's log_loss warns about.
    probs = probs / probs.sum(axis=1, keepdims=True)
    report = multiclass_metrics(y, probs, labels, n_resamples=n_resamples, seed=seed)
    wrong = [Misclassified(paths[i], BODY_PART, labels[y[i]], labels[int(probs[i].argmax())],
                           float(probs[i].max())) for i in report.misclassified]
    threshold, it, ip, instrument, inst_wrong = _score_binary(
        card, INSTRUMENT, paths, instrument_true, instrument_prob, n_resamples, seed)
    f_threshold, ft, fp, fracture, frac_wrong = _score_binary(
        card, FRACTURE, paths, fracture_true, fracture_prob, n_resamples, seed)
    card_min = card.thresholds.get("min_confidence", 0.0)
    used = card_min if min_confidence is None else float(min_confidence)
    hold = np.asarray(held, dtype=bool) if len(held) else np.zeros(len(y), dtype=bool)
    if len(hold) != len(y):
        raise ConfigError(f"held has {len(hold)} entries for {len(y)} images")
    sorting = score_sorting(labels, probs, y, min_confidence=used, truth_sets=body_part_sets,
                            held=hold, n_resamples=n_resamples, seed=seed)
    rows = risk_coverage(labels, probs, y, (*RISK_COVERAGE_THRESHOLDS, card_min),
                         operating=used, truth_sets=body_part_sets, held=hold)
    named = [s or None for s in sources] if sources else [None] * len(y)
    if len(named) != len(y):
        raise ConfigError(f"sources has {len(named)} entries for {len(y)} images")
    sites = site_figures(
        labels, probs, y, named, min_confidence=used, truth_sets=body_part_sets,
        instrument_true=instrument_true, instrument_prob=instrument_prob,
        fracture_true=fracture_true, fracture_prob=fracture_prob, held=hold,
        n_resamples=n_resamples, seed=seed) if has_sites(named) else {}
    return Evaluation(
        checkpoint=card.name, sha256=sha256, card=card, data=data, paths=list(paths),
        body_part_labels=tuple(labels), body_part_true=y, body_part_probs=probs,
        body_part=report, instrument_threshold=threshold, instrument_true=it,
        instrument_prob=ip, instrument=instrument,
        misclassified=sorted(wrong + inst_wrong + frac_wrong, key=lambda m: (m.path, m.head)),
        skipped=list(skipped), fracture_threshold=f_threshold, fracture_true=ft,
        fracture_prob=fp, fracture=fracture, sorting=sorting, risk_coverage=rows,
        sources=named, sites=sites, energy=np.asarray(energies, dtype=np.float64),
    )


def _source(path: Path) -> SourceFile:
    try:
        st = path.stat()
    except OSError:
        return SourceFile(path, 0, 0)  # predict_files reports it as failed
    return SourceFile(path, st.st_size, st.st_mtime_ns)


def _display(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def select_split(items: Sequence[T], split: str | None, data: Path) -> list[T]:
    """The rows of ``split`` (all rows for None); ``ConfigError`` when there are none."""
    if split is None:
        return list(items)
    chosen = [item for item in items if getattr(item, "split", None) == split]
    if not chosen:
        raise ConfigError(f"{data} has no rows with split {split!r}")
    return chosen


def evaluate(
    weights: Path | LoadedModel,
    data: Path,
    *,
    split: str | None = None,
    batch_size: int = 16,
    device: str = "auto",
    workers: int = 2,
    n_resamples: int = 5000,
    seed: int = 0,
    min_confidence: float | None = None,
    on_decoded: Callable[[], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> Evaluation:
    """Run the checkpoint ``weights`` (a path, or already loaded) over ``data`` and score it.

    ``data`` is a manifest CSV or a sort-layout folder (see
    :func:`xreg.datasets.load_labels`); ``split`` keeps only the manifest rows
    of that split (e.g. ``test`` of a training run's ``split.csv``);
    ``min_confidence`` overrides the card's for the sort outcome. Raises
    ``CheckpointError`` or ``ConfigError`` for bad inputs, including when no
    image could be decoded.
    """
    torch_device = resolve_device(device)
    loaded = weights if isinstance(weights, LoadedModel) else load_checkpoint(weights)
    images = select_split(load_labels(data, loaded.card.head(BODY_PART).labels), split, data)
    root = Path(data) if Path(data).is_dir() else Path(data).parent
    return evaluate_images(
        loaded, images, root=root, data=os.fspath(data), batch_size=batch_size,
        device=torch_device, workers=workers, n_resamples=n_resamples, seed=seed,
        min_confidence=min_confidence, on_decoded=on_decoded, on_start=on_start,
    )


def evaluate_images(
    loaded: LoadedModel,
    images: Sequence[LabelledImage],
    *,
    root: Path,
    data: str,
    batch_size: int = 16,
    device: torch.device | None = None,
    workers: int = 2,
    n_resamples: int = 5000,
    seed: int = 0,
    min_confidence: float | None = None,
    on_decoded: Callable[[], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> Evaluation:
    """Score an already loaded model on ``images`` through the inference path.

    Paths in the result are shown relative to ``root`` where possible. An
    image whose body part is not a label of the card's head raises
    ``ConfigError`` before the model runs.
    """
    card = loaded.card
    labels = card.head(BODY_PART).labels
    heads = {h.name for h in card.heads}
    for name in (INSTRUMENT, FRACTURE):
        if name in heads and len(card.head(name).labels) != 2:
            raise ConfigError(f"model {card.name!r}: the {name} head is not binary")
    for im in images:
        if im.body_part not in labels:
            raise ConfigError(f"{im.path}: body part {im.body_part!r} is not a label of "
                              f"model {card.name!r}; it knows: {', '.join(labels)}")
    by_path: dict[Path, LabelledImage] = {im.path: im for im in images}
    if on_start is not None:
        on_start(len(images))
    paths: list[str] = []
    y: list[int] = []
    sets: list[tuple[str, ...]] = []
    sites: list[str | None] = []
    held: list[bool] = []
    energies: list[float] = []
    probs: list[list[float]] = []
    binary: dict[str, tuple[list[int | None], list[float]]] = {
        name: ([], []) for name in (INSTRUMENT, FRACTURE) if name in heads}
    skipped: list[Skipped] = []
    sources = [_source(im.path) for im in images]
    for batch in predict_files(sources, loaded, batch_size=batch_size, workers=workers,
                               device=device, on_decoded=on_decoded):
        for p in batch:
            shown = _display(p.source.path, root)
            if p.status != "ok":
                skipped.append(Skipped(shown, p.status, p.error or p.status))
                continue
            truth = by_path[p.source.path]
            paths.append(shown)
            y.append(labels.index(truth.body_part))
            sets.append(truth.body_parts)
            sites.append(truth.source or None)
            held.append(p.unfamiliar is not None)
            energies.append(np.nan if p.energy is None else p.energy)
            probs.append([p.probabilities[BODY_PART][label] for label in labels])
            for name, (known, prob) in binary.items():
                known.append(truth.instrument if name == INSTRUMENT else truth.fracture)
                prob.append(p.probabilities[name][card.head(name).labels[1]])
    if not paths:
        raise ConfigError(f"none of the {len(images)} labelled images in {data} "
                          "could be decoded")
    it, ip = binary.get(INSTRUMENT, ([], []))
    ft, fp = binary.get(FRACTURE, ([], []))
    return score(card, paths, y, np.asarray(probs), it, ip, fracture_true=ft,
                 fracture_prob=fp, body_part_sets=sets, sources=sites, held=held,
                 energies=energies,
                 min_confidence=min_confidence,
                 data=data, sha256=loaded.sha256, skipped=skipped,
                 n_resamples=n_resamples, seed=seed)
