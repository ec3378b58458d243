"""`xreg evaluate`: labelled data loading, metrics from collected probabilities, report, CLI."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import xreg.evaluation.evaluate as evaluate_module
from xreg.cli import app
from xreg.datasets import LabelledImage, load_labels
from xreg.errors import ConfigError
from xreg.evaluation.evaluate import evaluate, evaluate_images, score
from xreg.evaluation.metrics import roc_auc
from xreg.evaluation.report import write_report
from xreg.evaluation.sorting import RISK_COVERAGE_THRESHOLDS, risk_coverage, score_sorting
from xreg.inference.predict import Prediction, SourceFile
from xreg.model.checkpoint import ModelCard, load_checkpoint, save_checkpoint
from xreg.model.models import (
    BODY_PARTS,
    EXTENDED_BODY_PARTS,
    INSTRUMENT_HEAD,
    HeadSpec,
    build_model,
)
from xreg.synth.generate import generate_dataset

RESAMPLES = 200
runner = CliRunner()


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, 27, 0, size=96, workers=1, instrument_rate=0.3)
    return root


def manifest_rows(synth: Path) -> list[dict[str, str]]:
    with (synth / "labels.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def write_png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (np.random.default_rng(seed).random((48, 40)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(path)


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


# ------------------------------------------------------------------ load_labels


def test_load_labels_from_synth_manifest(synth: Path) -> None:
    images = load_labels(synth / "labels.csv")
    rows = {str(synth / r["path"]): r for r in manifest_rows(synth)}
    assert len(images) == 27
    assert [str(im.path) for im in images] == sorted(rows)
    for im in images:
        row = rows[str(im.path)]
        assert im.path.is_file()
        assert im.body_part == row["body_part"]
        assert im.instrument == int(row["instrument"])
        assert im.patient_id == row["patient_id"]
        assert im.split is None


def test_load_labels_from_sort_layout_ignores_review_and_non_images(tmp_path: Path) -> None:
    root = tmp_path / "sorted"
    write_png(root / "hand" / "instrument" / "b.png", 1)
    write_png(root / "hand" / "instrument" / "a.png", 2)
    write_png(root / "knee" / "no_instrument" / "deep" / "c.png", 3)
    write_png(root / "_review" / "x.png", 4)
    write_png(root / "_unreadable" / "y.png", 5)
    (root / "knee" / "no_instrument" / "notes.txt").write_text("not an image")
    (root / "registry.sqlite").write_bytes(b"SQLite format 3\x00")
    images = load_labels(root)
    assert images == [
        LabelledImage(root / "hand/instrument/a.png", "hand", 1, None, None),
        LabelledImage(root / "hand/instrument/b.png", "hand", 1, None, None),
        LabelledImage(root / "knee/no_instrument/deep/c.png", "knee", 0, None, None),
    ]


def test_sort_layout_with_an_unknown_folder_is_refused(tmp_path: Path) -> None:
    write_png(tmp_path / "hand" / "maybe" / "a.png", 1)
    with pytest.raises(ConfigError, match="'maybe'"):
        load_labels(tmp_path)


@pytest.mark.parametrize("header, row, match", [
    (["path", "body_part"], ["a.png", "hand"], "no column 'instrument'"),
    (["path", "body_part", "instrument"], ["a.png", "nose", "0"],
     r"row 3, column 'body_part'.*'nose'"),
    (["path", "body_part", "instrument"], ["a.png", "hand", "yes"],
     r"row 3, column 'instrument'.*'yes'"),
    (["path", "body_part", "instrument"], ["", "hand", "1"], r"row 3, column 'path'"),
])
def test_bad_manifest_names_row_and_column(
    tmp_path: Path, header: list[str], row: list[str], match: str
) -> None:
    good = ["ok.png", "knee", "1"][: len(header)]
    path = write_csv(tmp_path / "m.csv", header, [good, row])
    with pytest.raises(ConfigError, match=match):
        load_labels(path)


def test_manifest_optional_columns_and_unknown_instrument(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "m.csv", ["split", "path", "instrument", "body_part",
                                          "patient_id"],
                     [["test", "sub/b.png", "", "spine", "P1"], ["", "a.png", "1", "hip", ""]])
    assert load_labels(path) == [
        LabelledImage(tmp_path / "a.png", "hip", 1, None, None),
        LabelledImage(tmp_path / "sub/b.png", "spine", None, "P1", "test"),
    ]


# --------------------------------------------------------------------- evaluate


def test_evaluate_random_checkpoint_metrics_match_the_probabilities(
    synth: Path, tiny_weights: Path
) -> None:
    ev = evaluate(tiny_weights, synth / "labels.csv", batch_size=8, device="cpu",
                  n_resamples=RESAMPLES)
    rows = manifest_rows(synth)
    assert len(ev.paths) == 27 and not ev.skipped
    assert sorted(ev.paths) == sorted(r["path"] for r in rows)
    assert ev.body_part_probs.shape == (27, len(BODY_PARTS))
    np.testing.assert_allclose(ev.body_part_probs.sum(axis=1), 1.0, atol=1e-9)
    truth = {r["path"]: r for r in rows}
    expected_y = [BODY_PARTS.index(truth[p]["body_part"]) for p in ev.paths]
    assert ev.body_part_true.tolist() == expected_y
    assert ev.instrument_true.tolist() == [int(truth[p]["instrument"]) for p in ev.paths]
    assert 0 < ev.instrument_true.sum() < 27  # both classes, so AUC is defined

    pred = ev.body_part_probs.argmax(axis=1)
    assert ev.body_part.accuracy.value == pytest.approx(np.mean(pred == ev.body_part_true))
    assert ev.body_part.confusion.sum() == 27
    assert ev.body_part.confusion.sum(axis=1).tolist() == np.bincount(
        ev.body_part_true, minlength=len(BODY_PARTS)).tolist()
    p_true = ev.body_part_probs[np.arange(27), ev.body_part_true]
    assert ev.body_part.log_loss.value == pytest.approx(-np.mean(np.log(p_true)))

    assert ev.instrument is not None
    threshold = ev.instrument_threshold
    assert threshold == load_checkpoint(tiny_weights).card.thresholds["instrument"]
    inst_pred = (ev.instrument_prob >= threshold).astype(int)
    assert ev.instrument["accuracy"].value == pytest.approx(
        np.mean(inst_pred == ev.instrument_true))
    assert ev.instrument["auc"].value == pytest.approx(
        roc_auc(ev.instrument_true, ev.instrument_prob))

    wrong = int((pred != ev.body_part_true).sum() + (inst_pred != ev.instrument_true).sum())
    assert len(ev.misclassified) == wrong
    for m in ev.misclassified:
        assert m.path in ev.paths and m.true != m.predicted and 0 <= m.probability <= 1

    d = json.loads(json.dumps(ev.to_dict(), allow_nan=False))
    assert d["counts"] == {"labelled": 27, "evaluated": 27, "skipped": 0,
                           "instrument_labelled": 27}
    assert d["checkpoint"]["sha256"] == load_checkpoint(tiny_weights).sha256
    assert d["checkpoint"]["note"].startswith("RANDOM WEIGHTS")
    assert set(d["instrument"]) == {"threshold", "labelled", "positive", "auc", "sensitivity",
                                    "specificity", "youden", "f1", "accuracy", "ppv", "npv"}
    assert d["instrument"]["labelled"] == 27
    assert d["instrument"]["positive"] == int(ev.instrument_true.sum())
    assert len(d["misclassified"]) == wrong


def perfect_predict_files(manifest: Path) -> Any:
    """A stand-in for predict_files that reads the right answer from ``manifest``."""
    truth = {im.path: im for im in load_labels(manifest)}

    def predict(files: list[SourceFile], loaded: Any, **_: Any) -> Iterator[list[Prediction]]:
        batch = []
        for source in files:
            im = truth[source.path]
            body = {b: (0.92 if b == im.body_part else 0.01) for b in BODY_PARTS}
            p_inst = 0.9 if im.instrument else 0.1
            batch.append(Prediction(source, "0" * 64, "ok", probabilities={
                "body_part": body,
                "instrument": {"no_instrument": 1 - p_inst, "instrument": p_inst}}))
        yield batch

    return predict


def test_perfect_predictor_gives_mcc_and_auc_of_one(
    synth: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(evaluate_module, "predict_files",
                        perfect_predict_files(synth / "labels.csv"))
    ev = evaluate(tiny_weights, synth / "labels.csv", device="cpu", n_resamples=RESAMPLES)
    assert ev.body_part.mcc.value == pytest.approx(1.0)
    assert ev.body_part.accuracy.value == 1.0
    assert ev.instrument is not None
    assert ev.instrument["auc"].value == 1.0
    assert ev.instrument["sensitivity"].value == 1.0
    assert ev.misclassified == []


def test_unreadable_files_are_reported_not_dropped(tmp_path: Path, tiny_weights: Path) -> None:
    root = tmp_path / "sorted"
    for i in range(3):
        write_png(root / "hand" / "no_instrument" / f"{i}.png", i)
    (root / "knee" / "instrument").mkdir(parents=True)
    (root / "knee" / "instrument" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 20)
    ev = evaluate(tiny_weights, root, device="cpu", n_resamples=RESAMPLES)
    assert len(ev.paths) == 3
    assert [(s.path, s.status) for s in ev.skipped] == [
        ("knee/instrument/broken.png", "unreadable")]
    assert ev.to_dict()["counts"]["skipped"] == 1
    # Only one instrument class among the readable images: AUC is undefined, not made up.
    assert ev.instrument is not None and np.isnan(ev.instrument["auc"].value)
    assert ev.to_dict()["instrument"]["auc"][0] is None


def test_score_without_instrument_labels_skips_instrument(tiny_weights: Path) -> None:
    card = load_checkpoint(tiny_weights).card
    probs = np.eye(len(BODY_PARTS))[[0, 1, 2, 2]]
    ev = score(card, ["a", "b", "c", "d"], [0, 1, 2, 3], probs, [None] * 4, [0.5] * 4,
               n_resamples=RESAMPLES)
    assert ev.instrument is None and ev.instrument_true.size == 0
    assert [(m.path, m.true, m.predicted) for m in ev.misclassified] == [
        ("d", "hand", "foot")]
    assert ev.to_dict()["instrument"] is None


# ----------------------------------------------------------------------- report


def test_write_report_writes_figures_and_tables(
    synth: Path, tiny_weights: Path, tmp_path: Path
) -> None:
    ev = evaluate(tiny_weights, synth / "labels.csv", device="cpu", n_resamples=RESAMPLES)
    written = write_report(ev, tmp_path / "rep")
    names = sorted(p.name for p in written)
    assert names == ["confusion_body_part.png", "report.md", "risk_coverage.png",
                     "roc_instrument.png"]
    for p in written:
        if p.suffix == ".png":
            with Image.open(p) as im:
                assert im.format == "PNG" and im.width > 100 and im.height > 100
    text = (tmp_path / "rep" / "report.md").read_text()
    for word in ("Log loss", "MCC", "Cohen's kappa", "Accuracy", "AUC", "Sensitivity",
                 "Specificity", "Youden", "F1", "PPV", "NPV", ev.sha256, ev.checkpoint,
                 "RANDOM WEIGHTS", "roc_instrument.png", "confusion_body_part.png"):
        assert word in text, word
    assert text.count("| body_part |") == sum(m.head == "body_part" for m in ev.misclassified)


# -------------------------------------------------------------------------- CLI


def test_cli_evaluate_json_and_report(synth: Path, tiny_weights: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["evaluate", str(tiny_weights), str(synth / "labels.csv"),
                                 "--json", "--report", str(tmp_path / "rep"),
                                 "--device", "cpu", "--batch-size", "4",
                                 "--resamples", str(RESAMPLES)])
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    assert d["counts"]["evaluated"] == 27
    assert d["body_part"]["labels"] == list(BODY_PARTS)
    assert sum(map(sum, d["body_part"]["confusion"])) == 27
    assert sorted(Path(p).name for p in d["report"]) == [
        "confusion_body_part.png", "report.md", "risk_coverage.png", "roc_instrument.png"]
    assert (tmp_path / "rep" / "report.md").is_file()


def test_cli_evaluate_tables_and_errors(synth: Path, tiny_weights: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["evaluate", str(tiny_weights), str(synth / "labels.csv"),
                                 "--device", "cpu", "--resamples", str(RESAMPLES)])
    assert result.exit_code == 0, result.output
    assert "Body part (27 images)" in result.output and "Youden" in result.output
    bad = write_csv(tmp_path / "bad.csv", ["path", "body_part", "instrument"],
                    [["a.png", "nose", "0"]])
    result = runner.invoke(app, ["evaluate", str(tiny_weights), str(bad), "--device", "cpu"])
    assert result.exit_code == 2
    assert "column 'body_part'" in result.output
    result = runner.invoke(app, ["evaluate", str(tmp_path / "none.pt"), str(bad)])
    assert result.exit_code == 2 and "no checkpoint" in result.output


# ------------------------------------------------- sort outcome, risk-coverage, fracture

EXT = EXTENDED_BODY_PARTS
# (truth set, predicted label, its probability). min_confidence 0.6:
#   0 hand        -> hand 0.90   sorted, right
#   1 hand|wrist  -> wrist 0.80  sorted, wrong (but inside the truth's set)
#   2 knee        -> knee 0.50   review: low confidence (right label)
#   3 forearm     -> wrist 0.72  sorted into one of the nine although it is none of them
#   4 forearm     -> forearm 0.95 sorted into its long-bone folder, right
#   5 other       -> other 0.90  review: not a known body part
SORT_CASE = [(("hand",), "hand", 0.90), (("hand", "wrist"), "wrist", 0.80),
             (("knee",), "knee", 0.50), (("forearm",), "wrist", 0.72),
             (("forearm",), "forearm", 0.95), (("other",), "other", 0.90)]


def case_arrays() -> tuple[np.ndarray, np.ndarray, list[tuple[str, ...]]]:
    probs = np.zeros((len(SORT_CASE), len(EXT)))
    for i, (_, pred, p) in enumerate(SORT_CASE):
        probs[i] = (1 - p) / (len(EXT) - 1)
        probs[i, EXT.index(pred)] = p
    truth = np.array([EXT.index(s[0]) for s, _, _ in SORT_CASE])
    return probs, truth, [s for s, _, _ in SORT_CASE]


def test_score_sorting_by_hand() -> None:
    probs, truth, sets = case_arrays()
    sr = score_sorting(EXT, probs, truth, min_confidence=0.6, truth_sets=sets,
                       n_resamples=RESAMPLES)
    # Nine-class films: 0, 1, 2; only 0 lands in the right folder. Sorted among them: 0, 1.
    assert sr.correct_folder.value == pytest.approx(1 / 3)
    assert sr.accuracy_among_sorted.value == pytest.approx(1 / 2)
    assert sr.correct_folder_in_set.value == pytest.approx(2 / 3)
    assert sr.accuracy_among_sorted_in_set.value == pytest.approx(1.0)
    assert sr.review_rate.value == pytest.approx(2 / 6)  # films 2 and 5
    # Of all films, only 3 (forearm -> wrist) is sorted outside its label set:
    # hand|wrist -> wrist and forearm -> forearm are right, other waits in _review.
    assert sr.wrong_folder.value == pytest.approx(1 / 6)
    assert sr.outside_nine_into_nine.value == pytest.approx(1 / 3)  # film 3 of 3, 4, 5
    assert sr.outside_nine_into_nine_in_set is not None
    assert sr.outside_nine_into_nine_in_set.value == pytest.approx(1 / 3)  # wrist not in set
    sets_wrist = [*sets[:3], ("forearm", "wrist"), *sets[4:]]
    lenient = score_sorting(EXT, probs, truth, min_confidence=0.6, truth_sets=sets_wrist,
                            n_resamples=RESAMPLES)
    assert lenient.outside_nine_into_nine.value == pytest.approx(1 / 3)
    assert lenient.outside_nine_into_nine_in_set is not None
    assert lenient.outside_nine_into_nine_in_set.value == 0.0  # forearm|wrist -> wrist
    assert lenient.wrong_folder.value == 0.0
    strict = score_sorting(EXT, probs, truth, min_confidence=0.6, n_resamples=RESAMPLES)
    assert strict.wrong_folder.value == pytest.approx(2 / 6)  # hand -> wrist too
    assert sr.long_bone_correct_folder is not None
    assert sr.long_bone_correct_folder.value == pytest.approx(1 / 2)  # film 4 of 3, 4
    assert sr.correct_folder_per_class["hand"].value == pytest.approx(1 / 2)
    assert sr.correct_folder_per_class["knee"].value == 0.0
    assert np.isnan(sr.correct_folder_per_class["hip"].value)
    assert sr.counts == {"images": 6, "review": 2, "wrong_folder": 1, "nine": 3,
                         "sorted_nine": 2,
                         "outside_nine": 3, "long_bone": 2,
                         "per_class": {b: {"hand": 2, "knee": 1}.get(b, 0) for b in BODY_PARTS}}
    for e in (sr.correct_folder, sr.review_rate, sr.wrong_folder, sr.outside_nine_into_nine):
        assert e.low <= e.value <= e.high
    assert sr.destinations == (*EXT[:-1], "_review")  # "other" is never a folder
    cells = {(sr.truth_labels[t], sr.destinations[d]): int(sr.confusion[t, d])
             for t, d in zip(*np.nonzero(sr.confusion))}
    assert cells == {("hand", "hand"): 1, ("hand", "wrist"): 1, ("knee", "_review"): 1,
                     ("forearm", "wrist"): 1, ("forearm", "forearm"): 1,
                     ("other", "_review"): 1}
    d = json.loads(json.dumps(sr.to_dict(), allow_nan=False))
    assert d["correct_folder_per_class"]["hip"] == [None, None, None]
    assert d["wrong_folder"] == sr.wrong_folder.to_json()
    assert d["confusion"]["matrix"] == sr.confusion.tolist()


def test_score_sorting_nine_class_model_has_no_outside_figures() -> None:
    probs = np.eye(len(BODY_PARTS))[[0, 1, 2]] * 0.9 + 0.1 / len(BODY_PARTS)
    sr = score_sorting(BODY_PARTS, probs, [0, 1, 3], min_confidence=0.5,
                       n_resamples=RESAMPLES)
    assert sr.correct_folder.value == pytest.approx(2 / 3)
    assert sr.review_rate.value == 0.0
    assert np.isnan(sr.outside_nine_into_nine.value)
    assert sr.long_bone_correct_folder is None
    assert sr.to_dict()["outside_nine_into_nine"] == [None, None, None]
    # A threshold above every confidence holds everything back.
    held = score_sorting(BODY_PARTS, probs, [0, 1, 3], min_confidence=1.0,
                         n_resamples=RESAMPLES)
    assert held.review_rate.value == 1.0 and held.correct_folder.value == 0.0
    assert np.isnan(held.accuracy_among_sorted.value)


def test_risk_coverage_by_hand() -> None:
    probs, truth, _ = case_arrays()
    rows = risk_coverage(EXT, probs, truth, operating=0.75)
    got = {r.threshold: (r.coverage, r.accuracy_among_sorted, r.outside_nine_into_nine)
           for r in rows}
    nan = float("nan")
    expected = {  # nine-class confidences 0.9 (right), 0.8 (wrong), 0.5 (right); film 3 at 0.72
        0.0: (1, 2 / 3, 1 / 3), 0.3: (1, 2 / 3, 1 / 3), 0.5: (1, 2 / 3, 1 / 3),  # >= is sorted
        0.6: (2 / 3, 1 / 2, 1 / 3), 0.7: (2 / 3, 1 / 2, 1 / 3), 0.75: (2 / 3, 1 / 2, 0),
        0.8: (2 / 3, 1 / 2, 0), 0.85: (1 / 3, 1, 0), 0.9: (1 / 3, 1, 0),
        0.95: (0, nan, 0), 0.98: (0, nan, 0), 0.99: (0, nan, 0)}
    assert list(got) == sorted(expected)
    for t, values in expected.items():
        np.testing.assert_allclose(got[t], values, err_msg=str(t))
    coverage = [r.coverage for r in rows]
    assert coverage == sorted(coverage, reverse=True)
    assert [r.threshold for r in rows if r.operating] == [0.75]
    assert rows[0].to_dict() == {"threshold": 0.0, "coverage": 1.0,
                                 "accuracy_among_sorted": pytest.approx(2 / 3),
                                 "outside_nine_into_nine": pytest.approx(1 / 3),
                                 "nine": 3, "sorted_nine": 3, "correct_nine": 2,
                                 "outside_nine": 3, "outside_into_nine": 1,
                                 "operating": False,
                                 "accuracy_among_sorted_in_set": pytest.approx(2 / 3),
                                 "outside_nine_into_nine_in_set": pytest.approx(1 / 3)}
    assert rows[-1].to_dict()["accuracy_among_sorted"] is None
    # With the label sets, film 1 (hand|wrist -> wrist) is right.
    _, _, sets = case_arrays()
    lenient = risk_coverage(EXT, probs, truth, [0.0, 0.85], truth_sets=sets)
    assert [r.accuracy_among_sorted_in_set for r in lenient] == [1.0, 1.0]
    assert [r.accuracy_among_sorted for r in lenient] == [pytest.approx(2 / 3), 1.0]
    # Duplicates collapse: the operating point at a listed threshold adds no row.
    assert len(risk_coverage(EXT, probs, truth, operating=0.5)) == len(expected) - 1


def extended_checkpoint(path: Path, thresholds: dict[str, float]) -> Path:
    heads = (HeadSpec("body_part", EXTENDED_BODY_PARTS), INSTRUMENT_HEAD,
             HeadSpec("fracture", ("no_fracture", "fracture")))
    torch.manual_seed(0)
    model = build_model("mobilenet_v3_small", heads, input_size=64)
    card = ModelCard(name="extended-test", arch="mobilenet_v3_small", heads=heads,
                     input_size=64, mean=0.5, std=0.25, thresholds=thresholds,
                     notes="RANDOM WEIGHTS for a test")
    save_checkpoint(path, model, card)
    return path


def extended_manifest(root: Path) -> Path:
    body = ["hand", "hand|wrist", "knee", "forearm", "femur", "other", "hip", "wrist"]
    rows = []
    for i, b in enumerate(body):
        write_png(root / f"{i}.png", i)
        rows.append([f"{i}.png", b, str(i % 2), ["0", "1", ""][i % 3]])
    return write_csv(root / "m.csv", ["path", "body_part", "instrument", "fracture"], rows)


def test_score_uses_the_cards_min_confidence_unless_told(tiny_weights: Path) -> None:
    card = load_checkpoint(tiny_weights).card  # min_confidence 0.5
    probs = np.full((3, len(BODY_PARTS)), 0.1 / (len(BODY_PARTS) - 1))
    probs[[0, 1, 2], [0, 1, 2]] = 0.9
    probs[2] = 1 / len(BODY_PARTS)  # undecided: review at the card's threshold
    ev = score(card, ["a", "b", "c"], [0, 1, 2], probs, [None] * 3, [0.5] * 3,
               n_resamples=RESAMPLES)
    assert ev.sorting is not None and ev.sorting.min_confidence == 0.5
    assert ev.sorting.review_rate.value == pytest.approx(1 / 3)
    assert [r.threshold for r in ev.risk_coverage if r.operating] == [0.5]
    lax = score(card, ["a", "b", "c"], [0, 1, 2], probs, [None] * 3, [0.5] * 3,
                min_confidence=0.0, n_resamples=RESAMPLES)
    assert lax.sorting is not None and lax.sorting.review_rate.value == 0.0
    assert lax.to_dict()["sorting"]["min_confidence"] == 0.0
    assert [r.threshold for r in lax.risk_coverage if r.operating] == [0.0]
    assert 0.5 in [r.threshold for r in lax.risk_coverage]  # the card's stays listed
    assert ev.fracture is None and ev.to_dict()["fracture"] is None


def test_fracture_head_is_scored_at_the_cards_threshold(tmp_path: Path) -> None:
    weights = extended_checkpoint(tmp_path / "ext.pt", {"instrument": 0.5, "fracture": 0.45,
                                                        "min_confidence": 0.2})
    manifest = extended_manifest(tmp_path / "data")
    ev = evaluate(weights, manifest, device="cpu", n_resamples=RESAMPLES)
    truth = {im.path.name: im for im in load_labels(manifest, EXTENDED_BODY_PARTS)}
    labelled = [truth[p].fracture for p in ev.paths if truth[p].fracture is not None]
    assert ev.fracture_true.tolist() == labelled and len(labelled) == 6
    assert ev.fracture is not None and ev.fracture_threshold == 0.45
    pred = (ev.fracture_prob >= 0.45).astype(int)
    assert ev.fracture["accuracy"].value == pytest.approx(np.mean(pred == ev.fracture_true))
    assert ev.fracture["auc"].value == pytest.approx(roc_auc(ev.fracture_true,
                                                             ev.fracture_prob))
    assert sum(m.head == "fracture" for m in ev.misclassified) == int(
        (pred != ev.fracture_true).sum())
    # The sort outcome follows the probabilities through decide_placement.
    assert ev.sorting is not None and ev.sorting.min_confidence == 0.2
    top, conf = ev.body_part_probs.argmax(axis=1), ev.body_part_probs.max(axis=1)
    review = [EXT[k] == "other" or c < 0.2 for k, c in zip(top, conf)]
    assert ev.sorting.review_rate.value == pytest.approx(np.mean(review))
    assert ev.sorting.counts["nine"] == 5 and ev.sorting.counts["long_bone"] == 2
    d = json.loads(json.dumps(ev.to_dict(), allow_nan=False))
    assert set(d["fracture"]) == {"threshold", "labelled", "positive", "auc", "sensitivity",
                                  "specificity", "youden", "f1", "accuracy", "ppv", "npv"}
    assert d["fracture"]["labelled"] == 6 and d["fracture"]["positive"] == 3
    assert d["body_part"]["labels"] == list(EXTENDED_BODY_PARTS)


def test_fracture_absent_without_head_or_labels(tmp_path: Path, tiny_weights: Path) -> None:
    root = tmp_path / "data"
    for i in range(3):
        write_png(root / f"{i}.png", i)
    manifest = write_csv(root / "m.csv", ["path", "body_part", "instrument", "fracture"],
                         [["0.png", "hand", "0", "1"], ["1.png", "knee", "1", "0"],
                          ["2.png", "hip", "0", "1"]])
    ev = evaluate(tiny_weights, manifest, device="cpu", n_resamples=RESAMPLES)
    assert ev.fracture is None and ev.fracture_true.size == 0
    assert ev.to_dict()["fracture"] is None
    unlabelled = write_csv(root / "u.csv", ["path", "body_part", "instrument"],
                           [["0.png", "hand", "0"], ["1.png", "femur", "1"]])
    weights = extended_checkpoint(tmp_path / "ext.pt", {"fracture": 0.5})
    ev = evaluate(weights, unlabelled, device="cpu", n_resamples=RESAMPLES)
    assert ev.fracture is None and ev.sorting is not None
    assert ev.sorting.min_confidence == 0.0  # a card without one sorts everything it knows


def test_truth_outside_the_cards_labels_is_refused(tmp_path: Path, tiny_weights: Path) -> None:
    write_png(tmp_path / "a.png", 0)
    manifest = write_csv(tmp_path / "m.csv", ["path", "body_part", "instrument"],
                         [["a.png", "forearm", "0"]])
    with pytest.raises(ConfigError, match="'forearm'"):
        evaluate(tiny_weights, manifest, device="cpu")
    loaded = load_checkpoint(tiny_weights)
    image = LabelledImage(tmp_path / "a.png", "forearm", 0, None, None)
    with pytest.raises(ConfigError, match="not a label of model"):
        evaluate_images(loaded, [image], root=tmp_path, data="m.csv", device=None)


def test_cli_evaluate_extended_card_report_and_min_confidence(tmp_path: Path) -> None:
    weights = extended_checkpoint(tmp_path / "ext.pt", {"instrument": 0.5, "fracture": 0.5,
                                                        "min_confidence": 0.5})
    manifest = extended_manifest(tmp_path / "data")
    result = runner.invoke(app, ["evaluate", str(weights), str(manifest), "--json",
                                 "--report", str(tmp_path / "rep"), "--device", "cpu",
                                 "--min-confidence", "0.07", "--resamples", str(RESAMPLES)])
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    assert d["sorting"]["min_confidence"] == 0.07
    thresholds = [r["threshold"] for r in d["risk_coverage"]]
    assert thresholds == sorted({*RISK_COVERAGE_THRESHOLDS, 0.07, 0.5})
    assert [r["threshold"] for r in d["risk_coverage"] if r["operating"]] == [0.07]
    assert d["fracture"] is not None and d["sorting"]["counts"]["images"] == 8
    assert sum(map(sum, d["sorting"]["confusion"]["matrix"])) == 8
    assert sorted(Path(p).name for p in d["report"]) == [
        "confusion_body_part.png", "report.md", "risk_coverage.png", "roc_fracture.png",
        "roc_instrument.png"]
    with Image.open(tmp_path / "rep" / "risk_coverage.png") as im:
        assert im.format == "PNG" and im.width > 100
    text = (tmp_path / "rep" / "report.md").read_text()
    for word in ("## Fracture", "roc_fracture.png", "## Sort outcome", "## Risk-coverage",
                 "risk_coverage.png", "| 0.07 * |", "Right folder (long-bone films)",
                 "Sorted into a wrong folder (all films)"):
        assert word in text, word
    table = runner.invoke(app, ["evaluate", str(weights), str(manifest), "--device", "cpu",
                                "--resamples", str(RESAMPLES)])
    assert table.exit_code == 0, table.output
    for word in ("Fracture (6 images, threshold 0.5)", "Sort outcome (min_confidence 0.5",
                 "Risk-coverage", "0.5 *"):
        assert word in table.output, word
