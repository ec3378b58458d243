"""Throughput and start-up of `xreg sort` on large radiographs, against a thesis-style baseline.

Generates N images per format at 2500x2000 (8-bit JPEG, 16-bit PNG, uncompressed
16-bit DICOM, JPEG 2000 DICOM), then in the same run:

- sorts each format's folder with xreg (`run_sort`: hashing, decoding at reduced
  resolution in threads, batched inference, atomic copy, registry) on each
  runtime (ONNX Runtime, PyTorch) and placement mode asked for;
- runs the baseline the thesis describes: ResNet-101, batch 1, full-resolution
  decode, one file at a time, classification only (no copying, no registry);
- times each stage of one file on its own, in one thread (read + sha256,
  decode at model size, preprocess, model per image in a batch, copy + fsync,
  registry commit), so the split shows where the time goes;
- times whole `xreg sort` processes over 10 files per runtime (start-up
  included) with their peak RSS.

Each measurement runs in a fresh child process so its peak RSS is its own.
The model is the shipped default (its .pt for torch, its export for ONNX).

    python benchmarks/sort_throughput.py [--n 96] [--baseline-n 8]
        [--runtimes onnx,torch] [--formats jpeg,dicom] [--modes copy,hardlink]
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


def _weights() -> Path | None:
    """The checkpoint under test (``--weights``; children get it from the environment)."""
    value = os.environ.get("XREG_BENCH_WEIGHTS")
    return Path(value) if value else None


def child_sort(folder: Path, out: Path, runtime: str, mode: str, batch: int,
               workers: int) -> dict:
    from xreg.config import SortOptions
    from xreg.sort.runner import run_sort

    class Clock:
        """Starts when the run has loaded its model and listed its files."""

        started = 0.0

        def start(self, total: int) -> None:
            self.started = time.perf_counter()

        def advance(self, outcome: object) -> None:
            pass

    options = SortOptions(min_age=0, min_confidence=0.0, batch_size=batch, workers=workers,
                          device="cpu", runtime=runtime, mode=mode, weights=_weights())
    clock = Clock()
    t0 = time.perf_counter()
    result = run_sort(folder, out, options, clock)
    end = time.perf_counter()
    return {"images": result.counts["sorted"] + result.counts["review"],
            "seconds": end - clock.started, "startup": clock.started - t0,
            "unreadable": result.counts["unreadable"], "failed": result.counts["failed"],
            "torch_imported": "torch" in sys.modules}


def child_stages(folder: Path, out: Path, runtime: str, n: int, batch: int) -> dict:
    """Each stage of one file on its own, one thread: milliseconds per image."""
    import hashlib

    from xreg.inference.preprocess import Preprocessor
    from xreg.inference.runtime import load_model
    from xreg.io import try_load_image
    from xreg.model.card import default_weights
    from xreg.registry import ImageRecord, Registry
    from xreg.sort.placement import Move, apply_move

    model = load_model(_weights() or default_weights(), runtime=runtime, device="cpu")
    pre = Preprocessor(model.card)
    files = sorted(folder.iterdir())[:n]
    ms: dict[str, float] = {}

    def clock(name: str, t0: float) -> None:
        ms[name] = ms.get(name, 0.0) + (time.perf_counter() - t0) * 1000 / len(files)

    inputs, shas = [], []
    for path in files:
        t0 = time.perf_counter()
        data = path.read_bytes()
        shas.append(hashlib.sha256(data).hexdigest())
        clock("read + sha256", t0)
        t0 = time.perf_counter()
        image = try_load_image(data, target_size=pre.size)
        clock("decode at model size", t0)
        assert not isinstance(image, str), image
        t0 = time.perf_counter()
        inputs.append(pre(image.pixels))
        clock("preprocess", t0)
    model.runtime.run(np.stack(inputs[:batch]))  # warm-up
    t0 = time.perf_counter()
    for start in range(0, len(inputs), batch):
        model.runtime.run(np.stack(inputs[start:start + batch]))
    clock(f"model ({model.runtime.name}, batch {batch})", t0)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for path, sha in zip(files, shas):
        apply_move(Move(path, sha, Path("x") / path.name, "sorted"), out, "copy",
                   (path.stat().st_size, path.stat().st_mtime_ns))
    clock("copy + fsync + verify", t0)
    with Registry(out / "registry.sqlite") as reg:
        run = reg.start_run(xreg_version="", input_root="", output_root="", model_path="",
                            model_name="", model_sha256="", options={})
        t0 = time.perf_counter()
        for path, sha in zip(files, shas):
            reg.begin_images(run, [ImageRecord(sha, 1, "sorted", f"x/{path.name}", "copy",
                                               str(path), 0, {})])
            reg.complete_image(sha, f"x/{path.name}")
        clock("registry: journal + commit", t0)
    return {"ms": ms}


def child_process(folder: Path, out: Path, runtime: str) -> dict:
    """A whole `xreg sort` process over a folder: wall time and peak RSS, start-up in."""
    t0 = time.perf_counter()
    weights = _weights()
    done = subprocess.run([sys.executable, "-m", "xreg", "sort", str(folder), str(out),
                           "--min-age", "0", "--quiet", "--runtime", runtime,
                           *(["--weights", str(weights)] if weights else [])], check=False)
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"wall": wall, "child_rss_mb": rss, "code": done.returncode}


def child_baseline(folder: Path, n: int) -> dict:
    """Thesis-style: ResNet-101, batch 1, full-resolution decode, one at a time."""
    import torch
    import torch.nn.functional as F

    from xreg.io import load_image
    from xreg.model.models import BODY_PARTS, HeadSpec, build_model

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


def _run_child(args: list[str], weights: Path | None = None) -> dict:
    # Flush what generation and earlier runs wrote, so that kernel writeback
    # of their gigabytes does not slow this measurement's reads and fsyncs.
    os.sync()
    env = dict(os.environ)
    if weights is not None:  # this child times another checkpoint (--versus)
        env["XREG_BENCH_WEIGHTS"] = str(weights.resolve())
    out = subprocess.run([sys.executable, __file__, "--child", *args], check=True,
                         capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


TARGETS = {"jpeg": 150, "dicom": 80, "dicom_j2k": 60, "png16": 30}
HARDLINK_TARGET = 150  # raw DICOM with --mode hardlink
JPEG_RATIO_TARGET = 15


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=96, help="images per format")
    parser.add_argument("--baseline-n", type=int, default=8, help="baseline images per format")
    parser.add_argument("--runtimes", default="onnx,torch")
    parser.add_argument("--modes", default="copy,hardlink",
                        help="placement modes (hardlink is timed on raw DICOM)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--stages-n", type=int, default=32, help="files per stage timing")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--weights", type=Path, default=None,
                        help="a checkpoint to time instead of the shipped default "
                             "(e.g. the previous default, as a baseline in the same run)")
    parser.add_argument("--versus", type=Path, default=None,
                        help="also sort each folder with this checkpoint and print the "
                             "tested model's img/s as a ratio of its (e.g. the previous "
                             "single-network default against today's ensemble)")
    args = parser.parse_args()
    if args.weights is not None:
        os.environ["XREG_BENCH_WEIGHTS"] = str(args.weights.resolve())
    if args.child:
        kind, *rest = args.child
        if kind == "sort":
            folder, out, runtime, mode, batch, workers = rest
            res = child_sort(Path(folder), Path(out), runtime, mode, int(batch), int(workers))
        elif kind == "stages":
            folder, out, runtime, n, batch = rest
            res = child_stages(Path(folder), Path(out), runtime, int(n), int(batch))
        elif kind == "process":
            res = child_process(Path(rest[0]), Path(rest[1]), rest[2])
        else:
            res = child_baseline(Path(rest[0]), int(rest[1]))
        res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(res))
        return

    runtimes = args.runtimes.split(",")
    formats = args.formats.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="xreg-bench-"))
    try:
        print(f"generating {args.n} images per format at {SHAPE[1]}x{SHAPE[0]} ...", flush=True)
        t0 = time.perf_counter()
        folders = generate(tmp / "in", args.n)
        print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)
        print(f"cpu cores: {os.cpu_count()}; batch {args.batch_size}, {args.workers} decode "
              "threads; the shipped default model (mobilenet_v2@224)")
        for fmt in formats:
            sizes = [p.stat().st_size for p in folders[fmt].iterdir()]
            print(f"  {fmt}: {len(sizes)} files, mean {np.mean(sizes) / 1e6:.2f} MB")
        _startup(folders["jpeg"], tmp, runtimes)
        _stages(folders, tmp, formats, runtimes, args)
        _throughput(folders, tmp, formats, runtimes, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _startup(jpegs: Path, tmp: Path, runtimes: list[str]) -> None:
    ten = tmp / "ten"
    ten.mkdir()
    for p in sorted(jpegs.iterdir())[:10]:
        shutil.copy2(p, ten / p.name)
    print("\nstart-up: whole `xreg sort` process over 10 JPEGs (median of 3; target <= 1 s, "
          "peak RSS <= 600 MB)")
    for runtime in runtimes:
        runs = []
        for i in range(3):
            runs.append(_run_child(["process", str(ten), str(tmp / f"ten_{runtime}_{i}"),
                                    runtime]))
        walls = sorted(r["wall"] for r in runs)
        rss = max(r["child_rss_mb"] for r in runs)
        ok = "met" if walls[1] <= 1.0 and rss <= 600 else "not met"
        print(f"  {runtime:<6} wall {walls[1]:.2f} s (runs {', '.join(f'{w:.2f}' for w in walls)})"
              f", peak RSS {rss:.0f} MB: {ok}", flush=True)


def _stages(folders: dict[str, Path], tmp: Path, formats: list[str], runtimes: list[str],
            args: argparse.Namespace) -> None:
    print(f"\nwhere the time goes: each stage alone, one thread, ms per image "
          f"({args.stages_n} files)")
    for fmt in formats:
        for runtime in runtimes:
            res = _run_child(["stages", str(folders[fmt]), str(tmp / f"st_{fmt}_{runtime}"),
                              runtime, str(args.stages_n), str(args.batch_size)])
            parts = ", ".join(f"{k} {v:.1f}" for k, v in res["ms"].items())
            print(f"  {fmt:<10} {runtime:<6} total {sum(res['ms'].values()):.1f}: {parts}",
                  flush=True)
            shutil.rmtree(tmp / f"st_{fmt}_{runtime}", ignore_errors=True)


def _throughput(folders: dict[str, Path], tmp: Path, formats: list[str],
                runtimes: list[str], args: argparse.Namespace) -> None:
    print("\nthroughput: xreg images/s count from the loaded model and listed files to the "
          "last file placed and recorded")
    header = (f"{'format':<10} {'runtime':<8} {'mode':<9} {'xreg img/s':>10} "
              f"{'baseline img/s':>15} {'ratio':>7} {'RSS MB':>7} {'target':>16}")
    print(header)
    print("-" * len(header))
    for fmt in formats:
        base = _run_child(["baseline", str(folders[fmt]), str(args.baseline_n)])
        br = base["images"] / base["seconds"]
        for runtime in runtimes:
            for mode in args.modes.split(","):
                if mode != "copy" and fmt != "dicom":
                    continue
                out = tmp / f"out_{fmt}_{runtime}_{mode}"
                sort = _run_child(["sort", str(folders[fmt]), str(out), runtime, mode,
                                   str(args.batch_size), str(args.workers)])
                shutil.rmtree(out)
                assert sort["failed"] == 0 and sort["unreadable"] == 0, sort
                xr = sort["images"] / sort["seconds"]
                goal = HARDLINK_TARGET if mode == "hardlink" else TARGETS[fmt]
                verdict = f">= {goal}: {'met' if xr >= goal else 'not met'}"
                if fmt == "jpeg" and mode == "copy":
                    verdict += f"; {xr / br:.0f}x vs {JPEG_RATIO_TARGET}x"
                print(f"{fmt:<10} {runtime:<8} {mode:<9} {xr:>10.1f} {br:>15.2f} "
                      f"{xr / br:>6.1f}x {sort['peak_rss_mb']:>7.0f} {verdict:>16}"
                      + ("  (imported torch)" if sort["torch_imported"] else ""), flush=True)
                if args.versus is not None:
                    other = _run_child(["sort", str(folders[fmt]), str(out), runtime, mode,
                                        str(args.batch_size), str(args.workers)], args.versus)
                    shutil.rmtree(out)
                    vr = other["images"] / other["seconds"]
                    print(f"{'':<10} {'':<8} {'':<9} {vr:>10.1f}  <- {args.versus.name}; "
                          f"tested/versus {xr / vr:.2f}x (target >= 0.75x), RSS "
                          f"{other['peak_rss_mb']:.0f} MB", flush=True)


if __name__ == "__main__":
    main()
