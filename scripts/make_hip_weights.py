"""Rebuild the shipped hip fracture checkpoint and its model card, end to end.

    python scripts/fetch_imagenet_weights.py     # once: MobileNetV2's ImageNet file
    python scripts/make_hip_weights.py --work /tmp/xreg-hip

Steps (each skipped when its output already exists in --work):
 1. `xreg synth --count 0 --hip-pairs 1500 --seed 5000 --size 384`: training pairs;
    `--hip-pairs 400 --seed 6000`: held-out pairs from another seed.
 2. `xreg train configs/hip_fracture.yaml` on the training pairs' hip_pairs.csv.
 3. `xreg evaluate` on the held-out pairs (thesis Table 5 metrics with 95% CIs).
 4. Copy the checkpoint to xreg/weights/ and write xreg/weights/hip_fracture_phantom.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from _shipping import ci, ship_card

from xreg.evaluation.pairs import evaluate_pairs
from xreg.hip.run import HIP_WEIGHTS
from xreg.model.checkpoint import LoadedModel, load_checkpoint
from xreg.synth.generate import generate_dataset
from xreg.train import load_train_config, train

ROOT = Path(__file__).resolve().parent.parent


def budget_note(max_epochs: int) -> str:
    """Say so when the run's epoch budget differs from the config file's (``--epochs``)."""
    configured = load_train_config(ROOT / "configs" / "hip_fracture.yaml").max_epochs
    if max_epochs == configured:
        return ""
    return (f" (the config says {configured}; this run was continued with `xreg train "
            f"--resume --epochs {max_epochs}` after an interruption)")


def model_card(loaded: LoadedModel, held: dict[str, Any]) -> str:
    """The Markdown model card; its first line is the warning the design asks for."""
    card = loaded.card
    t = card.training
    counts = t["split"]["counts"]
    test = card.metrics["test"]
    rows = []
    for name, m in (("held-out phantom pairs (seed 6000)", held),
                    ("test split of the training seed", test)):
        f = m["fracture"]
        rows.append(f"| {name} | {m['counts']['evaluated']} ({m['counts']['fracture']}) | "
                    + " | ".join(ci(f[k]) for k in ("auc", "sensitivity", "specificity",
                                                     "youden", "f1", "accuracy", "ppv", "npv"))
                    + " |")
    lines = [
        "**Trained on synthetic phantoms (`xreg synth --hip-pairs`) only; not validated on "
        "real radiographs. Not for clinical use or research conclusions.**",
        "",
        f"# {card.name}",
        "",
        f"`{HIP_WEIGHTS}`: sha256 `{loaded.sha256}`, {card.arch}, an AP and a lateral "
        f"film each resized to {card.input_size}x{card.input_size} and joined side by side "
        f"(AP left: {card.input_size}x{2 * card.input_size}), one head: fracture. "
        f"Grey mean {card.mean:.4f}, std {card.std:.4f}. xreg {card.xreg_version}, created "
        f"{card.created}. Rebuild: `python scripts/make_hip_weights.py --work DIR`.",
        "",
        "## Data",
        f"- Training: {t['data']['labelled']} phantom hip studies (AP + lateral, 16-bit "
        "PNG, JPEG and DICOM in turn) from `xreg synth --count 0 --hip-pairs 1500 --seed "
        f"5000 --size 384`, 45% with a femoral-neck or intertrochanteric fracture; split "
        f"{counts['train']['studies']}/{counts['val']['studies']}/"
        f"{counts['test']['studies']} train/val/test by patient.",
        "- Held out: 400 studies from another seed (6000).",
        "",
        "## Recipe",
        "`configs/hip_fracture.yaml`: the thesis recipe (ImageNet-initialised "
        f"{card.arch}, Adam, MultiStepLR x0.5, batch 16, weighted sampling of the rarer "
        "class, flips and 90-degree rotations applied to both views alike, mean/std from "
        "the training split, early stopping on validation loss) with input 128 per view "
        f"(thesis 224), lr 3e-4 and at most {t['recipe']['max_epochs']} epochs for a 2-core "
        f"CPU{budget_note(t['recipe']['max_epochs'])}. "
        f"Ran {t['epochs_run']} epochs on {t['device']} ({t['seconds'] / 60:.1f} min of epoch "
        "time on 2 cores, shared with other jobs for part of it); "
        f"best epoch {t['best_epoch']}. Fracture threshold "
        f"{card.thresholds['fracture']:.3f} (Youden's J on the validation split).",
        "",
        "## Metrics (thesis Table 5; 95% bootstrap CIs, 5,000 resamples)",
        "",
        "| set | studies (fractured) | AUC | sensitivity | specificity | Youden | F1 | "
        "accuracy | PPV | NPV |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "For comparison, the thesis reached AUC 0.93, sensitivity 0.86 and specificity 1.0 "
        "on 468 real patients.",
        "",
        "## Intended use",
        "Trying `xreg hip` end to end, tests, and a starting point for `xreg train "
        "configs/hip_fracture.yaml` on an institution's own labelled hip studies.",
        "",
        "## Limits",
        "- Phantom fractures are drawn lines and steps on simplified bones; real fractures "
        "(impacted, undisplaced, with osteoporosis, implants or overlapping soft tissue) "
        "are far harder. Nothing here says how the model does on real films.",
        "- Input 128 px per view: subtle real fracture lines would need more resolution.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args()
    work = args.work
    for name, pairs, seed in (("train", 1500, 5000), ("heldout", 400, 6000)):
        if not (work / name / "hip_pairs.csv").exists():
            generate_dataset(work / name, 0, seed=seed, size=384, hip_pairs=pairs)
    trained = work / "trained.pt"
    if not trained.exists():
        train(load_train_config(ROOT / "configs" / "hip_fracture.yaml"),
              work / "train" / "hip_pairs.csv", trained)
    held = evaluate_pairs(trained, work / "heldout" / "hip_pairs.csv").to_dict()
    (work / "heldout.json").write_text(json.dumps(held, indent=2) + "\n")
    target = ROOT / "xreg" / "weights" / HIP_WEIGHTS
    ship_card(trained, target, "xreg synth --count 0 --hip-pairs 1500 --seed 5000 "
              "--size 384 (its hip_pairs.csv)")
    target.with_suffix(".md").write_text(model_card(load_checkpoint(target), held),
                                         encoding="utf-8")
    print(json.dumps({k: held[k] for k in ("counts", "fracture")}, indent=2))
    print(f"wrote {target} and {target.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
