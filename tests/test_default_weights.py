"""The shipped default checkpoint: its card, its model card file, and that it works."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xreg.cli import app
from xreg.evaluation.evaluate import evaluate
from xreg.model.checkpoint import DEFAULT_WEIGHTS, default_weights, file_sha256, load_checkpoint
from xreg.model.models import EXTENDED_BODY_PARTS
from xreg.synth.generate import generate_dataset

WEIGHTS = Path(__file__).resolve().parents[1] / "xreg" / "weights" / DEFAULT_WEIGHTS
SITES = ("fracatlas", "spine_cadma", "chest_nih", "shoulder_implants")


def test_shipped_weights_are_small_and_say_what_they_are() -> None:
    assert default_weights() == WEIGHTS
    # two MobileNetV2 members (9 MB each) and a float16 bank of 2,000 films' features
    assert WEIGHTS.stat().st_size <= 35 * 1024 * 1024
    card = load_checkpoint(WEIGHTS).card
    assert card.name == "bodypart_sites" and card.arch == "mobilenet_v2"
    # the day-one guard: members that must agree, a bank of training films' features
    assert card.members == ("mobilenet_v2", "mobilenet_v2")
    assert 0 < card.guard["agree_min"] < 1 and 0 < card.guard["distance_max"] < 1
    assert card.guard["bank"]["films"] >= 1000 and card.guard["bank"]["k"] == 5
    assert "spine" not in card.guard["fracture_classes"]
    assert "knee" in card.guard["fracture_classes"]
    assert [m["recipe"]["name"] for m in card.training["members"]] == \
        ["bodypart_sites", "bodypart_sites_mix"]
    # no path of the machine that built it: dataset files by name only
    paths = [d["path"] for m in card.training["members"] for d in m["recipe"]["datasets"]
             if d.get("path")] + [d["path"] for d in card.training["recipe"]["datasets"]
                                  if d.get("path")]
    assert paths and not any("/" in p for p in paths), paths
    assert card.training["init"] == "imagenet"
    assert card.normalise == "percentile" and card.guard["energy_max"] < 0
    assert card.head("body_part").labels == EXTENDED_BODY_PARTS
    assert [h.name for h in card.heads] == ["body_part", "instrument", "fracture", "view"]
    counts = card.training["split"]["counts"]["train"]["source"]
    for site in SITES:
        assert counts[site] >= 250, site
    assert counts["phantoms"] >= 500
    assert 0 < card.thresholds["min_confidence"] < 1
    assert {"instrument", "fracture"} <= set(card.thresholds)
    # Every source it trained on is credited, as each source's licence asks.
    credits = card.training["data"]["credits"]
    assert set(SITES) <= set(credits) and "CC BY 4.0" in credits["fracatlas"]
    # Per-site figures with CIs on each site's grouped test split, and leave-one-site-out.
    for site in SITES:
        figures = card.metrics["test_sites"][site]
        for key in ("wrong_folder", "review_rate"):
            value, low, high = figures[key]
            assert low <= value <= high
    assert card.metrics["leave_one_site_out"]
    text = WEIGHTS.with_suffix(".md").read_text()
    first = text.splitlines()[0]
    assert "FracAtlas" in first and "NIH" in first and "Not for clinical use" in first
    assert "## Leave-one-site-out (held-out sites)" in text and "| chest_nih |" in text


def test_the_previous_default_still_loads_and_sorts(tmp_path: Path) -> None:
    old = WEIGHTS.with_name("bodypart_real.pt")
    card = load_checkpoint(old).card
    assert card.name == "bodypart_real" and card.normalise == "none" and not card.guard
    generate_dataset(tmp_path / "in", 6, seed=77, size=256, workers=1)
    result = CliRunner().invoke(app, ["sort", str(tmp_path / "in"), str(tmp_path / "out"),
                                      "--weights", str(old), "--json", "--min-age", "0"])
    assert result.exit_code in (0, 1), result.output
    report = json.loads(result.stdout)
    assert report["model_sha256"] == file_sha256(old)
    assert report["counts"]["sorted"] + report["counts"]["review"] == 6


def test_shipped_weights_classify_fresh_phantoms(tmp_path: Path) -> None:
    # Phantoms from a seed no training or calibration set used, at another size.
    generate_dataset(tmp_path, 45, seed=424242, size=320, instrument_rate=0.4, workers=1)
    ev = evaluate(WEIGHTS, tmp_path / "labels.csv", n_resamples=200)
    # The two-member default (6 epochs each) calls 0.87 of these right (some phantom
    # elbows knee, as on its phantom test split); the single network before it, 0.9+.
    assert ev.body_part.accuracy.value >= 0.85
    # Phantom hardware is weaker in the multi-site model (AUC 0.74 here, 0.77 on its
    # phantom test split; real FracAtlas films 0.94): far above chance, below the old 0.9.
    assert ev.instrument is not None and ev.instrument["auc"].value >= 0.6


def test_sort_uses_the_shipped_weights_without_weights_option(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XREG_WEIGHTS", raising=False)
    generate_dataset(tmp_path / "in", 9, seed=31, size=256, workers=1)
    result = CliRunner().invoke(app, ["sort", str(tmp_path / "in"), str(tmp_path / "out"),
                                      "--dry-run", "--json", "--min-age", "0"])
    assert result.exit_code in (0, 1), result.output
    assert json.loads(result.stdout)["model_sha256"] == file_sha256(WEIGHTS)


def test_shipped_hip_weights_are_a_two_view_model_that_says_what_it_is() -> None:
    path = WEIGHTS.with_name("hip_fracture_phantom.pt")
    assert path.is_file() and WEIGHTS.with_name("bodypart_instrument_phantom.pt").is_file()
    assert path.stat().st_size <= 25 * 1024 * 1024
    card = load_checkpoint(path).card
    assert card.views == 2 and [h.name for h in card.heads] == ["fracture"]
    assert card.notes.startswith("Trained on synthetic phantoms")
    first = path.with_suffix(".md").read_text().splitlines()[0]
    assert "synthetic phantoms" in first and "not validated on real radiographs" in first
