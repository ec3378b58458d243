"""Calibrate ``min_confidence``: images that are none of the body parts go to ``_review``.

A classifier over 9 body parts must say *something* for a chest film or a
phone photo. ``xreg sort`` sends a file to ``_review`` when its top body-part
probability is below the card's ``min_confidence``. This module picks that
threshold from labelled in-scope images (so that at most ``1 - keep`` of them
go to review) and measures how many out-of-scope images it catches.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from xreg.errors import ConfigError
from xreg.inference.predict import SourceFile, predict_files, resolve_device
from xreg.io import find_images
from xreg.model.checkpoint import LoadedModel, load_checkpoint, save_checkpoint

__all__ = ["Calibration", "OperatingPoint", "calibrate_checkpoint", "choose_min_confidence",
           "choose_operating_point", "set_operating_point", "top_confidences"]


@dataclass(frozen=True)
class Calibration:
    """The chosen threshold and what it does on the calibration images."""

    threshold: float
    keep: float
    in_scope: int
    out_of_scope: int
    in_scope_to_review: float  # fraction of in-scope images below the threshold
    out_of_scope_to_review: float  # fraction of out-of-scope images below it

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def choose_min_confidence(in_scope: ArrayLike, out_of_scope: ArrayLike,
                          keep: float = 0.99) -> Calibration:
    """Threshold on the top body-part probability that keeps ``keep`` of in-scope images.

    Files go to review when ``confidence < threshold``. The threshold is the
    largest value that still leaves at least ``keep`` of the in-scope
    confidences at or above it (a lower-tail order statistic, never
    interpolated past a real score), so the promise holds on these images.
    """
    good = np.sort(np.asarray(in_scope, dtype=np.float64))
    bad = np.asarray(out_of_scope, dtype=np.float64)
    if good.size == 0:
        raise ConfigError("calibration needs in-scope images")
    if not 0.0 < keep <= 1.0:
        raise ConfigError(f"keep must be in (0, 1], not {keep}")
    # At most floor((1 - keep) * n) in-scope images may fall below the threshold.
    allowed = int(np.floor((1.0 - keep) * good.size + 1e-9))
    threshold = float(good[allowed])
    return Calibration(
        threshold=threshold, keep=keep, in_scope=int(good.size), out_of_scope=int(bad.size),
        in_scope_to_review=float((good < threshold).mean()),
        out_of_scope_to_review=float((bad < threshold).mean()) if bad.size else float("nan"),
    )


@dataclass(frozen=True)
class OperatingPoint:
    """The ``min_confidence`` chosen on labelled films, and what it does on them."""

    threshold: float
    target_accuracy: float
    max_outside: float
    met: bool  # False: no threshold met both targets; the most accurate one was taken
    coverage: float
    accuracy_among_sorted: float
    outside_nine_into_nine: float
    scored_by: str = "primary label"  # or "label set": a folder within the set is right

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and np.isnan(v) else v)
                for k, v in dataclasses.asdict(self).items()}


def choose_operating_point(labels: Sequence[str], probs: ArrayLike, truth: ArrayLike, *,
                           target_accuracy: float = 0.97, max_outside: float = 0.10,
                           truth_sets: Sequence[Sequence[str]] | None = None,
                           grid: Sequence[float] | None = None) -> OperatingPoint:
    """The lowest ``min_confidence`` (most films sorted) that meets both targets.

    On labelled films (``probs`` over the card's body-part ``labels``, true
    class indices ``truth``): accuracy among the nine-class films that would
    be sorted at least ``target_accuracy``, and at most ``max_outside`` of the
    films outside the nine sorted into a nine-class folder. With
    ``truth_sets`` the accuracy counts a folder within the film's label set
    as right (labels with measured border noise); the outside-nine share is
    always counted by the primary label, the stricter reading, so a
    long-bone film in a joint's folder counts against the threshold even
    when the joint was the reviewer's second guess. When no threshold of ``grid``
    (default 0.30 to 0.995) meets both, the one with the highest accuracy
    among sorted is taken and ``met`` is False.
    """
    from xreg.evaluation.sorting import risk_coverage

    grid = grid if grid is not None else [round(0.30 + 0.005 * i, 3) for i in range(140)]
    full = risk_coverage(labels, probs, truth, grid, truth_sets=truth_sets)
    lenient = truth_sets is not None
    rows = [dataclasses.replace(r, accuracy_among_sorted=r.accuracy_among_sorted_in_set)
            if lenient else r for r in full]

    def within(value: float, limit: float, low: bool) -> bool:
        return bool(np.isnan(value)) or (value <= limit if low else value >= limit)

    meets = [r for r in rows if r.sorted_nine > 0
             and within(r.accuracy_among_sorted, target_accuracy, low=False)
             and within(r.outside_nine_into_nine, max_outside, low=True)]
    if meets:
        best, met = min(meets, key=lambda r: r.threshold), True
    else:
        scored = [r for r in rows if not np.isnan(r.accuracy_among_sorted)]
        if not scored:
            raise ConfigError("no threshold sorts any nine-class film; cannot calibrate")
        best = max(scored, key=lambda r: (r.accuracy_among_sorted, -r.threshold))
        met = False
    return OperatingPoint(best.threshold, target_accuracy, max_outside, met, best.coverage,
                          best.accuracy_among_sorted, best.outside_nine_into_nine,
                          "label set (accuracy)" if lenient else "primary label")


def top_confidences(loaded: LoadedModel, paths: Sequence[Path],
                    device: str = "auto") -> list[float]:
    """The top body-part probability of each decodable file, as ``xreg sort`` sees it."""
    sources = []
    for p in paths:
        st = p.stat()
        sources.append(SourceFile(p, st.st_size, st.st_mtime_ns))
    out: list[float] = []
    for batch in predict_files(sources, loaded, device=resolve_device(device)):
        out.extend(max(p.probabilities["body_part"].values()) for p in batch
                   if p.status == "ok")
    return out


def calibrate_checkpoint(
    weights: Path,
    in_scope: Path,
    out_of_scope: Path,
    out: Path,
    *,
    keep: float = 0.99,
    device: str = "auto",
) -> Calibration:
    """Choose ``min_confidence`` for ``weights`` and write the updated checkpoint to ``out``.

    ``in_scope`` is a labelled manifest or sort-layout folder (only its images
    are used, not its labels); ``out_of_scope`` a folder of images that are
    none of the body parts. ``out`` may equal ``weights`` (replaced atomically).
    """
    from xreg.datasets import load_labels

    loaded = load_checkpoint(weights)
    good_paths = [im.path for im in load_labels(in_scope, loaded.card.head("body_part").labels)]
    bad_paths = find_images(out_of_scope)
    if not bad_paths:
        raise ConfigError(f"no images in {out_of_scope}")
    good = top_confidences(loaded, good_paths, device)
    bad = top_confidences(loaded, bad_paths, device)
    calibration = choose_min_confidence(good, bad, keep)
    card = loaded.card
    card = dataclasses.replace(
        card,
        thresholds={**card.thresholds, "min_confidence": calibration.threshold},
        training={**card.training, "calibration": {
            **calibration.to_dict(), "in_scope_data": os.fspath(in_scope),
            "out_of_scope_data": os.fspath(out_of_scope)}},
    )
    save_checkpoint(out, loaded.model, card)
    return calibration


def set_operating_point(
    weights: Path,
    labelled: Path,
    out: Path,
    *,
    split: str | None = None,
    target_accuracy: float = 0.97,
    max_outside: float = 0.10,
    by_set: bool = True,
    device: str = "auto",
) -> OperatingPoint:
    """Choose ``min_confidence`` on labelled films and write the checkpoint to ``out``.

    ``labelled`` is a manifest (``split`` keeps only those rows, e.g. ``val``
    of a training run's split.csv) or a sort-layout folder; see
    :func:`choose_operating_point`. ``by_set`` scores by each film's label set.
    The choice is recorded in the card (``training.calibration``).
    """
    from xreg.datasets import load_labels
    from xreg.evaluation.evaluate import _display, evaluate_images, select_split

    loaded = load_checkpoint(weights)
    labels = loaded.card.head("body_part").labels
    images = select_split(load_labels(labelled, labels), split, labelled)
    root = Path(labelled) if Path(labelled).is_dir() else Path(labelled).parent
    ev = evaluate_images(loaded, images, root=root, data=os.fspath(labelled),
                         device=resolve_device(device), n_resamples=1, min_confidence=0.0)
    sets = {im.path: im.body_parts for im in images}
    by_shown = {_display(path, root): s for path, s in sets.items()}
    point = choose_operating_point(
        labels, ev.body_part_probs, ev.body_part_true,
        truth_sets=[by_shown[p] for p in ev.paths] if by_set else None,
        target_accuracy=target_accuracy, max_outside=max_outside)
    card = dataclasses.replace(
        loaded.card,
        thresholds={**loaded.card.thresholds, "min_confidence": point.threshold},
        training={**loaded.card.training, "calibration": {
            **point.to_dict(), "data": os.fspath(labelled), "split": split or "all"}})
    save_checkpoint(out, loaded.model, card)
    return point

