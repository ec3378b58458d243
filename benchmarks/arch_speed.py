"""Sort-path speed per backbone and input size on this machine (CPU by default).

For each arch and size, a random-weight checkpoint (speed does not depend on
the weights) scores the same files through ``predict_files``: threaded
decoding at reduced resolution, preprocessing, BN-folded channels-last model.
All figures come from one run; compare them with each other, not with other
machines.

    python benchmarks/arch_speed.py --files heldout/labels.csv --sizes 128,224
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from arch_comparison import sort_path_rate

from xreg.datasets import load_labels
from xreg.model.checkpoint import make_random_checkpoint


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=Path, required=True, help="a manifest to take files from")
    parser.add_argument("--count", type=int, default=256)
    parser.add_argument("--archs", default="mobilenet_v2,mobilenet_v3_large,"
                        "efficientnet_b0,resnet18")
    parser.add_argument("--sizes", default="128,224")
    args = parser.parse_args()
    files = [im.path for im in load_labels(args.files)][: args.count]
    print(f"{len(files)} files from {args.files}")
    print("| arch | input | sort path img/s |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs.split(","):
            for size in (int(s) for s in args.sizes.split(",")):
                path = Path(tmp) / f"{arch}-{size}.pt"
                make_random_checkpoint(path, arch=arch, input_size=size)
                rate = sort_path_rate(path, files, 16)
                print(f"| {arch} | {size} | {rate:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
