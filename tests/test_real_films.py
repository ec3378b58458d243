"""Real radiographs (FracAtlas, in ../shared): the manifest, damaged files, the shipped model.

Skipped, with the reason, where ../shared/data/fracatlas is absent; CI has it.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xreg.cli import app
from xreg.datasets import load_labels
from xreg.io import try_load_image
from xreg.model.checkpoint import default_weights, load_checkpoint
from xreg.model.models import BODY_PARTS, EXTENDED_BODY_PARTS
from xreg.train.split import split_groups

from .conftest import sha256_of

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "fracatlas"
pytestmark = pytest.mark.skipif(
    not (DATA / "labels.csv").is_file(),
    reason=f"real FracAtlas films not found at {DATA} (the project's shared data folder)")
sys.path.insert(0, str(REPO / "scripts"))


def _labels() -> list[dict[str, str]]:
    with (DATA / "labels.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fracatlas import write_manifest

    out = tmp_path_factory.mktemp("fracatlas") / "fracatlas.csv"
    write_manifest(DATA, out)
    return out


def test_manifest_maps_every_film_and_keeps_hesitation_as_sets(manifest: Path) -> None:
    images = load_labels(manifest, EXTENDED_BODY_PARTS)
    rows = _labels()
    assert len(images) == len(rows) == 3184
    by_name = {Path(r["path"]).name: r for r in rows}
    for im in images:
        row = by_name[im.path.name]
        assert im.path.is_file()
        assert im.instrument == int(row["instrument"]) and im.fracture == int(row["fracture"])
        expected = row["body_part"] if row["body_part"] in EXTENDED_BODY_PARTS else "other"
        assert im.body_part == expected
        if row["label_sure"] == "1":
            assert im.body_parts == (expected,)
    sets = Counter(len(im.body_parts) for im in images)
    assert sets[2] > 1000  # about half the films were a hesitation between two labels
    assert Counter(im.view for im in images)[None] > 0  # oblique / several views: unknown


def test_duplicate_clusters_and_study_blocks_never_span_two_groups(manifest: Path) -> None:
    images = load_labels(manifest, EXTENDED_BODY_PARTS)
    groups = split_groups(images)
    group_of = {im.path.name: g for im, g in zip(images, groups)}
    for im, g in zip(images, groups):
        if im.dup_of:
            assert group_of[Path(im.dup_of).name] == g
    by_block: dict[str, set[str]] = {}
    for im, g in zip(images, groups):
        by_block.setdefault(im.patient_id or "", set()).add(g)
    assert all(len(gs) == 1 for gs in by_block.values())


def test_truncated_films_decode_only_when_99_percent_survives() -> None:
    truncated = [DATA / r["path"] for r in _labels() if r["truncated"] == "1"]
    assert len(truncated) == 46
    outcomes = [try_load_image(p, target_size=224) for p in truncated]
    decoded = [o for o in outcomes if not isinstance(o, str)]
    assert 0 < len(decoded) < len(truncated)
    assert all(o.meta.warning and o.meta.warning.startswith("truncated JPEG") for o in decoded)
    assert {o for o in outcomes if isinstance(o, str)} == {"truncated file"}


SHARED = REPO.parent / "shared" / "data"
#: Per site: (body part of its films, least share sorted right, most share in a wrong
#: folder). Far below what the card measured on each whole test split, far above chance.
SITE_BARS = {
    "fracatlas": (None, 0.6, 0.10),
    "spine_cadma": ("spine", 0.6, 0.05),
    "chest_nih": (None, 0.0, 0.05),
    "shoulder_implants": ("shoulder", 0.5, 0.05),
}


def _held_out(site: str, card_groups: dict[str, list[str]], n: int) -> list[dict[str, str]]:
    import hashlib

    with (SHARED / site / "labels.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    keys = set(card_groups[site])
    return [r for r in rows if hashlib.sha256(r["patient_id"].encode()).hexdigest()[:16] in keys
            and r.get("label_sure", "1") == "1"
            and (site != "fracatlas" or r["body_part"] in BODY_PARTS)][:n]


@pytest.mark.parametrize("site", sorted(SITE_BARS))
def test_shipped_model_sorts_held_out_films_of_every_site(site: str, tmp_path: Path) -> None:
    """Films of patients the shipped model never trained on or chose a threshold with."""
    if not (SHARED / site / "labels.csv").is_file():
        pytest.skip(f"site {site} not found at {SHARED / site}")
    card = load_checkpoint(default_weights()).card
    films = _held_out(site, card.training["test_groups"], 40)
    assert len(films) >= 30
    src = tmp_path / "in"
    src.mkdir()
    truth = {}
    for r in films:
        copy = src / Path(r["path"]).name
        shutil.copyfile(SHARED / site / r["path"], copy)  # into tmp only, never the repository
        truth[copy.name] = r["body_part"]
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["sort", str(src), str(out), "--json", "--min-age", "0"])
    assert result.exit_code == 0, result.output
    files = json.loads(result.stdout)["files"]
    sorted_ = [f for f in files if f["status"] == "sorted"]
    right = sum(f["body_part"] == truth[Path(f["source"]).name] for f in sorted_)
    expected, least_right, most_wrong = SITE_BARS[site]
    if expected is not None:
        assert set(truth.values()) == {expected}
    assert right / len(files) >= least_right
    assert (len(sorted_) - right) / len(files) <= most_wrong
    if site == "chest_nih":  # a chest film is never a body part
        assert not sorted_ and all(f["dest"].startswith("_review/") for f in files)
    if sorted_:
        copied = sorted_[0]
        assert sha256_of(out / copied["dest"]) == sha256_of(src / Path(copied["source"]).name)
