"""Folders beyond the nine: long bones to their own folder, other to _review, old cards."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from xreg.cli import app
from xreg.model.models import BODY_PARTS, EXTENDED_BODY_PARTS
from xreg.sort.placement import REVIEW_DIR
from xreg.sort.scope import (
    Placement,
    body_part_scope,
    decide_placement,
    judges_fracture,
)

from .conftest import biased_checkpoint, make_old, sha256_of


@pytest.mark.parametrize(("label", "p", "status", "scope"), [
    ("hand", 0.9, "sorted", "nine"),
    ("hand", 0.4, "review", "nine"),
    ("forearm", 0.9, "sorted", "long_bone"),
    ("femur", 0.2, "review", "long_bone"),
    ("other", 1.0, "review", "other"),
    ("chest", 1.0, "review", "other"),  # a label no folder is made for
])
def test_decide_placement(label: str, p: float, status: str, scope: str) -> None:
    where = decide_placement(label, p, 0.5)
    assert (where.status, where.scope) == (status, scope)
    assert (where.reason is None) == (status == "sorted")
    assert body_part_scope(label) == scope


def test_other_never_lands_in_a_class_folder_even_at_zero_confidence() -> None:
    for p in (0.0, 0.5, 1.0):
        for t in (0.0, 0.5):
            assert decide_placement("other", p, t).status == "review"


def _films(root: Path, n: int = 3) -> list[Path]:
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = root / f"film_{i}.png"
        Image.fromarray((rng.random((90, 70)) * 255).astype(np.uint8)).save(p)
        make_old(p)
        paths.append(p)
    return paths


def _sort(tmp_path: Path, weights: Path, *extra: str) -> tuple[dict, Path]:  # type: ignore[type-arg]
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["sort", str(tmp_path / "in"), str(out), "--weights",
                                      str(weights), "--json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), out


def _rows(out: Path) -> list[dict]:  # type: ignore[type-arg]
    db = sqlite3.connect(out / "registry.sqlite")
    db.row_factory = sqlite3.Row
    return [dict(r) for r in db.execute("SELECT * FROM images ORDER BY dest_path")]


def test_long_bone_films_get_their_own_folder(tmp_path: Path) -> None:
    _films(tmp_path / "in")
    weights = biased_checkpoint(tmp_path / "w.pt", EXTENDED_BODY_PARTS, "forearm")
    report, out = _sort(tmp_path, weights)
    assert report["counts"]["sorted"] == 3
    assert {f["scope"] for f in report["files"]} == {"long_bone"}
    assert all(f["dest"].startswith("forearm/no_instrument/") for f in report["files"])
    assert sorted(p.name for p in (out / "forearm" / "no_instrument").iterdir()) == [
        "film_0.png", "film_1.png", "film_2.png"]
    assert not any((out / part).exists() for part in BODY_PARTS)
    assert {r["scope"] for r in _rows(out)} == {"long_bone"}


def test_other_goes_to_review_with_its_reason(tmp_path: Path) -> None:
    _films(tmp_path / "in")
    weights = biased_checkpoint(tmp_path / "w.pt", EXTENDED_BODY_PARTS, "other")
    report, out = _sort(tmp_path, weights, "--min-confidence", "0")
    assert report["counts"]["review"] == 3 and report["counts"]["sorted"] == 0
    assert all(f["dest"].startswith(f"{REVIEW_DIR}/") for f in report["files"])
    assert all("not one of the known body parts" in f["reason"] for f in report["files"])
    rows = _rows(out)
    assert {(r["status"], r["scope"]) for r in rows} == {("review", "other")}
    assert all("other" in r["review_reason"] for r in rows)
    assert not any((out / part).exists() for part in (*BODY_PARTS, "other"))


def test_a_nine_class_card_still_sorts_as_before(tmp_path: Path) -> None:
    _films(tmp_path / "in")
    weights = biased_checkpoint(tmp_path / "w.pt", BODY_PARTS, "knee")
    report, out = _sort(tmp_path, weights)
    assert report["counts"]["sorted"] == 3
    assert all(f["dest"].startswith("knee/no_instrument/") for f in report["files"])
    assert all(f["fracture"] is None and f["fracture_prob"] is None for f in report["files"])
    assert {(r["scope"], r["fracture"]) for r in _rows(out)} == {("nine", None)}


def test_fracture_head_fills_registry_json_and_layout(tmp_path: Path) -> None:
    _films(tmp_path / "in")
    weights = biased_checkpoint(tmp_path / "w.pt", EXTENDED_BODY_PARTS, "wrist", fracture=2.0)
    report, out = _sort(tmp_path, weights, "--layout", "{body_part}/{fracture}/{name}")
    p = float(1 / (1 + np.exp(-2.0)))
    for f in report["files"]:
        assert f["fracture"] == "fracture" and f["fracture_prob"] == pytest.approx(p, abs=1e-4)
        assert f["dest"].startswith("wrist/fracture/")
    rows = _rows(out)
    assert all(r["fracture"] == 1 and r["fracture_prob"] == pytest.approx(p, abs=1e-5)
               for r in rows)


def test_a_slightly_truncated_jpeg_is_sorted_with_a_warning_and_copied_intact(
        tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    buf = io.BytesIO()
    Image.fromarray((rng.random((256, 256)) * 255).astype(np.uint8)).save(buf, "JPEG",
                                                                            quality=90)
    data = buf.getvalue()
    (tmp_path / "in").mkdir()
    cut, half = tmp_path / "in" / "cut.jpg", tmp_path / "in" / "half.jpg"
    cut.write_bytes(data[:-20])
    half.write_bytes(data[: len(data) // 2])
    for p in (cut, half):
        make_old(p)
    weights = biased_checkpoint(tmp_path / "w.pt", EXTENDED_BODY_PARTS, "hand")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["sort", str(tmp_path / "in"), str(out), "--weights",
                                      str(weights), "--json"])
    assert result.exit_code == 0, result.output
    files = {Path(f["source"]).name: f for f in json.loads(result.stdout)["files"]}
    assert files["cut.jpg"]["status"] == "sorted"
    assert files["cut.jpg"]["warning"].startswith("truncated JPEG")
    assert files["half.jpg"]["status"] == "unreadable"
    placed = out / files["cut.jpg"]["dest"]
    assert placed.read_bytes() == data[:-20] and sha256_of(cut) == sha256_of(placed)
    rows = {Path(r["dest_path"]).name: r for r in _rows(out)}
    assert rows["cut.jpg"]["warning"].startswith("truncated JPEG")
    assert rows["half.jpg"]["error"] == "truncated file"


# -- the fracture flag abstains outside the nine ------------------------------------------
@pytest.mark.parametrize(("where", "judged"), [
    (Placement("sorted", "nine"), True),
    (Placement("review", "nine", "low confidence: wrist 0.40 < 0.50"), False),
    (Placement("review", "nine", "unfamiliar film (energy -1.20 > -2.84)"), False),
    (Placement("review", "nine", "models disagree: knee / shoulder"), False),
    (Placement("review", "nine", "DICOM header says knee"), False),
    (Placement("sorted", "long_bone"), False),
    (Placement("review", "other", "not one of the known body parts (other)"), False),
    (Placement("unreadable", "", "cannot decode"), False),
    (None, False),
])
def test_only_a_film_sorted_into_the_nine_gets_a_fracture_call(where: Placement | None,
                                                                judged: bool) -> None:
    assert judges_fracture(where) is judged


@pytest.mark.parametrize(("top", "extra", "guard", "status"), [
    ("forearm", (), None, "sorted"),  # a long bone, sorted into its own folder
    ("wrist", ("--min-confidence", "0.9999"), None, "review"),  # below min_confidence
    ("wrist", (), {"energy_max": -20.0}, "review"),  # unfamiliar film
    ("other", (), None, "review"),  # not a known body part
])
def test_fracture_is_unknown_for_films_held_back_and_long_bones(
        tmp_path: Path, top: str, extra: tuple[str, ...], guard: dict[str, float] | None,
        status: str) -> None:
    _films(tmp_path / "in")
    weights = biased_checkpoint(tmp_path / "w.pt", EXTENDED_BODY_PARTS, top, fracture=2.0,
                                guard=guard)
    report, out = _sort(tmp_path, weights, "--layout", "{body_part}/{fracture}/{name}",
                        *extra)
    assert {f["status"] for f in report["files"]} == {status}
    assert all(f["fracture"] is None and f["fracture_prob"] is None for f in report["files"])
    rows = _rows(out)
    assert len(rows) == 3
    assert all(r["fracture"] is None and r["fracture_prob"] is None for r in rows)
    # What the head said is still on record, in the raw probabilities.
    assert all("fracture" in json.loads(r["probabilities"]) for r in rows)
    if status == "sorted":
        assert all(r["dest_path"].startswith("forearm/unknown/") for r in rows)
    with sqlite3.connect(out / "registry.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM film_labels WHERE fracture IS NULL"
                          ).fetchone()[0] == 3


def test_a_review_still_sets_the_fracture_of_a_film_the_model_abstained_on(
        tmp_path: Path) -> None:
    from xreg.model.labels import BODY_PARTS as NINE
    from xreg.registry import Registry
    from xreg.registry.reviews import Review, add_review

    _films(tmp_path / "in", 1)
    weights = biased_checkpoint(tmp_path / "w.pt", EXTENDED_BODY_PARTS, "femur", fracture=2.0)
    _, out = _sort(tmp_path, weights)
    sha = _rows(out)[0]["sha256"]
    with Registry(out / "registry.sqlite") as reg:
        add_review(reg, Review(sha, "tester", "knee", fracture=1), NINE)
        row = reg._db.execute("SELECT fracture, label_source FROM film_labels").fetchone()
        assert tuple(row) == (1, "review")
