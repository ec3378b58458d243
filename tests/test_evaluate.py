"""`xreg evaluate`: labelled data loading, metrics from collected probabilities, report, CLI."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import xreg.evaluate as evaluate_module
from xreg.checkpoint import load_checkpoint
from xreg.cli import app
from xreg.datasets import LabelledImage, load_labels
from xreg.errors import ConfigError
from xreg.evaluate import evaluate, score
from xreg.metrics import roc_auc
from xreg.models import BODY_PARTS
from xreg.predict import Prediction, SourceFile
from xreg.report import write_report
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
    assert set(d["instrument"]) == {"threshold", "auc", "sensitivity", "specificity",
                                    "youden", "f1", "accuracy", "ppv", "npv"}
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
    assert names == ["confusion_body_part.png", "report.md", "roc_instrument.png"]
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
        "confusion_body_part.png", "report.md", "roc_instrument.png"]
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
