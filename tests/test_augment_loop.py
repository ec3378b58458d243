"""The training loop's side of the shortcut breakers: pasted metal makes the
instrument target positive, restyle borrows its looks from the training films."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from xreg.synth.generate import generate_dataset
from xreg.train import TrainConfig, train
from xreg.train.augment_style import StyleBank
from xreg.train.batches import site_batch, style_bank, with_hardware
from xreg.train.loop import IGNORE, Tensors

TINY = dict(arch="mobilenet_v3_small", input_size=64, pretrained="none", lr=2e-3,
            max_epochs=2, milestones=[2], resamples=50, batch_size=16)


def _films(n: int, size: int = 80) -> torch.Tensor:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    base = (np.sin(yy / 6) * np.cos(xx / 4) + 1) / 2 * 0.7
    return torch.from_numpy(np.stack([
        np.clip(base + rng.normal(0, 0.03, base.shape), 0, 1) for _ in range(n)
    ]).astype(np.float32))


def test_pasted_films_become_instrument_positive_and_nothing_else_changes() -> None:
    targets = {"body_part": torch.tensor([0, 3, 2, 1]),
               "instrument": torch.tensor([0, IGNORE, 1, 0])}
    pasted = torch.tensor([True, True, False, False])
    out = with_hardware(targets, pasted)
    assert out["instrument"].tolist() == [1, 1, 1, 0]
    assert out["body_part"] is targets["body_part"]
    assert targets["instrument"].tolist() == [0, IGNORE, 1, 0]  # the split's labels stay
    # Nothing pasted, or no instrument head: the targets as they were.
    assert with_hardware(targets, torch.zeros(4, dtype=torch.bool)) is targets
    only_body = {"body_part": targets["body_part"]}
    assert with_hardware(only_body, pasted) is only_body
    # A set target (2-D) becomes the positive class alone.
    sets = {"instrument": torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])}
    got = with_hardware(sets, torch.tensor([True, True, False]))["instrument"]
    assert got.tolist() == [[0.0, 1.0], [0.0, 1.0], [1.0, 1.0]]


@pytest.mark.parametrize(("p", "expect"), [(1.0, True), (0.0, False)])
def test_site_batch_reports_the_films_with_pasted_metal(p: float, expect: bool) -> None:
    cfg = TrainConfig(input_size=64, site_augment={"hardware": p, "crop": 0.5})
    films, pasted = site_batch(_films(5), cfg, torch.Generator().manual_seed(0))
    assert films.shape == (5, 64, 64) and films.dtype == torch.float32
    assert pasted.dtype == torch.bool and pasted.tolist() == [expect] * 5
    again, _ = site_batch(_films(5), cfg, torch.Generator().manual_seed(0))
    assert torch.equal(films, again)


def test_site_batch_without_augmentation_pastes_nothing() -> None:
    cfg = TrainConfig(input_size=64)
    films, pasted = site_batch(_films(3, 64), cfg, torch.Generator().manual_seed(0))
    assert films.shape == (3, 64, 64) and not pasted.any()


def test_style_bank_only_when_restyle_is_on_and_drawn_from_the_training_films() -> None:
    data = Tensors(_films(40), {"instrument": torch.zeros(40, dtype=torch.long)})
    assert style_bank(data, TrainConfig(input_size=64, site_augment="default")) is None
    cfg = TrainConfig(input_size=64, site_augment={"restyle": 0.3})
    bank = style_bank(data, cfg)
    assert isinstance(bank, StyleBank) and len(bank) == 40
    weighted = Tensors(data.pixels, data.targets, torch.ones(40, dtype=torch.float64))
    again = style_bank(weighted, cfg)
    assert again is not None and len(again) == 40
    np.testing.assert_array_equal(style_bank(data, cfg).quantiles, bank.quantiles)  # seeded


def test_tiny_training_with_hardware_and_restyle_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import xreg.train.loop as loop
    positive: list[int] = []

    def spy(targets: dict[str, torch.Tensor], pasted: torch.Tensor) -> dict[str, torch.Tensor]:
        out = with_hardware(targets, pasted)
        positive.append(int((out["instrument"][pasted] == 1).sum()) - int(pasted.sum()))
        positive.append(int(pasted.sum()))
        return out

    monkeypatch.setattr(loop, "with_hardware", spy)  # the name fit() calls
    root = tmp_path / "phantoms"
    generate_dataset(root, 72, seed=3, size=80, instrument_rate=0.3, workers=1)
    cfg = TrainConfig(**TINY, cache_size=80, site_augment={
        "default": True, "hardware": 0.5, "restyle": 0.5})
    result = train(cfg, root / "labels.csv", tmp_path / "m.pt")
    assert [e.epoch for e in result.log] == [1, 2]
    assert all(np.isfinite(e.train_loss) and np.isfinite(e.val_loss) for e in result.log)
    assert result.card.training["recipe"]["site_augment"]["hardware"] == 0.5
    # The loss saw every pasted film as instrument-positive, and about half were pasted.
    assert all(d == 0 for d in positive[::2]) and sum(positive[1::2]) > 10
