"""Cost per image of heatmap overlays, against plain inference, on this machine.

Runs the shipped default checkpoint over the same files three ways in one
run: ``predict_files`` (what ``xreg sort`` pays for classification), then
``explain_files`` with each attribution method (decode at display size,
batched attribution, overlay PNG). Prints ms per image and the ratio.

    python benchmarks/heatmap_cost.py --files heldout/labels.csv --count 64
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from xreg.datasets import load_labels
from xreg.explain.heatmaps import explain_files
from xreg.explain.saliency import METHODS
from xreg.inference.predict import SourceFile, predict_files
from xreg.model.checkpoint import default_weights, load_checkpoint


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=Path, required=True, help="a manifest to take files from")
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    paths = [im.path for im in load_labels(args.files)][: args.count]
    loaded = load_checkpoint(default_weights())
    sources = [SourceFile(p, p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    for _ in predict_files(sources[: args.batch_size], loaded):  # warm-up
        pass
    started = time.perf_counter()
    for _ in predict_files(sources, loaded, batch_size=args.batch_size):
        pass
    base = (time.perf_counter() - started) / len(paths)
    print(f"{len(paths)} files, batch {args.batch_size}; inference only: "
          f"{base * 1000:.0f} ms/image")
    print("| method | ms per image | x inference |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for method in METHODS:
            targets = [Path(tmp, method, f"{i}.png") for i in range(len(paths))]
            started = time.perf_counter()
            explain_files(paths, loaded, targets, head="instrument", method=method,
                          batch_size=args.batch_size)
            cost = (time.perf_counter() - started) / len(paths)
            print(f"| {method} | {cost * 1000:.0f} | {cost / base:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
