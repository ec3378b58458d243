"""What ``xreg sort`` would have done with evaluated films: folders, review, risk-coverage.

Pure functions over collected body-part probabilities. Each film's top label
and its probability go through :func:`xreg.sort.scope.decide_placement`, the very
rule ``xreg sort`` applies, so the figures here describe the folders a user
would find: how many films land in the right one, how many wait in
``_review``, and how many films that are none of the nine classes slip into
one of the nine folders anyway.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from xreg.errors import ConfigError
from xreg.evaluation.bootstrap import Estimate, json_number, share_metrics
from xreg.model.labels import BODY_PARTS, LONG_BONES
from xreg.sort.scope import decide_placement

__all__ = ["REVIEW_FOLDER", "RISK_COVERAGE_THRESHOLDS", "CoverageRow", "SortingReport",
           "place", "risk_coverage", "score_sorting"]

REVIEW_FOLDER = "_review"
#: The min_confidence values a risk-coverage table shows (plus the card's own).
RISK_COVERAGE_THRESHOLDS: tuple[float, ...] = (
    0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99)


def _est(e: Estimate | None) -> list[float | None] | None:
    return None if e is None else e.to_json()


@dataclass(frozen=True, eq=False)
class SortingReport:
    """The sort outcome at ``min_confidence``; every share has a 95% bootstrap CI.

    ``correct_folder``: of the films whose (primary) truth is one of the nine,
    the share sorted into the right folder; ``accuracy_among_sorted``: of
    those of them that were sorted, the share in the right folder; the
    ``_in_set`` variants count a prediction anywhere in the truth's label set
    as right. ``review_rate``: of all films, the share sent to ``_review``.
    ``wrong_folder``: of all films, the share sorted into a folder outside
    the truth's label set (an ``other`` film in any folder; a long-bone film
    in its own long-bone folder is right).
    ``outside_nine_into_nine``: of the films that are none of the nine, the
    share sorted into one of the nine folders (nan when there are none).
    ``long_bone_correct_folder`` is None for a model without long-bone labels.
    ``confusion`` counts truths (rows, ``truth_labels``) against destination
    folders (columns, ``destinations``, the last being ``_review``).
    """

    min_confidence: float
    correct_folder: Estimate
    correct_folder_per_class: dict[str, Estimate]
    accuracy_among_sorted: Estimate
    correct_folder_in_set: Estimate
    accuracy_among_sorted_in_set: Estimate
    review_rate: Estimate
    wrong_folder: Estimate
    outside_nine_into_nine: Estimate
    long_bone_correct_folder: Estimate | None
    counts: dict[str, Any]
    truth_labels: tuple[str, ...]
    destinations: tuple[str, ...]
    confusion: NDArray[np.int64]
    # Of the films outside the nine, the share sorted into a nine-class folder
    # that is not among the truth's candidates (forearm|elbow -> elbow is not counted).
    outside_nine_into_nine_in_set: Estimate | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: estimates are ``[value, low, high]``, null where undefined."""
        return {
            "min_confidence": self.min_confidence,
            "counts": self.counts,
            "correct_folder": _est(self.correct_folder),
            "correct_folder_per_class": {k: _est(v)
                                         for k, v in self.correct_folder_per_class.items()},
            "accuracy_among_sorted": _est(self.accuracy_among_sorted),
            "correct_folder_in_set": _est(self.correct_folder_in_set),
            "accuracy_among_sorted_in_set": _est(self.accuracy_among_sorted_in_set),
            "review_rate": _est(self.review_rate),
            "wrong_folder": _est(self.wrong_folder),
            "outside_nine_into_nine": _est(self.outside_nine_into_nine),
            "outside_nine_into_nine_in_set": _est(self.outside_nine_into_nine_in_set),
            "long_bone_correct_folder": _est(self.long_bone_correct_folder),
            "confusion": {"truth": list(self.truth_labels),
                          "destination": list(self.destinations),
                          "matrix": self.confusion.tolist()},
        }


@dataclass(frozen=True)
class CoverageRow:
    """One row of a risk-coverage table: what sorting at ``threshold`` would give.

    ``coverage`` is the share of nine-class films that are sorted (not sent to
    review), ``accuracy_among_sorted`` the share of those in the right folder,
    ``outside_nine_into_nine`` the share of other films sorted into one of the
    nine; nan where the denominator is empty. ``operating`` marks the
    min_confidence the evaluation used. The ``_in_set`` figures count a
    folder within the truth's label set as right (see ``score_sorting``).
    """

    threshold: float
    coverage: float
    accuracy_among_sorted: float
    outside_nine_into_nine: float
    nine: int
    sorted_nine: int
    correct_nine: int
    outside_nine: int
    outside_into_nine: int
    operating: bool = False
    accuracy_among_sorted_in_set: float = math.nan
    outside_nine_into_nine_in_set: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, nan as null."""
        return {k: (json_number(v) if isinstance(v, float) else v) for k, v in vars(self).items()}


def _inputs(labels: Sequence[str], probs: ArrayLike,
            truth: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(truth, dtype=np.int64).ravel()
    if p.ndim != 2 or p.shape != (len(y), len(labels)):
        raise ConfigError(f"probs must have shape ({len(y)}, {len(labels)}), got {p.shape}")
    if y.size and (y.min() < 0 or y.max() >= len(labels)):
        raise ConfigError(f"truth must hold indices into the {len(labels)} labels")
    return p, y


def place(labels: Sequence[str], probs: ArrayLike, min_confidence: float,
          held: ArrayLike | None = None) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    """Each film's top label index and whether ``xreg sort`` would sort it (not review).

    ``held`` marks films a second opinion holds back whatever the model says
    (the unfamiliar-film guard), as the sort does.
    """
    p = np.asarray(probs, dtype=np.float64).reshape(-1, len(labels))
    pred = p.argmax(axis=1)  # ties go to the first label, as the prediction layer does
    conf = p.max(axis=1)
    hold = np.zeros(len(pred), dtype=bool) if held is None else \
        np.asarray(held, dtype=bool).ravel()
    placed = np.array([decide_placement(labels[k], float(c), min_confidence,
                                        unfamiliar="unfamiliar film" if h else None
                                        ).status == "sorted"
                       for k, c, h in zip(pred, conf, hold)], dtype=bool)
    return pred.astype(np.int64), placed


def _scopes(labels: Sequence[str], y: NDArray[np.int64]) -> tuple[NDArray[np.bool_], ...]:
    nine = np.array([labels[k] in BODY_PARTS for k in y], dtype=bool)
    long_bone = np.array([labels[k] in LONG_BONES for k in y], dtype=bool)
    return nine, long_bone


def score_sorting(
    labels: Sequence[str],
    probs: ArrayLike,
    truth: ArrayLike,
    *,
    min_confidence: float,
    truth_sets: Sequence[Sequence[str]] | None = None,
    held: ArrayLike | None = None,
    n_resamples: int = 5000,
    seed: int = 0,
) -> SortingReport:
    """Score the folders ``xreg sort`` would choose at ``min_confidence`` (see SortingReport).

    ``labels`` are the body_part head's labels, ``probs`` is (N, K) in their
    order, ``truth`` the index of each film's primary label and ``truth_sets``
    each film's label set (default: just the primary label); ``held`` marks
    films the unfamiliar-film guard sends to review. The films are resampled
    as a whole, seeded, for every interval.
    """
    if not 0.0 <= min_confidence <= 1.0:
        raise ConfigError(f"min_confidence must be between 0 and 1, got {min_confidence}")
    p, y = _inputs(labels, probs, truth)
    sets = [tuple(s) for s in truth_sets] if truth_sets is not None else [
        (labels[k],) for k in y]
    if len(sets) != len(y):
        raise ConfigError(f"truth_sets has {len(sets)} entries for {len(y)} films")
    pred, placed = place(labels, p, min_confidence, held)
    nine, long_bone = _scopes(labels, y)
    right = pred == y
    in_set = np.array([labels[k] in s for k, s in zip(pred, sets)], dtype=bool)
    into_nine = placed & np.array([labels[k] in BODY_PARTS for k in pred], dtype=bool)
    everyone = np.ones(len(y), dtype=bool)
    nine_labels = [label for label in labels if label in BODY_PARTS]
    shares: dict[str, tuple[Any, Any]] = {
        "correct_folder": (placed & right, nine),
        "accuracy_among_sorted": (right, nine & placed),
        "correct_folder_in_set": (placed & in_set, nine),
        "accuracy_among_sorted_in_set": (in_set, nine & placed),
        "review_rate": (~placed, everyone),
        "wrong_folder": (placed & ~in_set, everyone),
        "outside_nine_into_nine": (into_nine, ~nine),
        "outside_nine_into_nine_in_set": (into_nine & ~in_set, ~nine),
        "long_bone_correct_folder": (placed & right, long_bone),
    }
    for label in nine_labels:
        shares[f"class:{label}"] = (placed & right, y == labels.index(label))
    est = share_metrics(shares, n_resamples=n_resamples, seed=seed)
    has_long_bones = any(label in LONG_BONES for label in labels)
    destinations = (*[label for label in labels
                      if decide_placement(label, 1.0, 0.0).status == "sorted"], REVIEW_FOLDER)
    confusion = np.zeros((len(labels), len(destinations)), dtype=np.int64)
    for t, k, s in zip(y, pred, placed):
        confusion[t, destinations.index(labels[k]) if s else -1] += 1
    return SortingReport(
        min_confidence=float(min_confidence),
        correct_folder=est["correct_folder"],
        correct_folder_per_class={label: est[f"class:{label}"] for label in nine_labels},
        accuracy_among_sorted=est["accuracy_among_sorted"],
        correct_folder_in_set=est["correct_folder_in_set"],
        accuracy_among_sorted_in_set=est["accuracy_among_sorted_in_set"],
        review_rate=est["review_rate"],
        wrong_folder=est["wrong_folder"],
        outside_nine_into_nine=est["outside_nine_into_nine"],
        outside_nine_into_nine_in_set=est["outside_nine_into_nine_in_set"],
        long_bone_correct_folder=est["long_bone_correct_folder"] if has_long_bones else None,
        counts={"images": int(len(y)), "review": int((~placed).sum()),
                "wrong_folder": int((placed & ~in_set).sum()),
                "nine": int(nine.sum()), "sorted_nine": int((nine & placed).sum()),
                "outside_nine": int((~nine).sum()), "long_bone": int(long_bone.sum()),
                "per_class": {label: int((y == labels.index(label)).sum())
                              for label in nine_labels}},
        truth_labels=tuple(labels), destinations=destinations, confusion=confusion,
    )


def _thresholds(values: Iterable[float]) -> list[float]:
    out = sorted({float(v) for v in values})
    if any(not 0.0 <= v <= 1.0 for v in out):
        raise ConfigError(f"risk-coverage thresholds must lie in [0, 1], got {out}")
    return out


def risk_coverage(
    labels: Sequence[str],
    probs: ArrayLike,
    truth: ArrayLike,
    thresholds: Iterable[float] = RISK_COVERAGE_THRESHOLDS,
    *,
    operating: float | None = None,
    truth_sets: Sequence[Sequence[str]] | None = None,
    held: ArrayLike | None = None,
) -> list[CoverageRow]:
    """Coverage and accuracy of sorting at each min_confidence in ``thresholds``.

    One row per distinct threshold, ascending; ``operating`` is added to them
    and its row marked. ``labels``, ``probs`` and ``truth`` are as in
    :func:`score_sorting`. Coverage never rises with the threshold.
    """
    p, y = _inputs(labels, probs, truth)
    nine, _ = _scopes(labels, y)
    sets = [tuple(s) for s in truth_sets] if truth_sets is not None else [
        (labels[k],) for k in y]
    top = p.argmax(axis=1)
    in_set = np.array([labels[k] in s for k, s in zip(top, sets)], dtype=bool)
    extra = () if operating is None else (operating,)
    rows = []
    for t in _thresholds((*thresholds, *extra)):
        pred, placed = place(labels, p, t, held)
        into_nine = placed & np.array([labels[k] in BODY_PARTS for k in pred], dtype=bool)
        sorted_in_set = int((nine & placed & in_set).sum())
        n_nine, n_out = int(nine.sum()), int((~nine).sum())
        sorted_nine = int((nine & placed).sum())
        correct = int((nine & placed & (pred == y)).sum())
        outside_in = int((~nine & into_nine).sum())
        rows.append(CoverageRow(
            threshold=t,
            coverage=sorted_nine / n_nine if n_nine else math.nan,
            accuracy_among_sorted=correct / sorted_nine if sorted_nine else math.nan,
            outside_nine_into_nine=outside_in / n_out if n_out else math.nan,
            nine=n_nine, sorted_nine=sorted_nine, correct_nine=correct,
            outside_nine=n_out, outside_into_nine=outside_in,
            operating=operating is not None and t == float(operating),
            accuracy_among_sorted_in_set=sorted_in_set / sorted_nine if sorted_nine
            else math.nan,
            outside_nine_into_nine_in_set=int((~nine & into_nine & ~in_set).sum()) / n_out
            if n_out else math.nan,
        ))
    return rows
