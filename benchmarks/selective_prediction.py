"""Selective prediction under shift: which rule holds back what a new hospital brings.

    python benchmarks/selective_prediction.py --work DIR --member site-mobilenet_v2-160 \\
        [--member mix-mobilenet_v2-160 ...] [--fold fracatlas ...] [--json out.json]

Reads the leave-one-site-out runs of ``benchmarks/site_generalisation.py``
(``DIR/runs/<member>/without-<site>.pt`` and their ``.run`` folders): for each
fold, every member trained without the fold's site. Films go through the sort's
own decoding and preprocessing once (cached in ``DIR/selective``); each member
gives logits, penultimate features and the logits of the mirrored film for the
training split (a sample, to fit feature-space scores), the validation split of
the training sites (to set every rule's threshold) and every film of the
left-out site (to score it). Rules compared (a film is sorted only when its
label is a body part, i.e. not ``other``, and the rule passes it):

- ``confidence``: max probability (``min_confidence`` alone);
- ``energy``: the body-part energy (today's unfamiliar-film guard);
- ``mahalanobis``: distance of the features to the nearest class mean (shared
  covariance, fitted on the training sample);
- ``knn``: cosine distance to the k-th nearest training feature;
- ``flip``: the probability the mirrored film gives the label (test-time agreement);
- ``agree``: with two or more members, the lowest probability any member gives
  the ensemble's label (members that disagree hold the film back);
- ``agree+knn``: both, each at its own threshold.

Prints per fold a risk-coverage table (wrong folder at equal shares sorted) and
the operating point each rule reaches when its threshold lets 95% of the
validation films of the nine pass, with wrong folder per class.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from xreg.evaluation.selective import (  # noqa: E402
    COVERAGES,
    fold_figures,
    rule_scores,
    wrong_at_coverage,
)

PASS_SHARE = 0.95


def _grey(path: Path, size: int, mode: str) -> np.ndarray | None:
    from xreg.inference.preprocess import normalise_intensity, resize_grey
    from xreg.io import try_load_image

    image = try_load_image(path.read_bytes(), target_size=size)
    if isinstance(image, str):
        return None
    return normalise_intensity(resize_grey(image.pixels, size), mode).astype(np.float16)


def decode_films(paths: list[Path], size: int, mode: str, cache: Path
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Grey inputs ``(N, S, S)`` float16 through the sort's decoding, and which decoded."""
    cache.mkdir(parents=True, exist_ok=True)

    def one(path: Path) -> np.ndarray | None:
        key = hashlib.sha1(f"{path}|{size}|{mode}".encode()).hexdigest()
        file = cache / f"{key}.npy"
        if file.exists():
            return np.load(file)
        grey = _grey(path, size, mode)
        if grey is not None:
            np.save(file, grey)
        return grey

    with ThreadPoolExecutor(max_workers=2) as pool:
        greys = list(pool.map(one, paths))
    ok = np.array([g is not None for g in greys])
    films = np.stack([g if g is not None else np.zeros((size, size), np.float16)
                      for g in greys])
    return films, ok


def run_member(checkpoint: Path, films: np.ndarray) -> dict[str, np.ndarray]:
    """Body-part logits, features, mirrored-film logits and binary-head probabilities."""
    import torch

    from xreg.model.checkpoint import load_checkpoint

    loaded = load_checkpoint(checkpoint)
    model, card = loaded.model.eval(), loaded.card
    out: dict[str, list[np.ndarray]] = {"logits": [], "features": [], "flip": []}
    binary = [h.name for h in card.heads if h.name in ("instrument", "fracture")]
    for name in binary:
        out[name] = []
    with torch.inference_mode():
        for start in range(0, len(films), 64):
            x = (torch.from_numpy(films[start:start + 64].astype(np.float32)) - card.mean) \
                / card.std
            x = x[:, None].expand(-1, 3, -1, -1).contiguous()
            feats = model.backbone(x)
            out["features"].append(feats.numpy().astype(np.float32))
            out["logits"].append(model.heads["body_part"](feats).numpy())
            out["flip"].append(model.heads["body_part"](model.backbone(x.flip(-1))).numpy())
            for name in binary:
                out[name].append(torch.softmax(model.heads[name](feats), 1)[:, 1].numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def fold_data(work: Path, members: list[str], site: str, train_sample: int,
              seed: int, manifest: Path | None = None) -> dict[str, Any]:
    """Every member's outputs on the fold's training sample, validation and left-out site."""
    from xreg.datasets import load_labels
    from xreg.model.checkpoint import load_checkpoint
    from xreg.model.labels import EXTENDED_BODY_PARTS
    from xreg.train.sites import split_images

    tag = hashlib.sha1("|".join(members).encode()).hexdigest()[:8]
    store = work / "selective" / f"without-{site}-{tag}.npz"
    if store.exists():
        return dict(np.load(store, allow_pickle=False))
    first = work / "runs" / members[0] / f"without-{site}.pt"
    card = load_checkpoint(first).card
    labels = card.head("body_part").labels
    run_dir = first.with_suffix(".run")
    rng = np.random.default_rng(seed)
    train = split_images(run_dir, "train", labels)
    train = [train[i] for i in sorted(rng.choice(len(train), min(train_sample, len(train)),
                                                 replace=False))]
    val = split_images(run_dir, "val", labels)
    held = load_labels(manifest or work / "manifests" / f"{site}.csv", EXTENDED_BODY_PARTS)
    parts = {"train": train, "val": val, "held": held}
    data: dict[str, Any] = {"labels": np.array(labels)}
    for part, images in parts.items():
        films, ok = decode_films([im.path for im in images], card.input_size, card.normalise,
                                 work / "selective" / "films")
        data[f"{part}_ok"] = ok
        data[f"{part}_truth"] = np.array([labels.index(im.body_part) for im in images])
        data[f"{part}_sets"] = np.array(["|".join(im.body_parts) for im in images])
        data[f"{part}_source"] = np.array([im.source or site for im in images])
        data[f"{part}_instrument"] = np.array([-1 if im.instrument is None else im.instrument
                                               for im in images])
        data[f"{part}_fracture"] = np.array([-1 if im.fracture is None else im.fracture
                                             for im in images])
        for m, member in enumerate(members):
            outputs = run_member(work / "runs" / member / f"without-{site}.pt", films)
            for key, value in outputs.items():
                data[f"{part}_m{m}_{key}"] = value
    store.parent.mkdir(parents=True, exist_ok=True)
    np.savez(store, **data)
    return data


def print_fold(site: str, figures: dict[str, Any]) -> None:
    print(f"\n### without {site}: {figures['films']} films, "
          f"{figures['nine_films']} of the nine\n")
    print("Wrong folder at equal shares sorted (risk-coverage; '-' = not reachable):\n")
    print("| rule | " + " | ".join(f"sorted {c:.0%}" for c in COVERAGES) + " |")
    print("|---|" + "---|" * len(COVERAGES))
    for rule, curve in figures["curves"].items():
        print(f"| {rule} | " + " | ".join("-" if v is None else f"{v:.3f}"
                                         for v in wrong_at_coverage(curve)) + " |")
    print(f"\nOperating point (threshold passing {PASS_SHARE:.0%} of validation films "
          "of the nine):\n")
    print("| rule | sorted | correct folder | wrong folder | wrong folder by true class |")
    print("|---|---|---|---|---|")
    for rule, row in figures["operating"].items():
        by_class = ", ".join(f"{k} {v:.2f}" for k, v in row["wrong_by_class"].items() if v)
        print(f"| {rule} | {row['sorted']:.3f} | {row['correct_folder']:.3f} | "
              f"{row['wrong_folder']:.3f} | {by_class or '-'} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True,
                        help="the work folder of benchmarks/site_generalisation.py")
    parser.add_argument("--member", action="append", required=True,
                        help="a runs/ subfolder (one trained recipe); the first is the base")
    parser.add_argument("--fold", action="append", default=None,
                        help="left-out sites (default: every fold all members have)")
    parser.add_argument("--site", action="append", default=[], metavar="NAME=MANIFEST",
                        help="a left-out site's manifest when the sweep was given --site "
                        "(default: DIR/manifests/NAME.csv)")
    parser.add_argument("--train-sample", type=int, default=2000)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    folds = args.fold or sorted(
        p.stem.removeprefix("without-")
        for p in (args.work / "runs" / args.member[0]).glob("without-*.pt")
        if all((args.work / "runs" / m / p.name).exists() for m in args.member))
    manifests = {name: Path(path) for name, path in (e.split("=", 1) for e in args.site)}
    results = {}
    for site in folds:
        data = fold_data(args.work, args.member, site, args.train_sample, args.seed,
                         manifests.get(site))
        scores = rule_scores(data, len(args.member))
        figures = fold_figures(data, scores, pass_share=PASS_SHARE)
        print_fold(site, figures)
        results[site] = figures
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
