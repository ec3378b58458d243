"""Selective prediction: scores that say "hold this film back", and what they cost.

Pure NumPy over collected outputs (``benchmarks/selective_prediction.py``
collects them on leave-one-site-out folds). A *score* is higher for a film
more likely to be misfiled; a rule sorts a film when its label names a folder
(not ``other``) and its score is at most a threshold. The figures are those of
``xreg sort``: share sorted (coverage), wrong folder (of all films, the share
sorted into a folder outside the truth's label set) and correct folder (of
the films of the nine, the share sorted into their folder).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from xreg.model.labels import BODY_PARTS, OTHER

__all__ = ["COVERAGES", "fit_mahalanobis", "fold_figures", "knn_distance",
           "mahalanobis_distance", "rule_scores", "wrong_at_coverage"]

#: Shares of a site's films sorted at which rules are compared.
COVERAGES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
Array = NDArray[np.float64]


def _softmax(z: NDArray[Any]) -> Array:
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    out: Array = e / e.sum(axis=1, keepdims=True)
    return out


def _energy(z: NDArray[Any]) -> Array:
    z = np.asarray(z, np.float64)
    top = z.max(axis=1)
    out: Array = -(top + np.log(np.exp(z - top[:, None]).sum(axis=1)))
    return out


def fit_mahalanobis(features: NDArray[Any], truth: NDArray[Any], *, min_films: int = 5,
                    shrink: float = 0.1) -> tuple[Array, Array]:
    """Class means ``(K, D)`` and a whitening matrix ``(D, D)`` from training features.

    The covariance is shared by the classes (Lee et al., 2018) and shrunk
    towards its mean variance, so a few thousand films suffice for 1,280
    dimensions. Classes with fewer than ``min_films`` films are left out.
    """
    f = np.asarray(features, np.float64)
    classes = [c for c in np.unique(truth) if (truth == c).sum() >= min_films]
    means = np.stack([f[truth == c].mean(axis=0) for c in classes])
    centred = np.concatenate([f[truth == c] - m for c, m in zip(classes, means)])
    cov = centred.T @ centred / len(centred)
    cov = (1 - shrink) * cov + shrink * np.trace(cov) / len(cov) * np.eye(len(cov))
    values, vectors = np.linalg.eigh(cov)
    whiten: Array = vectors / np.sqrt(np.maximum(values, 1e-12))
    return means @ whiten, whiten


def mahalanobis_distance(features: NDArray[Any], means_w: Array, whiten: Array) -> Array:
    """Squared Mahalanobis distance of each row to the nearest class mean."""
    z = np.asarray(features, np.float64) @ whiten
    d = (z * z).sum(1)[:, None] - 2 * z @ means_w.T + (means_w * means_w).sum(1)[None]
    out: Array = d.min(axis=1)
    return out


def knn_distance(features: NDArray[Any], bank: NDArray[Any], k: int = 10) -> Array:
    """Cosine distance of each row to its k-th nearest row of ``bank``."""
    def unit(x: NDArray[Any]) -> Array:
        x = np.asarray(x, np.float64)
        out: Array = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return out

    sims = unit(features) @ unit(bank).T
    k = min(k, sims.shape[1])
    kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1]
    out: Array = 1.0 - kth
    return out


def _joined(features: Sequence[NDArray[Any]]) -> Array:
    """Members' features, each at unit length, joined (the shipped network's bank space)."""
    parts = [np.asarray(f, np.float64) for f in features]
    parts = [f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12) for f in parts]
    out: Array = np.concatenate(parts, axis=1)
    return out


def _quantile_rank(values: Array, reference: Array) -> Array:
    """Each value's share of ``reference`` below it (an empirical CDF, 0..1)."""
    ref = np.sort(reference[np.isfinite(reference)])
    out: Array = np.searchsorted(ref, values, side="right") / max(len(ref), 1)
    return out


def rule_scores(data: Mapping[str, Any], members: int
                ) -> dict[str, dict[str, tuple[NDArray[np.int64], Array]]]:
    """``{part: {rule: (predicted label index, score)}}`` for ``val`` and ``held``.

    ``data`` holds, per part (``train``, ``val``, ``held``) and member ``m``:
    ``{part}_m{m}_logits``, ``_features``, ``_flip`` and ``{part}_truth``.
    """
    ok = np.asarray(data["train_ok"], bool)
    train_f = np.asarray(data["train_m0_features"])[ok]
    train_y = np.asarray(data["train_truth"])[ok]
    means_w, whiten = fit_mahalanobis(train_f, train_y)
    out: dict[str, dict[str, tuple[NDArray[np.int64], Array]]] = {}
    for part in ("val", "held"):
        p0 = _softmax(data[f"{part}_m0_logits"])
        pred0 = p0.argmax(1)
        rows = np.arange(len(p0))
        flip = _softmax(data[f"{part}_m0_flip"])
        feats = data[f"{part}_m0_features"]
        rules = {
            "confidence": (pred0, 1 - p0.max(1)),
            "energy": (pred0, _energy(data[f"{part}_m0_logits"])),
            "mahalanobis": (pred0, mahalanobis_distance(feats, means_w, whiten)),
            "knn": (pred0, knn_distance(feats, train_f)),
            "flip": (pred0, np.maximum(1 - p0[rows, pred0], 1 - flip[rows, pred0])),
        }
        if members > 1:
            joined = _joined([data[f"{part}_m{m}_features"] for m in range(members)])
            bank = _joined([np.asarray(data[f"train_m{m}_features"])[ok]
                            for m in range(members)])
            probs = np.stack([_softmax(data[f"{part}_m{m}_logits"]) for m in range(members)])
            pred = probs.mean(0).argmax(1)
            rules["agree"] = (pred, 1 - probs[:, rows, pred].min(0))
            rules["knn(joined)"] = (pred, knn_distance(joined, bank, k=5))
            for m in range(1, members):
                pair = probs[[0, m]]
                p2 = pair.mean(0).argmax(1)
                rules[f"agree(0,{m})"] = (p2, 1 - pair[:, rows, p2].min(0))
        out[part] = {k: (v[0].astype(np.int64), np.asarray(v[1], np.float64))
                     for k, v in rules.items()}
    # Joint rules: each score as its quantile among validation films, the larger one.
    for a, b in (("agree", "knn"), ("agree", "knn(joined)"), ("agree", "energy"),
                 ("flip", "knn"), ("confidence", "knn")):
        if a not in out["val"]:
            continue
        for part in ("val", "held"):
            ra = _quantile_rank(out[part][a][1], out["val"][a][1])
            rb = _quantile_rank(out[part][b][1], out["val"][b][1])
            out[part][f"{a}+{b}"] = (out[part][a][0], np.maximum(ra, rb))
    # The shipped kind of rule: every test at its own share of validation films passed.
    labels = [str(x) for x in data["labels"]]
    val_nine = np.asarray(data["val_ok"], bool) & np.array(
        [labels[k] in BODY_PARTS for k in data["val_truth"]])
    probs_of = {part: (np.stack([_softmax(data[f"{part}_m{m}_logits"])
                                 for m in range(members)]).mean(0)) for part in ("val", "held")}
    min_conf = _min_confidence(labels, probs_of["val"], data)
    for tests in (CONJUNCTIONS if members > 1 else CONJUNCTIONS[-2:]):
        name = "all(" + ", ".join(f"{r} {p:.0%}" for r, p in tests) + ", min_confidence)"
        limits = {r: float(np.quantile(out["val"][r][1][val_nine], p)) for r, p in tests}
        for part in ("val", "held"):
            held = probs_of[part].max(1) < min_conf
            for r, _ in tests:
                held |= out[part][r][1] > limits[r]
            out[part][name] = (probs_of[part].argmax(1), held.astype(np.float64))
    return out


def _min_confidence(labels: Sequence[str], val_probs: Array, data: Mapping[str, Any]) -> float:
    """``min_confidence`` as the shipped default's is chosen, on the fold's validation films."""
    from xreg.errors import ConfigError
    from xreg.evaluation.calibrate import choose_operating_point

    ok = np.asarray(data["val_ok"], bool)
    sets = [str(x).split("|") for x in np.asarray(data["val_sets"])[ok]]
    try:
        return float(choose_operating_point(labels, val_probs[ok],
                                            np.asarray(data["val_truth"])[ok],
                                            truth_sets=sets).threshold)
    except ConfigError:
        return 0.5


#: Conjunctions compared as a shipped guard would apply them (rule, share passed).
CONJUNCTIONS: tuple[tuple[tuple[str, float], ...], ...] = (
    (("agree", 0.97), ("knn(joined)", 0.98), ("energy", 0.99)),
    (("agree", 0.97), ("knn(joined)", 0.95), ("energy", 0.99)),
    (("agree", 0.97), ("knn(joined)", 0.90), ("energy", 0.99)),
    (("agree", 0.95), ("knn(joined)", 0.95), ("energy", 0.99)),
    (("energy", 0.99),),
    (("knn", 0.95), ("energy", 0.99)),
)


def _outcome(labels: Sequence[str], pred: NDArray[np.int64], sets: Sequence[str],
             sorted_: NDArray[np.bool_]) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    right = np.array([labels[k] in s.split("|") for k, s in zip(pred, sets)], bool)
    return sorted_ & right, sorted_ & ~right


def _curve(labels: Sequence[str], pred: NDArray[np.int64], score: Array,
           sets: Sequence[str]) -> dict[str, list[float]]:
    folder = np.array([labels[k] != OTHER for k in pred], bool)
    order = np.argsort(score, kind="stable")
    right, wrong = _outcome(labels, pred, sets, folder)
    n = len(pred)
    coverage = np.cumsum(folder[order]) / n
    risk = np.cumsum(wrong[order]) / n
    picks = np.unique(np.clip(np.searchsorted(coverage, np.linspace(0, coverage[-1], 101)),
                              0, n - 1))
    return {"coverage": coverage[picks].round(4).tolist(), "wrong": risk[picks].round(4).tolist()}


def wrong_at_coverage(curve: Mapping[str, Sequence[float]],
                      coverages: Sequence[float] = COVERAGES) -> list[float | None]:
    """Wrong folder at the first point of a curve sorting at least each share."""
    cov = np.asarray(curve["coverage"])
    wrong = np.asarray(curve["wrong"])
    out: list[float | None] = []
    for c in coverages:
        hit = np.nonzero(cov >= c - 1e-9)[0]
        out.append(float(wrong[hit[0]]) if len(hit) else None)
    return out


def fold_figures(data: Mapping[str, Any],
                 scores: Mapping[str, Mapping[str, tuple[NDArray[np.int64], Array]]], *,
                 pass_share: float = 0.95) -> dict[str, Any]:
    """Per rule: the risk-coverage curve on the left-out site and its operating point.

    The threshold lets ``pass_share`` of the decodable validation films whose
    truth is one of the nine pass (the training sites' films; the left-out
    site plays no part in it); an ``all(...)`` rule is already a decision
    (each of its tests at its own share).
    """
    labels = [str(x) for x in data["labels"]]
    held_ok = np.asarray(data["held_ok"], bool)
    val_ok = np.asarray(data["val_ok"], bool)
    sets = [str(s) for s in np.asarray(data["held_sets"])[held_ok]]
    truth = np.asarray(data["held_truth"])[held_ok]
    val_nine = val_ok & np.array([labels[k] in BODY_PARTS for k in data["val_truth"]])
    nine = np.array([labels[k] in BODY_PARTS for k in truth])
    out: dict[str, Any] = {"films": int(held_ok.sum()), "nine_films": int(nine.sum()),
                           "curves": {}, "operating": {}}
    for rule, (pred_all, score_all) in scores["held"].items():
        pred, score = pred_all[held_ok], score_all[held_ok]
        out["curves"][rule] = _curve(labels, pred, score, sets)
        limit = 0.5 if rule.startswith("all(") else \
            float(np.quantile(scores["val"][rule][1][val_nine], pass_share))
        folder = np.array([labels[k] != OTHER for k in pred], bool)
        right, wrong = _outcome(labels, pred, sets, folder & (score <= limit))
        by_class = {labels[c]: round(float(wrong[truth == c].mean()), 3)
                    for c in np.unique(truth)}
        out["operating"][rule] = {
            "threshold": limit, "sorted": float((folder & (score <= limit)).mean()),
            "correct_folder": float(right[nine].mean()) if nine.any() else float("nan"),
            "wrong_folder": float(wrong.mean()), "wrong_by_class": by_class}
    return out
