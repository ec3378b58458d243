"""Site augmentation (xreg/train/augment.py) and the recipe keys that drive it."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from xreg.errors import ConfigError
from xreg.train import TrainConfig, load_train_config
from xreg.train.augment import OPT_IN, SITE_DEFAULTS, STEPS, augment_film, check_steps
from xreg.train.augment_style import _PROBS, StyleBank, build_bank, fourier, histmatch, restyle

REPO = Path(__file__).resolve().parents[1]
SHAPES = [(150, 120), (96, 200), (128, 128)]  # tall, wide, square


def _film(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A film-like float32 image in [0, 1] with structure, both extremes and noise."""
    yy, xx = np.mgrid[0:h, 0:w]
    x = (np.sin(yy / 7) * np.cos(xx / 5) + 1) / 2
    x += np.random.default_rng(seed).normal(0, 0.05, (h, w))
    x = np.clip(x, 0, 1)
    x[:4, :4], x[-4:, -4:] = 0.0, 1.0
    return x.astype(np.float32)


def _in_range(x: np.ndarray, tol: float = 0.0) -> bool:
    return bool(np.isfinite(x).all() and x.min() >= -tol and x.max() <= 1.0 + tol)


# -------------------------------------------------------------------- the steps


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", list(STEPS))
def test_every_step_keeps_shape_dtype_and_range(name: str, shape: tuple[int, int]) -> None:
    x = _film(*shape)
    before = x.copy()
    for seed in range(5):
        out = STEPS[name](x, np.random.default_rng(seed))
        assert out.dtype == np.float32 and out.ndim == 2
        # blur's kernel sums to 1 only to float precision (1.0000001 from a white
        # border); augment_film clips its result, so a step may be off by an ulp.
        assert _in_range(out, tol=1e-6), (name, seed, float(out.min()), float(out.max()))
        if name == "crop":
            assert out.shape[0] <= shape[0] and out.shape[1] <= shape[1]
        else:
            assert out.shape == shape
    np.testing.assert_array_equal(x, before)  # the input is never modified


@pytest.mark.parametrize("name", list(STEPS))
def test_every_step_is_deterministic_under_a_seed(name: str) -> None:
    x = _film(150, 120)
    a = STEPS[name](x, np.random.default_rng(7))
    b = STEPS[name](x, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", sorted(set(STEPS) - {"invert", "equalise"}))
def test_random_steps_differ_between_seeds(name: str) -> None:
    x = _film(150, 120)
    outs = [STEPS[name](x, np.random.default_rng(s)) for s in range(6)]
    assert any(o.shape != outs[0].shape or not np.array_equal(o, outs[0]) for o in outs[1:])


def test_invert_maps_grey_levels_to_their_complement() -> None:
    x = np.full((40, 30), 0.2, np.float32)
    out = STEPS["invert"](x, np.random.default_rng(0))
    assert out.dtype == np.float32 and out.shape == (40, 30)
    np.testing.assert_allclose(out, 0.8, atol=1e-6)
    np.testing.assert_allclose(STEPS["invert"](np.array([[0.0, 1.0]], np.float32),
                                               np.random.default_rng(0)), [[1.0, 0.0]])


@pytest.mark.parametrize("min_area", [0.25, 0.6, 0.9])
def test_crop_is_a_sub_array_of_at_least_min_area(min_area: float) -> None:
    h, w = 100, 80
    # Every pixel unique, so where the crop came from can be read off its corner.
    x = (np.arange(h * w, dtype=np.float32) / (h * w)).reshape(h, w)
    crop = STEPS["crop"]
    areas = []
    for seed in range(30):
        c = crop(x, np.random.default_rng(seed), min_area=min_area)
        ch, cw = c.shape
        assert 8 <= ch <= h and 8 <= cw <= w
        top, left = divmod(int(np.argmin(np.abs(x - c[0, 0]))), w)
        assert top + ch <= h and left + cw <= w
        np.testing.assert_array_equal(c, x[top:top + ch, left:left + cw])
        # min_area of the film, but for the rounding of each side to whole pixels
        assert c.size >= min_area * h * w * 0.95, (seed, c.shape)
        assert 3 / 4 * 0.9 <= cw / ch <= 4 / 3 * 1.1
        areas.append(c.size)
    assert len(set(areas)) > 1 and min(areas) < h * w  # random boxes, not the whole film


# ------------------------------------------------------------------ augment_film


@pytest.mark.parametrize("shape", [(300, 200), (180, 400), (256, 256)])
def test_augment_film_gives_the_input_size(shape: tuple[int, int]) -> None:
    x = _film(*shape)
    for seed in range(8):
        out = augment_film(x, 64, SITE_DEFAULTS, np.random.default_rng(seed))
        assert out.shape == (64, 64) and out.dtype == np.float32
        assert _in_range(out)


def test_augment_film_is_deterministic_under_a_seed_and_differs_between_seeds() -> None:
    x = _film(300, 200)
    first = [augment_film(x, 64, SITE_DEFAULTS, np.random.default_rng(s)) for s in range(6)]
    again = [augment_film(x, 64, SITE_DEFAULTS, np.random.default_rng(s)) for s in range(6)]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(first[0], o) for o in first[1:])


@pytest.mark.parametrize("shape", [(200, 200), (300, 160)])
def test_no_steps_is_a_plain_resize(shape: tuple[int, int]) -> None:
    x = _film(*shape)
    plain = cv2.resize(x, (64, 64), interpolation=cv2.INTER_AREA)
    for steps in ({}, dict.fromkeys(STEPS, 0.0)):
        for seed in range(3):
            out = augment_film(x, 64, steps, np.random.default_rng(seed))
            np.testing.assert_allclose(out, plain, atol=1e-6)


def test_no_steps_upsamples_a_small_film_linearly() -> None:
    x = _film(40, 50)
    plain = cv2.resize(x, (64, 64), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(augment_film(x, 64, {}, np.random.default_rng(0)),
                               np.clip(plain, 0, 1), atol=1e-6)


@pytest.mark.parametrize("name", list(STEPS))
def test_one_step_at_probability_one_changes_the_film(name: str) -> None:
    x = _film(200, 200)
    plain = cv2.resize(x, (64, 64), interpolation=cv2.INTER_AREA)
    out = augment_film(x, 64, {name: 1.0}, np.random.default_rng(1))
    assert out.shape == (64, 64) and _in_range(out)
    assert float(np.abs(out - plain).max()) > 1e-3, name


def test_invert_through_augment_film_is_exactly_the_complement() -> None:
    x = _film(200, 200)
    plain = cv2.resize(x, (64, 64), interpolation=cv2.INTER_AREA)
    out = augment_film(x, 64, {"invert": 1.0}, np.random.default_rng(0))
    np.testing.assert_allclose(out, 1.0 - plain, atol=1e-6)


# ------------------------------------------------------------------- check_steps


def test_check_steps_accepts_probabilities_and_returns_floats() -> None:
    assert check_steps({"crop": 1, "jpeg": 0, "blur": 0.25}) == \
        {"crop": 1.0, "jpeg": 0.0, "blur": 0.25}
    assert all(type(p) is float for p in check_steps({"crop": 1}).values())
    assert check_steps(SITE_DEFAULTS) == dict(SITE_DEFAULTS)
    assert set(SITE_DEFAULTS) == set(STEPS) - set(OPT_IN)  # opt-in steps: off by default


@pytest.mark.parametrize(("steps", "match"), [
    ({"sharpen": 0.5}, "site_augment.*unknown step 'sharpen'"),
    ({"crop": 0.5, "Crop": 0.5}, "unknown step 'Crop'"),
    ({"jpeg": 1.5}, "site_augment.*jpeg must be a probability"),
    ({"blur": -0.1}, "blur must be a probability"),
    ({"noise": True}, "noise must be a probability"),
    ({"crop": "0.5"}, "crop must be a probability"),
    ({"rotate": float("nan")}, "rotate must be a probability"),
    (["crop"], "site_augment.*mapping"),
])
def test_check_steps_names_the_bad_step(steps: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        check_steps(steps)  # type: ignore[arg-type]


# ------------------------------------------------------------------ recipe keys


def test_site_augment_default_off_and_empty() -> None:
    assert TrainConfig(site_augment="default").site_augment == dict(SITE_DEFAULTS)
    assert TrainConfig(site_augment="off").site_augment == {}
    assert TrainConfig(site_augment={}).site_augment == {}
    assert TrainConfig().site_augment == {}
    assert TrainConfig(site_augment={"crop": 1}).site_augment == {"crop": 1.0}
    assert TrainConfig(site_augment="default").to_dict()["site_augment"] == dict(SITE_DEFAULTS)


@pytest.mark.parametrize(("text", "match"), [
    ("site_augment: {blurr: 0.1}", "'site_augment'.*'blurr'"),
    ("site_augment: {crop: 2}", "'site_augment'.*crop"),
    ("site_augment: sometimes", "'site_augment'"),
    ("normalise: foo", "'normalise'.*foo"),
    ("cache_size: 10", "'cache_size'.*10"),
])
def test_bad_site_keys_are_named(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"train:\n  {text}\n")
    with pytest.raises(ConfigError, match=match):
        load_train_config(path)


def test_cache_size_sets_the_decode_size() -> None:
    assert TrainConfig(input_size=64, cache_size=80).decode_size == 80
    assert TrainConfig(input_size=64, cache_size=0).decode_size == 64
    assert TrainConfig(input_size=224, cache_size=64).decode_size == 224


def test_shipped_sites_recipe_loads_without_its_manifests(tmp_path: Path) -> None:
    shipped = REPO / "configs" / "bodypart_sites.yaml"
    copy = tmp_path / "bodypart_sites.yaml"
    shutil.copy(shipped, copy)
    for path in (shipped, copy):
        cfg = load_train_config(path)
        assert cfg.site_augment == dict(SITE_DEFAULTS)
        assert cfg.normalise == "percentile"
        assert cfg.cache_size == 320 and cfg.decode_size == 320
        by_name = {d.name: d for d in cfg.datasets}
        assert set(by_name) == {"fracatlas", "spine_cadma", "chest_nih",
                                "shoulder_implants", "phantoms"}
        manifests = [Path(d.path) for d in cfg.datasets if d.synth is None]
        assert len(manifests) == 4
        # Relative to the config file; loading never opens them.
        assert all(p.parent == path.parent for p in manifests)
    assert not any((tmp_path / f"{n}.csv").exists() for n in by_name)


# ------------------------------------------- hardware and restyle (shortcut breakers)

def _quantile_distance(x: np.ndarray, quantiles: np.ndarray) -> float:
    """1-D Wasserstein distance between a film's grey levels and a quantile vector."""
    return float(np.abs(np.quantile(x, _PROBS) - quantiles).mean())


@pytest.fixture(scope="module")
def bank() -> StyleBank:
    """Three references of another 'site': bright, high-contrast films."""
    rng = np.random.default_rng(11)
    return build_bank([np.clip(rng.beta(5, 2, (64, 64)), 0, 1).astype(np.float32)
                       for _ in range(3)])


def test_opt_in_steps_default_to_off_and_leave_todays_recipe_unchanged(bank: StyleBank) -> None:
    assert set(OPT_IN) == {"hardware", "restyle"} and not set(OPT_IN) & set(SITE_DEFAULTS)
    zero = {**SITE_DEFAULTS, **dict.fromkeys(OPT_IN, 0.0)}
    x = _film(200, 180)
    for seed in range(6):
        a = augment_film(x, 64, SITE_DEFAULTS, np.random.default_rng(seed))
        b, flags = augment_film(x, 64, zero, np.random.default_rng(seed), bank=bank,
                                return_flags=True)
        np.testing.assert_array_equal(a, b)  # the same random numbers for the old steps
        assert flags == {"hardware": False}


@pytest.mark.parametrize("name", OPT_IN)
def test_opt_in_steps_are_seeded_and_switchable(name: str, bank: StyleBank) -> None:
    x = _film(200, 180)
    steps = {**SITE_DEFAULTS, name: 1.0}
    runs = [augment_film(x, 64, steps, np.random.default_rng(s), bank=bank) for s in range(4)]
    again = [augment_film(x, 64, steps, np.random.default_rng(s), bank=bank) for s in range(4)]
    for a, b in zip(runs, again):
        assert a.shape == (64, 64) and a.dtype == np.float32 and _in_range(a)
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(runs[0], r) for r in runs[1:])
    # On its own, at probability 1 the step changes every film; at 0 never.
    plain = cv2.resize(x, (64, 64), interpolation=cv2.INTER_AREA)
    for seed in range(4):
        on = augment_film(x, 64, {name: 1.0}, np.random.default_rng(seed), bank=bank)
        off = augment_film(x, 64, {name: 0.0}, np.random.default_rng(seed), bank=bank)
        assert float(np.abs(on - plain).max()) > 1e-3
        np.testing.assert_allclose(off, plain, atol=1e-6)


def test_hardware_flag_says_whether_metal_was_pasted() -> None:
    x = _film(120, 120)
    seen = []
    for seed in range(20):
        _, on = augment_film(x, 64, {"hardware": 1.0}, np.random.default_rng(seed),
                             return_flags=True)
        _, off = augment_film(x, 64, {"hardware": 0.0, "crop": 1.0},
                              np.random.default_rng(seed), return_flags=True)
        _, half = augment_film(x, 64, {"hardware": 0.5}, np.random.default_rng(seed),
                               return_flags=True)
        assert on == {"hardware": True} and off == {"hardware": False}
        seen.append(half["hardware"])
    assert any(seen) and not all(seen)


@pytest.mark.parametrize("seed", range(8))
def test_hardware_adds_bright_metal_near_the_top_intensity(seed: int) -> None:
    x = _film(224, 224, seed) * np.float32(0.8)  # the brightest anatomy at 0.8
    top = float(np.quantile(x, 0.995))
    out = STEPS["hardware"](x, np.random.default_rng(seed))
    assert out.shape == x.shape and out.dtype == np.float32 and _in_range(out)
    # More bright area than the film had ...
    assert (out > top + 0.01).sum() >= (x > top + 0.01).sum() + 20
    # ... made of near-uniform metal at or above the film's 99.5th percentile (the
    # rest of the changed pixels are its softened rim).
    changed = np.abs(out - x) > 0.02
    metal = out[changed & (out > top)]
    assert metal.size >= 0.3 * changed.sum()
    assert float(metal.min()) >= top and float(np.ptp(np.quantile(metal, [0.5, 0.95]))) < 0.05
    # Far from the pasted pieces the film is untouched.
    assert (out == x).mean() > 0.5


def test_hardware_pieces_vary_in_size_up_to_a_large_prosthesis() -> None:
    x = np.full((224, 224), 0.3, np.float32)
    extents = []
    for seed in range(60):
        metal = (STEPS["hardware"](x, np.random.default_rng(seed)) > 0.5).astype(np.uint8)
        _, _, stats, _ = cv2.connectedComponentsWithStats(metal)
        # the largest connected piece: its longer side, a fraction of the film's
        extents.append(stats[1:, 2:4].max() / 224)
    assert min(extents) < 0.12 and 0.3 < max(extents) < 0.75


def test_histmatch_moves_the_histogram_onto_the_reference(bank: StyleBank) -> None:
    x = _film(64, 64) * np.float32(0.5)  # a dark, low-contrast film
    ref = bank.quantiles[0]
    before = _quantile_distance(x, ref)
    for seed in range(6):
        out = histmatch(x, np.random.default_rng(seed), ref)
        assert out.dtype == np.float32 and _in_range(out)
        assert _quantile_distance(out, ref) < 0.55 * before
        # Monotone: a brighter pixel stays at least as bright.
        order = np.argsort(x, axis=None)
        assert (np.diff(out.ravel()[order]) >= -1e-6).all()


def test_restyle_moves_the_film_towards_the_banks_look(bank: StyleBank) -> None:
    x = _film(64, 64) * np.float32(0.5)
    before = np.mean([_quantile_distance(x, q) for q in bank.quantiles])
    after = [np.mean([_quantile_distance(restyle(x, np.random.default_rng(s), bank), q)
                      for q in bank.quantiles]) for s in range(12)]
    assert max(after) < before and np.mean(after) < 0.6 * before


def test_fourier_keeps_the_phase_and_swaps_only_low_frequencies(bank: StyleBank) -> None:
    x = _film(64, 64) * np.float32(0.6) + np.float32(0.2)
    own = build_bank([x])
    # Its own amplitude as the reference: the film comes back.
    np.testing.assert_allclose(fourier(x, np.random.default_rng(0), own.amplitude[0]), x,
                               atol=1e-4)
    ref = build_bank([_film(64, 64, 3) * np.float32(0.4) + np.float32(0.3)])
    out = fourier(x, np.random.default_rng(0), ref.amplitude[0])
    assert out.dtype == np.float32 and out.shape == x.shape and _in_range(out)
    assert 0.0 < out.min() and out.max() < 1.0  # unclipped, so the spectrum tells
    assert float(np.abs(out - x).max()) > 0.01
    fx, fo = np.fft.rfft2(x.astype(np.float64)), np.fft.rfft2(out.astype(np.float64))
    k = int(np.ceil(0.05 * 64))
    high = np.ones(fx.shape, bool)
    high[:k + 1, :k + 1] = high[-k:, :k + 1] = False
    scale = float(np.abs(fx).max())
    np.testing.assert_allclose(np.abs(fo[high]), np.abs(fx[high]), atol=1e-4 * scale)
    strong = np.abs(fx) > 1e-3 * scale  # the phase of every clear component is kept
    np.testing.assert_allclose(np.exp(1j * np.angle(fo[strong])),
                               np.exp(1j * np.angle(fx[strong])), atol=1e-3)
    assert not np.allclose(np.abs(fo[~high]), np.abs(fx[~high]), rtol=1e-2)


def test_build_bank_shapes_and_refuses_nothing() -> None:
    b = build_bank([_film(224, 224, s) for s in range(5)])
    assert len(b) == 5 and b.quantiles.shape == (5, 256) and b.amplitude.shape[0] == 5
    assert (np.diff(b.quantiles, axis=1) >= 0).all()
    with pytest.raises(ValueError):
        build_bank([])


@pytest.mark.parametrize("name", OPT_IN)
def test_opt_in_steps_cost_well_under_two_ms_at_224(name: str, bank: StyleBank) -> None:
    import time
    x = _film(224, 224)
    big = build_bank([_film(224, 224, s) for s in range(4)])
    step = (lambda a, r: restyle(a, r, big)) if name == "restyle" else STEPS[name]
    step(x, np.random.default_rng(0))
    start = time.perf_counter()
    for seed in range(50):
        step(x, np.random.default_rng(seed))
    per_film = (time.perf_counter() - start) / 50
    assert per_film < 0.006, per_film  # ~1 ms on a loaded 2-core box; generous for CI


def test_site_augment_default_key_extends_the_defaults(tmp_path: Path) -> None:
    steps = check_steps({"default": True, "hardware": 0.3, "restyle": 0.25, "crop": 0.1})
    assert steps == {**SITE_DEFAULTS, "hardware": 0.3, "restyle": 0.25, "crop": 0.1}
    assert check_steps({"default": False, "hardware": 0.3}) == {"hardware": 0.3}
    with pytest.raises(ConfigError, match="site_augment.*default must be true or false"):
        check_steps({"default": 1, "hardware": 0.3})
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  site_augment: {default: true, hardware: 0.3, restyle: 0.3}\n")
    cfg = load_train_config(path)
    assert cfg.site_augment == {**SITE_DEFAULTS, "hardware": 0.3, "restyle": 0.3}
    assert cfg.to_dict()["site_augment"] == cfg.site_augment  # expanded: no "default" key


def test_hardware_on_a_film_that_overshoots_one_stays_in_range() -> None:
    from xreg.train.augment_metal import hardware

    film = np.full((96, 96), 1.02, np.float32)  # a resampled cache can overshoot
    film[:48] = 0.2
    for seed in range(20):
        out = hardware(film, np.random.default_rng(seed))  # raised ValueError before
        assert out.shape == film.shape and np.isfinite(out).all()
        pasted = out != film
        assert pasted.any() and out[pasted].max() <= 1.0  # the metal itself is in range
