"""The unfamiliar-film guard: a film unlike anything the model learned waits in _review."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from xreg.cli import app
from xreg.evaluation.sorting import score_sorting
from xreg.inference.predict import energy, unfamiliar_reason
from xreg.model.card import ModelCard
from xreg.model.checkpoint import load_checkpoint
from xreg.model.labels import EXTENDED_BODY_PARTS, HeadSpec
from xreg.sort.scope import decide_placement

from .conftest import biased_checkpoint, make_old


def test_energy_is_minus_logsumexp_and_lower_for_a_confident_film() -> None:
    logits = np.array([[10.0, 0.0, 0.0], [0.1, 0.0, -0.1]])
    e = energy(logits)
    assert e == pytest.approx([-np.log(np.exp(10) + 2), -np.log(np.exp(0.1) + 1 + np.exp(-0.1))])
    assert e[0] < e[1]


def _card(guard: dict[str, float]) -> ModelCard:
    return ModelCard(name="g", arch="mobilenet_v2",
                     heads=(HeadSpec("body_part", ("hand", "knee")),),
                     input_size=64, mean=0.5, std=0.25, guard=guard)


def test_the_reason_names_the_energy_and_the_limit_and_no_guard_flags_nothing() -> None:
    card = _card({"energy_max": -5.0})
    assert unfamiliar_reason(-6.0, card) is None
    reason = unfamiliar_reason(-2.5, card)
    assert reason is not None and reason.startswith("unfamiliar film") and "-5.00" in reason
    assert unfamiliar_reason(100.0, _card({})) is None
    with pytest.raises(Exception, match="energy_max"):
        _card({"energy_max": "high"})


def test_the_guard_wins_over_the_model_own_reasons_and_its_confidence() -> None:
    assert decide_placement("hand", 0.99, 0.5).status == "sorted"
    for label, conf in (("hand", 0.99), ("hand", 0.1), ("other", 0.99)):
        placed = decide_placement(label, conf, 0.5, ["header says CHEST"],
                                  unfamiliar="unfamiliar film (energy 1.00 > -3.00)")
        assert placed.status == "review" and placed.reason.startswith("unfamiliar film")


def test_evaluation_counts_films_the_guard_holds_back_as_review() -> None:
    labels = ("hand", "knee", "other")
    probs = np.array([[0.95, 0.04, 0.01], [0.02, 0.97, 0.01]])
    plain = score_sorting(labels, probs, [0, 1], min_confidence=0.5, n_resamples=10)
    held = score_sorting(labels, probs, [0, 1], min_confidence=0.5, held=[False, True],
                         n_resamples=10)
    assert plain.correct_folder.value == 1.0 and plain.review_rate.value == 0.0
    assert held.correct_folder.value == 0.5 and held.review_rate.value == 0.5


def _films(folder: Path) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (96, 96), dtype=np.uint8)).save(folder / "noise.png")
    photo = np.stack([np.linspace(0, 255, 96)[None].repeat(96, 0)] * 3, -1).astype(np.uint8)
    Image.fromarray(photo).save(folder / "photo.jpg")
    for f in folder.iterdir():
        make_old(f)


@pytest.mark.parametrize(("limit", "expected"), [(-20.0, "review"), (0.0, "sorted")])
def test_sort_sends_unfamiliar_films_to_review_with_the_reason(
        tmp_path: Path, limit: float, expected: str) -> None:
    # Every film gets logits (10, 0, ..., 0): energy about -10.0.
    weights = biased_checkpoint(tmp_path / "w.pt", EXTENDED_BODY_PARTS, "hand",
                                guard={"energy_max": limit})
    assert load_checkpoint(weights).card.guard == {"energy_max": limit}
    _films(tmp_path / "in")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["sort", str(tmp_path / "in"), str(out), "--weights",
                                      str(weights), "--json", "--min-confidence", "0.5"])
    assert result.exit_code == 0, result.output
    files = json.loads(result.output)["files"]
    assert {f["status"] for f in files} == {expected}
    with sqlite3.connect(out / "registry.sqlite") as db:
        reasons = [r[0] for r in db.execute("SELECT review_reason FROM images")]
    if expected == "review":
        assert all(f["reason"].startswith("unfamiliar film (energy -10.00 > -20.00)")
                   for f in files)
        assert all(r.startswith("unfamiliar film") for r in reasons)
        assert not (out / "hand").exists()
    else:
        assert all(r is None for r in reasons) and (out / "hand").is_dir()


def test_the_shipped_default_holds_back_what_it_never_saw(tmp_path: Path) -> None:
    """Real non-radiograph DICOM (CT, MR, ultrasound) trips the guard; noise and a photo
    wait in _review too (as `other`, a class the out-of-scope phantoms taught it)."""
    import shutil

    from pydicom.data import get_testdata_file

    src = tmp_path / "in"
    _films(src)
    for name in ("CT_small.dcm", "MR_small.dcm", "US1_J2KR.dcm"):
        shutil.copyfile(get_testdata_file(name), src / name)
    result = CliRunner().invoke(app, ["sort", str(src), str(tmp_path / "out"), "--json",
                                      "--min-age", "0"])
    assert result.exit_code == 0, result.output
    files = {Path(f["source"]).name: f for f in json.loads(result.output)["files"]}
    assert all(f["status"] == "review" for f in files.values())
    for name in ("CT_small.dcm", "MR_small.dcm", "US1_J2KR.dcm"):
        # far from every training film, or of unfamiliar energy: the guard's reasons
        assert files[name]["reason"].startswith(("unfamiliar film", "unlike the training")), \
            files[name]["reason"]
    for name in ("noise.png", "photo.jpg"):
        reason = files[name]["reason"]
        assert reason.startswith(("unfamiliar film", "unlike the training films",
                                  "not one of the known body parts"))
