"""min_confidence calibration: the threshold rule and the checkpoint it writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from xreg.cli import app
from xreg.errors import ConfigError
from xreg.evaluation.calibrate import choose_min_confidence
from xreg.model.checkpoint import load_checkpoint
from xreg.synth.generate import generate_dataset


def test_threshold_keeps_the_promised_share_of_in_scope_images() -> None:
    good = np.linspace(0.5, 1.0, 200)  # 200 in-scope confidences
    bad = np.array([0.2, 0.3, 0.55, 0.9])
    cal = choose_min_confidence(good, bad, keep=0.99)
    # 1% of 200 = 2 images may fall below: the threshold is the third lowest score.
    assert cal.threshold == pytest.approx(good[2])
    assert cal.in_scope_to_review == pytest.approx(2 / 200)
    assert cal.out_of_scope_to_review == pytest.approx(2 / 4)  # 0.2 and 0.3 caught
    strict = choose_min_confidence(good, bad, keep=1.0)
    assert strict.threshold == good[0] and strict.in_scope_to_review == 0.0


def test_threshold_rule_on_shuffled_input_and_bad_arguments() -> None:
    rng = np.random.default_rng(0)
    good = rng.uniform(0.3, 1.0, 1000)
    cal = choose_min_confidence(good, [], keep=0.95)
    assert cal.in_scope_to_review <= 0.05
    assert (good >= cal.threshold).mean() >= 0.95
    assert np.isnan(cal.out_of_scope_to_review)
    with pytest.raises(ConfigError, match="in-scope"):
        choose_min_confidence([], [0.1])
    with pytest.raises(ConfigError, match="keep"):
        choose_min_confidence([0.5], [0.1], keep=0.0)


def test_cli_calibrate_writes_the_threshold_into_the_card(
        tiny_weights: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    generate_dataset(data, 18, seed=2, size=64, workers=1, out_of_scope=10)
    out = tmp_path / "calibrated.pt"
    result = CliRunner().invoke(app, [
        "weights", "calibrate", str(tiny_weights), "--in-scope", str(data / "labels.csv"),
        "--out-of-scope", str(data / "out_of_scope"), "--output", str(out), "--json"])
    assert result.exit_code == 0, result.output
    cal = json.loads(result.stdout)
    assert (cal["in_scope"], cal["out_of_scope"]) == (18, 10)
    card = load_checkpoint(out).card
    assert card.thresholds["min_confidence"] == pytest.approx(cal["threshold"])
    assert card.training["calibration"]["keep"] == 0.99
    # The input checkpoint is untouched.
    assert load_checkpoint(tiny_weights).card.thresholds["min_confidence"] == 0.5


def test_operating_point_is_the_lowest_threshold_meeting_both_targets() -> None:
    from xreg.evaluation.calibrate import choose_operating_point
    from xreg.model.models import EXTENDED_BODY_PARTS

    labels = EXTENDED_BODY_PARTS
    hand, wrist, forearm = (labels.index(x) for x in ("hand", "wrist", "forearm"))

    def film(top: int, p: float) -> list[float]:
        row = [(1 - p) / (len(labels) - 1)] * len(labels)
        row[top] = p
        return row

    probs = [film(hand, 0.9)] * 10 + [film(wrist, 0.6)] * 2 + [film(hand, 0.55)] * 2
    truth = [hand] * 12 + [forearm] * 2
    point = choose_operating_point(labels, probs, truth)
    assert point.met and point.threshold == pytest.approx(0.605)
    assert point.accuracy_among_sorted == 1.0 and point.coverage == pytest.approx(10 / 12)
    assert point.outside_nine_into_nine == 0.0
    # Nothing reaches 99.9% if every sorted film is a coin flip: the most accurate is taken.
    flips = [film(hand, 0.7), film(wrist, 0.7)]
    worst = choose_operating_point(labels, flips, [hand, hand], target_accuracy=0.999)
    assert not worst.met and worst.accuracy_among_sorted == 0.5


def test_operating_point_on_label_sets_counts_a_folder_in_the_set_as_right() -> None:
    from xreg.evaluation.calibrate import choose_operating_point
    from xreg.model.models import EXTENDED_BODY_PARTS

    labels = EXTENDED_BODY_PARTS
    hand, wrist = labels.index("hand"), labels.index("wrist")
    row = [0.0] * len(labels)
    row[wrist] = 0.6
    row[hand] = 0.4
    probs, truth = [row] * 4, [hand] * 4
    strict = choose_operating_point(labels, probs, truth)
    assert not strict.met and strict.scored_by == "primary label"
    lenient = choose_operating_point(labels, probs, truth, truth_sets=[("hand", "wrist")] * 4)
    assert lenient.met and lenient.threshold == 0.3 and lenient.scored_by == "label set (accuracy)"
    assert lenient.accuracy_among_sorted == 1.0


def test_cli_operating_point_writes_the_threshold_into_the_card(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from xreg.cli import app
    from xreg.model.checkpoint import load_checkpoint
    from xreg.model.models import EXTENDED_BODY_PARTS

    from .conftest import biased_checkpoint

    rng = np.random.default_rng(0)
    rows = ["path,body_part,instrument,split"]
    for i in range(6):
        Image.fromarray((rng.random((40, 40)) * 255).astype(np.uint8)).save(
            tmp_path / f"f{i}.png")
        rows.append(f"f{i}.png,{'hand|wrist' if i % 2 else 'wrist|hand'},0,val")
    (tmp_path / "val.csv").write_text("\n".join(rows) + "\n")
    weights = biased_checkpoint(tmp_path / "w.pt", EXTENDED_BODY_PARTS, "hand", margin=3.0)
    result = CliRunner().invoke(app, ["weights", "operating-point", str(weights),
                                      str(tmp_path / "val.csv"), "--split", "val", "--json"])
    assert result.exit_code == 0, result.output
    point = json.loads(result.stdout)
    assert point["met"] and point["scored_by"] == "label set (accuracy)"
    assert point["accuracy_among_sorted"] == 1.0
    card = load_checkpoint(weights).card
    assert card.thresholds["min_confidence"] == point["threshold"]
    assert card.training["calibration"]["split"] == "val"
    strict = CliRunner().invoke(app, ["weights", "operating-point", str(weights),
                                      str(tmp_path / "val.csv"), "--by-primary", "--json"])
    assert json.loads(strict.stdout)["met"] is False  # half the primaries say wrist
