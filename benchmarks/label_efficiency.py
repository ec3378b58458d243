"""The label-efficiency curve: how many reviewed films a new hospital needs.

For each site, start from the leave-one-site-out model that never saw it
(``benchmarks/site_generalisation.py`` writes them: ``without-SITE.pt``),
review K of its films in queue order (labels from the site's manifest),
adapt (:func:`xreg.train.adapt.adapt`, what ``xreg adapt`` runs), then sort
the rest of the site: correct folder and wrong folder against K. Films that
share a patient or duplicate cluster with a reviewed film are left out of
"the rest". Forgetting is the change on the other sites' test films (the
LOSO run's ``split.csv``), and each adapt is timed. A refused adapt (worse
than the base on its own hold-out) counts as the base, as the tool would.

    python benchmarks/label_efficiency.py --manifests M/ --models RUNS/ \\
        --sweep sweep.json --json curve.json --plot curve.png [--ks 0,10,25,50,100,200] \\
        [--variants lwf,plain,adabn] [--orders spread,confidence]

``--tiny`` runs on phantom "sites" in seconds (CI checks the script works).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from xreg.datasets import LabelledImage, load_labels  # noqa: E402
from xreg.model.checkpoint import LoadedModel, load_checkpoint  # noqa: E402
from xreg.train.adapt import AdaptOptions, Film, adapt, sort_figures  # noqa: E402
from xreg.train.finetune import BODY_PART, decode_grey, predict_grey  # noqa: E402

#: Recipe variants: what keeps the base's knowledge while the reviews teach.
VARIANTS: dict[str, AdaptOptions] = {
    "default": AdaptOptions(),                                # what xreg adapt does
    "default+replay": AdaptOptions(),                         # ... with --replay-data
    "lwf": AdaptOptions(layers="all"),                        # whole net, phantoms + anchor
    "lwf+replay": AdaptOptions(layers="all"),                 # + the base's own films
    "lwf-site": AdaptOptions(layers="all", distill_on="site"),  # the site's unreviewed films
    "lwf-both": AdaptOptions(layers="all", distill_on="both"),
    "anchor": AdaptOptions(layers="all", distill=0.0),        # only the L2 pull
    "plain": AdaptOptions(layers="all", distill=0.0, anchor=0.0),  # reviews only
    "heads": AdaptOptions(layers="heads"),                    # backbone kept as it is
    "heads+replay": AdaptOptions(layers="heads"),
    "heads-plain": AdaptOptions(layers="heads", distill=0.0, anchor=0.0),
    "adabn": AdaptOptions(adabn=True, fine_tune=False),       # label-free (not shipped)
    "adabn+lwf": AdaptOptions(layers="all", adabn=True),
}


#: Films of the base's own training sites replayed by the ``+replay`` variants.
REPLAY_FILMS = 300


def queue(order: str, predicted: Sequence[str], confidence: Sequence[float]) -> list[int]:
    """The review queue's order over the site's films (as ``xreg serve`` shows them)."""
    if order == "confidence":
        return sorted(range(len(predicted)), key=lambda i: (confidence[i], i))
    from xreg.registry.reviews import teaching_order

    return teaching_order(list(predicted), list(confidence))


def _film(im: LabelledImage) -> Film:
    return Film(Path(im.path), im.body_parts, im.instrument, im.fracture,
                group=im.patient_id or im.dup_of or str(im.path))


def _groups(im: LabelledImage) -> set[str]:
    return {g for g in (im.patient_id, im.dup_of) if g} or {str(im.path)}


def _figures(loaded: LoadedModel, grey: torch.Tensor, truth: list[tuple[str, ...]]
             ) -> dict[str, Any]:
    card = loaded.card
    logits = predict_grey(loaded.model, grey, card)[BODY_PART]
    probs = torch.softmax(logits, dim=1).numpy()
    limit = card.guard.get("energy_max") if card.guard else None
    held = (-torch.logsumexp(logits, 1)).numpy() > float(limit) if limit is not None \
        else np.zeros(len(truth), bool)
    fig = sort_figures(card.head(BODY_PART).labels, probs, truth,
                       float(card.thresholds.get("min_confidence", 0.5)), held)
    return {k: fig[k] for k in ("films", "correct_folder", "wrong_folder", "review_rate",
                                "correct", "wrong", "review")}


def _decoded(images: Sequence[LabelledImage], size: int, cache: dict[Path, Any]
             ) -> tuple[torch.Tensor, list[tuple[str, ...]]]:
    grey, kept = decode_grey([Path(im.path) for im in images], size, cache=cache)
    return grey, [images[i].body_parts for i in kept]


def calibrated(base: LoadedModel, calibration: dict[str, Any] | None) -> LoadedModel:
    """The base with the operating point and guard its LOSO run chose on held-out films.

    ``site_generalisation.py`` calibrates in memory and records the choice in
    its sweep JSON; the checkpoint on disk keeps its training thresholds.
    """
    if not calibration:
        return base
    card = dataclasses.replace(
        base.card, thresholds={**base.card.thresholds,
                               "min_confidence": calibration["min_confidence"]["threshold"]},
        guard=calibration.get("guard") or {})
    return LoadedModel(base.model, card, base.sha256, base.path)


def run_site(site: str, manifest: Path, model_path: Path, ks: Sequence[int],
             variants: Sequence[str], orders: Sequence[str], threads: int,
             say: Any, phantoms: torch.Tensor | None = None,
             calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    base = calibrated(load_checkpoint(model_path), calibration)
    labels = base.card.head(BODY_PART).labels
    size = base.card.input_size
    cache: dict[Path, Any] = {}
    films = [im for im in load_labels(manifest, labels)]
    split = model_path.with_suffix(".run") / "split.csv"
    others: list[LabelledImage] = []
    replay: list[Film] = []
    if split.is_file():
        with split.open(newline="") as fh:
            rows_of = {r["path"]: r for r in csv.DictReader(fh)}
        listed = load_labels(split, labels)
        others = [im for im in listed if rows_of[str(im.path)]["split"] == "test"
                  and rows_of[str(im.path)].get("source") != site]
        # "--replay-data": a sample of the base's own training films (real sites only).
        pool = [im for im in listed if rows_of[str(im.path)]["split"] == "train"
                and rows_of[str(im.path)].get("source") not in (site, "phantoms")]
        pick = np.random.default_rng(0).permutation(len(pool))[:REPLAY_FILMS]
        replay = [_film(pool[i]) for i in sorted(pick)]
    say(f"{site}: {len(films)} films, {len(others)} test films of other sites; decoding")
    site_grey, site_truth = _decoded(films, size, cache)
    kept = [im for im in films if cache.get(Path(im.path)) is not None]
    other_grey, other_truth = _decoded(others, size, cache) if others else (None, [])
    logits = predict_grey(base.model, site_grey, base.card)[BODY_PART]
    probs = torch.softmax(logits, 1)
    conf, top = probs.max(1)
    predicted = [labels[int(k)] for k in top]
    base_other = _figures(base, other_grey, other_truth) if other_grey is not None else None
    rows: list[dict[str, Any]] = []
    for order in orders:
        ranked = queue(order, predicted, conf.tolist())
        for k in ks:
            reviewed = [kept[i] for i in ranked[:k]]
            taken = set().union(*(_groups(im) for im in reviewed)) if reviewed else set()
            rest_idx = [i for i in range(len(kept)) if not (_groups(kept[i]) & taken)]
            rest_grey = site_grey[rest_idx]
            rest_truth = [site_truth[i] for i in rest_idx]
            base_rest = _figures(base, rest_grey, rest_truth)
            for variant in (variants if k else ["base"]):
                row: dict[str, Any] = {"site": site, "order": order, "k": k,
                                       "variant": variant, "rest": base_rest,
                                       "other_sites": base_other, "accepted": None,
                                       "seconds": 0.0}
                if k:
                    options = dataclasses.replace(VARIANTS[variant], workers=threads)
                    unreviewed = [_film(kept[i]) for i in rest_idx]
                    started = time.perf_counter()
                    try:
                        result = adapt(base, [_film(im) for im in reviewed], unreviewed,
                                       options, cache=cache, phantoms=phantoms,
                                       replay=replay if "replay" in variant else ())
                    except Exception as exc:  # noqa: BLE001 - a refusal to adapt is a result
                        row.update(error=str(exc), seconds=time.perf_counter() - started)
                        rows.append(row)
                        say(f"  {order} K={k} {variant}: not adapted ({exc})")
                        continue
                    row["seconds"] = time.perf_counter() - started
                    row["accepted"] = result.accepted
                    row["thresholds"] = dict(result.loaded.card.thresholds)
                    row["guard"] = dict(result.loaded.card.guard)
                    row["verdict"] = result.verdict
                    adapted = _figures(result.loaded, rest_grey, rest_truth)
                    adapted_other = _figures(result.loaded, other_grey, other_truth) \
                        if other_grey is not None else None
                    row["adapted_rest"], row["adapted_other_sites"] = adapted, adapted_other
                    if result.accepted:
                        row["rest"], row["other_sites"] = adapted, adapted_other
                rows.append(row)
                say(f"  {order} K={k:>3} {variant:>9}: rest correct "
                    f"{_v(row['rest']['correct_folder'])} wrong {_v(row['rest']['wrong_folder'])}"
                    f" review {_v(row['rest']['review_rate'])}"
                    + (f" | other sites correct {_v(row['other_sites']['correct_folder'])}"
                       f" wrong {_v(row['other_sites']['wrong_folder'])}"
                       if row["other_sites"] else "")
                    + (f" | {row['seconds']:.0f} s, {'kept' if row['accepted'] else 'refused'}"
                       if k else ""))
    return {"site": site, "films": len(kept), "base": str(model_path.name),
            "base_other_sites": base_other, "rows": rows}


def _v(x: float | None) -> str:
    return "  –  " if x is None else f"{x:.3f}"


def plot(results: list[dict[str, Any]], path: Path, variant: str, order: str) -> None:
    """Correct and wrong folder on the rest of each site, and wrong folder on the other
    sites (forgetting), against K; one colour per site."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharex=True)
    panels = (("rest", "correct_folder", "correct folder (rest of the site)"),
              ("rest", "wrong_folder", "wrong folder (rest of the site)"),
              ("other_sites", "wrong_folder", "wrong folder (other sites: forgetting)"))
    for n, res in enumerate(results):
        rows = [r for r in res["rows"] if r["order"] == order
                and r["variant"] in ("base", variant) and "error" not in r]
        ks = [r["k"] for r in rows]
        for ax, (part, key, _) in zip(axes, panels):
            ys = [(r[part] or {}).get(key) for r in rows]
            if any(y is not None for y in ys):
                ax.plot(ks, [np.nan if y is None else y for y in ys], marker="o",
                        color=f"C{n}", label=res["site"])
    for ax, (_, _, title) in zip(axes, panels):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("reviewed films K")
        ax.set_xscale("symlog", linthresh=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(0, 1.02)
    for ax in axes[1:]:
        ax.set_ylim(0, max(0.1, ax.get_ylim()[1]))
    axes[1].legend()
    fig.suptitle(f"xreg adapt from the leave-one-site-out model ({variant}, {order} queue)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _tiny(work: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """Two phantom "sites" and a tiny random base model for each (seconds, for CI)."""
    from xreg.model.checkpoint import make_random_checkpoint
    from xreg.synth.generate import generate_dataset

    manifests, models = {}, {}
    for i, site in enumerate(("alpha", "beta")):
        folder = work / site
        generate_dataset(folder, count=24, seed=i, size=96)
        manifests[site] = folder / "labels.csv"
        models[site] = work / f"without-{site}.pt"
        make_random_checkpoint(models[site], arch="mobilenet_v3_small", input_size=64, seed=i)
    return manifests, models


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifests", type=Path, help="folder of SITE.csv manifests")
    parser.add_argument("--models", type=Path, help="folder of without-SITE.pt models")
    parser.add_argument("--sites", default="", help="comma list (default: every site "
                        "with both a manifest and a model)")
    parser.add_argument("--ks", default="0,10,25,50,100,200")
    parser.add_argument("--variants", default="default")
    parser.add_argument("--orders", default="spread")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sweep", type=Path, help="site_generalisation.py's JSON: each "
                        "base's min_confidence and guard, chosen on held-out films")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--tiny", type=Path, metavar="WORK",
                        help="phantom sites in WORK instead of --manifests/--models")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    ks = [int(k) for k in args.ks.split(",")]
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {unknown[0]}; known: {', '.join(VARIANTS)}")
    orders = [o for o in args.orders.split(",") if o]
    if args.tiny:
        manifests, models = _tiny(args.tiny)
        ks = [k for k in ks if k <= 12] or [0, 6]
        for name in VARIANTS:
            VARIANTS[name] = dataclasses.replace(VARIANTS[name], min_steps=2, max_steps=3,
                                                 phantoms=20)
    else:
        if not (args.manifests and args.models):
            parser.error("give --manifests and --models (or --tiny WORK)")
        manifests = {p.stem: p for p in sorted(args.manifests.glob("*.csv"))}
        models = {p.stem.removeprefix("without-"): p
                  for p in sorted(args.models.glob("without-*.pt"))}
    sites = [s for s in (args.sites.split(",") if args.sites else manifests)
             if s in manifests and s in models]
    if not sites:
        parser.error("no site has both a manifest and a without-SITE.pt model")
    phantoms = None  # each adapt renders its own, in memory, at its base's size
    sweep = json.loads(args.sweep.read_text()) if args.sweep else {}
    chosen = {v["site"]: v.get("calibration") for v in sweep.values()}
    results = []
    for site in sites:
        results.append(run_site(site, manifests[site], models[site], ks, variants, orders,
                                args.threads, lambda m: print(m, flush=True), phantoms,
                                chosen.get(site)))
        if args.json:
            args.json.write_text(json.dumps({"sites": results}, indent=1))
    _print_table(results)
    if args.plot:
        plot(results, args.plot, variants[0], orders[0])
        print(f"plot: {args.plot}")
    return 0


def _print_table(results: list[dict[str, Any]]) -> None:
    print("\nsite | order | variant | K | rest correct | rest wrong | rest review | "
          "other sites correct (base) | other sites wrong (base) | adapt s | verdict")
    for res in results:
        b = res["base_other_sites"] or {}
        for r in res["rows"]:
            if "error" in r:
                print(f"{res['site']} | {r['order']} | {r['variant']} | {r['k']} | "
                      f"not adapted: {r['error']}")
                continue
            o = r["other_sites"] or {}
            print(f"{res['site']} | {r['order']} | {r['variant']} | {r['k']} | "
                  f"{_v(r['rest']['correct_folder'])} | {_v(r['rest']['wrong_folder'])} | "
                  f"{_v(r['rest']['review_rate'])} | {_v(o.get('correct_folder'))} "
                  f"({_v(b.get('correct_folder'))}) | {_v(o.get('wrong_folder'))} "
                  f"({_v(b.get('wrong_folder'))}) | {r['seconds']:.0f} | "
                  f"{'' if r['accepted'] is None else ('kept' if r['accepted'] else 'refused')}")


if __name__ == "__main__":
    raise SystemExit(main())
