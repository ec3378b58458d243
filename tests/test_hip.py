"""xreg hip: the joined two-view input, hip_studies rows, the command end to end."""

from __future__ import annotations

import csv
import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from typer.testing import CliRunner

from xreg.cli import app
from xreg.errors import ConfigError
from xreg.inference.pairs import predict_pairs
from xreg.model.checkpoint import load_checkpoint, make_random_checkpoint
from xreg.model.transforms import Preprocessor
from xreg.registry import SCHEMA_VERSION, Registry
from xreg.registry._schema import _MIGRATIONS
from xreg.synth.generate import generate_dataset

from .conftest import sha256_of


@pytest.fixture(scope="module")
def hip_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hipw") / "hip.pt"
    make_random_checkpoint(path, arch="mobilenet_v3_small", input_size=64, hip=True)
    return path


def test_joined_input_is_ap_left_lateral_right(hip_weights: Path) -> None:
    card = load_checkpoint(hip_weights).card
    assert card.views == 2 and card.head("fracture").labels == ("no_fracture", "fracture")
    ap = np.zeros((300, 200), np.float32)
    lateral = np.ones((90, 120), np.float32)
    lateral[:, :60] = 0.5  # left half of the lateral film darker: orientation kept
    x = Preprocessor(card).pair(ap, lateral)
    assert x.shape == (3, 64, 128)
    grey = x[0] * card.std + card.mean
    assert torch.allclose(grey[:, :64], torch.zeros(64, 64), atol=1e-5)
    # Antialiasing blurs the step at column 96 over a pixel or two.
    assert torch.allclose(grey[:, 64:94], torch.full((64, 30), 0.5), atol=1e-5)
    assert torch.allclose(grey[:, 98:], torch.ones(64, 30), atol=1e-5)


def test_predict_pairs_scores_pairs_and_reports_unreadable(hip_weights: Path,
                                                           tmp_path: Path) -> None:
    generate_dataset(tmp_path, 0, seed=3, size=96, hip_pairs=2, workers=1)
    rows = list(csv.DictReader((tmp_path / "hip_pairs.csv").open()))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n")
    pairs = [(tmp_path / r["ap_path"], tmp_path / r["lateral_path"]) for r in rows]
    pairs.append((pairs[0][0], broken))
    preds = predict_pairs(pairs, load_checkpoint(hip_weights))
    assert [p.status for p in preds] == ["ok", "ok", "unreadable"]
    assert preds[2].error is not None and preds[2].error.startswith("lateral film")
    probs = preds[0].probabilities["fracture"]
    assert sum(probs.values()) == pytest.approx(1.0)


def test_a_one_view_model_is_refused_for_pairs(tiny_weights: Path) -> None:
    with pytest.raises(ConfigError, match="takes one film"):
        predict_pairs([], load_checkpoint(tiny_weights))


def test_registry_v1_migrates_to_hip_studies_and_heatmaps(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    db = sqlite3.connect(path)
    db.executescript(_MIGRATIONS[0])
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    with Registry(path) as reg:
        row_id = reg.add_hip_study(None, {"study": "S1", "side": "L", "status": "paired",
                                          "fracture_prob": 0.7, "decision": "fracture"})
        assert row_id == 1
        assert reg.hip_studies()[0]["decision"] == "fracture"
        cols = {r[1] for r in reg._db.execute("PRAGMA table_info(images)")}
        assert {"heatmap_path", "scope", "review_reason", "fracture", "fracture_prob",
                "warning"} <= cols
        with pytest.raises(Exception, match="unknown hip_studies column"):
            reg.add_hip_study(None, {"study": "S2", "status": "paired", "name": "x"})
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] \
        == SCHEMA_VERSION == 12


@pytest.fixture(scope="module")
def hip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 hip studies (PNG, JPEG, DICOM pairs), a lone AP, a knee, a DICOM without view."""
    root = tmp_path_factory.mktemp("hipin")
    generate_dataset(root / "synth", 0, seed=21, size=256, hip_pairs=6, workers=1)
    rows = list(csv.DictReader((root / "synth" / "hip_pairs.csv").open()))
    raster = next(r for r in rows if r["ap_path"].endswith(".png"))
    shutil.copyfile(root / "synth" / raster["ap_path"], root / "synth" / "images" /
                    "LONE1_AP.png")
    dicom = next(r for r in rows if not r["ap_path"].endswith((".png", ".jpg")))
    for key in ("ap_path", "lateral_path"):  # a DICOM pair whose headers name no view
        ds = pydicom.dcmread(root / "synth" / dicom[key])
        del ds.ViewPosition
        ds.StudyInstanceUID = "1.2.3.4.5"
        ds.save_as(root / "synth" / "images" / f"noview_{key}.dcm")
    return root


def test_cli_hip_pairs_scores_records_and_places(hip_folder: Path, hip_weights: Path,
                                                 tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["hip", str(hip_folder), str(out), "--weights",
                                      str(hip_weights), "--min-age", "0", "--json",
                                      "--joined", str(tmp_path / "joined")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    studies = {(s["study"], s["side"]): s for s in report["studies"]}
    paired = [s for s in studies.values() if s["status"] == "paired"]
    # 6 synth studies (DICOM by StudyInstanceUID, rasters by file name) plus the
    # DICOM pair whose view came from the classifier's view head.
    assert len(paired) == 7
    assert all(s["decision"] in ("fracture", "no_fracture") for s in paired)
    # The shipped classifier has a single-film fracture head: the lone AP is scored.
    lone = [s for s in studies.values() if s["status"] in ("missing_lateral", "single_view")]
    assert [Path(s["ap"]).name for s in lone] == ["LONE1_AP.png"]
    assert lone[0]["status"] == "single_view" and lone[0]["decision"] is not None
    with Registry(out / "registry.sqlite") as reg:
        rows = reg.hip_studies()
    assert len(rows) == len(studies)
    for row in rows:
        if row["status"] == "paired":
            assert row["ap_sha256"] == sha256_of(Path(row["ap_path"]))
            assert row["lateral_sha256"] == sha256_of(Path(row["lateral_path"]))
            assert row["model_sha256"] == report["model_sha256"]
            placed = sorted((out / row["dest"]).iterdir())
            assert sorted(sha256_of(p) for p in placed) == sorted(
                [row["ap_sha256"], row["lateral_sha256"]])
            assert row["dest"].startswith(f"hip/{row['decision']}/")
            joined = Path(row["joined_path"])
            assert joined.exists()
    noview = json.loads(next(r["view_sources"] for r in rows if r["study"] == "1.2.3.4.5"))
    assert set(noview.values()) == {"model"}
    single = next(r for r in rows if r["status"] == "single_view")
    assert single["dest"].startswith(f"hip/{single['decision']}/")
    assert [p.name for p in (out / single["dest"]).iterdir()] == ["LONE1_AP.png"]


def test_cli_hip_with_a_pairs_csv(hip_folder: Path, hip_weights: Path) -> None:
    pairs = hip_folder / "synth" / "hip_pairs.csv"
    result = CliRunner().invoke(app, ["hip", str(hip_folder / "synth"), "--weights",
                                      str(hip_weights), "--pairs", str(pairs),
                                      "--min-age", "0", "--json"])
    assert result.exit_code == 0, result.output
    studies = json.loads(result.stdout)["studies"]
    from_csv = [s for s in studies if s["reason"] == "pairs CSV"]
    assert len(from_csv) == 6 and all(s["fracture_prob"] is not None for s in from_csv)


def test_evaluate_scores_a_hip_checkpoint_on_a_pairs_csv(hip_folder: Path, hip_weights: Path,
                                                         tmp_path: Path) -> None:
    pairs = hip_folder / "synth" / "hip_pairs.csv"
    result = CliRunner().invoke(app, ["evaluate", str(hip_weights), str(pairs), "--json",
                                      "--resamples", "50", "--report", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["counts"]["evaluated"] == 6
    value, low, high = report["fracture"]["accuracy"]
    assert low <= value <= high
    assert (tmp_path / "r" / "report.md").read_text().startswith("# Hip fracture evaluation")


def test_hip_heatmaps_need_an_output_folder(hip_folder: Path, hip_weights: Path) -> None:
    result = CliRunner().invoke(app, ["hip", str(hip_folder), "--weights", str(hip_weights),
                                      "--min-age", "0", "--heatmaps"])
    assert result.exit_code == 2 and "needs an output folder" in result.output


def test_sort_hip_pairs_from_the_sorts_own_predictions(
        hip_folder: Path, hip_weights: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import xreg.hip.run

    def no_second_pass(*args: object, **kwargs: object) -> None:
        raise AssertionError("sort --hip classified the films a second time")

    monkeypatch.setattr(xreg.hip.run, "predict_files", no_second_pass)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["sort", str(hip_folder), str(out), "--min-age", "0",
                                      "--hip", "--hip-weights", str(hip_weights), "--json"])
    assert result.exit_code in (0, 1), result.output
    studies = json.loads(result.stdout)["hip"]["studies"]
    paired = [s for s in studies if s["status"] == "paired"]
    assert len(paired) == 7  # as `xreg hip` finds them: UIDs, file names, the view head
    for s in paired:  # scored from the placed copies under OUT
        assert Path(s["ap"]).is_relative_to(out) and Path(s["lateral"]).is_relative_to(out)
    with Registry(out / "registry.sqlite") as reg:
        assert len(reg.hip_studies()) == len(studies)


def _hip_classifier(path: Path) -> Path:
    """A classifier that calls every film a hip, with a fracture head at p = 0.881."""
    from xreg.model.checkpoint import ModelCard, save_checkpoint
    from xreg.model.models import FRACTURE_HEAD, STANDARD_HEADS, VIEW_HEAD, build_model

    heads = (*STANDARD_HEADS, VIEW_HEAD, FRACTURE_HEAD)
    torch.manual_seed(0)
    model = build_model("mobilenet_v3_small", heads, input_size=64)
    with torch.no_grad():
        for name, bias in (("body_part", [0, 0, 0, 0, 10, 0, 0, 0, 0]),
                           ("fracture", [0.0, 2.0]), ("view", [0.0, 0.0]),
                           ("instrument", [0.0, 0.0])):
            linear = model.heads[name][2]
            linear.weight.zero_()
            linear.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    card = ModelCard(name="all-hip", arch="mobilenet_v3_small", heads=heads, input_size=64,
                     mean=0.5, std=0.25, thresholds={"fracture": 0.5, "min_confidence": 0.5})
    save_checkpoint(path, model, card)
    return path


def test_an_ap_without_lateral_is_scored_single_view(hip_folder: Path, hip_weights: Path,
                                                     tmp_path: Path) -> None:
    classifier = _hip_classifier(tmp_path / "allhip.pt")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["hip", str(hip_folder), str(out), "--weights",
                                      str(hip_weights), "--classifier", str(classifier),
                                      "--min-age", "0", "--json"])
    assert result.exit_code == 0, result.output
    studies = json.loads(result.stdout)["studies"]
    lone = [s for s in studies if s["ap"] and Path(s["ap"]).name == "LONE1_AP.png"]
    assert len(lone) == 1 and lone[0]["status"] == "single_view"
    assert lone[0]["decision"] == "fracture"
    assert lone[0]["fracture_prob"] == pytest.approx(float(torch.sigmoid(torch.tensor(2.0))),
                                                     abs=1e-4)
    assert not any(s["status"] == "missing_lateral" for s in studies)
    assert sum(s["status"] == "paired" for s in studies) >= 6
    with Registry(out / "registry.sqlite") as reg:
        rows = {r["status"]: r for r in reg.hip_studies()}
    one = rows["single_view"]
    assert one["model_sha256"] == load_checkpoint(classifier).sha256
    assert one["threshold"] == 0.5 and one["dest"].startswith("hip/fracture/")
    assert rows["paired"]["model_sha256"] == load_checkpoint(hip_weights).sha256
