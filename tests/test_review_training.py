"""Review -> export -> train: what a person decided is what the next model learns."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import biased_checkpoint
from tests.test_crash_safety import make_pngs
from xreg.cli import app
from xreg.config import SortOptions
from xreg.model.models import BODY_PARTS
from xreg.registry import Registry
from xreg.registry.reviews import Review, add_review
from xreg.sort.runner import run_sort

TINY = dict(arch="mobilenet_v3_small", input_size=64, pretrained="none", lr=2e-3,
            max_epochs=1, milestones=[2], resamples=20, batch_size=8)
runner = CliRunner()


@pytest.fixture
def reviewed(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """30 films the model calls knee; a person says hip for 12 of them, elbow for 3."""
    weights = biased_checkpoint(tmp_path / "knee.pt", BODY_PARTS, "knee")
    make_pngs(tmp_path / "in", 30, size=64)
    out = tmp_path / "out"
    run_sort(tmp_path / "in", out, SortOptions(weights=weights, min_age=0))
    said: dict[str, str] = {}
    with Registry(out / "registry.sqlite") as reg:
        shas = sorted(r["sha256"] for r in reg.iter_images())
        for i, sha in enumerate(shas[:15]):
            said[sha] = "hip" if i < 12 else "elbow"
            add_review(reg, Review(sha, "tester", said[sha], instrument=1), BODY_PARTS)
    return out, said


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "tiny.yaml"
    config.write_text("train:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in TINY.items()))
    return config


def _trained_labels(summary: dict[str, object]) -> dict[str, tuple[str, str]]:
    """Content hash -> (body part, instrument) of each film the run trained on."""
    import hashlib

    split = Path(str(summary["run_dir"])) / "split.csv"
    with split.open(newline="") as fh:
        return {hashlib.sha256(Path(r["path"]).read_bytes()).hexdigest():
                (r["body_part"], r["instrument"]) for r in csv.DictReader(fh)}


def test_export_reviewed_manifest_then_train_on_the_reviewers_labels(
        reviewed: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    out, said = reviewed
    manifest = tmp_path / "reviewed.csv"
    result = runner.invoke(app, ["registry", "export", str(out), "--reviewed", "--format",
                                 "manifest", "-o", str(manifest)])
    assert result.exit_code == 0, result.output
    with manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 15 and {r["label_source"] for r in rows} == {"review"}
    trained = runner.invoke(app, ["train", str(_config(tmp_path)), "--data", str(manifest),
                                  "--out", str(tmp_path / "m.pt"), "--json"])
    assert trained.exit_code == 0, trained.output
    labels = _trained_labels(json.loads(trained.stdout))
    assert labels == {sha: (part, "1") for sha, part in said.items()}  # never "knee"


def test_train_on_the_folder_prefers_reviews_and_can_take_them_alone(
        reviewed: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    out, said = reviewed
    config = _config(tmp_path)
    both = runner.invoke(app, ["train", str(config), "--data", str(out), "--out",
                               str(tmp_path / "a.pt"), "--json"])
    assert both.exit_code == 0, both.output
    labels = _trained_labels(json.loads(both.stdout))
    assert len(labels) == 30
    for sha, (part, instrument) in labels.items():
        if sha in said:
            assert (part, instrument) == (said[sha], "1")
        else:
            assert (part, instrument) == ("knee", "0")  # the model's, for sorted films
    alone = runner.invoke(app, ["train", str(config), "--data", str(out), "--reviewed-only",
                                "--out", str(tmp_path / "b.pt"), "--json"])
    assert alone.exit_code == 0, alone.output
    assert set(_trained_labels(json.loads(alone.stdout))) == set(said)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,body_part,instrument\n")
    refused = runner.invoke(app, ["train", str(config), "--data", str(manifest),
                                  "--reviewed-only", "--out", str(tmp_path / "c.pt")])
    assert refused.exit_code == 2 and "registry" in refused.output
