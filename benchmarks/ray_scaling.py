"""`xreg sort --engine local` against `--engine ray` with 1, 2, ... workers, same files.

Generates N 2500x2000 JPEGs and raw DICOM files (as `sort_throughput.py`
does), then sorts each set with the local engine and with Ray Data at each
worker count (a local Ray started for the run), each in a fresh child
process. Prints images/s per configuration (from the listed files to the last
recorded one; and steady, from the first recorded file on, which leaves out
Ray's start-up), the time to the first recorded file, the whole process's
wall time, and scaling efficiency of the steady rate against one Ray worker.

    python benchmarks/ray_scaling.py [--n 96] [--workers 1,2] [--formats jpeg,dicom]
        [--gpus-per-worker 0]

On a 2-core machine Ray cannot win much: its workers share the cores the
local engine already keeps busy. On a lent 16-core GPU machine:
``--workers 1,2,4,8 --gpus-per-worker 0.125`` (one GPU shared by the actors).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def child(folder: Path, out: Path, engine: str, workers: int, gpus: float) -> dict:
    from xreg.config import SortOptions
    from xreg.sort.runner import run_sort

    class Clock:
        started = first = 0.0
        done = 0

        def start(self, total: int) -> None:
            self.started = time.perf_counter()

        def advance(self, outcome: object) -> None:
            self.done += 1
            if self.done == 1:
                self.first = time.perf_counter()

    clock = Clock()
    t0 = time.perf_counter()
    result = run_sort(folder, out, SortOptions(
        min_age=0, min_confidence=0.0, engine=engine, workers=workers,
        gpus_per_worker=gpus if engine == "ray" else 0.0), clock)
    end = time.perf_counter()
    return {"images": result.counts["sorted"] + result.counts["review"],
            "seconds": end - clock.started, "wall": end - t0,
            "steady": (clock.done - 1) / max(end - clock.first, 1e-9),
            "to_first": clock.first - clock.started, "failed": result.counts["failed"]}


def _run(args: list[str]) -> dict:
    os.sync()
    out = subprocess.run([sys.executable, __file__, "--child", *args], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=96)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--formats", default="jpeg,dicom")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        folder, out, engine, workers, gpus = args.child
        print(json.dumps(child(Path(folder), Path(out), engine, int(workers), float(gpus))))
        return
    from sort_throughput import generate

    tmp = Path(tempfile.mkdtemp(prefix="xreg-ray-"))
    try:
        folders = generate(tmp / "in", args.n)
        print(f"cpu cores: {os.cpu_count()}; {args.n} files per format, 2500x2000; shipped "
              "model on ONNX Runtime; img/s from the listed files to the last recorded one; "
              "wall includes start-up (and Ray's)")
        header = (f"{'format':<8} {'engine':<16} {'img/s':>8} {'steady img/s':>13} "
                  f"{'first file s':>13} {'wall s':>8} {'efficiency':>11}")
        print(header)
        print("-" * len(header))
        for fmt in args.formats.split(","):
            runs = [("local", 2)] + [("ray", int(w)) for w in args.workers.split(",")]
            one = None
            for engine, workers in runs:
                out = tmp / f"out_{fmt}_{engine}_{workers}"
                res = _run([str(folders[fmt]), str(out), engine, str(workers),
                            str(args.gpus_per_worker)])
                shutil.rmtree(out, ignore_errors=True)
                assert res["failed"] == 0, res
                rate = res["images"] / res["seconds"]
                eff = ""
                if engine == "ray":  # of the steady rate, against one Ray worker
                    one = one or res["steady"]
                    eff = f"{res['steady'] / (one * workers):.0%}"
                label = f"{engine} x{workers}" if engine == "ray" else "local (threads)"
                print(f"{fmt:<8} {label:<16} {rate:>8.1f} {res['steady']:>13.1f} "
                      f"{res['to_first']:>13.1f} {res['wall']:>8.1f} {eff:>11}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
