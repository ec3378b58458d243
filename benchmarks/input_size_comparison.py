"""Input size by measurement: real-film validation figures and sort speed per size.

    python scripts/make_real_weights.py --data DATA --work /tmp/real224
    python scripts/make_real_weights.py --data DATA --work /tmp/real320 --input-size 320
    python benchmarks/input_size_comparison.py /tmp/real224 /tmp/real320 [--n 96]

Reads each run's summary.json (the same recipe, data and grouped split; only the
input size differs) and prints, on the real FracAtlas *validation* split, body-part
accuracy, correct-folder rate at the run's own calibrated min_confidence,
instrument AUC and fracture AUC with their 95% CIs; then times `xreg sort` on
generated 2500x2000 JPEGs for each size with benchmarks/sort_throughput.py
(same run, same files, a thesis-style baseline for reference).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _ci(v: list[float | None] | None) -> str:
    if not v or v[0] is None:
        return "n/a"
    return f"{v[0]:.3f} ({v[1]:.3f}-{v[2]:.3f})"


def figures(run: Path) -> dict[str, Any]:
    """The validation figures of one run folder's summary.json."""
    summary = json.loads((run / "summary.json").read_text())
    val = summary["validation"]
    card = json.loads(subprocess.run(
        [sys.executable, "-m", "xreg", "weights", "info", str(run / "bodypart_real.pt")],
        check=True, capture_output=True, text=True).stdout)
    return {
        "input_size": card["input_size"],
        "body_part_accuracy": val["body_part"]["accuracy"],
        "body_part_mcc": val["body_part"]["mcc"],
        "instrument_auc": (val.get("instrument") or {}).get("auc"),
        "fracture_auc": (val.get("fracture") or {}).get("auc"),
        "epochs": card["training"]["epochs_run"],
        "best_epoch": card["training"]["best_epoch"],
        "minutes": card["training"]["seconds"] / 60,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="make_real_weights.py --work folders")
    parser.add_argument("--n", type=int, default=96, help="JPEGs per size for the speed test")
    parser.add_argument("--no-speed", action="store_true")
    args = parser.parse_args()
    rows = [figures(run) for run in args.runs]
    print("Real FracAtlas validation split (95% bootstrap CIs):")
    print("| run | input | body part accuracy | MCC | instrument AUC | fracture AUC | "
          "epochs (best) | train min |")
    print("|---|---|---|---|---|---|---|---|")
    for run, r in zip(args.runs, rows):
        print(f"| {run.name} | {r['input_size']} | {_ci(r['body_part_accuracy'])} | "
              f"{_ci(r['body_part_mcc'])} | {_ci(r['instrument_auc'])} | "
              f"{_ci(r['fracture_auc'])} | {r['epochs']} ({r['best_epoch']}) | "
              f"{r['minutes']:.0f} |", flush=True)
    if args.no_speed:
        return 0
    models = ",".join(sorted({f"mobilenet_v2:{r['input_size']}" for r in rows}))
    print(f"\nSort speed, JPEG 2500x2000, {args.n} files (benchmarks/sort_throughput.py):",
          flush=True)
    return subprocess.run([sys.executable, str(HERE / "sort_throughput.py"), "--n",
                           str(args.n), "--models", models, "--formats", "jpeg"]).returncode


if __name__ == "__main__":
    sys.exit(main())
