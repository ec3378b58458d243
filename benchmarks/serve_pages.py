"""Page load times of `xreg serve` over a 1,000-film registry, and its thumbnail rate.

Builds N phantom films (``generate_dataset``, 256 px by default) and sorts
them with ``run_sort`` and a small random checkpoint, with a confidence
threshold that sends a good share to ``_review``; records a few reviews so
``/reviews`` and the gallery's "reviewed" column have rows. The default
checkpoint is a random ResNet-18 at 64 px: a random MobileNet gives every
film the same probabilities (mobilenet_v3_small@64: 0.114 for all), so no
threshold splits its films; ResNet-18's spread (about 0.17 to 0.33) does, and
0.25 sends about half to ``_review``. Page times do not depend on the model.
Then, in one run:

1. **Pages.** Median and p95 of R requests per page through
   ``fastapi.testclient.TestClient`` (in process: routing, registry, template,
   no network), and the median of ``/`` and ``/gallery`` over real HTTP
   (uvicorn in a background thread, a new urllib connection per request).
2. **Thumbnails.** With an empty ``OUT/_thumbs``: ``/image/<sha>/thumb.jpg``
   for T films (cold: decoded at reduced resolution, shrunk, written), the
   same T again (cached), and ``thumbnail()`` called directly (no HTTP). The
   baseline, same films, same run: ``load_image`` at full resolution plus a
   Pillow thumbnail and JPEG encode. Once on the registry's films, and once on
   T larger films (``--large-size``, 1024 px by default), where a
   reduced-resolution decode has something to reduce.

``--profile`` also runs the slowest page under cProfile (routes run in the
profiled thread) and prints its top functions by own time.

    python benchmarks/serve_pages.py [--n 1000] [--size 256] [--repeats 20]
        [--thumbs 200] [--large-size 1024] [--reuse DIR] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import sqlite3
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# The favicon (a static file through the gate) is the floor: no registry, no template.
PAGES = ("/static/favicon.svg", "/", "/?format=json", "/gallery", "/gallery?format=json",
         "/gallery?page=10", "/gallery?status=review", "/review", "/image/{sha}", "/reviews")
HTTP_PAGES = ("/static/favicon.svg", "/", "/gallery")
THUMB = 256  # the gallery's thumbnail size (routes_browse._SIZES["thumb"])


# -- building the registry --------------------------------------------------------------
def build(root: Path, n: int, size: int, seed: int, args: argparse.Namespace,
          reviews: int = 0) -> Path:
    """``root/out`` sorted from ``n`` phantoms; reused when ``root/params.json`` matches."""
    from xreg.config import SortOptions
    from xreg.model.checkpoint import make_random_checkpoint
    from xreg.sort.runner import run_sort
    from xreg.synth import generate_dataset

    params = {"n": n, "size": size, "seed": seed, "reviews": reviews, "arch": args.arch,
              "input_size": args.input_size, "min_confidence": args.min_confidence,
              "version": 1}
    marker, out, weights = root / "params.json", root / "out", root / "weights.pt"
    if marker.is_file() and json.loads(marker.read_text()) == params:
        print(f"reusing {out}", flush=True)
        return out
    for stale in (root / "in", out, weights, marker):
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
    root.mkdir(parents=True, exist_ok=True)
    make_random_checkpoint(weights, arch=args.arch, input_size=args.input_size, seed=0)
    t0 = time.perf_counter()
    generate_dataset(root / "in", n, seed=seed, size=size, workers=args.workers)
    t1 = time.perf_counter()
    result = run_sort(root / "in" / "images", out,
                      SortOptions(weights=weights, min_age=0,
                                  min_confidence=args.min_confidence, workers=args.workers,
                                  device="cpu"))
    t2 = time.perf_counter()
    counts = {k: v for k, v in result.counts.items() if v}
    print(f"built {n} films at {size} px in {t1 - t0:.0f} s, sorted in {t2 - t1:.0f} s: "
          f"{counts}", flush=True)
    if reviews:
        _add_reviews(out, weights, reviews)
    marker.write_text(json.dumps(params))
    return out


def _add_reviews(out: Path, weights: Path, n: int) -> None:
    from xreg.model.checkpoint import load_checkpoint
    from xreg.registry import Registry
    from xreg.registry.reviews import Review, add_review

    labels = tuple(load_checkpoint(weights).card.head("body_part").labels)
    with Registry(out / "registry.sqlite") as reg:
        rows = reg._db.execute("SELECT sha256, body_part FROM images WHERE state = 'done'"
                               " ORDER BY sha256 LIMIT ?", (n,)).fetchall()
        for i, row in enumerate(rows):
            part = labels[i % len(labels)]
            add_review(reg, Review(row["sha256"], "bench", part, i % 2, None, None), labels)


def _films(out: Path, n: int) -> list[tuple[str, Path]]:
    """The first ``n`` placed films in gallery order: (sha256, path)."""
    db = sqlite3.connect(f"file:{out / 'registry.sqlite'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT sha256, dest_path FROM images WHERE state = 'done'"
                          " ORDER BY dest_path LIMIT ?", (n,)).fetchall()
        return [(sha, out / rel) for sha, rel in rows]
    finally:
        db.close()


def _status_counts(out: Path) -> dict[str, int]:
    db = sqlite3.connect(f"file:{out / 'registry.sqlite'}?mode=ro", uri=True)
    try:
        return dict(db.execute("SELECT status, COUNT(*) FROM images WHERE state = 'done'"
                               " GROUP BY status").fetchall())
    finally:
        db.close()


def make_app(out: Path, weights: Path) -> Any:
    from xreg.serve.app import create_app
    from xreg.serve.config import ServeConfig

    return create_app(ServeConfig(out_root=out, weights=weights, reviewer="bench"))


# -- timing -------------------------------------------------------------------------
def _stats(seconds: list[float]) -> tuple[float, float]:
    ms = np.asarray(seconds) * 1000
    return float(np.median(ms)), float(np.percentile(ms, 95))


def time_pages(client: Any, urls: dict[str, str], repeats: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {}
    for label, url in urls.items():
        for _ in range(2):  # warm-up: template compile, SQLite page cache
            assert client.get(url).status_code == 200, url
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            response = client.get(url)
            samples.append(time.perf_counter() - t0)
            assert response.status_code == 200, (url, response.status_code)
        times[label] = samples
    return times


def http_get(base: str, path: str) -> int:
    with urllib.request.urlopen(f"{base}{path}", timeout=30) as r:
        r.read()
        return int(r.status)


def time_http(base: str, paths: tuple[str, ...], repeats: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {}
    for path in paths:
        for _ in range(2):
            http_get(base, path)
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            assert http_get(base, path) == 200, path
            samples.append(time.perf_counter() - t0)
        times[path] = samples
    return times


def _fmt(path: Path) -> str:
    return {".jpg": "jpeg", ".png": "png16", ".dcm": "dicom"}.get(path.suffix.lower(),
                                                                  path.suffix or "dicom")


def _timed_each(films: list[tuple[str, Path]],
                work: Callable[[str, Path], None]) -> tuple[float, dict[str, float]]:
    """Total seconds for ``work`` over ``films``, and seconds per format."""
    per_fmt: Counter[str] = Counter()
    total = 0.0
    for sha, path in films:
        t0 = time.perf_counter()
        work(sha, path)
        dt = time.perf_counter() - t0
        total += dt
        per_fmt[_fmt(path)] += dt
    return total, dict(per_fmt)


def time_thumbs(client: Any, out: Path, films: list[tuple[str, Path]],
                scratch: Path) -> dict[str, tuple[float, dict[str, float]]]:
    """Seconds for: baseline, thumbnail() direct, cold requests, cached requests."""
    from PIL import Image

    from xreg.io import load_image
    from xreg.serve.thumbs import THUMBS_DIR, thumbnail

    for _, path in films:  # the same page-cache state for every method
        path.read_bytes()

    def baseline(sha: str, path: Path) -> None:  # written as thumbnail() writes, to compare
        pixels = load_image(path).pixels
        picture = Image.fromarray((np.clip(pixels, 0, 1) * 255).round().astype(np.uint8), "L")
        picture.thumbnail((THUMB, THUMB), Image.Resampling.LANCZOS)
        target = scratch / "baseline" / sha[:2] / f"{sha}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        picture.save(target.with_name(f".{target.name}.tmp"), "JPEG", quality=85)
        target.with_name(f".{target.name}.tmp").replace(target)

    def direct(sha: str, path: Path) -> None:
        made = thumbnail(scratch, path, sha, THUMB)
        assert isinstance(made, Path), made

    def request(sha: str, path: Path) -> None:
        response = client.get(f"/image/{sha}/thumb.jpg")
        assert response.status_code == 200, (sha, response.status_code)

    shutil.rmtree(out / THUMBS_DIR, ignore_errors=True)
    shutil.rmtree(scratch, ignore_errors=True)
    results = {"baseline": _timed_each(films, baseline),
               "direct": _timed_each(films, direct),
               "cold": _timed_each(films, request),
               "cached": _timed_each(films, request)}
    shutil.rmtree(scratch, ignore_errors=True)
    return results


def print_thumbs(title: str, films: list[tuple[str, Path]],
                 res: dict[str, tuple[float, dict[str, float]]]) -> None:
    n = len(films)
    fmts = Counter(_fmt(p) for _, p in films)
    mean_kb = np.mean([p.stat().st_size for _, p in films]) / 1024
    print(f"\n{title}: {n} films ({', '.join(f'{k} {v}' for k, v in sorted(fmts.items()))}; "
          f"mean {mean_kb:.0f} KB)")
    labels = {"baseline": "baseline: full decode + PIL thumb + JPEG",
              "direct": "thumbnail() direct, reduced decode",
              "cold": "GET thumb.jpg, empty _thumbs (cold)",
              "cached": "GET thumb.jpg again (cached)"}
    header = f"{'method':<42} {'films/s':>9} {'ms/film':>8} {'vs base':>8}  per format films/s"
    print(header)
    print("-" * len(header))
    base = n / res["baseline"][0]
    for key, label in labels.items():
        total, per_fmt = res[key]
        rate = n / total
        fmt_rates = "  ".join(f"{f} {fmts[f] / s:.0f}" for f, s in sorted(per_fmt.items()))
        print(f"{label:<42} {rate:>9.1f} {1000 * total / n:>8.2f} {rate / base:>7.1f}x  "
              f"{fmt_rates}")


# -- profiling ------------------------------------------------------------------------
def profile_page(app: Any, url: str, repeats: int, top: int = 14) -> None:
    """cProfile ``repeats`` requests of ``url`` with sync routes run inline (one thread)."""
    import cProfile
    import pstats

    import fastapi.routing
    import httpx

    async def inline(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    async def drive() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            await client.get(url)
            profiler.enable()
            for _ in range(repeats):
                assert (await client.get(url)).status_code == 200
            profiler.disable()

    original = fastapi.routing.run_in_threadpool
    fastapi.routing.run_in_threadpool = inline  # type: ignore[assignment]
    profiler = cProfile.Profile()
    try:
        asyncio.run(drive())
    finally:
        fastapi.routing.run_in_threadpool = original  # type: ignore[assignment]
    print(f"\ncProfile of {repeats} x GET {url}, sync route run inline so one thread holds "
          "all the work:")
    for order, title, restrict in (
            ("tottime", f"top {top} by own time", ()),
            ("cumulative", "cumulative, the app's own layers",
             (r"xreg/|templating.py.*TemplateResponse|environment.py.*render\b|"
              r"sqlite3.Connection|routing.py.*(run_endpoint|solve_dependencies)",))):
        stream = io.StringIO()
        pstats.Stats(profiler, stream=stream).sort_stats(order).print_stats(*restrict, top)
        lines = stream.getvalue().splitlines()
        if order == "tottime":
            print(next(line for line in lines if "function calls" in line).strip())
        print(f"-- {title}:")
        start = next(i for i, line in enumerate(lines) if "ncalls" in line)
        for line in lines[start:]:
            if line.strip():
                print(line.replace(str(Path.cwd()) + "/", "").replace(
                    str(Path(np.__file__).parents[1]) + "/", ""))


# -- main -----------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="films in the registry")
    parser.add_argument("--size", type=int, default=256, help="phantom size in pixels")
    parser.add_argument("--repeats", type=int, default=20, help="requests per page")
    parser.add_argument("--thumbs", type=int, default=200, help="films to thumbnail")
    parser.add_argument("--large-size", type=int, default=1024,
                        help="size of the second thumbnail set (0: skip it)")
    parser.add_argument("--reviews", type=int, default=60, help="reviews to record")
    parser.add_argument("--workers", type=int, default=2, help="synth and sort workers")
    parser.add_argument("--arch", default="resnet18", help="random checkpoint's architecture")
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--min-confidence", type=float, default=0.25,
                        help="sort threshold: below it a film goes to _review")
    parser.add_argument("--reuse", type=Path, help="build here and keep it between runs")
    parser.add_argument("--profile", action="store_true", help="cProfile the slowest page")
    args = parser.parse_args()

    from fastapi.testclient import TestClient

    root = args.reuse or Path(tempfile.mkdtemp(prefix="xreg-serve-bench-"))
    try:
        out = build(root / "registry", args.n, args.size, 0, args, args.reviews)
        weights = root / "registry" / "weights.pt"
        films = _films(out, args.n)
        sha = films[len(films) // 2][0]
        print(f"cpu cores: {os.cpu_count()}; {len(films)} films placed "
              f"{_status_counts(out)}; random {args.arch}@{args.input_size}, min_confidence "
              f"{args.min_confidence}; {args.repeats} requests per page after 2 warm-up")

        app = make_app(out, weights)
        urls = {page.replace("{sha}", "<sha>"): page.format(sha=sha) for page in PAGES}
        with TestClient(app) as client:
            times = time_pages(client, urls, args.repeats)
            sizes = {label: len(client.get(url).content) for label, url in urls.items()}
        header = f"{'page (TestClient, in process)':<34} {'median ms':>10} {'p95 ms':>8} {'KB':>7}"
        print()
        print(header)
        print("-" * len(header))
        for label, samples in times.items():
            med, p95 = _stats(samples)
            print(f"{label:<34} {med:>10.2f} {p95:>8.2f} {sizes[label] / 1024:>7.1f}")
        from xreg.serve.background import serve_in_background

        with serve_in_background(make_app(out, weights)) as served:
            http = time_http(served, HTTP_PAGES, args.repeats)
        print("real HTTP (uvicorn thread + urllib, new connection each): "
              + ", ".join(f"{p} median {_stats(s)[0]:.2f} ms (TestClient "
                          f"{_stats(times[p])[0]:.2f} ms)" for p, s in http.items()))

        scratch = root / "scratch_thumbs"
        with TestClient(make_app(out, weights)) as client:
            subset = films[:args.thumbs]
            print_thumbs(f"thumbnails ({THUMB} px) of the registry's {args.size} px films",
                         subset, time_thumbs(client, out, subset, scratch))
        if args.large_size:
            large = build(root / f"large_{args.large_size}", args.thumbs, args.large_size, 1,
                          args)
            large_films = _films(large, args.thumbs)
            with TestClient(make_app(large, root / f"large_{args.large_size}" / "weights.pt")
                            ) as client:
                print_thumbs(f"thumbnails ({THUMB} px) of {args.large_size} px films",
                             large_films, time_thumbs(client, large, large_films, scratch))

        if args.profile:
            slowest = max(times, key=lambda label: _stats(times[label])[0])
            profile_page(make_app(out, weights), urls[slowest], args.repeats)
            profile_page(make_app(out, weights), f"/image/{films[0][0]}/thumb.jpg",
                         args.repeats)
    finally:
        if args.reuse is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
