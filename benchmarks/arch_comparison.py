"""Compare backbones for the shipped default: held-out accuracy and sort-path speed.

For each architecture: ``xreg train`` (the library call) on the same
manifest with the same recipe, then score on a held-out phantom set made
with a different seed, and time the inference path (decode + preprocess +
model, as ``xreg sort`` runs it) over those held-out files. Every figure
comes from this one run on this machine; printed as a Markdown table and
written as JSON.

    python benchmarks/arch_comparison.py --data train/labels.csv \\
        --heldout heldout/labels.csv --archs mobilenet_v2,resnet18 --input-size 128

ImageNet weights are used where torchvision's cache has them (offline, only
MobileNetV2's: scripts/fetch_imagenet_weights.py); the others start from
random weights, which the table states, because it changes the comparison.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from xreg.datasets import load_labels
from xreg.errors import CheckpointError
from xreg.evaluation.evaluate import evaluate
from xreg.inference.predict import SourceFile, predict_files
from xreg.model.checkpoint import load_checkpoint
from xreg.model.models import STANDARD_HEADS, build_model, load_imagenet_backbone
from xreg.train import load_train_config, train


def sort_path_rate(weights: Path, files: list[Path], batch_size: int) -> float:
    """Images per second through predict_files (decode pool + batched model)."""
    loaded = load_checkpoint(weights)
    sources = [SourceFile(p, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    # Warm-up on one batch so oneDNN's first-call setup is not timed.
    for _ in predict_files(sources[:batch_size], loaded, batch_size=batch_size):
        pass
    started = time.perf_counter()
    n = sum(len(b) for b in predict_files(sources, loaded, batch_size=batch_size))
    return n / (time.perf_counter() - started)


def imagenet_available(arch: str, input_size: int) -> bool:
    try:
        load_imagenet_backbone(build_model(arch, STANDARD_HEADS, input_size=input_size))
    except CheckpointError:
        return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="training manifest")
    parser.add_argument("--heldout", type=Path, required=True, help="held-out manifest")
    parser.add_argument("--archs", default="mobilenet_v2,mobilenet_v3_large,"
                        "efficientnet_b0,resnet18")
    parser.add_argument("--config", type=Path, default=None, help="base recipe YAML")
    parser.add_argument("--input-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=None,
                        help="learning rate for every arch (default: the recipe's)")
    parser.add_argument("--random-lr", type=float, default=1e-3,
                        help="learning rate for archs that start from random weights")
    parser.add_argument("--speed-images", type=int, default=256,
                        help="held-out files to time the sort path on (0: skip)")
    parser.add_argument("--device", default="auto", help="where to train: auto, cpu, cuda")
    parser.add_argument("--workers", type=int, default=2, help="decoding threads")
    parser.add_argument("--work", type=Path, default=Path("arch_comparison"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    torch.set_num_threads(torch.get_num_threads())
    heldout_files = [im.path for im in load_labels(args.heldout)][: args.speed_images]
    rows = []
    for arch in args.archs.split(","):
        pretrained = imagenet_available(arch, args.input_size)
        overrides = {"arch": arch, "input_size": args.input_size, "max_epochs": args.epochs,
                     "pretrained": "imagenet" if pretrained else "none",
                     "resamples": 1000, "name": f"cmp_{arch}"}
        # Random weights need a far larger step than fine-tuning does.
        lr = args.lr if args.lr is not None else None if pretrained else args.random_lr
        if lr is not None:
            overrides["lr"] = lr
        config = load_train_config(args.config, overrides)
        out = args.work / f"{arch}.pt"
        started = time.perf_counter()
        result = train(config, args.data, out, overwrite=True, device=args.device,
                       workers=args.workers)
        train_s = time.perf_counter() - started
        ev = evaluate(out, args.heldout, n_resamples=1000, device=args.device,
                      workers=args.workers)
        rate = sort_path_rate(out, heldout_files, 16) if heldout_files else float("nan")
        inst = ev.instrument or {}
        row = {
            "arch": arch, "init": result.card.training["init"], "lr": config.lr,
            "input_size": args.input_size, "epochs": len(result.log),
            "train_seconds": round(train_s, 1),
            "heldout_images": len(ev.paths),
            "body_part_mcc": ev.body_part.mcc.to_list(),
            "body_part_accuracy": ev.body_part.accuracy.to_list(),
            "instrument_auc": inst["auc"].to_list() if inst else None,
            "sort_path_img_per_s": round(rate, 1),
            "params_m": round(sum(p.numel() for p in
                                  load_checkpoint(out).model.parameters()) / 1e6, 2),
            "file_mb": round(out.stat().st_size / 1e6, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json is not None:  # after every arch, so a cut-off run keeps what it has
            args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print()
    print("| arch | init | lr | held-out body part MCC | instrument AUC | "
          "sort path img/s | train s | params (M) | file MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mcc = r["body_part_mcc"]
        auc = r["instrument_auc"]
        auc_text = f"{auc[0]:.3f} ({auc[1]:.3f}-{auc[2]:.3f})" if auc else "n/a"
        print(f"| {r['arch']} | {r['init']} | {r['lr']:g} | {mcc[0]:.3f} "
              f"({mcc[1]:.3f}-{mcc[2]:.3f}) | {auc_text} | {r['sort_path_img_per_s']} | "
              f"{r['train_seconds']} | {r['params_m']} | {r['file_mb']} |")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
