"""Tests for xreg.io.raster: JPEGs whose file ends before the end-of-image marker.

Pictures are written here with Pillow and cut; a cut JPEG is decoded when
at least ``MIN_RECOVERED`` of its picture survives, else it stays
"truncated file".
"""

from __future__ import annotations

import io
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from xreg.errors import UnreadableImageError
from xreg.io import load_image, raster, try_load_image

SIZE = 512


def picture(border: float = 0.0, value: int = 0) -> np.ndarray:
    """A 512x512 grey gradient with noise, optionally a uniform bottom band."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    arr = ((x + y) / 4 + rng.normal(0, 10, (SIZE, SIZE))).clip(0, 255)
    if border:
        arr[SIZE - int(SIZE * border) :] = value
    return arr.astype(np.uint8)


def jpeg(arr: np.ndarray, mode: str | None = None, **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def strict_decode_fails(data: bytes) -> bool:
    try:
        Image.open(io.BytesIO(data)).load()
    except OSError as exc:
        return "truncated" in str(exc)
    return False


def percent(warning: str | None) -> float:
    assert warning is not None
    match = re.match(r"truncated JPEG: (\d+\.\d)% of the picture decoded", warning)
    assert match, warning
    return float(match.group(1))


@pytest.mark.parametrize("target", [None, 224])
def test_intact_jpeg_has_no_warning(target: int | None) -> None:
    image = load_image(jpeg(picture()), target)
    assert image.meta.warning is None
    assert image.pixels.shape == ((SIZE, SIZE) if target is None else (256, 256))


@pytest.mark.parametrize("target, mcu", [(None, 8), (224, 4)])
@pytest.mark.parametrize("cut", [20, 300])
def test_jpeg_missing_its_last_bytes_is_decoded_with_a_warning(
    target: int | None, mcu: int, cut: int
) -> None:
    data = jpeg(picture())
    assert strict_decode_fails(data[:-cut])
    whole = load_image(data, target)
    image = load_image(data[:-cut], target)
    assert image.meta.warning.startswith("truncated JPEG:")  # type: ignore[union-attr]
    assert 99.0 <= percent(image.meta.warning) <= 100.0
    assert image.meta.reduced_by == whole.meta.reduced_by
    assert image.pixels.shape == whole.pixels.shape
    # Everything above the last MCU row is the intact decode, bit for bit.
    np.testing.assert_array_equal(image.pixels[:-mcu], whole.pixels[:-mcu])
    assert np.abs(image.pixels - whole.pixels).mean() < 0.005


@pytest.mark.parametrize("target", [None, 224])
def test_jpeg_cut_in_half_stays_truncated_file(target: int | None) -> None:
    data = jpeg(picture())
    half = data[: len(data) // 2]
    with pytest.raises(UnreadableImageError, match="truncated file") as info:
        load_image(half, target)
    assert info.value.reason == "truncated file"
    assert try_load_image(half, target) == "truncated file"


def test_share_below_the_threshold_is_truncated_file(monkeypatch: pytest.MonkeyPatch) -> None:
    cut = jpeg(picture())[:-300]
    share = percent(load_image(cut).meta.warning) / 100
    assert share < 0.999
    monkeypatch.setattr(raster, "MIN_RECOVERED", 0.999)
    assert try_load_image(cut) == "truncated file"


@pytest.mark.parametrize("value", [0, 255])
@pytest.mark.parametrize("target", [None, 224])
def test_uniform_bottom_border_is_not_counted_as_missing(target: int | None, value: int) -> None:
    data = jpeg(picture(border=0.1, value=value))
    cut = data[:-10]
    assert strict_decode_fails(cut)
    whole = load_image(data, target)
    image = load_image(cut, target)
    assert percent(image.meta.warning) >= 99.0  # the uniform 10% is picture, not fill
    band = slice(int(image.pixels.shape[0] * 0.9) + 8, -8)
    np.testing.assert_array_equal(image.pixels[band], whole.pixels[band])
    np.testing.assert_allclose(image.pixels[band], value / 255, atol=0.02)


def test_progressive_jpeg_cut_in_a_late_scan_is_decoded_whole() -> None:
    data = jpeg(picture(), progressive=True)
    cut = data[: int(len(data) * 0.8)]
    assert strict_decode_fails(cut)
    image = load_image(cut)
    assert percent(image.meta.warning) == 100.0
    whole = load_image(data).pixels
    assert np.corrcoef(image.pixels.ravel(), whole.ravel())[0, 1] > 0.9


def test_cmyk_jpeg_fill_is_recognised() -> None:
    rng = np.random.default_rng(3)
    data = jpeg((rng.random((256, 256, 4)) * 255).astype(np.uint8), "CMYK")
    assert try_load_image(data[: len(data) // 2]) == "truncated file"


def test_recovered_fraction_follows_the_mcu_grid() -> None:
    fill = np.zeros((64, 64), bool)
    assert raster.recovered_fraction(fill, (8, 8)) == 1.0
    fill[56:] = True
    assert raster.recovered_fraction(fill, (8, 8)) == 56 / 64
    fill[48:56, 40:] = True  # the MCU row the cut fell in, filled from an MCU
    assert raster.recovered_fraction(fill, (8, 8)) == (48 * 64 + 8 * 40) / 64**2
    off_grid = np.zeros((64, 64), bool)
    off_grid[60:] = True  # fill-coloured rows that do not start an MCU row
    off_grid[56:60, 61:] = True  # nor an MCU column
    assert raster.recovered_fraction(off_grid, (8, 8)) == 1.0
    # A 1/2 draft of a 127x127 picture is measured in original pixels.
    half = np.zeros((64, 64), bool)
    half[60:] = True
    assert raster.recovered_fraction(half, (4, 4), 2, (127, 127)) == 120 / 127
    assert raster.recovered_fraction(np.ones((64, 64), bool), (8, 8)) == 0.0


def test_recovery_is_thread_safe_and_leaves_the_file_alone(tmp_path: Path) -> None:
    cut = jpeg(picture())[:-300]
    path = tmp_path / "cut.jpg"
    path.write_bytes(cut)
    buf = io.BytesIO()
    Image.fromarray(picture()).save(buf, "PNG")
    png = buf.getvalue()[:-5000]
    jobs = [path, png[: len(png) // 2], cut, png] * 8
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(try_load_image, jobs))
    for job, result in zip(jobs, got):
        if isinstance(job, Path) or job is cut:
            assert not isinstance(result, str)
            assert result.meta.warning.startswith("truncated JPEG:")  # type: ignore[union-attr]
        else:
            assert result == "truncated file"  # other formats stay strict
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert path.read_bytes() == cut
