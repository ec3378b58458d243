"""Decode a labelled set once into a cache of resized grey images.

Training reads every image every epoch; decoding a 10 MB DICOM each time
would dominate a CPU run. So each image is decoded once, exactly as
inference decodes it (``load_image`` at the model's size, then
:func:`xreg.model.transforms.resize_grey`), and kept as float16. The cache file is
reused only while every file's path, size and mtime are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from xreg.io import try_load_image
from xreg.model.transforms import resize_grey

__all__ = ["DecodedSet", "decode_images"]


@dataclass
class DecodedSet:
    """``pixels[i]`` is image ``kept[i]`` of the input; ``dropped`` lists (path, reason)."""

    pixels: NDArray[np.float16]  # (N, S, S), values in [0, 1]
    kept: list[int]
    dropped: list[tuple[str, str]]


def _fingerprint(paths: Sequence[Path], size: int) -> str:
    h = hashlib.sha256(f"xreg-train-cache v2 size={size}\n".encode())
    for path in paths:
        try:
            st = os.stat(path)
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{path}\0missing\n".encode())
    return h.hexdigest()


def _decode_one(path: Path, size: int) -> NDArray[np.float16] | str:
    image = try_load_image(path, target_size=size)
    if isinstance(image, str):
        return image
    return resize_grey(image.pixels, size).numpy().astype(np.float16)


def decode_images(
    paths: Sequence[Path],
    size: int,
    *,
    cache_dir: Path | None = None,
    workers: int = 2,
    on_start: Callable[[int], None] | None = None,
    on_decoded: Callable[[], None] | None = None,
    shared_cache: Path | None = None,
) -> DecodedSet:
    """Decode ``paths`` to ``(N, size, size)`` float16, reusing ``cache_dir``'s cache.

    With ``shared_cache``, each film is kept as a file of its own there (keyed
    by path, size, mtime and ``size``), so runs over different subsets of the
    same films (a leave-one-site-out sweep) decode each film once.
    Files that cannot be decoded are dropped and reported, never fatal.
    """
    if shared_cache is not None:
        return _decode_shared(paths, size, shared_cache, workers, on_start, on_decoded)
    key = _fingerprint(paths, size)
    if cache_dir is not None:
        cached = _read_cache(cache_dir, key)
        if cached is not None:
            return cached
    decoded = _decode_all(paths, size, lambda p: _decode_one(p, size), workers, on_start,
                          on_decoded)
    if cache_dir is not None:
        _write_cache(cache_dir, key, decoded)
    return decoded


def _cache_paths(cache_dir: Path) -> tuple[Path, Path]:
    return cache_dir / "cache.npy", cache_dir / "cache.json"


def _read_cache(cache_dir: Path, key: str) -> DecodedSet | None:
    array_path, meta_path = _cache_paths(cache_dir)
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("key") != key:
            return None
        pixels = np.load(array_path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    kept = [int(i) for i in meta["kept"]]
    if pixels.dtype != np.float16 or pixels.shape[0] != len(kept):
        return None
    return DecodedSet(pixels, kept, [(str(p), str(r)) for p, r in meta["dropped"]])


def _write_cache(cache_dir: Path, key: str, decoded: DecodedSet) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    array_path, meta_path = _cache_paths(cache_dir)
    tmp = array_path.with_name("cache.tmp.npy")
    np.save(tmp, decoded.pixels, allow_pickle=False)
    os.replace(tmp, array_path)
    # The key is written last: a crash between the two leaves a stale key, never
    # a fresh key over a half-written array.
    meta_tmp = meta_path.with_name("cache.json.tmp")
    meta_tmp.write_text(json.dumps({"key": key, "kept": decoded.kept,
                                    "dropped": decoded.dropped}))
    os.replace(meta_tmp, meta_path)


def _decode_shared(paths: Sequence[Path], size: int, folder: Path, workers: int,
                   on_start: Callable[[int], None] | None,
                   on_decoded: Callable[[], None] | None) -> DecodedSet:
    folder.mkdir(parents=True, exist_ok=True)

    def entry(path: Path) -> Path:
        return folder / f"{_fingerprint([path], size)[:40]}.npy"

    def one(path: Path) -> NDArray[np.float16] | str:
        cached = entry(path)
        try:
            pixels = np.load(cached, allow_pickle=False)
            if pixels.shape == (size, size) and pixels.dtype == np.float16:
                return pixels
        except (OSError, ValueError):
            pass
        result = _decode_one(path, size)
        if isinstance(result, str):
            return result
        tmp = cached.with_name(cached.stem + ".tmp.npy")
        np.save(tmp, result, allow_pickle=False)
        os.replace(tmp, cached)
        return result

    return _decode_all(paths, size, one, workers, on_start, on_decoded)


def _decode_all(paths: Sequence[Path], size: int,
                decode: Callable[[Path], NDArray[np.float16] | str], workers: int,
                on_start: Callable[[int], None] | None,
                on_decoded: Callable[[], None] | None) -> DecodedSet:
    """Every film through ``decode`` in threads; the ones it cannot read are dropped."""
    if on_start is not None:
        on_start(len(paths))
    pixels = np.zeros((len(paths), size, size), dtype=np.float16)
    kept: list[int] = []
    dropped: list[tuple[str, str]] = []
    with ThreadPoolExecutor(max_workers=max(1, workers),
                            thread_name_prefix="xreg-train-decode") as pool:
        for i, result in enumerate(pool.map(decode, paths)):
            if isinstance(result, str):
                dropped.append((str(paths[i]), result))
            else:
                pixels[len(kept)] = result
                kept.append(i)
            if on_decoded is not None:
                on_decoded()
    return DecodedSet(pixels[: len(kept)].copy(), kept, dropped)
