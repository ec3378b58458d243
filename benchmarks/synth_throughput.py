"""Throughput of `xreg synth`: images per second, per worker count.

Runs ``generate_dataset`` into a temporary folder with the real renderer (or
``--fake``, a gradient stand-in that isolates planning + writing cost) and
prints images/s and the projected time for 10,000 images.

    python benchmarks/synth_throughput.py [--n 300] [--size 512] [--workers 1,2] [--fake]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from xreg.synth import generate
from xreg.synth.spec import Phantom, PhantomSpec


def fake_render(spec: PhantomSpec) -> Phantom:
    n = spec.size
    rng = np.random.default_rng(spec.seed)
    y, x = np.mgrid[0:n, 0:n].astype(np.float32) / max(n - 1, 1)
    image = (0.15 + 0.5 * x * (0.5 + y) / 1.5 + 0.05 * rng.random((n, n))).astype(np.float32)
    return Phantom(image=np.clip(image, 0, 1), spec=spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--formats", default="png16,jpeg,dicom")
    parser.add_argument("--fake", action="store_true", help="stand-in renderer")
    args = parser.parse_args()
    if args.fake:
        generate.render_phantom = fake_render  # type: ignore[assignment]
    renderer = "fake" if args.fake else "real"
    for workers in (int(w) for w in args.workers.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            generate.generate_dataset(Path(tmp) / "out", args.n, 0, size=args.size,
                                      formats=tuple(args.formats.split(",")),
                                      workers=workers)
            seconds = time.perf_counter() - started
        rate = args.n / seconds
        print(f"renderer={renderer} size={args.size} workers={workers} n={args.n}: "
              f"{rate:.1f} images/s, 10,000 images in {10_000 / rate / 60:.1f} min")


if __name__ == "__main__":
    main()
