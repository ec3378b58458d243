"""Static INT8 quantization of the shipped model with ONNX Runtime: speed, and what changes.

1. Films: FracAtlas (``--data``, the manifest from ``scripts/fracatlas.py``) split
   70/20/10 by xreg's grouped splitter (study block + near-duplicate cluster,
   seed 0, over FracAtlas alone, so its validation part may differ from the
   training run's), plus phantoms.
2. Calibration: ``--calibration`` films of the *train* part and as many
   phantoms, preprocessed exactly as the sort does.
3. ``quantize_static`` (QDQ, per-channel signed INT8 weights, unsigned INT8
   activations: the VNNI kernels' format), after ORT's shape pre-processing.
4. On the *validation* films: the share whose body part (argmax), instrument
   and fracture (the card's thresholds) and sort folder (min_confidence and
   scope) are unchanged, FP32 against INT8; and ms per image at batch 16 for
   both, in this run.

    python benchmarks/int8_quantization.py --data ../shared/data/fracatlas [--out DIR]

Ship INT8 only if every decision is unchanged for at least 99% of the films.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))


def _inputs(paths: list[Path], size: int, pre: object) -> tuple[np.ndarray, list[Path]]:
    from concurrent.futures import ThreadPoolExecutor

    from xreg.io import try_load_image

    def one(path: Path) -> np.ndarray | None:
        image = try_load_image(path, target_size=size)
        return None if isinstance(image, str) else np.ascontiguousarray(pre(image.pixels))  # type: ignore[operator]

    with ThreadPoolExecutor(2) as pool:
        arrays = list(pool.map(one, paths))
    kept = [(a, p) for a, p in zip(arrays, paths) if a is not None]
    return np.stack([a for a, _ in kept]), [p for _, p in kept]


def _decisions(logits: dict[str, np.ndarray], card: object, min_conf: float) -> list[tuple]:
    from xreg.inference.predict import decide, softmax
    from xreg.sort.scope import decide_placement

    heads = card.heads  # type: ignore[attr-defined]
    probs = {h.name: softmax(logits[h.name]) for h in heads}
    out = []
    for i in range(len(next(iter(probs.values())))):
        p = {h.name: dict(zip(h.labels, probs[h.name][i].tolist())) for h in heads}
        labels = decide(p, card)  # type: ignore[arg-type]
        where = decide_placement(labels["body_part"], p["body_part"][labels["body_part"]],
                                 min_conf)
        out.append((labels["body_part"], labels.get("instrument"), labels.get("fracture"),
                    where.status))
    return out


def _speed(session: object, x: np.ndarray, name: str) -> float:
    batch = x[:16]
    session.run(None, {name: batch})  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    for _ in range(5):
        session.run(None, {name: batch})  # type: ignore[attr-defined]
    return (time.perf_counter() - t0) / 5 / len(batch) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" /
                        "fracatlas")
    parser.add_argument("--calibration", type=int, default=200)
    parser.add_argument("--out", type=Path, default=None, help="keep the INT8 model here")
    parser.add_argument("--method", default="minmax", choices=("minmax", "entropy",
                                                                "percentile"),
                        help="how activation ranges are calibrated")
    parser.add_argument("--fp32-heads", action="store_true",
                        help="keep the classifier heads (Gemm) in FP32")
    args = parser.parse_args()

    import onnxruntime as ort
    from fracatlas import write_manifest
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from xreg.datasets import load_labels
    from xreg.inference.preprocess import Preprocessor
    from xreg.inference.runtime import load_model, onnx_path
    from xreg.model.card import default_weights
    from xreg.model.labels import EXTENDED_BODY_PARTS
    from xreg.synth.generate import generate_dataset
    from xreg.train.split import assign_splits

    work = Path(tempfile.mkdtemp(prefix="xreg-int8-"))
    model = load_model(default_weights(), runtime="onnx")
    card = model.card
    pre = Preprocessor(card)
    fp32 = onnx_path(default_weights())
    manifest = work / "fracatlas.csv"
    write_manifest(args.data, manifest)
    films = load_labels(manifest, EXTENDED_BODY_PARTS)
    splits = assign_splits(films, (0.7, 0.2, 0.1), seed=0)
    train = [f.path for f, s in zip(films, splits) if s == "train"]
    val = [f.path for f, s in zip(films, splits) if s == "val"]
    rng = np.random.default_rng(0)
    chosen = [train[i] for i in rng.choice(len(train), args.calibration, replace=False)]
    generate_dataset(work / "phantoms", args.calibration, seed=11, size=512, workers=2)
    with (work / "phantoms" / "labels.csv").open(newline="") as fh:
        phantoms = [work / "phantoms" / r["path"] for r in csv.DictReader(fh)]
    calib, _ = _inputs(chosen + phantoms, card.input_size, pre)
    print(f"calibration: {len(calib)} inputs ({len(chosen)} FracAtlas train films, "
          f"{len(phantoms)} phantoms); validation: {len(val)} FracAtlas films", flush=True)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            # Whole batches only: the histogram calibrators need equal shapes.
            self.items = iter(calib[i:i + 8] for i in range(0, len(calib) - 7, 8))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.items, None)
            return None if batch is None else {"input": batch}

    prepared = work / "prepared.onnx"
    quant_pre_process(str(fp32), str(prepared))
    int8 = args.out or work / "bodypart_real.int8.onnx"
    t0 = time.perf_counter()
    import onnx

    heads_fp32 = [n.name for n in onnx.load(str(prepared)).graph.node
                  if n.op_type == "Gemm"] if args.fp32_heads else []
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[args.method]
    quantize_static(str(prepared), str(int8), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, weight_type=QuantType.QInt8,
                    activation_type=QuantType.QUInt8, calibrate_method=method,
                    nodes_to_exclude=heads_fp32)
    print(f"calibration {args.method}; heads in FP32: {bool(heads_fp32)}")
    print(f"quantized in {time.perf_counter() - t0:.0f} s; {int8.stat().st_size / 1e6:.1f} MB "
          f"(FP32 {fp32.stat().st_size / 1e6:.1f} MB)", flush=True)

    x, kept = _inputs(val, card.input_size, pre)
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sessions = {name: ort.InferenceSession(str(path), options,
                                           providers=["CPUExecutionProvider"])
                for name, path in (("fp32", fp32), ("int8", int8))}
    heads = [h.name for h in card.heads]
    min_conf = float(card.thresholds.get("min_confidence", 0.0))
    decided = {}
    for name, session in sessions.items():
        outs = [session.run(heads, {"input": x[i:i + 32]}) for i in range(0, len(x), 32)]
        logits = {h: np.concatenate([o[k] for o in outs]) for k, h in enumerate(heads)}
        decided[name] = _decisions(logits, card, min_conf)
    same = np.array([[a == b for a, b in zip(f, q)]
                     for f, q in zip(decided["fp32"], decided["int8"])])
    print(f"\nvalidation films: {len(kept)}")
    for k, what in enumerate(("body part", "instrument", "fracture", "sort folder")):
        print(f"  {what:<12} unchanged {same[:, k].mean():.4f} ({int(same[:, k].sum())}/"
              f"{len(kept)})")
    every = same.all(axis=1).mean()
    print(f"  all four     unchanged {every:.4f}")
    speed = {name: _speed(s, x, "input") for name, s in sessions.items()}
    print(f"\nms per image, batch 16, 2 cores: FP32 {speed['fp32']:.2f}, INT8 "
          f"{speed['int8']:.2f} ({speed['fp32'] / speed['int8']:.2f}x)")
    print("verdict: " + ("ship INT8 as an option (>= 99% of films decide alike)"
                         if every >= 0.99 else "do not ship INT8 (< 99% decide alike)"))


if __name__ == "__main__":
    main()
