"""How far K reviews can take a base at a hospital: linear probes against ``xreg adapt``.

On the pseudo-hospital of ``benchmarks/adapt_new_site.py`` (same films, same
day folders, same leave-one-site-out base), for several uniform samples of K
reviewed films, this measures on the rest of the hospital:

* **adapt**: top-1 on the films of the nine folders, correct and wrong
  folder of the adapted model with its re-chosen guard (what ``xreg adapt``
  with its defaults gives), and the best a confidence threshold alone could
  do at 5% wrong folder, chosen on the rest itself (an oracle: no guard
  chosen without the rest's labels can do better by confidence).
* **probes**: a logistic regression (scikit-learn) on the K films' features,
  taken at several depths of the base's first member and from MobileNetV2's
  ImageNet weights (when torch's cache holds them:
  ``scripts/fetch_imagenet_weights.py``); top-1 on the same films. A head over
  frozen features is a linear probe, so this is its ceiling at these K.

    python benchmarks/adapt_ceiling.py --manifest ../shared/data/fracatlas/labels.csv \\
        --members RUNS/site-mobilenet_v2-160/without-fracatlas.pt \\
                  RUNS/mix-mobilenet_v2-160/without-fracatlas.pt \\
        --work W [--k 100] [--seeds 0,1,2,3,4]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from adapt_new_site import _figures, build_base, hospital, rests  # noqa: E402

from xreg.model.checkpoint import load_checkpoint  # noqa: E402
from xreg.model.labels import BODY_PARTS  # noqa: E402
from xreg.train.adapt import AdaptOptions, Film, adapt  # noqa: E402
from xreg.train.finetune import BODY_PART, decode_grey, network_input, predict_grey  # noqa: E402

#: Blocks of a torchvision MobileNetV2 whose pooled outputs are probed (18: the last).
BLOCKS = (10, 13, 16, 18)
WRONG_TARGET = 0.05


@torch.no_grad()
def pooled(features: torch.nn.Sequential, x: torch.Tensor, blocks: Sequence[int]
           ) -> dict[int, np.ndarray]:
    out: dict[int, list[torch.Tensor]] = {b: [] for b in blocks}
    for start in range(0, len(x), 64):
        h = x[start:start + 64]
        for i, block in enumerate(features):
            h = block(h)
            if i in out:
                out[i].append(h.mean((2, 3)))
    return {b: torch.cat(v).numpy() for b, v in out.items()}


def probe(x: np.ndarray, reviewed: Sequence[int], rest: Sequence[int],
          truth: Sequence[tuple[str, ...]]) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import normalize

    x = normalize(x)
    fit = LogisticRegression(C=10, max_iter=5000, class_weight="balanced").fit(
        x[list(reviewed)], [truth[i][0] for i in reviewed])
    said = fit.predict(x[list(rest)])
    nine = [j for j, i in enumerate(rest) if truth[i][0] in BODY_PARTS]
    return float(np.mean([said[j] in truth[rest[j]] for j in nine]))


def oracle(labels: Sequence[str], probs: np.ndarray, truth: Sequence[tuple[str, ...]]
           ) -> float:
    """Correct folder at the loosest confidence threshold with at most 5% wrong."""
    top = probs.argmax(1)
    right = np.array([labels[k] in t for k, t in zip(top, truth)])
    sortable = np.array([labels[k] in BODY_PARTS for k in top])
    nine = np.array([t[0] in BODY_PARTS for t in truth])
    best = 0.0
    for c in np.unique(probs.max(1)):
        placed = sortable & (probs.max(1) >= c)
        if (placed & ~right).sum() <= WRONG_TARGET * len(truth):
            best = max(best, float((placed & right & nine).sum() / nine.sum()))
    return best


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--members", type=Path, nargs="+", required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--site", default="fracatlas")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    base = load_checkpoint(build_base(args.members, args.work, f"without-{args.site}"))
    labels = base.card.head(BODY_PART).labels
    site = hospital(args.manifest, labels, 400, 10, 0)
    cache: dict[Path, object] = {}
    grey, kept = decode_grey([Path(im.path) for im, _ in site], base.card.input_size,
                             cache=cache)
    site = [site[i] for i in kept]
    truth = [im.body_parts for im, _ in site]
    x = network_input(grey.float(), base.card)
    feats: dict[str, np.ndarray] = {}
    first = base.model.member_nets[0].backbone  # type: ignore[union-attr, index]
    if hasattr(first, "features"):
        feats.update({f"base, member 1, block {b}": v
                      for b, v in pooled(first.features.eval(), x, BLOCKS).items()})
    try:
        import torchvision

        net = torchvision.models.mobilenet_v2(weights="IMAGENET1K_V1").eval()
        rgb = x if x.shape[1] == 3 else x.repeat(1, 3, 1, 1)
        feats["ImageNet MobileNetV2, last block"] = pooled(net.features, rgb, (18,))[18]
    except Exception as exc:  # noqa: BLE001 - offline without the cached weights
        print(f"ImageNet probe skipped: {exc}")
    rows: dict[str, list[float]] = {}
    print(f"{len(site)} films; K = {args.k}; seeds {args.seeds}", flush=True)
    for seed in (int(s) for s in args.seeds.split(",")):
        reviewed = [int(i) for i in np.random.default_rng(seed).permutation(len(site))][:args.k]
        rest, _ = rests(site, reviewed)
        films = [Film(Path(site[i][0].path), truth[i], site[i][0].instrument,
                      site[i][0].fracture, site[i][1], "benchmark") for i in reviewed]
        result = adapt(base, films, [], AdaptOptions(workers=args.threads), cache=cache)
        out = predict_grey(result.loaded.model, grey[rest], result.loaded.card)
        probs = torch.softmax(out[BODY_PART], 1).numpy()
        rest_truth = [truth[i] for i in rest]
        fig = _figures(result.loaded, grey[rest], rest_truth)
        nine = [j for j, t in enumerate(rest_truth) if t[0] in BODY_PARTS]
        measured = {"adapt: top-1 (nine folders)": float(np.mean(
                        [labels[int(probs[j].argmax())] in rest_truth[j] for j in nine])),
                    "adapt: correct folder": fig["correct_folder"],
                    "adapt: wrong folder": fig["wrong_folder"],
                    "oracle confidence threshold: correct folder at 5% wrong":
                        oracle(labels, probs, rest_truth)}
        measured.update({f"probe top-1: {name}": probe(v, reviewed, rest, truth)
                         for name, v in feats.items()})
        print(f"seed {seed}: " + "; ".join(f"{k} {v:.3f}" for k, v in measured.items()),
              flush=True)
        for k, v in measured.items():
            rows.setdefault(k, []).append(v)
    print(f"\n| K = {args.k}, {len(next(iter(rows.values())))} samples | mean | min | max |")
    print("|---|---|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {np.mean(v):.3f} | {min(v):.3f} | {max(v):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
