"""Tests for xreg.model.checkpoint: model cards, safe save/load, sha256."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from xreg.errors import CheckpointError
from xreg.model.checkpoint import (
    LoadedModel,
    ModelCard,
    file_sha256,
    load_checkpoint,
    make_random_checkpoint,
    save_checkpoint,
)
from xreg.model.models import BODY_PARTS, STANDARD_HEADS, HeadSpec, MultiHeadNet, build_model

ARCH, SIZE = "mobilenet_v3_small", 64


def _card(**changes: Any) -> ModelCard:
    base = ModelCard(
        name="test-model",
        arch=ARCH,
        heads=STANDARD_HEADS,
        input_size=SIZE,
        mean=0.45,
        std=0.2,
        thresholds={"instrument": 0.6, "min_confidence": 0.4},
        training={"data": "phantoms", "split": [70, 20, 10], "class_counts": {"hip": 3}},
        metrics={"body_part": {"mcc": (0.91, 0.89, 0.93)}},
        created="2024-05-01",
        notes="unit test",
    )
    return dataclasses.replace(base, **changes)


def _model(seed: int = 0) -> MultiHeadNet:
    torch.manual_seed(seed)
    return build_model(ARCH, STANDARD_HEADS, input_size=SIZE)


@pytest.fixture(scope="module")
def random_ckpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("ckpt") / "random.pt"
    return path, make_random_checkpoint(path, arch=ARCH, input_size=SIZE, seed=0)


def _write_payload(path: Path, payload: Any) -> Path:
    torch.save(payload, path)
    return path


# --- ModelCard --------------------------------------------------------------


def test_card_round_trips_through_json() -> None:
    card = _card()
    data = json.loads(json.dumps(card.to_dict()))
    assert ModelCard.from_dict(data) == card
    assert data["heads"][0] == {"name": "body_part", "labels": list(BODY_PARTS)}
    # Tuples in free-form metrics are normalised to lists at construction.
    assert card.metrics["body_part"]["mcc"] == [0.91, 0.89, 0.93]
    assert card.format_version == 1
    assert card.head("instrument").labels == ("no_instrument", "instrument")


def test_card_is_isolated_from_caller_dicts() -> None:
    training: dict[str, Any] = {"epochs": 3}
    card = _card(training=training)
    training["epochs"] = 99
    assert card.training["epochs"] == 3


@pytest.mark.parametrize(
    "key",
    ["format_version", "name", "arch", "heads", "input_size", "mean", "std",
     "thresholds", "training", "metrics", "xreg_version", "created", "notes"],
)
def test_from_dict_names_missing_key(key: str) -> None:
    data = _card().to_dict()
    del data[key]
    with pytest.raises(CheckpointError, match=f"missing key '{key}'"):
        ModelCard.from_dict(data)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("std", 0.0, "'std': must be > 0"),
        ("mean", "0.5", "'mean'"),
        ("mean", float("nan"), "'mean'"),
        ("input_size", 64.0, "'input_size'"),
        ("input_size", True, "'input_size'"),
        ("arch", "resnet9000", "'arch': unknown arch"),
        ("thresholds", {"instrument": 1.5}, "'thresholds'"),
        ("thresholds", [0.5], "'thresholds'"),
        ("heads", [{"name": "x", "labels": ["a"]}], "'heads'"),
        ("heads", [{"name": "x"}], "'heads'"),
        ("heads", [], "'heads'"),
        ("created", "yesterday", "'created'"),
        ("name", 3, "'name'"),
        ("format_version", 2, "format_version 2 is not supported"),
    ],
)
def test_from_dict_rejects_bad_values(key: str, value: Any, match: str) -> None:
    data = _card().to_dict()
    data[key] = value
    with pytest.raises(CheckpointError, match=match):
        ModelCard.from_dict(data)


def test_from_dict_rejects_unknown_key() -> None:
    data = _card().to_dict()
    data["colour"] = "blue"
    with pytest.raises(CheckpointError, match="unknown key 'colour'"):
        ModelCard.from_dict(data)


# --- save / load --------------------------------------------------------------


def test_round_trip_gives_identical_logits(tmp_path: Path) -> None:
    model = _model(seed=3).eval()
    card = _card()
    path = tmp_path / "sub" / "model.pt"  # the folder is created
    sha = save_checkpoint(path, model, card)

    loaded = load_checkpoint(path)
    assert isinstance(loaded, LoadedModel)
    assert loaded.card == card
    assert loaded.path == path.resolve()
    assert loaded.sha256 == sha == hashlib.sha256(path.read_bytes()).hexdigest()
    assert file_sha256(path) == sha
    assert not loaded.model.training
    assert next(loaded.model.parameters()).device.type == "cpu"

    x = torch.rand(3, 3, SIZE, SIZE)
    with torch.inference_mode():
        want, got = model(x), loaded.model(x)
    assert set(got) == {"body_part", "instrument"}
    for name in want:
        assert torch.equal(want[name], got[name])
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[key]), key


def test_save_leaves_no_temp_files_and_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    first = save_checkpoint(path, _model(seed=0), _card())
    second = save_checkpoint(path, _model(seed=1), _card())
    assert first != second
    assert os.listdir(tmp_path) == ["model.pt"]
    assert file_sha256(path) == second


def test_failed_save_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.pt"
    old = save_checkpoint(path, _model(seed=0), _card())

    def crash(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(CheckpointError, match="No space left"):
        save_checkpoint(path, _model(seed=1), _card())
    assert os.listdir(tmp_path) == ["model.pt"]
    assert file_sha256(path) == old


def test_save_refuses_a_card_that_does_not_describe_the_model(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not describe the model"):
        save_checkpoint(tmp_path / "m.pt", _model(), _card(input_size=96))
    other_heads = (HeadSpec("body_part", BODY_PARTS),)
    with pytest.raises(CheckpointError, match="does not describe the model"):
        save_checkpoint(tmp_path / "m.pt", _model(), _card(heads=other_heads))
    assert not (tmp_path / "m.pt").exists()


def test_random_checkpoint(random_ckpt: tuple[Path, str], tmp_path: Path) -> None:
    path, sha = random_ckpt
    loaded = load_checkpoint(path)
    card = loaded.card
    assert loaded.sha256 == sha
    assert "random weights" in card.notes.lower() and "meaningless" in card.notes
    assert (card.arch, card.input_size, card.heads) == (ARCH, SIZE, STANDARD_HEADS)
    assert card.thresholds == {"instrument": 0.5, "min_confidence": 0.5}
    assert (card.mean, card.std) == (0.5, 0.25)
    # Seeded: the same seed gives the same weights, another seed does not.
    make_random_checkpoint(tmp_path / "same.pt", arch=ARCH, input_size=SIZE, seed=0)
    make_random_checkpoint(tmp_path / "other.pt", arch=ARCH, input_size=SIZE, seed=1)
    same = load_checkpoint(tmp_path / "same.pt")
    other = load_checkpoint(tmp_path / "other.pt")
    key = "heads.body_part.2.weight"
    assert torch.equal(loaded.model.state_dict()[key], same.model.state_dict()[key])
    assert not torch.equal(loaded.model.state_dict()[key], other.model.state_dict()[key])


def test_random_checkpoint_leaves_global_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    make_random_checkpoint(tmp_path / "r.pt", arch=ARCH, input_size=SIZE, seed=5)
    assert torch.equal(torch.rand(3), expected)


# --- refusing bad files ---------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nope.pt")


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path)


def test_not_a_torch_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable torch file"):
        load_checkpoint(path)


@pytest.mark.parametrize("keep", [0.5, 0.95])
def test_truncated_file(random_ckpt: tuple[Path, str], tmp_path: Path, keep: float) -> None:
    data = random_ckpt[0].read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="not a readable torch file"):
        load_checkpoint(path)


def test_tampered_card_is_refused(random_ckpt: tuple[Path, str], tmp_path: Path) -> None:
    data = random_ckpt[0].read_bytes()
    # The zip members are stored uncompressed, so the card text is in the bytes.
    assert data.count(b'"std": 0.25') == 1
    path = tmp_path / "tampered.pt"
    path.write_bytes(data.replace(b'"std": 0.25', b'"std": -1.0'))
    with pytest.raises(CheckpointError, match="'std': must be > 0"):
        load_checkpoint(path)
    # torch does not check zip CRCs: a plausible edit loads, and only the
    # sha256 (recorded with every prediction) tells the files apart.
    path.write_bytes(data.replace(b'"std": 0.25', b'"std": 0.26'))
    loaded = load_checkpoint(path)
    assert loaded.card.std == 0.26
    assert loaded.sha256 != random_ckpt[1]


_side_effects: list[str] = []


def _record(what: str) -> str:
    _side_effects.append(what)
    return what


class _Payload:
    """Unpickling this would call _record: weights_only must refuse it."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_record, ("code ran",))


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = _write_payload(tmp_path / "evil.pt", {"format": "xreg-checkpoint", "x": _Payload()})
    _side_effects.clear()
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_checkpoint(path)
    assert _side_effects == []


def test_wrong_format_key(tmp_path: Path) -> None:
    model = _model()
    payload = {"format": "other", "card": json.dumps(_card().to_dict()),
               "state_dict": model.state_dict()}
    with pytest.raises(CheckpointError, match="not an xreg checkpoint"):
        load_checkpoint(_write_payload(tmp_path / "m.pt", payload))
    with pytest.raises(CheckpointError, match="not an xreg checkpoint"):
        load_checkpoint(_write_payload(tmp_path / "t.pt", model.state_dict()))


def test_missing_card_key_in_file(tmp_path: Path) -> None:
    card = _card().to_dict()
    del card["mean"]
    payload = {"format": "xreg-checkpoint", "card": json.dumps(card),
               "state_dict": _model().state_dict()}
    with pytest.raises(CheckpointError, match="missing key 'mean'"):
        load_checkpoint(_write_payload(tmp_path / "m.pt", payload))


@pytest.mark.parametrize("card", [None, "{not json", json.dumps([1, 2])])
def test_bad_card_in_file(tmp_path: Path, card: Any) -> None:
    payload = {"format": "xreg-checkpoint", "card": card, "state_dict": _model().state_dict()}
    with pytest.raises(CheckpointError, match="card"):
        load_checkpoint(_write_payload(tmp_path / "m.pt", payload))


def _payload_with_state(state: Any) -> dict[str, Any]:
    return {"format": "xreg-checkpoint", "card": json.dumps(_card().to_dict()),
            "state_dict": state}


def test_state_dict_missing_a_key(tmp_path: Path) -> None:
    state = _model().state_dict()
    del state["heads.instrument.2.bias"]
    path = _write_payload(tmp_path / "m.pt", _payload_with_state(state))
    with pytest.raises(CheckpointError, match="do not fit.*1 missing"):
        load_checkpoint(path)


def test_state_dict_of_another_arch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = build_model("resnet18", STANDARD_HEADS, input_size=SIZE).state_dict()
    path = _write_payload(tmp_path / "m.pt", _payload_with_state(state))
    with pytest.raises(CheckpointError, match="do not fit mobilenet_v3_small"):
        load_checkpoint(path)


def test_state_dict_with_wrong_shapes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    heads = (HeadSpec("body_part", BODY_PARTS[:3]), STANDARD_HEADS[1])
    state = build_model(ARCH, heads, input_size=SIZE).state_dict()
    path = _write_payload(tmp_path / "m.pt", _payload_with_state(state))
    with pytest.raises(CheckpointError, match="shapes differ"):
        load_checkpoint(path)


def test_state_dict_not_tensors(tmp_path: Path) -> None:
    path = _write_payload(tmp_path / "m.pt", _payload_with_state({"a": 1}))
    with pytest.raises(CheckpointError, match="no state_dict of tensors"):
        load_checkpoint(path)


def test_card_for_an_unbuildable_model(tmp_path: Path) -> None:
    card = dataclasses.replace(_card(), arch="vit_b_16", input_size=40)
    path = _write_payload(tmp_path / "m.pt", _payload_with_state(_model().state_dict()))
    payload = torch.load(path, weights_only=True)
    payload["card"] = json.dumps(card.to_dict())
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="no buildable model.*divisible by 16"):
        load_checkpoint(path)
