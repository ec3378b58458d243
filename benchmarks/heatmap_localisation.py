"""How often a fracture heatmap's peak lands on a real fracture outline (FracAtlas).

For every fractured film with at least one outline in ``fracture_boxes.csv``
and every attribution method, the heatmap of the ``fracture`` class is reduced
to one point, its peak (argmax; optionally after a small Gaussian blur, sigma
in model-input pixels), which is mapped back to the film's pixels (the model
saw the film squeezed to a square, so x scales by width/S and y by height/S).
Three hit criteria, each a rate over films with a 95% bootstrap CI (films
resampled):

- ``inside``: the peak lies strictly inside a fracture polygon (0 px);
- ``near``: inside a polygon or within the tolerance of its outline;
- ``box``: inside a polygon or within the tolerance of its bounding box.

Controls: ``random map`` (a uniform random heatmap through the same peak
code, seeded) and ``chance`` (the exact expected rate of a uniformly random
peak pixel: the share of the S x S grid that hits, averaged over films).
Films whose EXIF orientation is not 1, or whose decoded size does not fit
the outline file's width/height, are skipped (the annotation frame would be
unknown) and counted.

    python benchmarks/heatmap_localisation.py --data ../shared/data/fracatlas \\
        --weights fracture.pt --split splits.csv --which test --json /tmp/loc.json
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike, NDArray

if TYPE_CHECKING:
    from xreg.io import XrayImage

CRITERIA = {
    "inside": "peak strictly inside a fracture polygon (0 px tolerance)",
    "near": "peak inside a polygon or within the tolerance of its outline",
    "box": "peak inside a polygon or within the tolerance of its bounding box",
}
DEFAULT_TOLERANCE = "2%"  # of the film's longer side, in the film's own pixels
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Outline:
    """One annotated fracture: its box ``(x, y, w, h)`` and polygon ``(N, 2)`` of x, y."""

    box: tuple[float, float, float, float]
    polygon: NDArray[np.float64]


@dataclass(frozen=True)
class Film:
    """A fractured film and its outlines, in the frame of ``shape`` = (height, width)."""

    path: Path
    shape: tuple[int, int]
    outlines: tuple[Outline, ...]


def parse_polygon(text: str) -> NDArray[np.float64]:
    """``"x0 y0 x1 y1 ..."`` as an ``(N, 2)`` array; ``ValueError`` below 3 points."""
    values = [float(v) for v in text.split()]
    if len(values) % 2 or len(values) < 6:
        raise ValueError(f"a polygon needs at least 3 'x y' pairs, got {len(values)} numbers")
    return np.asarray(values, dtype=np.float64).reshape(-1, 2)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def read_films(data: Path, split: Path | None = None, which: str = "test") -> list[Film]:
    """Fractured films (``labels.csv`` fracture = 1) with outlines, sorted by path.

    With ``split``, only its rows whose ``split`` is ``which`` (``path``
    absolute or relative to ``data``).
    """
    fractured = {r["path"] for r in _read_csv(data / "labels.csv") if r["fracture"] == "1"}
    outlines: dict[str, list[Outline]] = {}
    shapes: dict[str, tuple[int, int]] = {}
    for row in _read_csv(data / "fracture_boxes.csv"):
        x, y, w, h = (float(row[k]) for k in ("x", "y", "w", "h"))
        polygon = (parse_polygon(row["polygon"]) if row["polygon"].strip() else
                   np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]]))
        outlines.setdefault(row["path"], []).append(Outline((x, y, w, h), polygon))
        shapes[row["path"]] = (int(row["height"]), int(row["width"]))
    keep = None
    if split is not None:
        keep = {(data / r["path"]).resolve() for r in _read_csv(split) if r["split"] == which}
    films = []
    for rel in sorted(outlines):
        path = (data / rel).resolve()
        if rel in fractured and (keep is None or path in keep):
            films.append(Film(path, shapes[rel], tuple(outlines[rel])))
    return films


def tolerance_px(spec: str, shape: tuple[int, int]) -> float:
    """``"2%"`` of the longer side of ``shape``, or a plain number of pixels."""
    text = spec.strip()
    value = float(text.rstrip("%"))
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"tolerance must be >= 0, got {spec!r}")
    return value / 100 * max(shape) if text.endswith("%") else value


def peak_pixel(heatmap: NDArray[np.floating], sigma: float = 0.0) -> tuple[int, int] | None:
    """(row, col) of the heatmap's maximum after a Gaussian blur; None for a flat map."""
    heat = np.asarray(heatmap, dtype=np.float64)
    if sigma > 0:
        from scipy.ndimage import gaussian_filter

        heat = gaussian_filter(heat, sigma, mode="nearest")
    if not np.isfinite(heat).all() or heat.max() <= heat.min():
        return None  # e.g. a Grad-CAM that the ReLU zeroed: it points nowhere
    row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return int(row), int(col)


def to_original(rows: ArrayLike, cols: ArrayLike,
                model_shape: tuple[int, int],
                original_shape: tuple[int, int]) -> NDArray[np.float64]:
    """Model-grid pixel centres -> ``(..., 2)`` x, y in the film's pixels (a squeeze back)."""
    sy = original_shape[0] / model_shape[0]
    sx = original_shape[1] / model_shape[1]
    return np.stack([(np.asarray(cols, np.float64) + 0.5) * sx,
                     (np.asarray(rows, np.float64) + 0.5) * sy], axis=-1)


def _polygon_distance(points: NDArray[np.float64], polygon: NDArray[np.float64]
                      ) -> NDArray[np.float64]:
    from matplotlib.path import Path as MplPath

    inside = MplPath(polygon).contains_points(points)
    a, ab = polygon, np.roll(polygon, -1, axis=0) - polygon
    length2 = np.where((ab**2).sum(1) > 0, (ab**2).sum(1), 1.0)
    ap = points[:, None, :] - a[None]
    t = np.clip((ap * ab[None]).sum(2) / length2, 0.0, 1.0)
    gap = ap - t[..., None] * ab[None]
    return np.where(inside, 0.0, np.sqrt((gap**2).sum(2)).min(1))


def _box_distance(points: NDArray[np.float64], box: tuple[float, float, float, float]
                  ) -> NDArray[np.float64]:
    x, y, w, h = box
    dx = np.maximum(np.maximum(x - points[:, 0], points[:, 0] - (x + w)), 0.0)
    dy = np.maximum(np.maximum(y - points[:, 1], points[:, 1] - (y + h)), 0.0)
    return np.asarray(np.hypot(dx, dy))


def point_hits(points: NDArray[np.float64], outlines: Sequence[Outline],
               tolerance: float) -> dict[str, NDArray[np.bool_]]:
    """Per criterion, which of ``points`` ``(N, 2)`` (x, y, film pixels) hit any outline."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    poly = np.min([_polygon_distance(points, o.polygon) for o in outlines], axis=0)
    box = np.min([_box_distance(points, o.box) for o in outlines], axis=0)
    return {"inside": poly == 0, "near": poly <= tolerance,
            "box": (poly == 0) | (box <= tolerance)}


def peak_hits(heatmap: NDArray[np.floating], outlines: Sequence[Outline],
              original_shape: tuple[int, int], tolerance: float, *,
              sigma: float = 0.0, criterion: str = "box") -> bool:
    """Whether the heatmap's peak, mapped onto a film of ``original_shape``, hits."""
    peak = peak_pixel(heatmap, sigma)
    if peak is None:
        return False
    point = to_original(peak[0], peak[1], heatmap.shape[:2], original_shape)
    return bool(point_hits(point, outlines, tolerance)[criterion][0])


def chance_rates(outlines: Sequence[Outline], model_shape: tuple[int, int],
                 original_shape: tuple[int, int], tolerance: float) -> dict[str, float]:
    """Exact hit rate, per criterion, of a peak at a uniformly random model pixel."""
    rows, cols = np.meshgrid(np.arange(model_shape[0]), np.arange(model_shape[1]),
                             indexing="ij")
    points = to_original(rows.ravel(), cols.ravel(), model_shape, original_shape)
    return {k: float(v.mean()) for k, v in point_hits(points, outlines, tolerance).items()}


def bootstrap_ci(values: Sequence[float], *, resamples: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap interval of ``values`` (items resampled)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan, math.nan
    idx = np.random.default_rng(seed).integers(0, v.size, size=(resamples, v.size))
    low, high = np.percentile(v[idx].mean(1), [50 * (1 - level), 50 * (1 + level)])
    return float(v.mean()), float(low), float(high)


def _decode(film: Film, size: int) -> tuple[XrayImage, tuple[int, int]] | str:
    """The film's pixels and the (rows, cols) of the film they span, or why not."""
    from PIL import Image

    from xreg.io import try_load_image

    xray = try_load_image(film.path, target_size=size)
    if isinstance(xray, str):
        return f"unreadable: {xray}"
    try:
        with Image.open(film.path) as im:
            orientation = int(im.getexif().get(0x0112, 1))
    except (OSError, ValueError, TypeError):
        orientation = 1
    if orientation != 1:  # the decoder turned the pixels; were the outlines drawn so?
        return f"EXIF orientation {orientation}: annotation frame unknown"
    # Draft decoding rounds up and block means drop a partial block, so the
    # pixels span n * reduced_by rows, cut at the film's edge.
    r = xray.meta.reduced_by
    spans = [(n * r, full) for n, full in zip(xray.pixels.shape, film.shape)]
    if xray.meta.original_shape != film.shape or any(abs(a - b) >= r for a, b in spans):
        return "decoded size differs from fracture_boxes.csv"
    return xray, (min(spans[0]), min(spans[1]))


class _Tally:
    """Per-film hit values, keyed by row (method, sigma) and criterion."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, float], dict[str, list[float]]] = {}
        self.flat: Counter[tuple[str, float]] = Counter()

    def add(self, key: tuple[str, float], hits: dict[str, float]) -> None:
        row = self.values.setdefault(key, {c: [] for c in CRITERIA})
        for c in CRITERIA:
            row[c].append(hits[c])


def _score_peak(tally: _Tally, key: tuple[str, float], heatmap: NDArray[np.floating],
                film: Film, covered: tuple[int, int], tol: float) -> tuple[float, float] | None:
    peak = peak_pixel(heatmap, key[1])
    if peak is None:
        tally.flat[key] += 1
        tally.add(key, dict.fromkeys(CRITERIA, 0.0))
        return None
    point = to_original(peak[0], peak[1], heatmap.shape[:2], covered)
    hits = point_hits(point, film.outlines, tol)
    tally.add(key, {c: float(hits[c][0]) for c in CRITERIA})
    return float(point[0]), float(point[1])


def _draw_outlines(png: Path, film: Film, covered: tuple[int, int],
                   peaks: Iterable[tuple[float, tuple[float, float]]]) -> None:
    from PIL import Image, ImageDraw

    with Image.open(png) as im:
        canvas = im.convert("RGB")
    sx, sy = canvas.width / covered[1], canvas.height / covered[0]
    draw = ImageDraw.Draw(canvas)
    for o in film.outlines:
        draw.polygon([(x * sx, y * sy) for x, y in o.polygon], outline=(0, 255, 255))
    for sigma, (x, y) in peaks:
        r = max(4, canvas.width // 60)
        draw.line((x * sx - r, y * sy, x * sx + r, y * sy), fill=(0, 255, 0), width=2)
        draw.line((x * sx, y * sy - r, x * sx, y * sy + r), fill=(0, 255, 0), width=2)
        draw.text((x * sx + r, y * sy + r), f"s={sigma:g}", fill=(0, 255, 0))
    canvas.save(png, "PNG")


def measure(films: Sequence[Film], weights: Path, *, methods: Sequence[str],
            sigmas: Sequence[float], tolerance: str, batch_size: int = 8, seed: int = 0,
            steps: int = 8, device: str = "cpu", overlays: Path | None = None,
            overlay_count: int = 3, progress: bool = True) -> dict[str, object]:
    """Decode, attribute and score ``films``; the figures as a JSON-able dict."""
    import torch
    from rich.progress import Progress

    from xreg.errors import ConfigError
    from xreg.explain import saliency as explain
    from xreg.model.checkpoint import load_checkpoint
    from xreg.model.transforms import Preprocessor

    loaded = load_checkpoint(weights, device=device)
    spec = loaded.card.head("fracture")
    if loaded.card.views != 1:
        raise ConfigError(f"{weights} is a {loaded.card.views}-view model; this needs one film")
    target = spec.labels.index("fracture")
    size = loaded.card.input_size
    preprocess = Preprocessor(loaded.card)
    rng = np.random.default_rng(seed)
    tally, skipped = _Tally(), Counter[str]()
    chance: dict[str, list[float]] = {c: [] for c in CRITERIA}
    started = time.perf_counter()
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task("films", total=len(films))
        for start in range(0, len(films), batch_size):
            batch = []
            for film in films[start:start + batch_size]:
                decoded = _decode(film, size)
                if isinstance(decoded, str):
                    skipped[decoded] += 1
                else:
                    batch.append((film, *decoded, tolerance_px(tolerance, film.shape)))
            bar.advance(task, min(batch_size, len(films) - start))
            if not batch:
                continue
            first = len(chance["box"])  # films scored before this batch
            for film, _, covered, tol in batch:
                for c, v in chance_rates(film.outlines, (size, size), covered, tol).items():
                    chance[c].append(v)
                noise = rng.random((size, size))  # one random map per film, for every sigma
                for sigma in sigmas:
                    _score_peak(tally, ("random map", sigma), noise, film, covered, tol)
            x = torch.stack([preprocess(xray.pixels) for _, xray, _, _ in batch])
            for method in methods:
                atts = explain.attribute(loaded, x, head="fracture", method=method,
                                         targets=[target] * len(batch), steps=steps)
                for i, ((film, xray, covered, tol), att) in enumerate(zip(batch, atts)):
                    peaks = [(s, _score_peak(tally, (method, s), att.heatmap, film, covered,
                                             tol)) for s in sigmas]
                    if overlays is not None and first + i < overlay_count:
                        png = overlays / f"{film.path.stem}_{method}.png"
                        explain.write_overlay(png, xray.pixels, att)
                        _draw_outlines(png, film, covered, [(s, p) for s, p in peaks if p])
    n = len(chance["box"])
    rows = [{"method": m, "sigma": s, "n": len(tally.values[m, s]["box"]),
             "flat_maps": tally.flat[m, s],
             **{c: _rate(tally.values[m, s][c], seed) for c in CRITERIA}}
            for m in [*methods, "random map"] for s in sigmas if (m, s) in tally.values]
    rows.append({"method": "chance", "sigma": None, "n": n, "flat_maps": 0,
                 **{c: _rate(chance[c], seed) for c in CRITERIA}})
    return {
        "weights": str(weights), "weights_sha256": loaded.sha256, "model": loaded.card.name,
        "input_size": size, "tolerance": tolerance, "criteria": CRITERIA,
        "peak": "argmax after a Gaussian blur of sigma model-input pixels (0: none)",
        "bootstrap": {"resamples": 2000, "level": 0.95, "seed": seed, "unit": "film"},
        "films": len(films), "scored": n, "skipped": dict(skipped), "rows": rows,
        "runtime_s": round(time.perf_counter() - started, 1),
    }


def _rate(values: Sequence[float], seed: int) -> dict[str, float]:
    mean, low, high = bootstrap_ci(values, seed=seed)
    return {"rate": mean, "low": low, "high": high}


def render(result: dict[str, object]) -> str:
    """The figures as a plain Markdown table with a short header."""
    lines = [f"model {result['model']} ({result['input_size']} px); "
             f"{result['scored']} of {result['films']} films scored; "
             f"tolerance {result['tolerance']} (of the longer side when %); "
             f"{result['runtime_s']} s"]
    skipped = result["skipped"]
    assert isinstance(skipped, dict)
    lines += [f"skipped {count}: {why}" for why, count in sorted(skipped.items())]
    lines += ["| method | peak blur sigma | n | flat | inside outline | near outline "
              "| near box |", "|---|---|---|---|---|---|---|"]
    rows = result["rows"]
    assert isinstance(rows, list)
    for row in rows:
        cells = [f"{100 * row[c]['rate']:.1f}% [{100 * row[c]['low']:.1f}, "
                 f"{100 * row[c]['high']:.1f}]" for c in CRITERIA]
        sigma = "-" if row["sigma"] is None else f"{row['sigma']:g}"
        lines.append(f"| {row['method']} | {sigma} | {row['n']} | {row['flat_maps']} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from xreg.errors import XregError
    from xreg.explain.saliency import METHODS

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--data", type=Path, required=True,
                        help="folder with labels.csv, fracture_boxes.csv and images/")
    parser.add_argument("--weights", type=Path, required=True,
                        help="a single-film checkpoint with a 'fracture' head")
    parser.add_argument("--split", type=Path, help="CSV with columns path, split")
    parser.add_argument("--which", default="test", help="the split to use (default: test)")
    parser.add_argument("--limit", type=int, help="a seeded random sample of this many films")
    parser.add_argument("--tolerance", default=DEFAULT_TOLERANCE,
                        help="pixels, or N%% of the film's longer side (default: 2%%)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--sigmas", default="0,2",
                        help="Gaussian blur sigmas (model-input px) before the argmax; "
                             "0 = raw peak (default: 0,2)")
    parser.add_argument("--steps", type=int, default=8, help="integrated-gradients steps")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--overlays", type=Path,
                        help="write a few overlay PNGs here (outside the repository)")
    parser.add_argument("--overlay-count", type=int, default=3, help="films with overlays")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    if unknown := sorted(set(methods) - set(METHODS)):
        parser.error(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    try:
        sigmas = [float(s) for s in args.sigmas.split(",") if s]
        tolerance_px(args.tolerance, (1, 1))
    except ValueError as exc:
        parser.error(str(exc))
    if args.overlays is not None and args.overlays.resolve().is_relative_to(REPO):
        parser.error("--overlays must be outside the repository: real films stay out of it")
    films = read_films(args.data, args.split, args.which)
    if args.limit is not None and args.limit < len(films):
        chosen = np.random.default_rng(args.seed).choice(len(films), args.limit, replace=False)
        films = [films[i] for i in sorted(chosen)]
    if not films:
        print("no fractured films with outlines matched", file=sys.stderr)
        return 1
    try:
        result = measure(films, args.weights, methods=methods, sigmas=sigmas,
                         tolerance=args.tolerance, batch_size=args.batch_size, seed=args.seed,
                         steps=args.steps, device=args.device, overlays=args.overlays,
                         overlay_count=args.overlay_count, progress=not args.no_progress)
    except XregError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(render(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
