"""A new hospital after K reviews: ``xreg adapt`` on a pseudo-hospital.

The pseudo-hospital is ``--films`` films of one site of ``../shared/data``
laid out as an archive is: day folders of about ``--folder-size`` films,
patients kept together, JPEGs without a patient in their header (so the
split groups by folder). The base is the leave-one-site-out ensemble of that
site (its members come from ``benchmarks/site_generalisation.py``), joined,
given its guard on its own sites' validation films (``fit_guard``,
``calibrate``) and its replay file (``scripts/make_replay.py``'s selection),
exactly as the shipped default is built.

For each review order (``spread``: the review page's queue; ``random``) and
K, the first K films are reviewed (labels from the manifest), adapt runs
(:func:`xreg.train.adapt.adapt`, what ``xreg adapt OUT --out W.pt`` runs)
and the rest of the hospital is sorted: correct and wrong folder. Films
that duplicate a reviewed one are left out of the rest; the strict rest also
leaves out every film of a reviewed patient. Forgetting: the adapt's own replay
hold-out and, independently, the test split of the base's sites. A refused
adapt is reported, and the rest then stays with the base (as the tool does).

    python benchmarks/adapt_new_site.py --site fracatlas \\
        --manifest ../shared/data/fracatlas/labels.csv \\
        --members RUNS/site-mobilenet_v2-160/without-fracatlas.pt \\
                  RUNS/mix-mobilenet_v2-160/without-fracatlas.pt \\
        --work W --json curve.json --plot docs/images/adapt_curve.png \\
        [--ks 25,50,100,200] [--orders spread,random] [--variants shipped,none,images]

Variants: ``shipped`` (the default: the replay file beside the base),
``none`` (no replay: phantoms rendered in memory are distilled), ``images``
(no replay file, ``--replay-data`` films of the base's sources instead).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
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
from xreg.model.checkpoint import LoadedModel, load_checkpoint, save_checkpoint  # noqa: E402
from xreg.registry.reviews import teaching_order  # noqa: E402
from xreg.train.adapt import AdaptOptions, Film, adapt  # noqa: E402
from xreg.train.adapt_result import holdout_figures  # noqa: E402
from xreg.train.finetune import BODY_PART, decode_grey, predict_grey  # noqa: E402

#: The review-queue orders compared.
ORDERS = ("spread", "random")
#: Replayed films (``images`` variant): a seeded sample of the base's training films.
IMAGE_REPLAY = 1500


def build_base(members: Sequence[Path], work: Path, name: str) -> Path:
    """The leave-one-site-out ensemble with its guard and replay file (cached)."""
    from xreg.train.guard import ensemble_card, fit_guard, join_loaded
    from xreg.train.replay import pick_replay, replay_from_grey, replay_path, save_replay
    from xreg.train.sites import calibrate, split_images

    target = work / f"{name}.pt"
    if target.is_file() and replay_path(target).is_file():
        return target
    loaded = [load_checkpoint(p) for p in members]
    run = members[0].with_suffix(".run")
    labels = loaded[0].card.head(BODY_PART).labels
    net = join_loaded(loaded)
    card = ensemble_card(loaded, name)
    card, _ = fit_guard(net, card, split_images(run, "train", labels),
                        split_images(run, "val", labels))
    base, _ = calibrate(LoadedModel(net, card, "", None), split_images(run, "val", labels))
    save_checkpoint(target, base.model, base.card)
    chosen = pick_replay(run / "split.csv", labels, 100, 30)
    grey, kept = decode_grey([Path(im.path) for im, _ in chosen], card.input_size)
    films = [chosen[i] for i in kept]
    replay = replay_from_grey(base.model, base.card, grey, [im.body_parts for im, _ in films],
                              [im.instrument for im, _ in films],
                              [im.fracture for im, _ in films], [im.source for im, _ in films],
                              [h for _, h in films])
    path = replay_path(target)
    sha = save_replay(path, replay)
    save_checkpoint(target, base.model, dataclasses.replace(
        base.card, replay={"file": path.name, "sha256": sha, **replay.summary()}))
    return target


def hospital(manifest: Path, labels: Sequence[str], films: int, folder_size: int,
             seed: int) -> list[tuple[LabelledImage, str]]:
    """``films`` films of the site in day folders: (film, its folder)."""
    images = load_labels(manifest, labels, lenient=True)
    rng = np.random.default_rng(seed)
    picked = [images[i] for i in sorted(rng.permutation(len(images))[:films])]
    picked.sort(key=lambda im: (im.patient_id or "", str(im.path)))
    return [(im, f"day-{n // folder_size:03d}") for n, im in enumerate(picked)]


def _groups(im: LabelledImage) -> set[str]:
    return {g for g in (im.patient_id, im.dup_of) if g} or {str(im.path)}


def _dups(im: LabelledImage) -> set[str]:
    return {im.dup_of} if im.dup_of else {str(im.path)}


def rests(site: list[tuple[LabelledImage, str]], reviewed: Sequence[int]
          ) -> tuple[list[int], list[int]]:
    """The rest of the hospital after reviewing ``reviewed``: every other film but near
    duplicates of a reviewed one (what the hospital sorts next), and the strict rest
    that also leaves out every film of a reviewed patient (no patient on both sides)."""
    picked = set(reviewed)
    dups = set().union(*(_dups(site[i][0]) for i in reviewed))
    groups = set().union(*(_groups(site[i][0]) for i in reviewed))
    rest = [i for i in range(len(site)) if i not in picked and not (_dups(site[i][0]) & dups)]
    strict = [i for i in rest if not (_groups(site[i][0]) & groups)]
    return rest, strict


def _figures(loaded: LoadedModel, grey: torch.Tensor, truth: list[tuple[str, ...]]
             ) -> dict[str, Any]:
    fig = holdout_figures(loaded.card, predict_grey(loaded.model, grey, loaded.card), truth)
    return {k: fig[k] for k in ("films", "correct_folder", "wrong_folder", "review_rate",
                                "correct", "wrong", "review")}


def _xreg(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "xreg", *args], capture_output=True,
                          text=True, env=env)
    if done.returncode not in (0, 1):
        raise SystemExit(f"xreg {args[0]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done


def _folder_figures(out: Path, truth_of: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    """Correct / wrong / review of a sorted folder, from its registry and the truth."""
    from xreg.model.labels import BODY_PARTS
    from xreg.registry import Registry

    right = wrong = review = nine = films = 0
    with Registry(out / "registry.sqlite", readonly=True) as reg:
        for row in reg.iter_images():
            truth = truth_of[Path(sorted(row["source_paths"])[0]).name]
            films += 1
            nine += truth[0] in BODY_PARTS
            folder = Path(row["dest_path"]).parts[0]
            if folder.startswith("_"):
                review += 1
            elif folder in truth:
                right += truth[0] in BODY_PARTS
            else:
                wrong += 1
    return {"films": films, "correct_folder": right / nine if nine else None,
            "wrong_folder": wrong / films if films else None,
            "review_rate": review / films if films else None,
            "correct": right, "wrong": wrong, "review": review}


def cli_run(base_path: Path, site: list[tuple[LabelledImage, str]], reviewed: list[int],
            rest: list[int], work: Path) -> dict[str, Any]:
    """What a hospital runs, as commands: sort, import K reviews, ``xreg adapt OUT --out
    W2.pt`` with no other option, sort the rest with W2.pt. Film copies live in WORK."""
    import csv
    import os
    import shutil

    root = work / "cli"
    shutil.rmtree(root, ignore_errors=True)
    tmp = root / "tmp"
    tmp.mkdir(parents=True)
    env = {**os.environ, "TMPDIR": str(tmp), "COLUMNS": "200"}
    hospital_in, rest_in = root / "hospital", root / "rest"
    truth_of: dict[str, tuple[str, ...]] = {}
    for n, (im, folder) in enumerate(site):
        name = f"{n:04d}{Path(im.path).suffix}"
        truth_of[name] = im.body_parts
        (hospital_in / folder).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(im.path, hospital_in / folder / name)
        if n in set(rest):
            (rest_in / folder).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(im.path, rest_in / folder / name)
    out = root / "out"
    _xreg("sort", str(hospital_in), str(out), "--weights", str(base_path), "--min-age", "0",
          "--quiet", env=env)
    labels = root / "reviews.csv"
    with labels.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "body_part", "instrument", "fracture"])
        for n in reviewed:
            im, folder = site[n]
            writer.writerow([f"{folder}/{n:04d}{Path(im.path).suffix}", "|".join(im.body_parts),
                             "" if im.instrument is None else im.instrument,
                             "" if im.fracture is None else im.fracture])
    _xreg("registry", "import-reviews", str(out), str(labels), "--reviewer", "benchmark",
          env=env)
    target = root / "W2.pt"
    started = time.perf_counter()
    adapted = _xreg("adapt", str(out), "--out", str(target), "--weights", str(base_path),
                    "--json", env=env)
    seconds = time.perf_counter() - started
    summary = json.loads(adapted.stdout)
    result = {"adapt_seconds": seconds, "accepted": summary["accepted"],
              "verdict": summary["verdict"], "forgetting": summary["forgetting"],
              "temp_left": sorted(p.name for p in tmp.iterdir())}
    for name, weights in (("base", base_path), ("adapted", target)):
        if weights == target and not target.is_file():
            continue
        sorted_out = root / f"rest-{name}"
        _xreg("sort", str(rest_in), str(sorted_out), "--weights", str(weights), "--min-age",
              "0", "--quiet", env=env)
        result[name] = _folder_figures(sorted_out, truth_of)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", required=True)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--members", type=Path, nargs="+", required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--films", type=int, default=400)
    parser.add_argument("--folder-size", type=int, default=10)
    parser.add_argument("--ks", default="25,50,100,200")
    parser.add_argument("--orders", default="spread,random")
    parser.add_argument("--variants", default="shipped")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--cli", type=int, metavar="K", help="instead of the curve: the "
                        "commands a hospital runs, with K reviews in the first --orders order")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    say = lambda m: print(m, flush=True)  # noqa: E731
    started = time.perf_counter()
    base_path = build_base(args.members, args.work, f"without-{args.site}")
    base = load_checkpoint(base_path)
    say(f"base {base_path.name} ready ({time.perf_counter() - started:.0f} s); "
        f"guard {dict((k, v) for k, v in base.card.guard.items() if k != 'bank')}")
    labels = base.card.head(BODY_PART).labels
    size = base.card.input_size
    cache: dict[Path, Any] = {}
    site = hospital(args.manifest, labels, args.films, args.folder_size, args.seed)
    grey, kept = decode_grey([Path(im.path) for im, _ in site], size, cache=cache)
    site = [site[i] for i in kept]
    truth = [im.body_parts for im, _ in site]
    outputs = predict_grey(base.model, grey, base.card)
    probs = torch.softmax(outputs[BODY_PART], 1)
    conf, top = probs.max(1)
    predicted = [labels[int(k)] for k in top]
    run = args.members[0].with_suffix(".run")
    from xreg.train.sites import split_images

    others = [im for im in split_images(run, "test", labels) if im.source != "phantoms"]
    other_grey, other_kept = decode_grey([Path(im.path) for im in others], size, cache=cache)
    other_truth = [others[i].body_parts for i in other_kept]
    base_other = _figures(base, other_grey, other_truth)
    day_one = _figures(base, grey, truth)
    say(f"{args.site}: {len(site)} films in {len({f for _, f in site})} folders; day one "
        f"correct {day_one['correct_folder']:.3f} wrong {day_one['wrong_folder']:.3f}; "
        f"base on its sites' test films correct {base_other['correct_folder']:.3f} "
        f"wrong {base_other['wrong_folder']:.3f}")
    if args.cli:
        order = args.orders.split(",")[0]
        ranked = teaching_order(predicted, conf.tolist()) if order == "spread" else \
            [int(i) for i in np.random.default_rng(args.seed).permutation(len(site))]
        reviewed = ranked[:args.cli]
        rest, _ = rests(site, reviewed)
        result = {"site": args.site, "k": args.cli, "order": order, "rest_films": len(rest),
                  **cli_run(base_path, site, reviewed, rest, args.work)}
        say(json.dumps(result, indent=1))
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
        return 0
    image_replay: list[Film] = []
    if "images" in args.variants:
        pool = [im for im in split_images(run, "train", labels) if im.source != "phantoms"]
        pick = np.random.default_rng(1).permutation(len(pool))[:IMAGE_REPLAY]
        image_replay = [Film(Path(pool[i].path), pool[i].body_parts, pool[i].instrument,
                             pool[i].fracture, pool[i].patient_id or str(pool[i].path))
                        for i in sorted(pick)]
    rows: list[dict[str, Any]] = []
    for order in args.orders.split(","):
        ranked = teaching_order(predicted, conf.tolist()) if order == "spread" else \
            [int(i) for i in np.random.default_rng(args.seed).permutation(len(site))]
        for k in (int(k) for k in args.ks.split(",")):
            reviewed = ranked[:k]
            rest, strict = rests(site, reviewed)
            rest_truth = [truth[i] for i in rest]
            strict_truth = [truth[i] for i in strict]
            base_rest = _figures(base, grey[rest], rest_truth)
            films = [Film(Path(site[i][0].path), truth[i], site[i][0].instrument,
                          site[i][0].fracture, site[i][1], "benchmark") for i in reviewed]
            unreviewed = [Film(Path(site[i][0].path), group=site[i][1]) for i in rest]
            for variant in args.variants.split(","):
                options = AdaptOptions(workers=args.threads, replay=variant == "shipped")
                t0 = time.perf_counter()
                try:
                    result = adapt(base, films, unreviewed, options, cache=cache,
                                   replay=image_replay if variant == "images" else ())
                except Exception as exc:  # noqa: BLE001 - a refusal to adapt is a result
                    rows.append({"order": order, "k": k, "variant": variant,
                                 "error": str(exc)})
                    say(f"  {order} K={k} {variant}: not adapted ({exc})")
                    continue
                seconds = time.perf_counter() - t0
                adapted = _figures(result.loaded, grey[rest], rest_truth)
                strict_fig = _figures(result.loaded, grey[strict], strict_truth) \
                    if strict else None
                other = _figures(result.loaded, other_grey, other_truth)
                forgot = result.forgetting
                row = {"order": order, "k": k, "variant": variant, "seconds": seconds,
                       "accepted": result.accepted, "verdict": result.verdict,
                       "base_rest": base_rest, "rest": adapted, "strict_rest": strict_fig,
                       "other_sites": other,
                       "base_other_sites": base_other,
                       "replay_holdout": forgot, "notes": result.notes,
                       "thresholds": dict(result.loaded.card.thresholds),
                       "guard": {g: v for g, v in result.loaded.card.guard.items()
                                 if g != "bank"}, "counts": result.counts}
                rows.append(row)
                say(f"  {order:>6} K={k:>3} {variant:>7}: rest correct "
                    f"{base_rest['correct_folder']:.3f}->{adapted['correct_folder']:.3f} "
                    f"wrong {base_rest['wrong_folder']:.3f}->{adapted['wrong_folder']:.3f} "
                    + (f"(no reviewed patient, {strict_fig['films']} films: "
                       f"{strict_fig['correct_folder'] or 0:.3f} / "
                       f"{strict_fig['wrong_folder'] or 0:.3f}) " if strict_fig else "")
                    + "| "
                    f"base's sites correct {other['correct_folder']:.3f} "
                    f"({base_other['correct_folder']:.3f}) wrong "
                    f"{other['wrong_folder']:.3f} ({base_other['wrong_folder']:.3f})"
                    + (f" | replay hold-out drop {forgot['correct_drop']:+.3f} "
                       f"wrong {forgot['wrong_rise']:+.3f}" if forgot else "")
                    + (f" | unlike the reviews {result.counts['unlike_reviewed']:.0%}"
                       if result.counts.get("unlike_reviewed") is not None else "")
                    + f" | {seconds:.0f} s, {'kept' if result.accepted else 'refused'}")
                if args.json:
                    args.json.write_text(json.dumps(
                        {"site": args.site, "films": len(site), "day_one": day_one,
                         "base_other_sites": base_other, "rows": rows}, indent=1))
    if args.plot:
        plot(rows, day_one, args.plot, args.site)
        say(f"plot: {args.plot}")
    return 0


def plot(rows: list[dict[str, Any]], day_one: dict[str, Any], path: Path, site: str) -> None:
    """Rest correct and wrong folder, and the base's own sites (forgetting), against K."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharex=True)
    panels = (("rest", "correct_folder", "correct folder (rest of the hospital)"),
              ("rest", "wrong_folder", "wrong folder (rest of the hospital)"),
              ("other_sites", "correct_folder", "correct folder (base's own sites)"))
    series = sorted({(r["order"], r["variant"]) for r in rows if "error" not in r})
    for n, (order, variant) in enumerate(series):
        mine = sorted((r for r in rows if (r["order"], r["variant"]) == (order, variant)
                       and "error" not in r), key=lambda r: r["k"])
        for ax, (part, key, _) in zip(axes, panels):
            ax.plot([0] + [r["k"] for r in mine],
                    [day_one[key] if part == "rest" else mine[0]["base_other_sites"][key]]
                    + [r[part][key] for r in mine], marker="o", color=f"C{n}",
                    linestyle="-" if order == "spread" else "--",
                    label=f"{variant}, {order} order")
    axes[1].axhline(0.05, color="grey", linewidth=0.8, linestyle=":")
    for ax, (_, _, title) in zip(axes, panels):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("reviewed films K")
        ax.grid(alpha=0.3)
    axes[0].set_ylim(0, 1.02)
    axes[2].set_ylim(0, 1.02)
    axes[1].set_ylim(0, max(0.1, axes[1].get_ylim()[1]))
    axes[0].legend(fontsize=8)
    fig.suptitle(f"xreg adapt at a pseudo-hospital of {site} films, from the model that "
                 "never saw it")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
