"""Seeded percentile bootstrap: the resampling under every confidence interval.

Indices are drawn in chunks of whole resamples (one row per resample) from
``np.random.default_rng(seed)``, so vectorised metrics evaluate thousands of
resamples at once and the same seed always gives the same rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from xreg.errors import MetricsInputError

__all__ = ["Estimate", "bootstrap", "json_number", "share_metrics"]

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
Metric = Callable[[np.ndarray, np.ndarray], float]
# Resampled-index matrices are generated in chunks of about this many cells,
# so memory stays bounded; the chunking depends only on len(data), keeping
# results reproducible for a given seed.
_CHUNK_CELLS = 1 << 21


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its (by default 95%) bootstrap confidence interval."""

    value: float
    low: float
    high: float

    def to_list(self) -> list[float]:
        """Return ``[value, low, high]`` (handy for JSON output)."""
        return [self.value, self.low, self.high]

    def to_json(self) -> list[float | None]:
        """``[value, low, high]`` with undefined (nan) parts as None; JSON has no NaN."""
        return [json_number(v) for v in self.to_list()]


def json_number(value: float) -> float | None:
    """``value`` as a float, None where it is nan."""
    return None if math.isnan(value) else float(value)


def ratio(num: FloatArray, den: FloatArray) -> FloatArray:
    """``num / den`` elementwise, nan where the denominator is zero."""
    with np.errstate(invalid="ignore", divide="ignore"):
        out: FloatArray = np.where(den > 0, num / den, np.nan)
    return out


def index_batches(n: int, n_resamples: int, seed: int) -> Iterator[IntArray]:
    """Yield (rows, n) matrices of bootstrap indices, n_resamples rows in total."""
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_CELLS // max(n, 1))
    done = 0
    while done < n_resamples:
        b = min(rows, n_resamples - done)
        yield rng.integers(0, n, size=(b, n), dtype=np.int64)
        done += b


def interval(values: FloatArray, alpha: float) -> tuple[float, float]:
    """Percentile interval of the finite values (nan, nan when there are none)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return float("nan"), float("nan")
    low, high = np.percentile(finite, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


def check_bootstrap_args(n: int, n_resamples: int, alpha: float) -> None:
    if n < 1:
        raise MetricsInputError("cannot evaluate metrics on zero samples")
    if n_resamples < 1:
        raise MetricsInputError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0 < alpha < 1:
        raise MetricsInputError(f"alpha must lie in (0, 1), got {alpha}")


def _safe_metric(metric: Metric, y_true: np.ndarray, y_score: np.ndarray) -> float:
    """The metric's value, or nan where it is undefined (it raised ValueError)."""
    try:
        return float(metric(y_true, y_score))
    except (ValueError, ZeroDivisionError):
        return float("nan")


def bootstrap(
    metric: Metric,
    y_true: ArrayLike,
    y_score: ArrayLike,
    *,
    n_resamples: int = 5000,
    seed: int = 0,
    alpha: float = 0.05,
) -> Estimate:
    """Percentile-bootstrap ``metric(y_true, y_score)`` over samples.

    Indices are resampled with replacement from ``np.random.default_rng(seed)``.
    Resamples where the metric is undefined (it returns nan or raises
    ``ValueError``, e.g. AUC with one class) are skipped. The point estimate is
    the metric on the full data. Calls ``metric`` once per resample, so pass a
    fast one (e.g. :func:`roc_auc` rather than sklearn's ``roc_auc_score``).
    """
    yt, ys = np.asarray(y_true), np.asarray(y_score)
    if len(yt) != len(ys):
        raise MetricsInputError(f"y_true has {len(yt)} samples but y_score has {len(ys)}")
    check_bootstrap_args(len(yt), n_resamples, alpha)
    values = np.array([
        _safe_metric(metric, yt[idx], ys[idx])
        for batch in index_batches(len(yt), n_resamples, seed)
        for idx in batch
    ])
    return Estimate(_safe_metric(metric, yt, ys), *interval(values, alpha))


def share_metrics(
    shares: Mapping[str, tuple[ArrayLike, ArrayLike]], *, n_resamples: int = 5000, seed: int = 0
) -> dict[str, Estimate]:
    """Shares ``sum(hit & among) / sum(among)``, each with a 95% bootstrap CI.

    Each value is a pair of boolean arrays over the same samples: the hits and
    the denominator. All shares use the same resamples of the whole sample
    (the rows :func:`bootstrap` draws for the seed), so shares of different
    subsets keep their joint variation. An empty denominator gives nan.
    """
    masks = {k: (np.asarray(h, dtype=bool).ravel(), np.asarray(a, dtype=bool).ravel())
             for k, (h, a) in shares.items()}
    sizes = {m.size for pair in masks.values() for m in pair}
    if len(sizes) > 1:
        raise MetricsInputError(f"share masks differ in length: {sorted(sizes)}")
    n = sizes.pop() if sizes else 0
    check_bootstrap_args(n, n_resamples, 0.05)
    pairs = {k: ((h & a).astype(np.float64), a.astype(np.float64)) for k, (h, a) in masks.items()}
    collected: dict[str, list[FloatArray]] = {k: [] for k in pairs}
    for idx in index_batches(n, n_resamples, seed):
        for key, (h, a) in pairs.items():
            collected[key].append(ratio(h[idx].sum(axis=1), a[idx].sum(axis=1)))
    return {key: Estimate(float(ratio(h.sum(keepdims=True), a.sum(keepdims=True))[0]),
                          *interval(np.concatenate(collected[key]), 0.05))
            for key, (h, a) in pairs.items()}
