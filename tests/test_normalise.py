"""One grey-level normalisation (xreg.inference.preprocess.normalise_intensity) for
training and sorting, and the card key that names it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xreg.errors import CheckpointError
from xreg.inference.preprocess import Preprocessor, normalise_intensity, resize_grey
from xreg.model.card import INTENSITY_MODES, ModelCard
from xreg.model.checkpoint import load_checkpoint
from xreg.model.labels import HeadSpec
from xreg.synth.generate import generate_dataset
from xreg.train import TrainConfig, train
from xreg.train.augment import SITE_DEFAULTS

# As tests/test_train.py's TINY: a small random-init model that trains in seconds.
TINY = dict(arch="mobilenet_v3_small", input_size=64, pretrained="none", lr=2e-3,
            max_epochs=3, milestones=[2], resamples=100, batch_size=16)


def _card(normalise: str = "percentile", **extra: object) -> ModelCard:
    return ModelCard(name="n", arch="mobilenet_v2", heads=(HeadSpec("body_part", ("a", "b")),),
                     input_size=32, mean=0.4, std=0.2, normalise=normalise, **extra)


# ---------------------------------------------------------------- the function


def test_percentiles_1_and_99_become_0_and_1() -> None:
    # A ramp of 10,000 evenly spaced values: its 1st and 99th percentiles are known.
    x = np.linspace(0.2, 0.6, 10_000, dtype=np.float64).reshape(100, 100).astype(np.float32)
    lo, hi = 0.2 + 0.01 * 0.4, 0.6 - 0.01 * 0.4
    out = normalise_intensity(x, "percentile")
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(out, np.clip((x - lo) / (hi - lo), 0, 1), atol=1e-4)
    assert out.min() == 0.0 and out.max() == 1.0
    assert (out[x <= lo - 1e-4] == 0.0).all() and (out[x >= hi + 1e-4] == 1.0).all()
    assert out.flat[x.size // 2] == pytest.approx(0.5, abs=1e-3)
    assert (x == np.linspace(0.2, 0.6, 10_000).reshape(100, 100).astype(np.float32)).all()


def test_exposure_and_window_do_not_matter() -> None:
    rng = np.random.default_rng(1)
    film = rng.uniform(0, 1, (60, 50)).astype(np.float32)
    dimmer = (0.3 * film + 0.05).astype(np.float32)  # another exposure, another LUT
    np.testing.assert_allclose(normalise_intensity(dimmer, "percentile"),
                               normalise_intensity(film, "percentile"), atol=1e-4)


def test_a_flat_film_does_not_divide_by_zero() -> None:
    out = normalise_intensity(np.full((20, 20), 0.5, np.float32), "percentile")
    assert np.isfinite(out).all() and (out == 0.0).all()


def test_a_batch_is_normalised_film_by_film() -> None:
    rng = np.random.default_rng(0)
    batch = np.stack([rng.uniform(lo, hi, (40, 30)) for lo, hi in
                      ((0.0, 1.0), (0.2, 0.4), (0.6, 0.9))]).astype(np.float32)
    out = normalise_intensity(batch, "percentile")
    assert out.shape == batch.shape and out.dtype == np.float32
    for i in range(len(batch)):
        np.testing.assert_array_equal(out[i], normalise_intensity(batch[i], "percentile"))
        assert out[i].min() == 0.0 and out[i].max() == 1.0
    # (B, 2, H, W), a hip pair per item, works on the last two axes as well.
    pairs = batch[:2].reshape(1, 2, 40, 30)
    np.testing.assert_array_equal(normalise_intensity(pairs, "percentile")[0], out[:2])


def test_none_returns_the_input_and_unknown_modes_are_refused() -> None:
    x = np.random.default_rng(0).uniform(0.2, 0.3, (16, 16)).astype(np.float32)
    assert normalise_intensity(x, "none") is x
    assert INTENSITY_MODES == ("none", "percentile")
    for mode in ("zscore", "Percentile", ""):
        with pytest.raises(ValueError, match=f"unknown intensity mode {mode!r}"):
            normalise_intensity(x, mode)


# ------------------------------------------------------------------- the sort


def test_the_preprocessor_normalises_as_its_card_says() -> None:
    film = np.random.default_rng(2).uniform(0.1, 0.3, (90, 70)).astype(np.float32)
    resized = resize_grey(film, 32)
    with_pct = Preprocessor(_card("percentile")).grey(film)
    np.testing.assert_allclose(with_pct, (normalise_intensity(resized, "percentile") - 0.4) / 0.2,
                               atol=1e-6)
    without = Preprocessor(_card("none")).grey(film)
    np.testing.assert_allclose(without, (resized - 0.4) / 0.2, atol=1e-6)
    assert not np.allclose(with_pct, without, atol=0.1)
    # The 3-channel input repeats that grey image.
    np.testing.assert_allclose(Preprocessor(_card("percentile"))(film)[2], with_pct)


def test_the_preprocessor_normalises_each_view_of_a_pair() -> None:
    rng = np.random.default_rng(3)
    ap = rng.uniform(0.0, 0.2, (50, 40)).astype(np.float32)
    lateral = rng.uniform(0.5, 1.0, (45, 60)).astype(np.float32)
    out = Preprocessor(_card("percentile")).grey_pair(ap, lateral)
    assert out.shape == (32, 64)
    for half, film in ((out[:, :32], ap), (out[:, 32:], lateral)):
        expected = (normalise_intensity(resize_grey(film, 32), "percentile") - 0.4) / 0.2
        np.testing.assert_allclose(half, expected, atol=1e-6)


def test_cards_carry_normalise_and_older_cards_still_load() -> None:
    card = _card("percentile", guard={"energy_max": -3.5})
    assert ModelCard.from_dict(card.to_dict()) == card
    old = {k: v for k, v in card.to_dict().items() if k not in ("normalise", "guard")}
    loaded = ModelCard.from_dict(old)
    assert loaded.normalise == "none" and dict(loaded.guard) == {}
    with pytest.raises(CheckpointError, match="normalise"):
        ModelCard.from_dict({**card.to_dict(), "normalise": "zscore"})


# ------------------------------------------------------------------ training


def test_training_normalises_every_batch_with_the_same_function(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import xreg.train.loop as loop

    generate_dataset(tmp_path / "ph", 60, seed=5, size=96, instrument_rate=0.3, workers=1)
    calls: list[tuple[tuple[int, ...], str, float, float]] = []

    def counting(x: np.ndarray, mode: str) -> np.ndarray:
        out = normalise_intensity(x, mode)
        calls.append((x.shape, mode, float(out.min(axis=(-2, -1)).max()),
                      float(out.max(axis=(-2, -1)).min())))
        return out

    monkeypatch.setattr(loop, "normalise_intensity", counting)
    config = TrainConfig(**{**TINY, "max_epochs": 1, "batch_size": 8, "samples_per_epoch": 24},
                         normalise="percentile", site_augment="default", cache_size=80)
    result = train(config, tmp_path / "ph" / "labels.csv", tmp_path / "m.pt", workers=1)

    assert len(calls) == 3  # 24 draws in batches of 8, each normalised once
    for shape, mode, lowest, highest in calls:
        assert mode == "percentile" and shape == (8, 64, 64)
        assert lowest == 0.0 and highest == 1.0  # every film in the batch spans 0..1
    assert result.card.normalise == "percentile"
    assert ModelCard.from_dict(result.card.to_dict()) == result.card
    assert load_checkpoint(tmp_path / "m.pt").card.normalise == "percentile"
    recipe = result.card.training["recipe"]
    assert recipe["normalise"] == "percentile" and recipe["cache_size"] == 80
    assert recipe["site_augment"] == dict(SITE_DEFAULTS)
