"""Evaluation metrics and bootstrap intervals, checked by hand and against scikit-learn."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    log_loss,
    matthews_corrcoef,
    roc_auc_score,
)

from xreg.errors import MetricsInputError, XregError
from xreg.evaluation.metrics import (
    Estimate,
    binary_metrics,
    bootstrap,
    multiclass_metrics,
    roc_auc,
    share_metrics,
    youden_threshold,
)

BINARY_KEYS = {"auc", "sensitivity", "specificity", "youden", "f1", "accuracy", "ppv", "npv"}


def noisy_binary(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, np.clip(0.35 + 0.3 * y + rng.normal(0, 0.25, n), 0, 1)


def test_estimate_to_list() -> None:
    assert Estimate(0.5, 0.25, 0.75).to_list() == [0.5, 0.25, 0.75]


def test_binary_toy_case_by_hand() -> None:
    # y = [0, 0, 1, 1], prob = [0.1, 0.6, 0.4, 0.9], predicted positive when prob >= 0.5:
    # pred = [0, 1, 0, 1] -> TP = 1 (0.9), FN = 1 (0.4), FP = 1 (0.6), TN = 1 (0.1).
    # sens = 1/2, spec = 1/2, ppv = 1/2, npv = 1/2, acc = 2/4, f1 = 2/(2+1+1) = 1/2,
    # youden = 0.5 + 0.5 - 1 = 0.
    # AUC = share of (pos, neg) pairs ranked correctly: (0.4>0.1) yes, (0.4>0.6) no,
    # (0.9>0.1) yes, (0.9>0.6) yes -> 3/4.
    m = binary_metrics([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9], 0.5, n_resamples=200)
    assert set(m) == BINARY_KEYS
    expected = {"sensitivity": 0.5, "specificity": 0.5, "ppv": 0.5, "npv": 0.5,
                "accuracy": 0.5, "f1": 0.5, "youden": 0.0, "auc": 0.75}
    assert {k: m[k].value for k in expected} == pytest.approx(expected)


def test_binary_asymmetric_case_by_hand() -> None:
    # y = [0, 0, 0, 1, 1, 1], prob = [0.1, 0.2, 0.7, 0.3, 0.4, 0.8], threshold 0.5:
    # pred = [0, 0, 1, 0, 0, 1] -> TP = 1, FN = 2, FP = 1, TN = 2.
    # sens = 1/3, spec = 2/3, ppv = 1/2, npv = 2/4, acc = 3/6, f1 = 2/(2+1+2) = 2/5,
    # youden = 0. AUC: 0.3 and 0.4 each beat 2 negatives, 0.8 beats 3 -> 7/9.
    m = binary_metrics([0, 0, 0, 1, 1, 1], [0.1, 0.2, 0.7, 0.3, 0.4, 0.8], 0.5,
                       n_resamples=200)
    expected = {"sensitivity": 1 / 3, "specificity": 2 / 3, "ppv": 0.5, "npv": 0.5,
                "accuracy": 0.5, "f1": 0.4, "youden": 0.0, "auc": 7 / 9}
    assert {k: m[k].value for k in expected} == pytest.approx(expected)


def test_threshold_is_inclusive() -> None:
    m = binary_metrics([0, 1], [0.2, 0.5], 0.5, n_resamples=10)
    assert m["sensitivity"].value == 1.0 and m["specificity"].value == 1.0


def test_perfect_classifier() -> None:
    y, _ = noisy_binary(100, 3)
    prob = np.where(y == 1, 0.9, 0.1)
    m = binary_metrics(y, prob, 0.5, n_resamples=300)
    for key in ("auc", "sensitivity", "specificity", "accuracy", "ppv", "npv", "f1", "youden"):
        assert m[key].to_list() == [1.0, 1.0, 1.0], key


def test_auc_ties_count_half() -> None:
    # One positive tied with one negative at 0.5: pairs (0.5 vs 0.5) = 1/2, (0.5 vs 0.1) = 1,
    # (0.9 vs 0.5) = 1, (0.9 vs 0.1) = 1 -> 3.5/4.
    assert roc_auc([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9]) == pytest.approx(0.875)


@pytest.mark.parametrize("seed", range(5))
def test_vectorised_auc_equals_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    score = np.round(rng.random(n), 1 + seed % 3)  # rounding creates ties
    assert roc_auc(y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)


def test_undefined_metrics_are_nan() -> None:
    # Nothing predicted positive -> PPV 0/0; no positives at all -> sensitivity, AUC undefined.
    m = binary_metrics([0, 0, 0], [0.1, 0.2, 0.3], 0.5, n_resamples=50)
    for key in ("auc", "sensitivity", "ppv", "youden", "f1"):
        assert math.isnan(m[key].value), key
        assert math.isnan(m[key].low) and math.isnan(m[key].high), key
    assert m["specificity"].value == 1.0 and m["npv"].value == 1.0
    assert m["accuracy"].value == 1.0
    assert math.isnan(roc_auc([1, 1], [0.2, 0.3]))


def test_ci_contains_point_and_narrows_with_more_samples() -> None:
    small = binary_metrics(*noisy_binary(60, 1), 0.5, n_resamples=2000)
    large = binary_metrics(*noisy_binary(1500, 1), 0.5, n_resamples=2000)
    for key in ("auc", "sensitivity", "specificity", "accuracy", "f1"):
        for m in (small, large):
            assert m[key].low <= m[key].value <= m[key].high, key
            assert m[key].low < m[key].high, key
        assert large[key].high - large[key].low < small[key].high - small[key].low, key


def test_bootstrap_seeded() -> None:
    y, s = noisy_binary(200, 7)
    a = bootstrap(roc_auc, y, s, n_resamples=500, seed=1)
    b = bootstrap(roc_auc, y, s, n_resamples=500, seed=1)
    c = bootstrap(roc_auc, y, s, n_resamples=500, seed=2)
    assert a == b
    assert (a.low, a.high) != (c.low, c.high)
    assert a.value == c.value == roc_auc(y, s)


def test_bootstrap_percentiles_by_hand() -> None:
    # The mean of a constant array is that constant in every resample.
    e = bootstrap(lambda t, s: float(np.mean(s)), np.zeros(5), np.full(5, 0.3), n_resamples=20)
    assert e.to_list() == pytest.approx([0.3, 0.3, 0.3])
    # With alpha=0.5 the interval is the inter-quartile range of the resampled values.
    y, s = noisy_binary(50, 2)
    wide = bootstrap(roc_auc, y, s, n_resamples=400, seed=4)
    iqr = bootstrap(roc_auc, y, s, n_resamples=400, seed=4, alpha=0.5)
    assert wide.low < iqr.low < iqr.high < wide.high


def test_bootstrap_skips_undefined_resamples() -> None:
    # With 1 positive in 4 samples many resamples miss it (AUC undefined); they are skipped,
    # and a metric raising ValueError (sklearn's one-class AUC) is treated the same way.
    y, s = np.array([0, 0, 0, 1]), np.array([0.1, 0.2, 0.3, 0.9])
    ours = bootstrap(roc_auc, y, s, n_resamples=300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = bootstrap(roc_auc_score, y, s, n_resamples=300)
    assert ours == Estimate(1.0, 1.0, 1.0) == theirs


def test_binary_metrics_share_bootstrap_resamples() -> None:
    y, s = noisy_binary(120, 5)
    assert binary_metrics(y, s, 0.5, n_resamples=400, seed=9)["auc"] == bootstrap(
        roc_auc, y, s, n_resamples=400, seed=9
    )

    def sensitivity(t: np.ndarray, p: np.ndarray) -> float:
        return float(np.mean(p[t == 1] >= 0.5)) if (t == 1).any() else float("nan")

    assert binary_metrics(y, s, 0.5, n_resamples=400, seed=9)["sensitivity"] == bootstrap(
        sensitivity, y, s, n_resamples=400, seed=9
    )


def test_youden_threshold_separable() -> None:
    neg, pos = [0.05, 0.2, 0.3], [0.7, 0.8, 0.95]
    t = youden_threshold([0, 0, 0, 1, 1, 1], neg + pos)
    assert t == pytest.approx((max(neg) + min(pos)) / 2)
    m = binary_metrics([0, 0, 0, 1, 1, 1], neg + pos, t, n_resamples=10)
    assert m["youden"].value == 1.0


def test_youden_threshold_overlapping() -> None:
    # Negatives 0.1, 0.2, 0.5; positives 0.35, 0.6, 0.9, 0.95.
    # t = 0.35: sens 4/4, spec 2/3 -> J 2/3;  t = 0.6: sens 3/4, spec 3/3 -> J 3/4 (best);
    # t = 0.9: sens 2/4, spec 1 -> J 1/2;  t = 0.1: sens 1, spec 0 -> J 0.
    # The returned threshold is the midpoint of the gap below 0.6 (0.5 .. 0.6).
    t = youden_threshold([0, 0, 0, 1, 1, 1, 1], [0.1, 0.2, 0.5, 0.35, 0.6, 0.9, 0.95])
    assert t == pytest.approx(0.55)


def test_youden_threshold_ties_go_to_highest() -> None:
    # 0.35 and 0.6 both give J = 2/3 (1 - 1/3 and 2/3 - 0, unequal in floating point).
    t = youden_threshold([0, 0, 0, 1, 1, 1], [0.1, 0.2, 0.5, 0.35, 0.6, 0.9])
    assert t == pytest.approx(0.55)


def test_youden_threshold_needs_two_classes() -> None:
    with pytest.raises(MetricsInputError, match="both classes"):
        youden_threshold([1, 1], [0.3, 0.4])


def random_multiclass(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), y] += 1.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, probs


@pytest.mark.parametrize("seed,k", [(0, 3), (1, 5), (2, 2)])
def test_multiclass_matches_sklearn(seed: int, k: int) -> None:
    y, probs = random_multiclass(150, k, seed)
    labels = [f"c{i}" for i in range(k)]
    r = multiclass_metrics(y, probs, labels, n_resamples=300, seed=seed)
    pred = probs.argmax(axis=1)
    assert r.log_loss.value == pytest.approx(log_loss(y, probs, labels=list(range(k))))
    assert r.mcc.value == pytest.approx(matthews_corrcoef(y, pred))
    assert r.cohen_kappa.value == pytest.approx(cohen_kappa_score(y, pred))
    assert r.accuracy.value == pytest.approx(accuracy_score(y, pred))
    for i, name in enumerate(labels):
        assert r.auc_per_class[name] == pytest.approx(roc_auc_score(y == i, probs[:, i]))
    for e in (r.log_loss, r.mcc, r.cohen_kappa, r.accuracy):
        assert e.low <= e.value <= e.high and e.low < e.high


def test_multiclass_bootstrap_matches_generic_bootstrap() -> None:
    # The vectorised resampled MCC/kappa/log loss equal sklearn on the same resamples.
    y, probs = random_multiclass(80, 3, 4)
    r = multiclass_metrics(y, probs, ["a", "b", "c"], n_resamples=200, seed=3)
    one_hot = np.eye(3)[y]
    rows = np.hstack([probs, one_hot])  # carry probs and labels through the resampler
    generic = {
        "mcc": lambda t, p: matthews_corrcoef(t, p[:, :3].argmax(axis=1)),
        "cohen_kappa": lambda t, p: cohen_kappa_score(t, p[:, :3].argmax(axis=1)),
        "log_loss": lambda t, p: log_loss(t, p[:, :3], labels=[0, 1, 2]),
    }
    for key, fn in generic.items():
        expected = bootstrap(fn, y, rows, n_resamples=200, seed=3)
        assert getattr(r, key).to_list() == pytest.approx(expected.to_list()), key


def test_confusion_matrix_and_misclassified_by_hand() -> None:
    y = [0, 0, 1, 1, 2, 2]
    probs = [
        [0.8, 0.1, 0.1],  # 0 -> 0
        [0.2, 0.7, 0.1],  # 0 -> 1  misclassified
        [0.1, 0.8, 0.1],  # 1 -> 1
        [0.1, 0.2, 0.7],  # 1 -> 2  misclassified
        [0.1, 0.1, 0.8],  # 2 -> 2
        [0.6, 0.2, 0.2],  # 2 -> 0  misclassified
    ]
    r = multiclass_metrics(y, probs, ["hand", "knee", "hip"], n_resamples=50)
    np.testing.assert_array_equal(r.confusion, [[1, 1, 0], [0, 1, 1], [1, 0, 1]])
    assert r.misclassified == [1, 3, 5]
    assert r.accuracy.value == pytest.approx(0.5)
    assert r.labels == ("hand", "knee", "hip")


def test_multiclass_absent_class_auc_is_nan() -> None:
    y = [0, 0, 1, 1]
    probs = [[0.7, 0.2, 0.1], [0.5, 0.4, 0.1], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1]]
    r = multiclass_metrics(y, probs, ["a", "b", "c"], n_resamples=50)
    assert math.isnan(r.auc_per_class["c"])
    assert r.auc_per_class["a"] == 1.0 and r.auc_per_class["b"] == 1.0
    np.testing.assert_array_equal(r.confusion[2], [0, 0, 0])
    assert r.confusion.shape == (3, 3)


def test_multiclass_single_class_kappa_nan_not_exception() -> None:
    r = multiclass_metrics([1, 1, 1], [[0.1, 0.9], [0.2, 0.8], [0.3, 0.7]], ["a", "b"],
                           n_resamples=20)
    assert math.isnan(r.cohen_kappa.value)
    assert r.mcc.value == 0.0  # sklearn's convention for an undefined MCC
    assert math.isnan(r.auc_per_class["a"]) and r.misclassified == []


@pytest.mark.parametrize("call,match", [
    (lambda: binary_metrics([0, 1, 2], [0.1, 0.2, 0.3], 0.5), "only 0 and 1"),
    (lambda: binary_metrics([0, 1], [0.1, 0.2, 0.3], 0.5), "samples"),
    (lambda: binary_metrics([0, 1], [0.1, 0.2], 0.5, n_resamples=0), "n_resamples"),
    (lambda: bootstrap(roc_auc, [0, 1], [0.1, 0.2], alpha=1.5), "alpha"),
    (lambda: multiclass_metrics([0, 3], [[0.5, 0.5], [0.5, 0.5]], ["a", "b"]), "class indices"),
    (lambda: multiclass_metrics([0, 1], [[0.5, 0.5], [0.5, 0.5]], ["a", "b", "c"]), "labels"),
    (lambda: multiclass_metrics([0, 1], [0.5, 0.5], ["a", "b"]), "shape"),
    (lambda: share_metrics({"a": ([1, 0], [1, 1]), "b": ([1], [1])}), "differ in length"),
    (lambda: share_metrics({}), "zero samples"),
])
def test_bad_inputs_raise_typed_error(call: object, match: str) -> None:
    with pytest.raises(MetricsInputError, match=match) as info:
        call()  # type: ignore[operator]
    assert isinstance(info.value, XregError)


# ------------------------------------------------------------------------- shares


def test_share_metrics_by_hand() -> None:
    hit = [1, 0, 1, 1, 0, 0]
    among = [1, 1, 1, 0, 0, 1]  # hits inside: samples 0 and 2 of 4; sample 3 does not count
    m = share_metrics({"s": (hit, among), "all": (hit, [1] * 6), "none": (hit, [0] * 6)},
                      n_resamples=300)
    assert m["s"].value == 0.5 and m["all"].value == 0.5
    assert 0 <= m["s"].low <= 0.5 <= m["s"].high <= 1
    assert math.isnan(m["none"].value) and math.isnan(m["none"].low)


def test_share_metrics_resample_like_bootstrap() -> None:
    rng = np.random.default_rng(5)
    hit, among = rng.random(40) < 0.6, rng.random(40) < 0.5

    def share(h: np.ndarray, a: np.ndarray) -> float:
        return float((h & a).sum() / a.sum()) if a.any() else float("nan")

    m = share_metrics({"s": (hit, among)}, n_resamples=500, seed=3)["s"]
    ref = bootstrap(share, hit, among, n_resamples=500, seed=3)
    assert m.to_list() == pytest.approx(ref.to_list())
