"""Decoding training films (xreg/train/data.py): the shared per-film decode cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import xreg.train.data as data
from xreg.datasets import load_labels
from xreg.model.labels import EXTENDED_BODY_PARTS
from xreg.synth.generate import generate_dataset


@pytest.fixture(scope="module")
def films(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("films")
    generate_dataset(root, 6, seed=9, size=96, workers=1)
    return [Path(im.path) for im in load_labels(root / "labels.csv", EXTENDED_BODY_PARTS)]


def test_shared_cache_keeps_one_file_per_film_and_decodes_it_once(
        films: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    paths = films[:4]
    first = data.decode_images(paths, 48, shared_cache=cache, workers=1)
    assert first.kept == [0, 1, 2, 3] and first.dropped == []
    assert first.pixels.shape == (4, 48, 48) and first.pixels.dtype == np.float16
    assert len(list(cache.glob("*.npy"))) == 4
    # The cached pixels are those a decode without any cache gives.
    np.testing.assert_array_equal(first.pixels, data.decode_images(paths, 48, workers=1).pixels)

    def no_decoding(path: Path, size: int) -> str:
        raise AssertionError(f"decoded {path.name} again")

    monkeypatch.setattr(data, "_decode_one", no_decoding)
    again = data.decode_images(paths, 48, shared_cache=cache, workers=2)
    assert again.kept == first.kept
    np.testing.assert_array_equal(again.pixels, first.pixels)
    # Another subset of the same films (a run without one site) is read from the cache too.
    subset = data.decode_images([paths[3], paths[1]], 48, shared_cache=cache, workers=1)
    np.testing.assert_array_equal(subset.pixels, first.pixels[[3, 1]])


def test_shared_cache_keys_by_size(films: list[Path], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    a = data.decode_images(films[:2], 48, shared_cache=cache, workers=1)
    b = data.decode_images(films[:2], 32, shared_cache=cache, workers=1)
    assert b.pixels.shape == (2, 32, 32) and a.pixels.shape == (2, 48, 48)
    assert sorted(np.load(p).shape for p in cache.glob("*.npy")) == \
        [(32, 32), (32, 32), (48, 48), (48, 48)]


def test_an_undecodable_film_is_dropped_and_not_cached(films: list[Path],
                                                       tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all" * 10)
    missing = tmp_path / "missing.png"
    cache = tmp_path / "cache"
    paths = [films[0], broken, films[1], missing]
    decoded = data.decode_images(paths, 48, shared_cache=cache, workers=1)
    assert decoded.kept == [0, 2]
    assert [p for p, _ in decoded.dropped] == [str(broken), str(missing)]
    assert all(reason for _, reason in decoded.dropped)
    assert decoded.pixels.shape == (2, 48, 48)
    assert len(list(cache.glob("*.npy"))) == 2
    np.testing.assert_array_equal(
        decoded.pixels, data.decode_images([films[0], films[1]], 48, workers=1).pixels)
