"""Per-site figures: each source of the evaluated films scored on its own.

A model that is right on a split of the sites it trained on can still fail
on another hospital, so an evaluation whose films name their site (a
manifest's ``source`` column, as in a training run's ``split.csv``) reports
every site by itself. Pure functions over the arrays an evaluation collects:
the folders go through :func:`xreg.evaluation.sorting.score_sorting`, hence
through the very rule ``xreg sort`` applies, and the AUCs through
:func:`xreg.evaluation.metrics.binary_metrics`; every figure has a 95%
bootstrap CI over the site's films.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from xreg.errors import ConfigError
from xreg.evaluation.bootstrap import Estimate
from xreg.evaluation.metrics import binary_metrics
from xreg.evaluation.sorting import score_sorting

__all__ = ["NO_SOURCE", "SITE_METRICS", "SiteFigures", "has_sites", "site_figures",
           "sites_to_dict"]

#: The site of films that name none, beside films that do.
NO_SOURCE = "(no source)"
#: SiteFigures attributes and how tables name them.
SITE_METRICS = (
    ("correct_folder", "Right folder"),
    ("wrong_folder", "Wrong folder"),
    ("review_rate", "_review"),
    ("outside_nine_into_nine", "Not of the nine, into the nine"),
    ("accuracy_among_sorted", "Accuracy among sorted"),
    ("instrument_auc", "Instrument AUC"),
    ("fracture_auc", "Fracture AUC"),
)


def _est(e: Estimate | None) -> list[float | None] | None:
    return None if e is None else e.to_json()


@dataclass(frozen=True, eq=False)
class SiteFigures:
    """One site's figures; shares are as in :class:`~xreg.evaluation.sorting.SortingReport`.

    ``correct_folder`` and ``accuracy_among_sorted`` count the site's
    nine-class films, ``wrong_folder`` and ``review_rate`` all its films,
    ``outside_nine_into_nine`` its films of none of the nine (nan when it has
    none). ``instrument_auc``/``fracture_auc`` are None unless the site has
    both classes labelled. ``confusion`` counts truths (rows,
    ``truth_labels``) against destination folders (columns, ``destinations``).
    """

    site: str
    films: int
    correct_folder: Estimate
    wrong_folder: Estimate
    review_rate: Estimate
    outside_nine_into_nine: Estimate
    accuracy_among_sorted: Estimate
    instrument_auc: Estimate | None
    fracture_auc: Estimate | None
    counts: dict[str, int]
    truth_labels: tuple[str, ...]
    destinations: tuple[str, ...]
    confusion: NDArray[np.int64]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: estimates are ``[value, low, high]``, null where undefined."""
        return {
            "films": self.films,
            **{key: _est(getattr(self, key)) for key, _ in SITE_METRICS},
            "counts": dict(self.counts),
            "confusion": {"truth": list(self.truth_labels),
                          "destination": list(self.destinations),
                          "matrix": self.confusion.tolist()},
        }


def has_sites(sources: Sequence[str | None]) -> bool:
    """Whether any film names its site (then an evaluation reports per-site figures)."""
    return any(sources)


def _binary(truth: Sequence[int | None], prob: Sequence[float], n: int,
            name: str) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Full-length truths (-1: unknown) and probabilities; empty input: all unknown."""
    if len(truth) == 0 and len(prob) == 0:
        return np.full(n, -1, dtype=np.int64), np.zeros(n)
    if len(truth) != n or len(prob) != n:
        raise ConfigError(f"{name}_true and {name}_prob must list all {n} films "
                          f"(got {len(truth)} and {len(prob)})")
    return (np.array([-1 if t is None else int(t) for t in truth], dtype=np.int64),
            np.asarray(prob, dtype=np.float64))


def _auc(y: NDArray[np.int64], p: NDArray[np.float64], n_resamples: int,
         seed: int) -> tuple[Estimate | None, int, int]:
    """The AUC of the labelled films (None unless both classes), labelled and positive."""
    known = y >= 0
    yt = y[known]
    positive = int(yt.sum())
    if not 0 < positive < yt.size:
        return None, int(yt.size), positive
    auc = binary_metrics(yt, p[known], 0.5, n_resamples=n_resamples, seed=seed)["auc"]
    return auc, int(yt.size), positive


def site_figures(
    labels: Sequence[str],
    probs: ArrayLike,
    truth: ArrayLike,
    sources: Sequence[str | None],
    *,
    min_confidence: float,
    truth_sets: Sequence[Sequence[str]] | None = None,
    instrument_true: Sequence[int | None] = (),
    instrument_prob: Sequence[float] = (),
    fracture_true: Sequence[int | None] = (),
    fracture_prob: Sequence[float] = (),
    held: ArrayLike | None = None,
    n_resamples: int = 5000,
    seed: int = 0,
) -> dict[str, SiteFigures]:
    """Each site's figures at ``min_confidence``, sites by name (:data:`NO_SOURCE` last).

    ``labels``, ``probs``, ``truth`` and ``truth_sets`` are as in
    :func:`~xreg.evaluation.sorting.score_sorting`; ``sources`` names each
    film's site (None or empty: :data:`NO_SOURCE`). ``instrument_true`` and
    ``fracture_true`` list every film (0, 1 or None when unknown) with its
    probability of the positive class, or are empty when not evaluated. Each
    site's films are resampled on their own, seeded, for every interval.
    """
    y = np.asarray(truth, dtype=np.int64).ravel()
    n = len(y)
    if len(sources) != n:
        raise ConfigError(f"sources has {len(sources)} entries for {n} films")
    if truth_sets is not None and len(truth_sets) != n:
        raise ConfigError(f"truth_sets has {len(truth_sets)} entries for {n} films")
    p = np.asarray(probs, dtype=np.float64).reshape(n, len(labels))
    names = np.array([s or NO_SOURCE for s in sources], dtype=object)
    inst_y, inst_p = _binary(instrument_true, instrument_prob, n, "instrument")
    frac_y, frac_p = _binary(fracture_true, fracture_prob, n, "fracture")
    hold = np.zeros(n, dtype=bool) if held is None else np.asarray(held, dtype=bool).ravel()
    order = sorted(set(names), key=lambda s: (s == NO_SOURCE, s))
    out: dict[str, SiteFigures] = {}
    for site in order:
        rows = np.flatnonzero(names == site)
        sr = score_sorting(labels, p[rows], y[rows], min_confidence=min_confidence,
                           truth_sets=None if truth_sets is None else
                           [truth_sets[i] for i in rows], held=hold[rows],
                           n_resamples=n_resamples, seed=seed)
        inst, inst_n, inst_pos = _auc(inst_y[rows], inst_p[rows], n_resamples, seed)
        frac, frac_n, frac_pos = _auc(frac_y[rows], frac_p[rows], n_resamples, seed)
        c = sr.counts
        out[site] = SiteFigures(
            site=site, films=len(rows), correct_folder=sr.correct_folder,
            wrong_folder=sr.wrong_folder, review_rate=sr.review_rate,
            outside_nine_into_nine=sr.outside_nine_into_nine,
            accuracy_among_sorted=sr.accuracy_among_sorted,
            instrument_auc=inst, fracture_auc=frac,
            counts={"films": len(rows), "nine": c["nine"], "sorted_nine": c["sorted_nine"],
                    "outside_nine": c["outside_nine"], "review": c["review"],
                    "wrong_folder": c["wrong_folder"], "instrument_labelled": inst_n,
                    "instrument_positive": inst_pos, "fracture_labelled": frac_n,
                    "fracture_positive": frac_pos},
            truth_labels=sr.truth_labels, destinations=sr.destinations,
            confusion=sr.confusion,
        )
    return out


def sites_to_dict(sites: dict[str, SiteFigures]) -> dict[str, dict[str, Any]]:
    """``{site: SiteFigures.to_dict()}``, the ``sites`` block of an evaluation's JSON."""
    return {site: figures.to_dict() for site, figures in sites.items()}
