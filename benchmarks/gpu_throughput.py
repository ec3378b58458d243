"""GPU throughput: JPEG decoded on the GPU, the model on CUDA, and `xreg sort --device cuda`.

One prepared script for a lent GPU machine (it also runs, slowly, with
``--device cpu`` to check itself). In one run it prints:

1. **GPU pipeline, JPEG**: files read in a thread pool, decoded in batches by
   nvJPEG (``torchvision.io.decode_jpeg(device="cuda")``), resized on the GPU
   (antialiased bilinear), normalised, and scored by the shipped model on
   CUDA: images/s from bytes on disk to probabilities.
2. **`xreg sort --device cuda`**, JPEG and raw DICOM (CPU decoding at reduced
   size, model on CUDA, full placement and registry): images/s.
3. The same sort on the CPU in the same run, as the baseline.

    python benchmarks/gpu_throughput.py [--n 512] [--device cuda]

Target: >= 1,500 JPEG img/s for the GPU pipeline.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def gpu_pipeline(folder: Path, device: str, batch: int) -> float:
    import torch
    import torch.nn.functional as F
    from torchvision.io import ImageReadMode, decode_jpeg

    from xreg.inference.runtime import inference_model
    from xreg.model.card import default_weights
    from xreg.model.checkpoint import load_checkpoint

    loaded = load_checkpoint(default_weights())
    card = loaded.card
    model = inference_model(loaded.model, torch.device(device))
    size = card.input_size
    files = sorted(folder.iterdir())
    with ThreadPoolExecutor(8) as pool:
        def read(p: Path) -> torch.Tensor:
            return torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8)

        def run(chunk: list[Path]) -> None:
            data = list(pool.map(read, chunk))
            images = decode_jpeg(data, mode=ImageReadMode.GRAY, device=device)
            x = torch.stack([F.interpolate(im[None].float() / 255, size=(size, size),
                                           mode="bilinear", antialias=True)[0]
                             for im in images])
            x = ((x - card.mean) / card.std).expand(-1, 3, -1, -1)
            with torch.inference_mode():
                out = model(x.contiguous(memory_format=torch.channels_last))
                for logits in out.values():  # to host: the batch is really done
                    torch.softmax(logits, 1).cpu()

        run(files[:batch])  # warm-up: CUDA context, nvJPEG handles, cuDNN plans
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for start in range(0, len(files), batch):
            run(files[start:start + batch])
        if device == "cuda":
            torch.cuda.synchronize()
    return len(files) / (time.perf_counter() - t0)


def sort_rate(folder: Path, out: Path, device: str, runtime: str) -> float:
    from sort_throughput import child_sort

    res = child_sort(folder, out, runtime, "copy", 64 if device == "cuda" else 16, 8
                     if device == "cuda" else 2)
    shutil.rmtree(out, ignore_errors=True)
    return float(res["images"] / res["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run this on the lent GPU machine "
                         "(or --device cpu to check the script)")
    from sort_throughput import generate

    tmp = Path(tempfile.mkdtemp(prefix="xreg-gpu-"))
    try:
        folders = generate(tmp / "in", args.n)
        name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
        print(f"device: {name}; {args.n} files per format, 2500x2000", flush=True)
        rate = gpu_pipeline(folders["jpeg"], args.device, args.batch)
        verdict = "met" if rate >= 1500 else "not met"
        print(f"GPU pipeline (nvJPEG decode + resize + model), JPEG: {rate:.0f} img/s "
              f"(target >= 1500: {verdict})", flush=True)
        for fmt in ("jpeg", "dicom"):
            gpu = sort_rate(folders[fmt], tmp / f"out_{fmt}", args.device, "torch")
            cpu = sort_rate(folders[fmt], tmp / f"cpu_{fmt}", "cpu", "onnx")
            print(f"xreg sort --device {args.device}, {fmt}: {gpu:.0f} img/s "
                  f"(CPU, ONNX Runtime, same run: {cpu:.0f} img/s)", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
