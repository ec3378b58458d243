"""Leave-one-site-out: how a recipe sorts films of a hospital it never saw.

    python benchmarks/site_generalisation.py --data ../shared/data --work DIR \\
        [--variant site] [--variant thesis] [--epochs 4 --samples 1200 --input-size 160]

For each variant of the recipe (``configs/bodypart_sites.yaml`` with the
variant's changes) and each site S other than the first (FracAtlas, the only
real source of most classes, stands in by its grouped test split in the
shipped model's card): train on every other site plus phantoms, choose
``min_confidence`` and the unfamiliar-film guard on the validation split of the
training sites, then sort all of S's films. Prints, per variant, correct folder,
wrong folder (sorted into a folder not its own: the safety figure) and review
rate per held-out site with 95% bootstrap CIs, and their mean. Every film is
decoded once into ``DIR/cache`` (shared by every run); finished runs are kept
and skipped on a rerun, so the sweep resumes. ``--site NAME=MANIFEST`` (several)
replaces ``--data`` with any manifests, e.g. phantom "sites" for a quick check.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

#: Recipe variants compared by the sweep: config keys over the base recipe.
VARIANTS: dict[str, dict[str, Any]] = {
    "site": {},  # the recipe as configured (site augmentation, percentile grey levels)
    "thesis": {"site_augment": {}, "normalise": "none"},  # flips and 90-degree turns only
    "site-no-normalise": {"normalise": "none"},
    "site-no-crop": {"site_augment": {"crop": 0.0}},
    # metal pasted onto films of every class, and the look of other sites' films
    "mix": {"site_augment": {"hardware": 0.3, "restyle": 0.3}},
}
METRICS = ("correct_folder", "wrong_folder", "review_rate")


def _ci(value: list[float | None] | None) -> str:
    if not value or value[0] is None or (isinstance(value[0], float) and math.isnan(value[0])):
        return "n/a"
    v, lo, hi = value
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None else f"{v:.3f}"


def _sites(args: argparse.Namespace, work: Path) -> dict[str, Path]:
    if args.site:
        return {name: Path(path).resolve() for name, path in
                (entry.split("=", 1) for entry in args.site)}
    from sites import write_site_manifests

    return write_site_manifests(args.data, work / "manifests")


def _config(args: argparse.Namespace, sites: dict[str, Path], variant: str) -> Any:
    from xreg.train import load_train_config
    from xreg.train.config import DataSource

    base = load_train_config(args.config)
    overrides = dict(VARIANTS[variant])
    if "site_augment" in overrides and overrides["site_augment"]:
        overrides["site_augment"] = {**base.site_augment, **overrides["site_augment"]}
    weights = {d.name: d.weight for d in base.datasets}
    datasets = [DataSource(name, path=str(path), weight=weights.get(name, 0.15))
                for name, path in sites.items()]
    datasets += [dataclasses.replace(d, synth={**d.synth, "count": args.phantoms})
                 for d in base.datasets if d.synth is not None and args.phantoms]
    sweep = {"input_size": args.input_size, "max_epochs": args.epochs,
             "samples_per_epoch": args.samples, "milestones": [max(1, args.epochs - 1)],
             "patience": args.epochs, "resamples": 200,
             "cache_size": max(base.cache_size, args.input_size)}
    if args.arch:
        sweep["arch"] = args.arch
    if args.tiny:
        sweep.update(pretrained="none", allow_random_init=True, batch_size=8,
                     heads=("body_part", "instrument"),
                     lr=2e-3, cache_size=args.input_size + 16)
    return dataclasses.replace(base, datasets=tuple(datasets), **overrides, **sweep)


def _run(config: Any, site: str, images: list[Any], out: Path, cache: Path,
         workers: int) -> dict[str, Any]:
    from xreg.evaluation.evaluate import evaluate_images
    from xreg.model.checkpoint import load_checkpoint
    from xreg.train import train
    from xreg.train.sites import (
        calibrate,
        common_root,
        drop_unlabelled_heads,
        split_images,
        without_site,
    )

    started = time.monotonic()
    run_dir = out.with_suffix(".run")
    if not out.exists():
        train(drop_unlabelled_heads(without_site(config, site)), None, out, run_dir=run_dir,
              workers=workers,
              resume=(run_dir / "state.pt").exists(),
              overwrite=not (run_dir / "state.pt").exists(), decode_cache=cache)
    loaded = load_checkpoint(out)
    labels = loaded.card.head("body_part").labels
    loaded, point = calibrate(loaded, split_images(run_dir, "val", labels), workers=workers)
    ev = evaluate_images(loaded, images, root=common_root(images), data=f"held-out {site}",
                         n_resamples=1000, seed=0, workers=workers)
    figures = ev.to_dict()["sites"][site]
    return {"site": site, "figures": figures, "calibration": point,
            "seconds": round(time.monotonic() - started, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="folder of site folders (../shared/data)")
    parser.add_argument("--site", action="append", default=[], metavar="NAME=MANIFEST",
                        help="a site as a manifest instead of --data (repeatable)")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "bodypart_sites.yaml")
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS),
                        help="recipe variants to compare (default: site and thesis)")
    parser.add_argument("--hold-out", action="append", default=None, metavar="SITE",
                        help="sites to leave out (default: every site but the first)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--samples", type=int, default=1200, help="draws per epoch")
    parser.add_argument("--input-size", type=int, default=160)
    parser.add_argument("--phantoms", type=int, default=800, help="phantom films (0: none)")
    parser.add_argument("--arch", default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: its default); 1 lets two sweeps share 2 cores")
    parser.add_argument("--tiny", action="store_true",
                        help="random init, small batches: a quick check on phantom sites")
    args = parser.parse_args()
    if not args.site and args.data is None:
        parser.error("give --data or --site")
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    sites = _sites(args, work)
    if len(sites) < 2:
        print("need at least two sites", file=sys.stderr)
        return 2
    from xreg.datasets import load_labels
    from xreg.model.labels import EXTENDED_BODY_PARTS

    held = args.hold_out or list(sites)[1:]
    results_path = work / "sweep.json"
    results: dict[str, Any] = json.loads(results_path.read_text()) \
        if results_path.exists() else {}
    settings = (f"{args.arch or 'recipe arch'}, input {args.input_size}, {args.epochs} "
                f"epochs x {args.samples} draws, {args.phantoms} phantoms")
    for variant in args.variant or ["site", "thesis"]:
        config = _config(args, sites, variant)
        for site in held:
            key = f"{variant}/{site}/{args.arch or config.arch}/{args.input_size}"
            if key in results:
                continue
            images = load_labels(sites[site], EXTENDED_BODY_PARTS)
            images = [dataclasses.replace(im, source=site) for im in images]
            out = work / "runs" / f"{variant}-{args.arch or config.arch}-{args.input_size}" \
                / f"without-{site}.pt"
            out.parent.mkdir(parents=True, exist_ok=True)
            print(f"[{variant}] training without {site} ({settings})", flush=True)
            results[key] = {**_run(config, site, images, out, work / "cache", args.workers),
                            "variant": variant, "settings": settings}
            results_path.write_text(json.dumps(results, indent=1) + "\n")
            print(json.dumps({k: results[key]["figures"].get(k) for k in METRICS}), flush=True)
    print_tables(results)
    return 0


def print_tables(results: dict[str, Any]) -> None:
    """One Markdown table per variant: held-out sites and their mean."""
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for key, row in results.items():
        by_variant.setdefault(key.rsplit("/", 3)[0] + " (" + row["settings"] + ")",
                              []).append(row)
    for name, rows in by_variant.items():
        print(f"\n### {name}\n")
        print("| held-out site | films | correct folder | wrong folder | review rate |")
        print("|---|---|---|---|---|")
        means = {m: [] for m in METRICS}
        for row in rows:
            f = row["figures"]
            print(f"| {row['site']} | {f['films']} | " + " | ".join(_ci(f.get(m)) for m in METRICS)
                  + " |")
            for m in METRICS:
                value = (f.get(m) or [None])[0]
                if value is not None and not (isinstance(value, float) and math.isnan(value)):
                    means[m].append(value)
        print("| **mean** | | " + " | ".join(
            f"{sum(v) / len(v):.3f}" if v else "n/a" for v in means.values()) + " |")


if __name__ == "__main__":
    sys.exit(main())
