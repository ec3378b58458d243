"""Heatmap overlays for files: ``xreg explain``, ``xreg sort --heatmaps``, ``xreg hip --heatmaps``.

Files are decoded in a thread pool (once, at display size), attributed a
batch at a time (:func:`xreg.explain.saliency.attribute`), and each overlay is
written atomically. Sorted output keeps overlays in ``OUT/_heatmaps/``, never
inside the class folders, and the registry row records the path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from xreg.explain.saliency import Attribution, attribute, write_overlay
from xreg.io import try_load_image
from xreg.model.checkpoint import LoadedModel
from xreg.model.transforms import Preprocessor, join_views, resize_grey

__all__ = ["HEATMAP_DIR", "Explained", "add_sort_heatmaps", "explain_files", "explain_pairs"]

HEATMAP_DIR = "_heatmaps"
DISPLAY = 512  # overlays are drawn on the film decoded at about this size


@dataclass(frozen=True)
class Explained:
    """Where one file's overlay went, and what it shows; or why there is none."""

    source: str
    overlay: Path | None
    attribution: Attribution | None
    error: str | None = None


def _display(path: Path) -> np.ndarray | str:
    image = try_load_image(path, target_size=DISPLAY)
    return image if isinstance(image, str) else image.pixels


def _views(path: Path, size: int) -> tuple[np.ndarray, np.ndarray] | str:
    """The film as drawn (display size) and as the model sees it when sorting.

    The model's copy is decoded exactly as ``xreg sort`` decodes it, so the
    attribution explains the very probability the sort recorded.
    """
    shown = _display(path)
    if isinstance(shown, str):
        return shown
    model = try_load_image(path, target_size=size)
    return model if isinstance(model, str) else (shown, model.pixels)


def explain_files(
    paths: Sequence[Path],
    loaded: LoadedModel,
    targets: Sequence[Path],
    *,
    head: str = "body_part",
    method: str = "integrated-gradients",
    batch_size: int = 16,
    workers: int = 2,
    on_done: Callable[[], None] | None = None,
) -> list[Explained]:
    """Write an overlay for each of ``paths`` to the matching path in ``targets``."""
    pre = Preprocessor(loaded.card)
    results: list[Explained] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for start in range(0, len(paths), batch_size):
            chunk = list(zip(paths[start:start + batch_size],
                             targets[start:start + batch_size]))
            images = list(pool.map(lambda p: _views(p, pre.size), [p for p, _ in chunk]))
            views = {i: im for i, im in enumerate(images) if not isinstance(im, str)}
            atts: dict[int, Attribution] = {}
            if views:
                x = torch.stack([pre(model) for _, model in views.values()])
                atts = dict(zip(views, attribute(loaded, x, head=head, method=method)))
            for i, ((p, t), im) in enumerate(zip(chunk, images)):  # in input order
                if isinstance(im, str):
                    results.append(Explained(str(p), None, None, im))
                else:
                    results.append(Explained(str(p), write_overlay(t, im[0], atts[i]),
                                             atts[i]))
            if on_done is not None:
                for _ in chunk:
                    on_done()
    return results


def explain_pairs(
    pairs: Sequence[tuple[Path, Path]],
    loaded: LoadedModel,
    targets: Sequence[Path],
    *,
    method: str = "integrated-gradients",
    batch_size: int = 16,
) -> list[Explained]:
    """Overlays of the joined two-view input (AP left, lateral right) for hip pairs."""
    pre = Preprocessor(loaded.card)
    half = DISPLAY // 2
    results: list[Explained] = []
    for start in range(0, len(pairs), batch_size):
        chunk = list(zip(pairs[start:start + batch_size], targets[start:start + batch_size]))
        decoded = [[_display(ap), _display(lateral)] for (ap, lateral), _ in chunk]
        ready = [i for i, views in enumerate(decoded)
                 if not any(isinstance(v, str) for v in views)]
        atts: dict[int, Attribution] = {}
        if ready:
            x = torch.stack([pre.pair(decoded[i][0], decoded[i][1])  # type: ignore[arg-type]
                             for i in ready])
            atts = dict(zip(ready, attribute(loaded, x, head=loaded.card.heads[0].name,
                                             method=method)))
        for i, (((ap, lateral), target), views) in enumerate(zip(chunk, decoded)):
            name = f"{ap} + {lateral}"
            if i not in atts:
                reason = next(str(v) for v in views if isinstance(v, str))
                results.append(Explained(name, None, None, reason))
                continue
            shown = join_views(torch.stack([resize_grey(v, half)  # type: ignore[arg-type]
                                            for v in views])).numpy()
            results.append(Explained(name, write_overlay(target, shown, atts[i]), atts[i]))
    return results


def add_sort_heatmaps(
    out_root: Path,
    registry_path: Path,
    loaded: LoadedModel,
    *,
    method: str = "integrated-gradients",
    batch_size: int = 16,
    workers: int = 2,
) -> tuple[int, float]:
    """Overlays for every sorted/reviewed image of the registry that has none yet.

    Written to ``OUT/_heatmaps/<sha[:2]>/<sha[:16]>_body_part.png`` and recorded
    in the image's row. Returns (overlays written, seconds).
    """
    from xreg.registry import Registry

    started = time.monotonic()
    with Registry(registry_path) as reg:
        todo = [(sha, dest) for sha, dest in reg.images_to_explain()
                if (out_root / dest).is_file()]
        rel = [Path(HEATMAP_DIR, sha[:2], f"{sha[:16]}_body_part.png") for sha, _ in todo]
        done = explain_files([out_root / dest for _, dest in todo], loaded,
                             [out_root / r for r in rel], head="body_part", method=method,
                             batch_size=batch_size, workers=workers)
        written = 0
        for (sha, _), r, result in zip(todo, rel, done):
            if result.overlay is not None:
                reg.set_heatmap(sha, r.as_posix())
                written += 1
    return written, time.monotonic() - started
