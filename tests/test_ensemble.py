"""Ensembles and the feature bank: members that disagree, films unlike the training films."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from xreg.cli import app
from xreg.errors import CheckpointError
from xreg.inference.export import export_onnx
from xreg.inference.predict import guard_reason, score_logits
from xreg.inference.runtime import load_model
from xreg.model.card import DISTANCE_OUTPUT, MEMBERS_OUTPUT, ModelCard
from xreg.model.checkpoint import load_checkpoint, make_random_checkpoint, save_checkpoint
from xreg.model.labels import EXTENDED_BODY_PARTS, HeadSpec
from xreg.train.guard import ensemble_card, join_loaded

from .conftest import biased_checkpoint, make_old

LABELS = ("hand", "knee", "shoulder")


def _card(**guard: object) -> ModelCard:
    return ModelCard(name="e", arch="mobilenet_v2", heads=(HeadSpec("body_part", LABELS),),
                     input_size=64, mean=0.5, std=0.25, members=("mobilenet_v2",) * 2,
                     guard={"energy_max": 100.0, **guard})


def _ensemble(tmp_path: Path, tops: tuple[str, ...], name: str = "e.pt", **guard: object
              ) -> Path:
    members = [load_checkpoint(biased_checkpoint(tmp_path / f"{name}-{i}.pt",
                                                 EXTENDED_BODY_PARTS, top))
               for i, top in enumerate(tops)]
    net = join_loaded(members)
    card = ensemble_card(members, "ens")
    card = dataclasses.replace(card, guard={"energy_max": 100.0, **guard})
    save_checkpoint(tmp_path / name, net, card)
    return tmp_path / name


def test_members_that_disagree_are_named_and_agreeing_members_pass() -> None:
    card = _card(agree_min=0.5)
    split = np.array([[0.05, 0.9, 0.05], [0.05, 0.05, 0.9]])  # knee vs shoulder
    reason = guard_reason(card, "knee", -5.0, None, split)
    assert reason == "models disagree: knee / shoulder"
    same = np.array([[0.05, 0.9, 0.05], [0.1, 0.8, 0.1]])
    assert guard_reason(card, "knee", -5.0, None, same) is None
    doubt = np.array([[0.05, 0.9, 0.05], [0.3, 0.4, 0.3]])  # same top, one member unsure
    assert guard_reason(card, "knee", -5.0, None, doubt).startswith("models disagree: knee at 0.40")


def test_a_film_far_from_the_training_films_is_held_first() -> None:
    card = _card(agree_min=0.5, distance_max=0.2, bank={"films": 10, "dim": 4, "k": 2})
    same = np.array([[0.05, 0.9, 0.05], [0.1, 0.8, 0.1]])
    assert guard_reason(card, "knee", -5.0, 0.1, same) is None
    assert guard_reason(card, "knee", -5.0, 0.35, same) == \
        "unlike the training films (distance 0.350 > 0.200)"


def test_score_logits_reads_members_for_energy_and_agreement() -> None:
    card = _card(agree_min=0.5)
    members = np.array([[[0.0, 8.0, 0.0], [0.0, 0.0, 8.0]]])  # (1 film, 2 members, 3)
    mean = np.log(np.exp(members) / np.exp(members).sum(2, keepdims=True)).mean(1)
    scored = score_logits({"body_part": mean, MEMBERS_OUTPUT: members}, card)[0]
    assert scored.unfamiliar == "models disagree: knee / shoulder"
    assert scored.agreement == pytest.approx(np.exp(0) / (np.exp(8) + 2), rel=1e-6)
    want = -np.log(np.exp(8.0) + 2)  # each member's energy, averaged
    assert scored.energy == pytest.approx(want)


def test_card_checks_members_and_guard_keys() -> None:
    with pytest.raises(CheckpointError, match="agree_min"):
        ModelCard(name="e", arch="mobilenet_v2", heads=(HeadSpec("body_part", LABELS),),
                  input_size=64, mean=0.5, std=0.25, guard={"energy_max": 1.0,
                                                             "agree_min": 0.5})
    with pytest.raises(CheckpointError, match="members"):
        ModelCard(name="e", arch="mobilenet_v2", heads=(HeadSpec("body_part", LABELS),),
                  input_size=64, mean=0.5, std=0.25, members=("resnet18", "mobilenet_v2"))
    with pytest.raises(CheckpointError, match="distance_max"):
        _card(bank={"films": 10, "dim": 4, "k": 2})
    card = _card(agree_min=0.5)
    assert ModelCard.from_dict(card.to_dict()) == card
    single = dataclasses.replace(card, members=(), guard={"energy_max": 1.0})
    assert "members" not in single.to_dict()  # older xreg reads a single network's card


def test_an_older_single_network_card_still_loads_and_sorts(tmp_path: Path) -> None:
    weights = tmp_path / "old.pt"
    make_random_checkpoint(weights, input_size=64)
    loaded = load_checkpoint(weights)
    assert loaded.card.members == () and "members" not in loaded.card.to_dict()
    src = tmp_path / "in"
    _films(src)
    result = CliRunner().invoke(app, ["sort", str(src), str(tmp_path / "out"), "--weights",
                                      str(weights), "--json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)["files"]) == 2


def _films(folder: Path) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (80, 80), dtype=np.uint8)).save(
            folder / f"film{i}.png")
    for f in folder.iterdir():
        make_old(f)


@pytest.mark.parametrize(("tops", "status"), [(("knee", "shoulder"), "review"),
                                              (("knee", "knee"), "sorted")])
def test_sort_holds_back_a_film_the_members_disagree_about(
        tmp_path: Path, tops: tuple[str, str], status: str) -> None:
    weights = _ensemble(tmp_path, tops, agree_min=0.5)
    src = tmp_path / "in"
    _films(src)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["sort", str(src), str(out), "--weights", str(weights),
                                      "--json", "--min-confidence", "0.3"])
    assert result.exit_code == 0, result.output
    files = json.loads(result.output)["files"]
    assert {f["status"] for f in files} == {status}
    with sqlite3.connect(out / "registry.sqlite") as db:
        reasons = {r[0] for r in db.execute("SELECT review_reason FROM images")}
    if status == "review":
        assert reasons == {"models disagree: knee / shoulder"}
        assert not (out / "knee").exists() and not (out / "shoulder").exists()
    else:
        assert reasons == {None} and (out / "knee").is_dir()


def test_ensemble_with_a_bank_exports_to_one_onnx_graph_that_matches_torch(
        tmp_path: Path) -> None:
    for i in range(2):
        make_random_checkpoint(tmp_path / f"m{i}.pt", input_size=64, seed=i)
    members = [load_checkpoint(tmp_path / f"m{i}.pt") for i in range(2)]
    net = join_loaded(members)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((12, 3, 64, 64))
                         .astype(np.float32))
    with torch.no_grad():
        _, joined = net.features(x)
    net.set_bank(joined[:10], k=3)
    card = dataclasses.replace(
        ensemble_card(members, "ens"),
        guard={"energy_max": 100.0, "agree_min": 0.1, "distance_max": 0.5,
               "bank": {"films": 10, "dim": int(joined.shape[1]), "k": 3}})
    save_checkpoint(tmp_path / "ens.pt", net.eval(), card)
    export_onnx(tmp_path / "ens.pt")
    onnx_model = load_model(tmp_path / "ens.pt", runtime="onnx")
    torch_model = load_model(tmp_path / "ens.pt", runtime="torch")
    assert onnx_model.runtime.name == "onnxruntime"
    got, want = onnx_model.runtime.run(x.numpy()), torch_model.runtime.run(x.numpy())
    assert list(got) == [h.name for h in card.heads] + [MEMBERS_OUTPUT, DISTANCE_OUTPUT]
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-3, atol=1e-3)
    # a film in the bank is at distance ~0 from itself (k=3: its 3rd neighbour is further)
    assert got[DISTANCE_OUTPUT].shape == (12,)
    assert np.all(got[DISTANCE_OUTPUT] >= -1e-3)
    # the first member's own logits come back unchanged inside the ensemble
    with torch.no_grad():
        own = members[0].model.eval()(x)["body_part"].numpy()
    np.testing.assert_allclose(got[MEMBERS_OUTPUT][:, 0], own, rtol=1e-3, atol=1e-3)


def test_members_keep_their_own_grey_statistics(tmp_path: Path) -> None:
    for i in range(2):
        make_random_checkpoint(tmp_path / f"m{i}.pt", input_size=64, seed=i)
    a, b = (load_checkpoint(tmp_path / f"m{i}.pt") for i in range(2))
    b = dataclasses.replace(b, card=dataclasses.replace(b.card, mean=0.3, std=0.2))
    net = join_loaded([a, b]).eval()
    grey = torch.rand(2, 1, 64, 64).expand(-1, 3, -1, -1)
    with torch.no_grad():
        inside = net((grey - 0.5) / 0.25)[MEMBERS_OUTPUT][:, 1]
        alone = b.model.eval()((grey - 0.3) / 0.2)["body_part"]
    np.testing.assert_allclose(inside.numpy(), alone.numpy(), rtol=1e-4, atol=1e-4)


def test_fracture_is_unknown_for_a_body_part_the_head_never_learned() -> None:
    from xreg.datasets import LabelledImage
    from xreg.train.guard import fracture_classes

    train = [LabelledImage(Path(f"{i}.png"), "knee", None, None, None, fracture=int(i < 6))
             for i in range(40)]
    train += [LabelledImage(Path(f"s{i}.png"), "spine", None, None, None, fracture=0)
              for i in range(2)]
    train += [LabelledImage(Path(f"c{i}.png"), "hand", None, None, None) for i in range(50)]
    assert fracture_classes(train) == ["knee"]
    heads = (HeadSpec("body_part", LABELS), HeadSpec("fracture", ("no_fracture", "fracture")))
    card = ModelCard(name="f", arch="mobilenet_v2", heads=heads, input_size=64, mean=0.5,
                     std=0.25, thresholds={"fracture": 0.5},
                     guard={"energy_max": 100.0, "fracture_classes": ["knee"]})
    logits = {"body_part": np.array([[0.0, 5.0, 0.0], [5.0, 0.0, 0.0]]),
              "fracture": np.array([[0.0, 3.0], [0.0, 3.0]])}
    knee, hand = score_logits(logits, card)
    assert knee.labels["fracture"] == "fracture"
    assert "fracture" not in hand.labels and "fracture" in hand.probabilities
