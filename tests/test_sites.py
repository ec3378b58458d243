"""Per-site figures (xreg.evaluation.sites): by hand, through `score`, and `xreg evaluate`."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.conftest import biased_checkpoint
from xreg.cli import app
from xreg.datasets import LabelledImage, load_labels
from xreg.errors import ConfigError
from xreg.evaluation.evaluate import evaluate, score
from xreg.evaluation.sites import NO_SOURCE, SiteFigures, site_figures
from xreg.evaluation.sorting import score_sorting
from xreg.model.checkpoint import load_checkpoint
from xreg.model.labels import EXTENDED_BODY_PARTS as EXT
from xreg.synth.generate import generate_dataset
from xreg.train.split import write_split

RESAMPLES = 200
runner = CliRunner()

# (site, truth set, predicted label, its probability, instrument, P(instrument),
#  fracture, P(fracture)); min_confidence 0.6 below.
FILMS = [
    ("chest", ("other",), "shoulder", 0.95, None, 0.5, None, 0.5),  # a wrong folder
    ("chest", ("other",), "other", 0.90, None, 0.5, None, 0.5),  # review: not a body part
    ("atlas", ("hand", "wrist"), "wrist", 0.80, 0, 0.2, 1, 0.7),  # in the set: right
    ("atlas", ("knee",), "knee", 0.40, 1, 0.9, 0, 0.1),  # below min_confidence: review
    ("atlas", ("forearm",), "forearm", 0.95, None, 0.5, None, 0.5),  # own long-bone folder
    ("atlas", ("hand",), "foot", 0.90, 0, 0.5, None, 0.5),  # a wrong folder
    ("atlas", ("hand",), "hand", 0.90, 1, 0.4, 0, 0.8),  # right
    (None, ("hip",), "hip", 0.99, 1, 0.9, None, 0.5),  # names no site
]


def film_arrays() -> dict[str, Any]:
    probs = np.zeros((len(FILMS), len(EXT)))
    for i, (_, _, pred, p, *_rest) in enumerate(FILMS):
        probs[i] = (1 - p) / (len(EXT) - 1)
        probs[i, EXT.index(pred)] = p
    return {
        "probs": probs,
        "truth": np.array([EXT.index(f[1][0]) for f in FILMS]),
        "sources": [f[0] for f in FILMS],
        "truth_sets": [f[1] for f in FILMS],
        "instrument_true": [f[4] for f in FILMS], "instrument_prob": [f[5] for f in FILMS],
        "fracture_true": [f[6] for f in FILMS], "fracture_prob": [f[7] for f in FILMS],
    }


def by_hand() -> dict[str, SiteFigures]:
    a = film_arrays()
    return site_figures(EXT, a["probs"], a["truth"], a["sources"], min_confidence=0.6,
                        truth_sets=a["truth_sets"], instrument_true=a["instrument_true"],
                        instrument_prob=a["instrument_prob"],
                        fracture_true=a["fracture_true"], fracture_prob=a["fracture_prob"],
                        n_resamples=RESAMPLES)


def test_site_figures_by_hand() -> None:
    sites = by_hand()
    assert list(sites) == ["atlas", "chest", NO_SOURCE]
    chest, atlas, none = sites["chest"], sites["atlas"], sites[NO_SOURCE]
    # chest: the film called shoulder lands in a wrong folder; the other waits in _review.
    assert chest.films == 2
    assert chest.wrong_folder.value == pytest.approx(1 / 2)
    assert chest.review_rate.value == pytest.approx(1 / 2)
    assert chest.outside_nine_into_nine.value == pytest.approx(1 / 2)
    assert np.isnan(chest.correct_folder.value)  # no nine-class film
    assert chest.instrument_auc is None and chest.fracture_auc is None
    # atlas: hand|wrist -> wrist and forearm -> forearm are right, hand -> foot is wrong,
    # knee at 0.40 < 0.6 is reviewed; right folder counts the primary label (hand).
    assert atlas.films == 5
    assert atlas.wrong_folder.value == pytest.approx(1 / 5)
    assert atlas.review_rate.value == pytest.approx(1 / 5)
    assert atlas.correct_folder.value == pytest.approx(1 / 4)  # of hand|wrist, knee, 2 hands
    assert atlas.accuracy_among_sorted.value == pytest.approx(1 / 3)
    assert atlas.outside_nine_into_nine.value == 0.0  # the forearm
    # instrument: positives 0.9, 0.4 against negatives 0.2, 0.5 -> 3 of 4 pairs.
    assert atlas.instrument_auc is not None
    assert atlas.instrument_auc.value == pytest.approx(3 / 4)
    # fracture: the positive (0.7) beats one negative (0.1) of two (0.8).
    assert atlas.fracture_auc is not None and atlas.fracture_auc.value == pytest.approx(1 / 2)
    assert atlas.counts == {"films": 5, "nine": 4, "sorted_nine": 3, "outside_nine": 1,
                            "review": 1, "wrong_folder": 1, "instrument_labelled": 4,
                            "instrument_positive": 2, "fracture_labelled": 3,
                            "fracture_positive": 1}
    assert none.films == 1 and none.correct_folder.value == 1.0
    assert none.instrument_auc is None  # one class only
    for e in (atlas.wrong_folder, atlas.review_rate, atlas.correct_folder):
        assert e.low <= e.value <= e.high
    cells = {(chest.truth_labels[t], chest.destinations[d]): int(chest.confusion[t, d])
             for t, d in zip(*np.nonzero(chest.confusion))}
    assert cells == {("other", "shoulder"): 1, ("other", "_review"): 1}
    assert int(atlas.confusion[EXT.index("hand"), atlas.destinations.index("foot")]) == 1
    d = json.loads(json.dumps(chest.to_dict(), allow_nan=False))
    assert set(d) == {"films", "correct_folder", "wrong_folder", "review_rate",
                      "outside_nine_into_nine", "accuracy_among_sorted", "instrument_auc",
                      "fracture_auc", "counts", "confusion"}
    assert d["correct_folder"] == [None, None, None] and d["instrument_auc"] is None
    assert d["wrong_folder"][0] == 0.5
    assert d["confusion"]["matrix"] == chest.confusion.tolist()


def test_site_figures_match_the_sort_outcome_of_each_site() -> None:
    a = film_arrays()
    sites = by_hand()
    rows = [i for i, f in enumerate(FILMS) if f[0] == "atlas"]
    sr = score_sorting(EXT, a["probs"][rows], a["truth"][rows], min_confidence=0.6,
                       truth_sets=[FILMS[i][1] for i in rows], n_resamples=RESAMPLES)
    for key in ("correct_folder", "wrong_folder", "review_rate", "outside_nine_into_nine",
                "accuracy_among_sorted"):
        assert getattr(sites["atlas"], key) == getattr(sr, key), key
    # Without label sets, hand|wrist -> wrist is a wrong folder too.
    strict = site_figures(EXT, a["probs"], a["truth"], a["sources"], min_confidence=0.6,
                          n_resamples=RESAMPLES)
    assert strict["atlas"].wrong_folder.value == pytest.approx(2 / 5)
    assert strict["atlas"].instrument_auc is None  # not evaluated
    # A lower threshold sorts the knee: decide_placement decides, not a copy of it.
    lax = site_figures(EXT, a["probs"], a["truth"], a["sources"], min_confidence=0.3,
                       truth_sets=a["truth_sets"], n_resamples=RESAMPLES)
    assert lax["atlas"].review_rate.value == 0.0
    assert lax["chest"].review_rate.value == pytest.approx(1 / 2)  # "other" still waits
    with pytest.raises(ConfigError, match="sources has 2 entries for 8 films"):
        site_figures(EXT, a["probs"], a["truth"], ["x", "y"], min_confidence=0.6)
    with pytest.raises(ConfigError, match="instrument_true and instrument_prob"):
        site_figures(EXT, a["probs"], a["truth"], a["sources"], min_confidence=0.6,
                     instrument_true=[0, 1], instrument_prob=[0.1, 0.2])


def test_score_adds_sites_only_when_films_name_one(tiny_weights: Path) -> None:
    card = load_checkpoint(tiny_weights).card  # nine classes, min_confidence 0.5
    probs = np.eye(9)[[0, 1, 2, 3]] * 0.9 + 0.1 / 9
    probs[3] = 1 / 9  # undecided: review
    plain = score(card, list("abcd"), [0, 1, 3, 3], probs, [0, 1, 0, 1],
                  [0.1, 0.9, 0.2, 0.3], n_resamples=RESAMPLES)
    assert plain.sites == {} and plain.to_dict()["sites"] == {}
    assert plain.sorting is not None
    assert plain.sorting.wrong_folder.value == pytest.approx(1 / 4)  # c: foot for hand
    ev = score(card, list("abcd"), [0, 1, 3, 3], probs, [0, 1, 0, 1], [0.1, 0.9, 0.2, 0.3],
               sources=["s1", "s1", "s2", ""], n_resamples=RESAMPLES)
    assert list(ev.sites) == ["s1", "s2", NO_SOURCE]
    assert [f.films for f in ev.sites.values()] == [2, 1, 1]
    assert ev.sites["s1"].correct_folder.value == 1.0
    assert ev.sites["s1"].instrument_auc is not None
    assert ev.sites["s1"].instrument_auc.value == 1.0
    assert ev.sites["s2"].wrong_folder.value == 1.0
    assert ev.sites[NO_SOURCE].review_rate.value == 1.0
    d = json.loads(json.dumps(ev.to_dict(), allow_nan=False))
    assert d["sites"]["s2"]["wrong_folder"][0] == 1.0
    assert d["sites"]["s1"]["counts"]["instrument_positive"] == 1
    assert d["sorting"]["wrong_folder"][0] == pytest.approx(1 / 4)  # overall figures stay


def test_manifest_and_split_csv_carry_the_source(tmp_path: Path) -> None:
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / name).write_bytes(b"")  # load_labels reads no pixels
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,body_part,instrument,source\na.png,hand,0,fracatlas\n"
                        "b.png,knee,1, spine_cadma \nc.png,hip,,\n")
    assert [im.source for im in load_labels(manifest)] == ["fracatlas", "spine_cadma", ""]
    # The split.csv a training run writes round-trips its sources.
    images = [LabelledImage(tmp_path / "a.png", "hand", 0, "p1", None, source="fracatlas"),
              LabelledImage(tmp_path / "b.png", "hand", 1, "p2", None,
                            body_parts=("hand", "wrist"), source="chest_nih")]
    write_split(tmp_path / "split.csv", images, ["train", "test"])
    back = load_labels(tmp_path / "split.csv")
    assert [(im.source, im.split, im.body_parts) for im in back] == [
        ("fracatlas", "train", ("hand",)), ("chest_nih", "test", ("hand", "wrist"))]


# --------------------------------------------------------- through `xreg evaluate`


@pytest.fixture(scope="module")
def three_sites(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Phantoms from three sites and a model that calls every film shoulder."""
    root = tmp_path_factory.mktemp("sites")
    generate_dataset(root, 6, 0, size=64, workers=1, out_of_scope=2)
    with (root / "labels.csv").open(newline="") as f:
        films = [row["path"] for row in csv.DictReader(f)]
    with (root / "out_of_scope.csv").open(newline="") as f:
        chests = [row["path"] for row in csv.DictReader(f)]
    # The manifest sets the truth; what the phantoms show does not matter to this model.
    rows = [(chests[0], "other", "", "", "chest", "test"),
            (chests[1], "other", "", "", "chest", "test"),
            (films[0], "shoulder", "0", "", "ward_a", "test"),
            (films[1], "shoulder", "1", "", "ward_a", "test"),
            (films[2], "hand|wrist", "0", "", "ward_a", "test"),
            (films[3], "elbow|shoulder", "0", "1", "ward_b", "test"),
            (films[4], "knee", "0", "0", "ward_b", "test"),
            (films[5], "femur", "0", "", "ward_b", "train")]
    manifest = root / "sites.csv"
    with manifest.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "body_part", "instrument", "fracture", "source", "split"])
        w.writerows(rows)
    weights = biased_checkpoint(root / "shoulder.pt", EXT, "shoulder", fracture=0.0)
    return weights, manifest


def test_evaluate_reports_each_site(three_sites: tuple[Path, Path]) -> None:
    weights, manifest = three_sites
    ev = evaluate(weights, manifest, device="cpu", n_resamples=RESAMPLES)
    assert list(ev.sites) == ["chest", "ward_a", "ward_b"]
    chest, a, b = ev.sites["chest"], ev.sites["ward_a"], ev.sites["ward_b"]
    assert (chest.films, a.films, b.films) == (2, 3, 3)
    assert chest.wrong_folder.value == 1.0 and chest.outside_nine_into_nine.value == 1.0
    assert a.wrong_folder.value == pytest.approx(1 / 3)  # hand|wrist in shoulder
    assert a.correct_folder.value == pytest.approx(2 / 3)
    # elbow|shoulder -> shoulder is right, though its primary label is elbow.
    assert b.wrong_folder.value == pytest.approx(2 / 3)
    assert b.correct_folder.value == 0.0 and b.outside_nine_into_nine.value == 1.0
    assert all(f.review_rate.value == 0.0 for f in ev.sites.values())
    # One model output for every film: the AUC of tied scores, where both classes exist.
    assert a.instrument_auc is not None and a.instrument_auc.value == 0.5
    assert b.instrument_auc is None and chest.instrument_auc is None
    assert b.fracture_auc is not None and b.fracture_auc.value == 0.5
    assert a.fracture_auc is None
    assert sum(f.films for f in ev.sites.values()) == len(ev.paths)
    assert ev.sorting is not None
    assert ev.sorting.wrong_folder.value == pytest.approx(5 / 8)
    test = evaluate(weights, manifest, split="test", device="cpu", n_resamples=RESAMPLES)
    assert test.sites["ward_b"].films == 2
    assert np.isnan(test.sites["ward_b"].outside_nine_into_nine.value)  # femur: train


def test_cli_evaluate_per_site_table_json_and_report(
    three_sites: tuple[Path, Path], tmp_path: Path
) -> None:
    weights, manifest = three_sites
    result = runner.invoke(app, ["evaluate", str(weights), str(manifest), "--json",
                                 "--report", str(tmp_path / "rep"), "--device", "cpu",
                                 "--resamples", str(RESAMPLES)])
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    assert list(d["sites"]) == ["chest", "ward_a", "ward_b"]
    assert d["sites"]["chest"]["wrong_folder"][0] == 1.0
    assert d["sites"]["ward_a"]["counts"]["films"] == 3
    assert d["sites"]["chest"]["confusion"]["matrix"][EXT.index("other")][
        d["sites"]["chest"]["confusion"]["destination"].index("shoulder")] == 2
    assert d["sorting"]["wrong_folder"][0] == pytest.approx(5 / 8)
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "Sorted into a wrong folder (all films) | 0.625" in text
    assert "## Per site" in text
    assert "| chest | 2 | n/a | 1.000 (1.000-1.000) | 0.000 (0.000-0.000) |" in text
    assert "### ward_b: truth (rows) against folder (columns)" in text
    table = runner.invoke(app, ["evaluate", str(weights), str(manifest), "--device", "cpu",
                                "--resamples", str(RESAMPLES)])
    assert table.exit_code == 0, table.output
    for word in ("Per site (3)", "ward_a", "wrong folder", "Sorted into a wrong folder"):
        assert word in table.output, word
