"""A run that looks like a new site: shift reasons, the notice, the run row, the CLI."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from xreg.cli import app
from xreg.model.labels import EXTENDED_BODY_PARTS
from xreg.sort.result import FileOutcome, SortResult, count_shift
from xreg.sort.scope import SHIFT_REASONS, is_shift_reason, new_site_notice

from .conftest import biased_checkpoint, make_old

runner = CliRunner()


@pytest.mark.parametrize(("reason", "shift"), [
    ("unfamiliar film (energy -1.20 > -2.84)", True),
    ("models disagree: knee / shoulder", True),
    ("unlike the training films (distance 41.2 > 30.0)", True),
    ("low confidence: knee 0.40 < 0.50", False),
    ("not one of the known body parts (other)", False),
    ("DICOM header says knee (BodyPartExamined KNEE)", False),
    ("", False),
    (None, False),
])
def test_shift_reasons_are_recognised_by_their_start(reason: str | None, shift: bool) -> None:
    assert is_shift_reason(reason) is shift
    assert len(SHIFT_REASONS) == 3


def test_the_notice_says_the_share_and_what_to_do() -> None:
    notice = new_site_notice(140, 87, out="/data/out")
    assert notice is not None
    assert notice.startswith("62% of 140 films were held back as unlike the films")
    assert "this looks like a new site" in notice
    assert "Review about 100 films in `xreg serve /data/out`" in notice
    assert "`xreg adapt /data/out --out site.pt`" in notice
    assert "Review all 40 films (about 100 is best)" in (new_site_notice(40, 24) or "")


@pytest.mark.parametrize(("predicted", "shifted"), [
    (140, 20),  # 14%: below the share
    (19, 19),  # every film, but too few to say
    (0, 0),
])
def test_no_notice_below_the_share_or_for_a_few_films(predicted: int, shifted: int) -> None:
    assert new_site_notice(predicted, shifted) is None


def test_the_share_and_film_thresholds_are_inclusive_and_adjustable() -> None:
    assert new_site_notice(20, 6) is not None  # exactly 30% of exactly 20 films
    assert new_site_notice(20, 5) is None
    assert new_site_notice(10, 10) is None and new_site_notice(10, 10, min_films=5)
    assert new_site_notice(100, 40, share=0.5) is None


def _outcome(status: str, reason: str | None = None) -> FileOutcome:
    return FileOutcome("/in/x.png", status, reason=reason)


def test_only_shift_reasons_count_towards_a_new_site() -> None:
    low = [_outcome("review", "low confidence: knee 0.40 < 0.50")] * 30
    assert count_shift(low + [_outcome("sorted")] * 10).notice is None
    unfamiliar = [_outcome("review", "unfamiliar film (energy -1.20 > -2.84)")] * 15
    disagree = [_outcome("review", "models disagree: knee / shoulder")] * 10
    rest = [_outcome("sorted")] * 15 + [_outcome("unreadable"), _outcome("duplicate"),
                                        _outcome("failed")]
    shift = count_shift(unfamiliar + disagree + rest, out="/o")
    assert (shift.predicted, shift.held_back) == (40, 25)
    assert shift.share == pytest.approx(0.625) and shift.notice is not None
    result = SortResult(1, False, "ab", out_root="/o")
    for o in unfamiliar + disagree + rest:
        result.add(o)
    assert result.to_dict()["new_site"] == {"predicted": 40, "held_back_as_unfamiliar": 25,
                                            "share": 0.625, "notice": shift.notice}
    assert SortResult(1, False, "ab").to_dict()["new_site"] is None


# -- end to end ---------------------------------------------------------------------------
def _films(root: Path, n: int) -> None:
    rng = np.random.default_rng(3)
    root.mkdir(parents=True)
    for i in range(n):
        p = root / f"film_{i:02d}.png"
        Image.fromarray((rng.random((72, 60)) * 255).astype(np.uint8)).save(p)
        make_old(p)


def _run_row(out: Path) -> tuple[int | None, float | None, int | None]:
    with sqlite3.connect(out / "registry.sqlite") as db:
        return db.execute("SELECT shift_held, shift_share, new_site FROM runs"
                          " ORDER BY id DESC").fetchone()


@pytest.mark.parametrize("energy_max", [-20.0, 0.0])  # every film unfamiliar / none
def test_a_run_of_unfamiliar_films_says_new_site(tmp_path: Path, energy_max: float) -> None:
    _films(tmp_path / "in", 22)
    weights = biased_checkpoint(tmp_path / "w.pt", EXTENDED_BODY_PARTS, "hand",
                                guard={"energy_max": energy_max})
    out = tmp_path / "out"
    args = ["sort", str(tmp_path / "in"), str(out), "--weights", str(weights)]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    runs = runner.invoke(app, ["registry", "runs", str(out)])
    assert runs.exit_code == 0, runs.output
    if energy_max < 0:
        assert report["counts"]["review"] == 22
        shift = report["new_site"]
        assert (shift["predicted"], shift["held_back_as_unfamiliar"], shift["share"]) == (
            22, 22, 1.0)
        assert shift["notice"].startswith("100% of 22 films were held back")
        assert f"xreg adapt {out.absolute()} --out site.pt" in shift["notice"]
        assert _run_row(out) == (22, 1.0, 1)
        assert "yes (100%" in runs.stdout and "new site:" in runs.stdout
    else:
        assert report["counts"]["sorted"] == 22 and report["new_site"] is None
        assert _run_row(out) == (0, 0.0, 0)
        assert "no (0%" in runs.stdout and "new site:" not in runs.stdout
    # The human summary says it too, after the table (a rerun finds nothing new:
    # a fresh OUT for the same films).
    human = runner.invoke(app, [*args[:2], str(tmp_path / "out2"), *args[3:]])
    assert human.exit_code == 0, human.output
    said = "new site:" in human.stdout and "this looks like a new site" in human.stdout
    assert said is (energy_max < 0)
