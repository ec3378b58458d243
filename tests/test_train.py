"""xreg train: recipe config, grouped split, augmentation, the loop, resume, CLI."""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from xreg.cli import app
from xreg.datasets import LabelledImage, load_labels
from xreg.errors import CheckpointError, ConfigError
from xreg.model.checkpoint import ModelCard, load_checkpoint
from xreg.model.transforms import augment_batch
from xreg.synth.generate import generate_dataset
from xreg.train import Callbacks, TrainConfig, load_train_config, train
from xreg.train.loop import Tensors, _sample_order
from xreg.train.split import SPLITS, assign_splits, plan_split

REPO = Path(__file__).resolve().parents[1]
TINY = dict(arch="mobilenet_v3_small", input_size=64, pretrained="none", lr=2e-3,
            max_epochs=3, milestones=[2], resamples=100, batch_size=16)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("phantoms")
    generate_dataset(root, 216, seed=5, size=96, instrument_rate=0.3, workers=1)
    return root / "labels.csv"


# ----------------------------------------------------------------- config


def test_thesis_recipe_file_matches_the_thesis() -> None:
    cfg = load_train_config(REPO / "configs" / "bodypart_instrument.yaml")
    assert (cfg.lr, cfg.gamma, cfg.batch_size, cfg.label_smoothing) == (2e-5, 0.5, 16, 0.1)
    assert cfg.split == (0.7, 0.2, 0.1) and cfg.weighted_sampling and cfg.hflip and cfg.rot90
    assert cfg.pretrained == "imagenet" and cfg.max_epochs == 100
    assert cfg == replace(TrainConfig(), name="bodypart_instrument")


def test_config_overrides_win_and_none_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.001\n  max_epochs: 7\n")
    cfg = load_train_config(path, {"max_epochs": 2, "seed": None})
    assert (cfg.lr, cfg.max_epochs, cfg.seed) == (0.001, 2, 0)


@pytest.mark.parametrize(("text", "match"), [
    ("train:\n  learning_rate: 0.1\n", "unknown train config key.*learning_rate"),
    ("train:\n  arch: alexnet\n", "'arch'.*alexnet"),
    ("train:\n  split: [0.5, 0.2, 0.2]\n", "'split'"),
    ("train:\n  milestones: [5, 3]\n", "'milestones'"),
    ("train:\n  lr: 0\n", "'lr'"),
    ("train:\n  pretrained: yes\n", "'pretrained'"),
    ("train:\n  instrument_threshold: best\n", "'instrument_threshold'"),
    ("train:\n  batch_size: 1\n", "'batch_size'"),
    ("train:\n  heads: [instrument, body_part]\n", "'heads'"),
    ("train:\n  heads: [body_part, colour]\n", "'heads'"),
        ("train:\n  body_parts: all\n", "'body_parts'"),
        ("train:\n  datasets: [{name: a}]\n", "exactly one of path"),
        ("train:\n  datasets: [{name: a, path: x.csv, weight: 0}]\n", "weight"),
        ("train:\n  datasets: [{name: a, synth: {count: 5, colour: 1}}]\n", "colour"),
    ("- just a list\n", "mapping"),
])
def test_bad_config_is_named(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_train_config(path)


# ------------------------------------------------------------------ split


def test_plan_split_never_puts_a_patient_in_two_splits() -> None:
    rng = np.random.default_rng(0)
    groups = [f"p{int(g)}" for g in rng.integers(0, 120, 600)]
    strata = [f"c{hash(g) % 5}" for g in groups]
    splits = plan_split(groups, strata, (0.7, 0.2, 0.1), seed=3)
    seen: dict[str, set[str]] = defaultdict(set)
    for g, s in zip(groups, splits):
        seen[g].add(s)
    assert all(len(v) == 1 for v in seen.values())
    share = Counter(splits)
    assert abs(share["train"] / 600 - 0.7) < 0.06
    assert abs(share["val"] / 600 - 0.2) < 0.06
    assert share["test"] > 0


def test_plan_split_is_seeded_and_stratified() -> None:
    groups = [f"p{i}" for i in range(300)]
    strata = [f"c{i % 3}" for i in range(300)]
    a = plan_split(groups, strata, (0.7, 0.2, 0.1), seed=1)
    assert a == plan_split(groups, strata, (0.7, 0.2, 0.1), seed=1)
    assert a != plan_split(groups, strata, (0.7, 0.2, 0.1), seed=2)
    for c in ("c0", "c1", "c2"):
        counts = Counter(s for s, st in zip(a, strata) if st == c)
        assert counts == {"train": 70, "val": 20, "test": 10}


def _image(i: int, patient: str | None = None, split: str | None = None) -> LabelledImage:
    return LabelledImage(Path(f"/x/{i}.png"), "hand", 0, patient, split)


def test_assign_splits_honours_the_manifest_and_refuses_half_a_column() -> None:
    given = [_image(0, split="test"), _image(1, split="train"), _image(2, split="val")]
    assert assign_splits(given, (0.7, 0.2, 0.1), 0) == ["test", "train", "val"]
    with pytest.raises(ConfigError, match="some rows but not all"):
        assign_splits([_image(0, split="test"), _image(1)], (0.7, 0.2, 0.1), 0)
    with pytest.raises(ConfigError, match="holdout"):
        assign_splits([_image(0, split="holdout")], (0.7, 0.2, 0.1), 0)


# ------------------------------------------------------- augmentation, sampling


def test_augment_batch_is_seeded_and_only_flips_and_rotates() -> None:
    x = torch.rand(32, 8, 8)
    a = augment_batch(x, torch.Generator().manual_seed(1), hflip=True, rot90=True)
    b = augment_batch(x, torch.Generator().manual_seed(1), hflip=True, rot90=True)
    assert torch.equal(a, b) and not torch.equal(a, x)
    for orig, aug in zip(x, a):  # each output is one of the 8 flips/rotations of its input
        variants = [torch.rot90(v, k, (0, 1)) for v in (orig, orig.flip(-1)) for k in range(4)]
        assert any(torch.equal(aug, v) for v in variants)
    assert torch.equal(augment_batch(x, torch.Generator(), hflip=False, rot90=False), x)


def test_weighted_sampling_balances_the_rare_instrument_class() -> None:
    inst = torch.tensor([1] * 50 + [0] * 950)
    data = Tensors(torch.zeros(1000, 2, 2),
                   {"body_part": torch.zeros(1000, dtype=torch.long), "instrument": inst})
    order = _sample_order(data, TrainConfig(), torch.Generator().manual_seed(0))
    share = float(inst[order].float().mean())
    assert 0.4 < share < 0.6  # 5% of the images, about half of the draws
    plain = _sample_order(data, TrainConfig(weighted_sampling=False),
                          torch.Generator().manual_seed(0))
    assert sorted(plain.tolist()) == list(range(1000))


# ------------------------------------------------------------------ training


def test_training_reduces_loss_and_writes_a_self_describing_checkpoint(
        phantoms: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    cfg = TrainConfig(**TINY)
    result = train(cfg, phantoms, out)
    log = result.log
    assert [e.epoch for e in log] == [1, 2, 3]
    assert log[-1].train_loss < log[0].train_loss
    loaded = load_checkpoint(out)
    assert loaded.sha256 == result.sha256
    assert loaded.card == result.card == ModelCard.from_dict(result.card.to_dict())
    card = loaded.card
    assert card.training["recipe"] == cfg.to_dict() and card.training["init"] == "random"
    counts = card.training["split"]["counts"]
    assert sum(counts[s]["images"] for s in SPLITS) == 216
    assert card.training["split"]["grouped_by"] == "patient_id"
    # The mean/std come from the training pixels, not the placeholder 0.5/0.25.
    assert 0.0 < card.mean < 1.0 and card.mean != 0.5 and card.std > 0
    assert [h.name for h in card.heads] == ["body_part", "instrument"]
    test = card.metrics["test"]
    assert test["counts"]["evaluated"] == counts["test"]["images"]
    value, low, high = test["body_part"]["mcc"]
    assert low <= value <= high
    run = result.run_dir
    rows = list(csv.DictReader((run / "log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert len(json.loads((run / "log.json").read_text())) == 3
    split = list(csv.DictReader((run / "split.csv").open()))
    by_patient: dict[str, set[str]] = defaultdict(set)
    for r in split:
        by_patient[r["patient_id"]].add(r["split"])
    assert all(len(v) == 1 for v in by_patient.values())
    # The saved split is a manifest evaluate can read back.
    assert len(load_labels(run / "split.csv")) == 216


def test_resume_continues_from_the_saved_epoch_to_the_same_weights(
        phantoms: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(**{**TINY, "max_epochs": 2})
    straight = train(cfg, phantoms, tmp_path / "a.pt")

    def stop_after_first(entry: object) -> None:
        raise KeyboardInterrupt

    # Started with a budget of 3 epochs, cut to 2 on resume: only max_epochs may change.
    with pytest.raises(KeyboardInterrupt):
        train(replace(cfg, max_epochs=3), phantoms, tmp_path / "b.pt",
              callbacks=Callbacks(epoch_end=stop_after_first))
    assert not (tmp_path / "b.pt").exists()
    with pytest.raises(ConfigError, match="unfinished run"):
        train(cfg, phantoms, tmp_path / "b.pt")
    with pytest.raises(ConfigError, match="config changed.*lr"):
        train(replace(cfg, lr=1e-4), phantoms, tmp_path / "b.pt", resume=True)
    started: list[int] = []
    resumed = train(cfg, phantoms, tmp_path / "b.pt", resume=True,
                    callbacks=Callbacks(epoch_start=lambda e, m, s: started.append(e)))
    assert started == [2]
    assert [e.epoch for e in resumed.log] == [1, 2]
    a = load_checkpoint(tmp_path / "a.pt").model.state_dict()
    b = load_checkpoint(tmp_path / "b.pt").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.card.thresholds == straight.card.thresholds
    with pytest.raises(ConfigError, match="nothing to resume"):
        train(cfg, phantoms, tmp_path / "b.pt", resume=True)


def test_existing_checkpoint_is_not_replaced_without_overwrite(
        phantoms: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    out.write_bytes(b"precious")
    with pytest.raises(ConfigError, match="exists"):
        train(TrainConfig(**TINY), phantoms, out)
    assert out.read_bytes() == b"precious"


def test_missing_imagenet_weights_fail_clearly_or_fall_back_when_allowed(
        phantoms: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    cfg = TrainConfig(**{**TINY, "pretrained": "imagenet", "max_epochs": 1})
    with pytest.raises(CheckpointError, match="allow_random_init"):
        train(cfg, phantoms, tmp_path / "m.pt")
    said: list[str] = []
    result = train(replace(cfg, allow_random_init=True), phantoms, tmp_path / "m2.pt",
                   callbacks=Callbacks(message=said.append))
    assert any("RANDOM" in s for s in said)
    assert result.card.training["init"] == "random"


def test_cli_train_then_evaluate_the_saved_test_split(phantoms: Path, tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text("train:\n" + "".join(
        f"  {k}: {json.dumps(v)}\n" for k, v in TINY.items()))
    out = tmp_path / "w" / "tiny.pt"
    runner = CliRunner()
    result = runner.invoke(app, ["train", str(config), "--data", str(phantoms),
                                 "--out", str(out), "--epochs", "1", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["checkpoint"] == str(out) and out.exists()
    assert summary["card"]["training"]["epochs_run"] == 1
    split = Path(summary["run_dir"]) / "split.csv"
    ev = runner.invoke(app, ["evaluate", str(out), str(split), "--split", "test", "--json",
                             "--resamples", "50"])
    assert ev.exit_code == 0, ev.output
    n_test = summary["card"]["training"]["split"]["counts"]["test"]["images"]
    assert json.loads(ev.stdout)["counts"]["evaluated"] == n_test
    again = runner.invoke(app, ["train", str(config), "--data", str(phantoms),
                                "--out", str(out), "--epochs", "1"])
    assert again.exit_code == 2 and "exists" in again.output


def test_a_view_head_learns_from_the_manifest_view_column(phantoms: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(**{**TINY, "heads": ("body_part", "instrument", "view"),
                         "max_epochs": 2})
    result = train(cfg, phantoms, tmp_path / "v.pt")
    card = load_checkpoint(tmp_path / "v.pt").card
    assert card.head("view").labels == ("AP", "LAT")
    counts = card.training["split"]["counts"]["train"]["view"]
    assert set(counts) == {"AP", "LAT"}
    assert all("val_view" in e.accuracy and "train_view" in e.accuracy for e in result.log)
    rows = list(csv.DictReader((result.run_dir / "log.csv").open()))
    assert "val_view_acc" in rows[0]


def test_a_head_without_labels_is_refused(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,body_part,instrument\na.png,hand,0\nb.png,knee,1\n")
    cfg = TrainConfig(**{**TINY, "heads": ("body_part", "view")})
    with pytest.raises(ConfigError, match="'view' head.*labels no item"):
        train(cfg, manifest, tmp_path / "m.pt")


def test_hip_fracture_task_trains_a_two_view_model(tmp_path: Path) -> None:
    generate_dataset(tmp_path / "hips", 0, seed=8, size=96, hip_pairs=40, workers=1)
    cfg = TrainConfig(**{**TINY, "task": "hip_fracture", "heads": ("fracture",),
                         "max_epochs": 2})
    result = train(cfg, tmp_path / "hips" / "hip_pairs.csv", tmp_path / "hip.pt")
    card = load_checkpoint(tmp_path / "hip.pt").card
    assert card.views == 2 and [h.name for h in card.heads] == ["fracture"]
    assert "fracture" in card.thresholds and "min_confidence" not in card.thresholds
    counts = card.training["split"]["counts"]
    assert sum(counts[s]["studies"] for s in SPLITS) == 40
    assert card.metrics["test"]["counts"]["evaluated"] == counts["test"]["studies"]
    assert all("val_fracture" in e.accuracy for e in result.log)
    rows = list(csv.DictReader((result.run_dir / "split.csv").open()))
    by_patient: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        by_patient[r["patient_id"]].add(r["split"])
    assert len(rows) == 40 and all(len(v) == 1 for v in by_patient.values())


def test_hip_task_needs_a_pairs_file(phantoms: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(**{**TINY, "task": "hip_fracture", "heads": ("fracture",)})
    with pytest.raises(ConfigError, match="no column 'study'"):
        train(cfg, phantoms, tmp_path / "x.pt")
    with pytest.raises(ConfigError, match="pairs CSV"):
        train(cfg, phantoms.parent, tmp_path / "y.pt")


def test_a_reviewed_sort_folder_is_training_data(phantoms: Path, tmp_path: Path) -> None:
    # Close the loop: files in <body_part>/<instrument|no_instrument>/ train a model.
    folder = tmp_path / "reviewed"
    for im in load_labels(phantoms)[:90]:
        kind = "instrument" if im.instrument else "no_instrument"
        target = folder / im.body_part / kind / im.path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(im.path.read_bytes())
    (folder / "_review").mkdir()
    (folder / "_review" / "unsure.png").write_bytes(load_labels(phantoms)[0].path.read_bytes())
    result = train(TrainConfig(**{**TINY, "max_epochs": 1}), folder, tmp_path / "f.pt")
    training = result.card.training
    assert training["data"]["labelled"] == 90  # _review is nobody's label
    assert training["split"]["grouped_by"] == "image"
    assert sum(training["split"]["counts"][s]["images"] for s in SPLITS) == 90
