"""Evaluation metrics of the thesis (Tables 2, 3 and 5) with bootstrap confidence intervals.

Pure functions over numpy arrays: no file I/O, no printing. Point estimates are
computed on the full data; 95% intervals come from a seeded percentile
bootstrap over samples. The resampled metrics are vectorised over whole
batches of resamples (one row per resample) so that thousands of resamples
take well under a second; tests check the vectorised forms against
scikit-learn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    log_loss,
    roc_curve,
)

from xreg.errors import MetricsInputError
from xreg.evaluation.bootstrap import (
    Estimate,
    FloatArray,
    IntArray,
    bootstrap,
    check_bootstrap_args,
    index_batches,
    interval,
    ratio,
    share_metrics,
)


@dataclass(frozen=True, eq=False)
class MulticlassReport:
    """Multiclass evaluation of one task head (thesis Table 2, Figures 3-5).

    ``confusion`` has true classes on rows and predicted classes on columns,
    both in the order of ``labels``; ``misclassified`` lists the sample indices
    whose argmax prediction differs from the truth.
    """

    labels: tuple[str, ...]
    log_loss: Estimate
    mcc: Estimate
    cohen_kappa: Estimate
    accuracy: Estimate
    auc_per_class: dict[str, float]
    confusion: IntArray
    misclassified: list[int]


# ------------------------------------------------------------------------- binary


def _auc_rows(y: NDArray[np.bool_], s: FloatArray) -> FloatArray:
    """ROC AUC of each row (Mann-Whitney U with average ranks for ties); nan if one class."""
    b, n = y.shape
    order = np.argsort(s, axis=1, kind="stable")
    sv = np.take_along_axis(s, order, axis=1)
    yv = np.take_along_axis(y, order, axis=1)
    pos = np.broadcast_to(np.arange(n), (b, n))
    starts = np.ones((b, n), dtype=bool)
    starts[:, 1:] = sv[:, 1:] != sv[:, :-1]
    ends = np.ones((b, n), dtype=bool)
    ends[:, :-1] = starts[:, 1:]
    first = np.maximum.accumulate(np.where(starts, pos, 0), axis=1)
    last = np.minimum.accumulate(np.where(ends, pos, n)[:, ::-1], axis=1)[:, ::-1]
    ranks = (first + last) / 2 + 1  # 1-based average rank within a tie group
    n1 = yv.sum(axis=1).astype(np.float64)
    n0 = n - n1
    u = (ranks * yv).sum(axis=1) - n1 * (n1 + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        auc: FloatArray = np.where((n1 > 0) & (n0 > 0), u / (n1 * n0), np.nan)
    return auc


def roc_auc(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """ROC AUC of 0/1 labels against scores, via ranks; nan when only one class is present."""
    y = np.asarray(y_true).astype(bool).reshape(1, -1)
    s = np.asarray(y_score, dtype=np.float64).reshape(1, -1)
    if y.shape != s.shape:
        raise MetricsInputError(f"y_true has {y.size} samples but y_score has {s.size}")
    return float(_auc_rows(y, s)[0])


def _binary_rows(y: NDArray[np.bool_], pred: NDArray[np.bool_]) -> dict[str, FloatArray]:
    """Threshold metrics of each row of (labels, predictions); nan where undefined."""
    tp = (y & pred).sum(axis=1).astype(np.float64)
    fp = (~y & pred).sum(axis=1).astype(np.float64)
    fn = (y & ~pred).sum(axis=1).astype(np.float64)
    tn = (~y & ~pred).sum(axis=1).astype(np.float64)
    sens, spec = ratio(tp, tp + fn), ratio(tn, tn + fp)
    return {
        "sensitivity": sens,
        "specificity": spec,
        "youden": sens + spec - 1,
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "accuracy": ratio(tp + tn, tp + tn + fp + fn),
        "ppv": ratio(tp, tp + fp),
        "npv": ratio(tn, tn + fn),
    }


def _binary_inputs(y_true: ArrayLike, prob: ArrayLike) -> tuple[NDArray[np.bool_], FloatArray]:
    yt = np.asarray(y_true).ravel()
    p = np.asarray(prob, dtype=np.float64).ravel()
    if yt.shape != p.shape:
        raise MetricsInputError(f"y_true has {yt.size} samples but prob has {p.size}")
    if not np.isin(yt, (0, 1)).all():
        raise MetricsInputError("y_true must contain only 0 and 1")
    return yt.astype(bool), p


def binary_metrics(
    y_true: ArrayLike,
    prob: ArrayLike,
    threshold: float,
    *,
    n_resamples: int = 5000,
    seed: int = 0,
) -> dict[str, Estimate]:
    """AUC and threshold metrics of a binary head, each with a 95% bootstrap CI.

    A sample is predicted positive when ``prob >= threshold``. Keys: auc,
    sensitivity, specificity, youden (sens + spec - 1), f1, accuracy, ppv,
    npv (thesis Tables 3 and 5). Undefined values (e.g. PPV without positive
    predictions) are nan. Every metric uses the same resamples, which are the
    ones :func:`bootstrap` draws for the same seed.
    """
    y, p = _binary_inputs(y_true, prob)
    n = len(y)
    pred = p >= threshold
    points = {k: float(v[0]) for k, v in _binary_rows(y[None], pred[None]).items()}
    check_bootstrap_args(n, n_resamples, 0.05)
    collected: dict[str, list[FloatArray]] = {k: [] for k in ("auc", *points)}
    for idx in index_batches(n, n_resamples, seed):
        collected["auc"].append(_auc_rows(y[idx], p[idx]))
        for key, values in _binary_rows(y[idx], pred[idx]).items():
            collected[key].append(values)
    points["auc"] = float(_auc_rows(y[None], p[None])[0])
    return {
        key: Estimate(points[key], *interval(np.concatenate(chunks), 0.05))
        for key, chunks in collected.items()
    }


def youden_threshold(y_true: ArrayLike, prob: ArrayLike) -> float:
    """The ROC threshold maximising sensitivity + specificity - 1.

    Meant for ``prob >= threshold`` as in :func:`binary_metrics`; ties go to
    the highest such threshold (the most specific one). Every value between
    that score and the next lower one classifies the data alike; the midpoint
    is returned, so new cases scoring a little under the lowest chosen
    positive are not cut off by a threshold sitting right on it.
    """
    y, p = _binary_inputs(y_true, prob)
    if y.all() or not y.any():
        raise MetricsInputError("youden_threshold needs both classes in y_true")
    fpr, tpr, thresholds = roc_curve(y, p, drop_intermediate=False)
    # Index 0 is sklearn's "nothing positive" point at +inf; never a usable threshold.
    j = (tpr - fpr)[1:]
    # Equal J values can differ in the last bit (1 - 1/3 vs 2/3 - 0); treat them as ties.
    best = 1 + int(np.flatnonzero(j >= j.max() - 1e-12)[0])
    below = p[p < thresholds[best]]
    lower = float(below.max()) if below.size else 0.0
    return (float(thresholds[best]) + lower) / 2


# --------------------------------------------------------------------- multiclass


def _confusion_rows(t: IntArray, pr: IntArray, k: int) -> FloatArray:
    """(rows, k, k) confusion matrices, one per row of (true, predicted) labels."""
    b = t.shape[0]
    codes = (np.arange(b)[:, None] * k + t) * k + pr
    counts = np.bincount(codes.ravel(), minlength=b * k * k)
    return counts.reshape(b, k, k).astype(np.float64)


def _mcc_rows(c: FloatArray) -> FloatArray:
    """Matthews correlation per confusion matrix; 0 where undefined, as sklearn does."""
    t_sum, p_sum = c.sum(axis=2), c.sum(axis=1)
    n = t_sum.sum(axis=1)
    correct = np.trace(c, axis1=1, axis2=2)
    cov_tp = correct * n - (t_sum * p_sum).sum(axis=1)
    cov_pp = n**2 - (p_sum * p_sum).sum(axis=1)
    cov_tt = n**2 - (t_sum * t_sum).sum(axis=1)
    den = cov_pp * cov_tt
    with np.errstate(invalid="ignore", divide="ignore"):
        out: FloatArray = np.where(den > 0, cov_tp / np.sqrt(den), 0.0)
    return out


def _kappa_rows(c: FloatArray) -> FloatArray:
    """Cohen's kappa per confusion matrix; nan where undefined, as sklearn does."""
    t_sum, p_sum = c.sum(axis=2), c.sum(axis=1)
    n = t_sum.sum(axis=1)
    observed_off = n - np.trace(c, axis1=1, axis2=2)
    expected_off = ratio(n**2 - (t_sum * p_sum).sum(axis=1), n)
    return 1 - ratio(observed_off, expected_off)


def _per_sample_log_loss(y: IntArray, probs: FloatArray) -> FloatArray:
    """-log p(true class), clipped like sklearn's ``log_loss``."""
    eps = np.finfo(np.float64).eps
    p_true = np.clip(probs[np.arange(len(y)), y], eps, 1 - eps)
    return -np.log(p_true)


def _multiclass_inputs(
    y_true: ArrayLike, probs: ArrayLike, labels: Sequence[str]
) -> tuple[IntArray, FloatArray]:
    y = np.asarray(y_true).ravel()
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != len(y):
        raise MetricsInputError(f"probs must have shape ({len(y)}, K), got {p.shape}")
    if p.shape[1] != len(labels):
        raise MetricsInputError(f"probs has {p.shape[1]} columns but {len(labels)} labels")
    if not np.issubdtype(y.dtype, np.integer) or y.min(initial=0) < 0 or (
        y.max(initial=0) >= len(labels)
    ):
        raise MetricsInputError(f"y_true must hold integer class indices in [0, {len(labels)})")
    return y.astype(np.int64), p


def multiclass_metrics(
    y_true: ArrayLike,
    probs: ArrayLike,
    labels: Sequence[str],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
) -> MulticlassReport:
    """Evaluate a softmax head: log loss, MCC, Cohen's kappa, accuracy (with CIs) and more.

    ``y_true`` holds class indices into ``labels``; ``probs`` is (N, K) with
    columns in the same order. Point estimates come from scikit-learn; the
    bootstrap intervals use vectorised equivalents (MCC and kappa
    use them for the point estimate too). One-vs-rest AUC is nan for
    a class that is absent (or the only one present).
    """
    y, p = _multiclass_inputs(y_true, probs, labels)
    k, n = len(labels), len(y)
    pred = p.argmax(axis=1)
    check_bootstrap_args(n, n_resamples, 0.05)
    losses = _per_sample_log_loss(y, p)
    collected: dict[str, list[FloatArray]] = {"ll": [], "mcc": [], "kappa": [], "acc": []}
    for idx in index_batches(n, n_resamples, seed):
        c = _confusion_rows(y[idx], pred[idx], k)
        collected["ll"].append(losses[idx].mean(axis=1))
        collected["mcc"].append(_mcc_rows(c))
        collected["kappa"].append(_kappa_rows(c))
        collected["acc"].append((y[idx] == pred[idx]).mean(axis=1))
    ci = {key: interval(np.concatenate(v), 0.05) for key, v in collected.items()}
    full = _confusion_rows(y[None], pred[None], k)
    return MulticlassReport(
        labels=tuple(labels),
        log_loss=Estimate(float(log_loss(y, p, labels=list(range(k)))), *ci["ll"]),
        # MCC and kappa equal sklearn's (tested), without its warnings on degenerate data.
        mcc=Estimate(float(_mcc_rows(full)[0]), *ci["mcc"]),
        cohen_kappa=Estimate(float(_kappa_rows(full)[0]), *ci["kappa"]),
        accuracy=Estimate(float(accuracy_score(y, pred)), *ci["acc"]),
        auc_per_class={name: roc_auc(y == i, p[:, i]) for i, name in enumerate(labels)},
        confusion=confusion_matrix(y, pred, labels=list(range(k))).astype(np.int64),
        misclassified=[int(i) for i in np.flatnonzero(pred != y)],
    )


__all__ = [
    "Estimate",
    "MetricsInputError",
    "MulticlassReport",
    "binary_metrics",
    "bootstrap",
    "multiclass_metrics",
    "roc_auc",
    "share_metrics",
    "youden_threshold",
]
