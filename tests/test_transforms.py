"""Tests for xreg.model.transforms: preprocessing derived from the model card."""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from xreg.errors import UnreadableImageError
from xreg.model.checkpoint import ModelCard
from xreg.model.models import STANDARD_HEADS
from xreg.model.transforms import Preprocessor, preprocess

SIZE, MEAN, STD = 64, 0.4, 0.2


@pytest.fixture
def card() -> ModelCard:
    return ModelCard(
        name="t", arch="mobilenet_v3_small", heads=STANDARD_HEADS,
        input_size=SIZE, mean=MEAN, std=STD,
    )


@pytest.mark.parametrize("shape", [(300, 250), (SIZE, SIZE), (40, 90), (2500, 2000)])
def test_constant_image(card: ModelCard, shape: tuple[int, int]) -> None:
    out = preprocess(np.full(shape, 0.8, dtype=np.float32), card)
    assert out.shape == (3, SIZE, SIZE)
    assert out.dtype == torch.float32
    assert torch.allclose(out, torch.full((3, SIZE, SIZE), (0.8 - MEAN) / STD), atol=1e-5)


def test_orientation_is_kept(card: ModelCard) -> None:
    # Only the top-left quadrant is bright: a flip or a transpose moves it.
    pixels = np.zeros((300, 250), dtype=np.float32)
    pixels[:150, :125] = 1.0
    out = Preprocessor(card)(pixels)
    bright, dark = (1.0 - MEAN) / STD, (0.0 - MEAN) / STD
    q = SIZE // 2
    inner = slice(2, q - 2)  # away from the blurred edge
    far = slice(q + 2, SIZE - 2)
    assert torch.allclose(out[0, inner, inner], torch.tensor(bright), atol=1e-4)
    for rows, cols in [(inner, far), (far, inner), (far, far)]:
        assert torch.allclose(out[0, rows, cols], torch.tensor(dark), atol=1e-4)


def test_channels_are_the_same_grey_image(card: ModelCard) -> None:
    pixels = np.random.default_rng(0).random((120, 100), dtype=np.float32)
    out = preprocess(pixels, card)
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    assert out.std() > 0.5  # a real image, not a constant


def test_resize_matches_pillow_bilinear(card: ModelCard) -> None:
    # Up to twice the model size: Pillow's exact antialiased bilinear.
    pixels = np.random.default_rng(1).random((2 * SIZE, 2 * SIZE - 6), dtype=np.float32)
    ours = preprocess(pixels, card)[0].numpy() * STD + MEAN
    pil = np.asarray(Image.fromarray(pixels).resize((SIZE, SIZE), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(ours, pil, atol=1e-4)


def test_a_much_larger_film_is_box_reduced_first_and_stays_close(card: ModelCard) -> None:
    # Beyond twice the size a whole-factor box reduction comes first (much faster on
    # a 5 MP film); even on white noise it stays within 0.05 of the exact filter.
    pixels = np.random.default_rng(1).random((300, 250), dtype=np.float32)
    ours = preprocess(pixels, card)[0].numpy() * STD + MEAN
    image = Image.fromarray(pixels)
    exact = np.asarray(image.resize((SIZE, SIZE), Image.Resampling.BILINEAR))
    gap = np.asarray(image.resize((SIZE, SIZE), Image.Resampling.BILINEAR, reducing_gap=2.0))
    np.testing.assert_allclose(ours, gap, atol=1e-5)
    assert np.abs(ours - exact).max() < 0.05


def test_downscaling_is_antialiased(card: ModelCard) -> None:
    # A 1-pixel checkerboard must average to grey, not alias to black/white.
    yy, xx = np.mgrid[:SIZE * 10, :SIZE * 10]
    pixels = ((yy + xx) % 2).astype(np.float32)
    out = preprocess(pixels, card)[0] * STD + MEAN
    assert torch.allclose(out, torch.tensor(0.5), atol=0.02)


def test_input_array_is_not_modified(card: ModelCard) -> None:
    pixels = np.full((SIZE, SIZE), 0.3, dtype=np.float32)
    preprocess(pixels, card)
    assert (pixels == np.float32(0.3)).all()


def test_other_dtypes_and_layouts(card: ModelCard) -> None:
    pixels = np.random.default_rng(2).random((90, 70))
    want = preprocess(pixels.astype(np.float32), card)
    assert torch.allclose(preprocess(pixels, card), want, atol=1e-6)  # float64
    readonly = pixels.astype(np.float32)
    readonly.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns about non-writable arrays
        assert torch.equal(preprocess(readonly, card), want)
    # A transposed (non-contiguous) view is an image of the other orientation.
    assert torch.allclose(preprocess(pixels.T.astype(np.float32), card)[0], want[0].T,
                          atol=1e-5)


@pytest.mark.parametrize(
    "bad", [np.zeros((10, 10, 3), np.float32), np.zeros((0, 10), np.float32), [[0.1]]]
)
def test_rejects_non_grey_input(card: ModelCard, bad: object) -> None:
    with pytest.raises(UnreadableImageError, match="not a 2-D grey image"):
        preprocess(bad, card)  # type: ignore[arg-type]


def test_follows_the_card(card: ModelCard) -> None:
    other = ModelCard(
        name="u", arch="mobilenet_v3_small", heads=STANDARD_HEADS,
        input_size=96, mean=0.5, std=0.1,
    )
    pre = Preprocessor(other)
    assert pre.size == 96
    out = pre(np.full((50, 50), 0.7, dtype=np.float32))
    assert out.shape == (3, 96, 96)
    assert torch.allclose(out, torch.tensor(2.0), atol=1e-5)


def test_thread_safe_and_stackable(card: ModelCard) -> None:
    rng = np.random.default_rng(3)
    images = [rng.random((200 + i, 150), dtype=np.float32) for i in range(8)]
    pre = Preprocessor(card)
    serial = [pre(im) for im in images]
    with ThreadPoolExecutor(2) as pool:
        threaded = list(pool.map(pre, images))
    batch = torch.stack(threaded)
    assert batch.shape == (8, 3, SIZE, SIZE) and batch.is_contiguous()
    for a, b in zip(serial, threaded):
        assert torch.equal(a, b)
