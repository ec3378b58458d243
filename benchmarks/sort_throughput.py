"""Throughput of `xreg sort` on large radiographs, against a thesis-style baseline.

Generates N images per format at 2500x2000 (8-bit JPEG, 16-bit PNG, uncompressed
16-bit DICOM, JPEG 2000 DICOM), then in the same run:

- sorts each format's folder with xreg (`run_sort`: hashing, decoding at reduced
  resolution in threads, batched inference, atomic copy, registry), and
- runs the baseline the thesis describes: ResNet-101, batch 1, full-resolution
  decode, one file at a time, classification only (no copying, no registry).

Each measurement runs in a fresh child process so its peak RSS is its own.
Prints images/s per format, the ratio to the baseline, and peak RSS.

    python benchmarks/sort_throughput.py [--n 96] [--baseline-n 8]
        [--models mobilenet_v3_large:224,mobilenet_v2:224] [--formats jpeg,dicom]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FORMATS = ("jpeg", "png16", "dicom", "dicom_j2k")
SHAPE = (2500, 2000)


def _phantom(rng: np.random.Generator) -> np.ndarray:
    """A smooth bone-like pattern with noise, float in [0, 1], 2500x2000.

    The noise is generated at half resolution and upsampled: a detector's
    blur correlates neighbouring pixels, and pixel-independent noise would
    make JPEGs far larger (and slower to decode) than real radiographs. The
    mean file size per format is printed so the figures can be judged.
    """
    h, w = SHAPE
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, w, dtype=np.float32)[None, :]
    cx, cy = rng.uniform(0.3, 0.7, 2)
    bone = np.exp(-((x - cx) ** 2) / 0.01) * (0.6 + 0.4 * np.sin(8 * y + cy))
    noise = rng.normal(0, 0.03, (h // 2, w // 2)).astype(np.float32)
    noise = np.repeat(np.repeat(noise, 2, axis=0), 2, axis=1)
    return np.clip(bone + noise, 0, 1)


def _dicom(pixels: np.ndarray, path: Path, j2k: bool) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # DX
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID = "DX", "BENCH"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    data = (pixels * 4095).astype(np.uint16)
    if j2k:
        ds.compress(JPEG2000Lossless, data)
    else:
        ds.PixelData = data.tobytes()
    ds.save_as(path, enforce_file_format=True)


def generate(root: Path, n: int, seed: int = 0) -> dict[str, Path]:
    """N distinct files per format. Slow encoders run once; copies differ in
    their metadata only, so each file has its own content hash."""
    from PIL import Image, PngImagePlugin

    rng = np.random.default_rng(seed)
    folders = {}
    for fmt in FORMATS:
        folder = root / fmt
        folder.mkdir(parents=True)
        folders[fmt] = folder
    bases = [_phantom(rng) for _ in range(4)]
    j2k_base = root / "j2k_base.dcm"
    _dicom(bases[0], j2k_base, j2k=True)
    import pydicom
    from pydicom.uid import generate_uid

    j2k_ds = pydicom.dcmread(j2k_base)
    past = time.time() - 3600
    for i in range(n):
        img = bases[i % len(bases)]
        Image.fromarray((img * 255).astype(np.uint8)).save(
            folders["jpeg"] / f"img_{i:04d}.jpg", quality=90, comment=f"bench {i}".encode())
        info = PngImagePlugin.PngInfo()
        info.add_text("bench", str(i))
        Image.fromarray((img * 65535).astype(np.uint16)).save(
            folders["png16"] / f"img_{i:04d}.png", pnginfo=info, compress_level=1)
        _dicom(img, folders["dicom"] / f"img_{i:04d}", j2k=False)
        j2k_ds.SOPInstanceUID = j2k_ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        j2k_ds.save_as(folders["dicom_j2k"] / f"img_{i:04d}")
    for folder in folders.values():
        for p in folder.iterdir():
            os.utime(p, (past, past))
    j2k_base.unlink()
    return folders


def child_sort(folder: Path, out: Path, weights: Path, batch: int, workers: int) -> dict:

    from xreg.config import SortOptions
    from xreg.sort.runner import run_sort

    class Clock:
        """Starts when the run has loaded its model and listed its files."""

        started = 0.0

        def start(self, total: int) -> None:
            self.started = time.perf_counter()

        def advance(self, outcome: object) -> None:
            pass

    options = SortOptions(weights=weights, min_age=0, min_confidence=0.0, batch_size=batch,
                          workers=workers, device="cpu")
    clock = Clock()
    t0 = time.perf_counter()
    result = run_sort(folder, out, options, clock)
    end = time.perf_counter()
    return {"images": result.counts["sorted"] + result.counts["review"],
            "seconds": end - clock.started, "startup": clock.started - t0,
            "unreadable": result.counts["unreadable"], "failed": result.counts["failed"]}


def child_baseline(folder: Path, n: int) -> dict:
    """Thesis-style: ResNet-101, batch 1, full-resolution decode, one at a time."""
    import torch
    import torch.nn.functional as F

    from xreg.io import load_image
    from xreg.models import BODY_PARTS, HeadSpec, build_model

    model = build_model("resnet101", [HeadSpec("body_part", BODY_PARTS)], input_size=224).eval()
    files = sorted(folder.iterdir())[:n]
    with torch.inference_mode():  # warm-up, as xreg's first batch is not excluded either
        model(torch.zeros(1, 3, 224, 224))
    t0 = time.perf_counter()
    with torch.inference_mode():
        for path in files:
            px = torch.from_numpy(load_image(path).pixels)
            x = F.interpolate(px[None, None], size=(224, 224), mode="bilinear", antialias=True)
            model(x.expand(1, 3, 224, 224))
    return {"images": len(files), "seconds": time.perf_counter() - t0}


def _run_child(args: list[str]) -> dict:
    # Flush what generation and earlier runs wrote, so that kernel writeback
    # of their gigabytes does not slow this measurement's reads and fsyncs.
    os.sync()
    out = subprocess.run([sys.executable, __file__, "--child", *args], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=96, help="images per format")
    parser.add_argument("--baseline-n", type=int, default=8, help="baseline images per format")
    parser.add_argument("--models", default="mobilenet_v3_large:224,mobilenet_v2:224",
                        help="comma-separated arch:input_size pairs to sort with")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "sort":
            folder, out, weights, batch, workers = rest
            res = child_sort(Path(folder), Path(out), Path(weights), int(batch), int(workers))
        else:
            res = child_baseline(Path(rest[0]), int(rest[1]))
        res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(res))
        return

    from xreg.checkpoint import make_random_checkpoint

    tmp = Path(tempfile.mkdtemp(prefix="xreg-bench-"))
    try:
        print(f"generating {args.n} images per format at {SHAPE[1]}x{SHAPE[0]} ...", flush=True)
        t0 = time.perf_counter()
        folders = generate(tmp / "in", args.n)
        print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)
        models = [(m.split(":")[0], int(m.split(":")[1])) for m in args.models.split(",")]
        print(f"cpu cores: {os.cpu_count()}; batch {args.batch_size}, {args.workers} decode "
              "threads; random weights (speed does not depend on them)")
        print("xreg images/s count from the moment the model is loaded and the files are "
              "listed to the last file placed and recorded; start-up is shown on its own.")
        header = (f"{'format':<10} {'model':<24} {'xreg img/s':>10} {'baseline img/s':>15} "
                  f"{'ratio':>7} {'xreg RSS MB':>12} {'baseline RSS MB':>16} {'startup s':>10}")
        print(header)
        print("-" * len(header))
        for fmt in args.formats.split(","):
            sizes = [p.stat().st_size for p in folders[fmt].iterdir()]
            print(f"{fmt}: {len(sizes)} files, mean {np.mean(sizes) / 1e6:.2f} MB", flush=True)
        for fmt in args.formats.split(","):
            base = _run_child(["baseline", str(folders[fmt]), str(args.baseline_n)])
            br = base["images"] / base["seconds"]
            for arch, size in models:
                weights = tmp / f"{arch}_{size}.pt"
                if not weights.exists():
                    make_random_checkpoint(weights, arch=arch, input_size=size)
                out = tmp / f"out_{fmt}_{arch}_{size}"
                sort = _run_child(["sort", str(folders[fmt]), str(out), str(weights),
                                   str(args.batch_size), str(args.workers)])
                shutil.rmtree(out)
                assert sort["failed"] == 0 and sort["unreadable"] == 0, sort
                xr = sort["images"] / sort["seconds"]
                print(f"{fmt:<10} {f'{arch}@{size}':<24} {xr:>10.1f} {br:>15.2f} "
                      f"{xr / br:>6.1f}x {sort['peak_rss_mb']:>12.0f} "
                      f"{base['peak_rss_mb']:>16.0f} {sort['startup']:>10.1f}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
