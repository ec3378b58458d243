"""Sort-path speed per backbone and input size on this machine (CPU by default).

For each arch and size, a random-weight checkpoint (speed does not depend on
the weights) scores the same files through ``predict_files``: threaded
decoding at reduced resolution, preprocessing, BN-folded channels-last model.
All figures come from one run; compare them with each other, not with other
machines.

    python benchmarks/arch_speed.py --files heldout/labels.csv --sizes 128,224

With ``--onnx`` it times the network alone instead: each checkpoint is
exported (``xreg weights export``) and ONNX Runtime scores random batches
(batch 32, 2 intra-op threads by default, the sort's session options); no
files are needed. The archs of one size take turns in short rounds and each
reports its median round, so a neighbour's load shifts them alike; the last
column is each arch's rate over the first arch's at the same size.

    python benchmarks/arch_speed.py --onnx --archs mobilenet_v2,efficientnet_lite0 \\
        --sizes 224,256
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from arch_comparison import sort_path_rate

from xreg.datasets import load_labels
from xreg.inference.export import export_onnx
from xreg.inference.runtime import OnnxRuntime
from xreg.model.checkpoint import make_random_checkpoint


def onnx_rates(checkpoints: list[Path], size: int, batch: int, threads: int,
               rounds: int, seconds: float) -> list[float]:
    """Median images per second of each checkpoint's ONNX export, in alternating rounds."""
    runtimes = [OnnxRuntime(export_onnx(c)[0], threads=threads) for c in checkpoints]
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size), np.float32)
    for runtime in runtimes:  # warm-up: first runs allocate and pick kernels
        for _ in range(2):
            runtime.run(x)
    rates: list[list[float]] = [[] for _ in runtimes]
    for _ in range(rounds):
        for runtime, got in zip(runtimes, rates):
            runs, started = 0, time.perf_counter()
            while runs < 2 or time.perf_counter() - started < seconds:
                runtime.run(x)
                runs += 1
            got.append(runs * batch / (time.perf_counter() - started))
    return [float(np.median(r)) for r in rates]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=Path, help="a manifest to take files from")
    parser.add_argument("--count", type=int, default=256)
    parser.add_argument("--archs", default="mobilenet_v2,mobilenet_v3_large,"
                        "efficientnet_b0,resnet18")
    parser.add_argument("--sizes", default="128,224")
    parser.add_argument("--onnx", action="store_true",
                        help="time the exported network in ONNX Runtime, no decoding")
    parser.add_argument("--batch", type=int, default=32, help="--onnx batch size")
    parser.add_argument("--threads", type=int, default=2, help="--onnx intra-op threads")
    parser.add_argument("--rounds", type=int, default=7, help="--onnx rounds per arch")
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="--onnx: time each arch at least this long per round")
    args = parser.parse_args()
    archs = args.archs.split(",")
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.onnx:
        print(f"ONNX Runtime, batch {args.batch}, {args.threads} threads, random input")
        print(f"| arch | input | img/s | vs {archs[0]} |")
        print("|---|---|---|---|")
    else:
        if args.files is None:
            parser.error("--files is required unless --onnx is given")
        files = [im.path for im in load_labels(args.files)][: args.count]
        print(f"{len(files)} files from {args.files}")
        print("| arch | input | sort path img/s |")
        print("|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            paths = [Path(tmp) / f"{arch}-{size}.pt" for arch in archs]
            for arch, path in zip(archs, paths):
                make_random_checkpoint(path, arch=arch, input_size=size)
            if args.onnx:
                rates = onnx_rates(paths, size, args.batch, args.threads, args.rounds,
                                   args.seconds)
                for arch, rate in zip(archs, rates):
                    print(f"| {arch} | {size} | {rate:.1f} | {rate / rates[0]:.2f} |")
                continue
            for arch, path in zip(archs, paths):
                rate = sort_path_rate(path, files, 16)
                print(f"| {arch} | {size} | {rate:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
