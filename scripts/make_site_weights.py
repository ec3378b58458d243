"""Rebuild the shipped default checkpoint from every real site and phantoms.

    python scripts/fetch_imagenet_weights.py          # once: MobileNetV2's ImageNet file
    python scripts/make_site_weights.py --data ../shared/data --work /tmp/xreg-sites \\
        [--sweep /tmp/xreg-sweep/sweep.json] [--ship]

Steps (each skipped when its output already exists in --work; training resumes):
 1. One manifest per site (scripts/sites.py) and a copy of configs/bodypart_sites.yaml.
 2. ``xreg train`` on it: the four sites plus phantoms, split 70/20/10 grouped by
    patient and near-duplicate cluster, stratified by site and body part.
 3. On the *validation* split of every site: min_confidence (accuracy among sorted
    nine-class films >= 0.97, at most 10% of other films into the nine) and the
    unfamiliar-film guard (99% of musculoskeletal validation films pass).
 4. Each site's *test* split (used for no decision) is scored with the final card:
    per-site figures with 95% bootstrap CIs; also out-of-scope phantoms of an unseen
    seed and pydicom's real non-musculoskeletal DICOM files.
 5. The leave-one-site-out table of benchmarks/site_generalisation.py (--sweep) goes
    into the card beside them. The checkpoint, its ONNX export and the Markdown card
    go to xreg/weights/bodypart_sites.{pt,onnx,md} with --ship.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

from _shipping import ci, confusion_rows, no_local_paths
from sites import write_site_manifests

from xreg.evaluation.evaluate import evaluate_images
from xreg.inference.export import export_onnx
from xreg.model.checkpoint import load_checkpoint, save_checkpoint
from xreg.synth.generate import generate_dataset
from xreg.train import Callbacks, load_train_config, train
from xreg.train.sites import calibrate, common_root, split_images

ROOT = Path(__file__).resolve().parent.parent
NAME = "bodypart_sites"
REAL_NON_MSK = ("CT_small.dcm", "MR_small.dcm", "SC_rgb.dcm", "emri_small.dcm",
                "JPGLosslessP14SV1_1s_1f_8b.dcm", "MR_small_RLE.dcm", "US1_J2KR.dcm")
NOTE = ("Trained on real radiographs of four public sources from different hospitals "
        "(FracAtlas; the Roboflow Spine Region export via CADMA; NIH ChestX-ray14; the UCI "
        "shoulder-implant set) and on synthetic phantoms. Not for clinical use.")
CREDITS = {
    "fracatlas": "FracAtlas: Abedeen I., Rahman M.A., Prottyasha F.Z., Ahmed T., "
                 "Chowdhury T.M., Shatabda S. FracAtlas: A Dataset for Fracture "
                 "Classification, Localization and Segmentation of Musculoskeletal "
                 "Radiographs. Scientific Data 10, 521 (2023), doi:10.1038/s41597-023-02432-4; "
                 "data doi:10.6084/m9.figshare.22363012. CC BY 4.0. Three hospitals in "
                 "Bangladesh, many children; body-part labels from a visual, non-physician "
                 "review.",
    "spine_cadma": "Spine Region dataset, Roboflow Universe, CC BY 4.0, via "
                   "github.com/Znarfran/CADMA. Whole-spine (scoliosis) films from several "
                   "unnamed sources, CLAHE'd and resized to 416 px by the export.",
    "chest_nih": "NIH Clinical Center ChestX-ray14: Wang X. et al., ChestX-ray8: "
                 "Hospital-scale chest X-ray database and benchmarks, CVPR 2017. We thank "
                 "the NIH Clinical Center for the data. Chest films, trained as `other`.",
    "shoulder_implants": "Urban G. et al., Classifying shoulder implants in X-ray images "
                         "using deep learning, Computational and Structural Biotechnology "
                         "Journal 18 (2020); UCI Machine Learning Repository, CC BY 4.0. "
                         "Shoulder arthroplasty films from US sources, tight crops.",
}
SITE_ROWS = ("correct_folder", "wrong_folder", "review_rate", "outside_nine_into_nine",
             "accuracy_among_sorted", "instrument_auc", "fracture_auc")


def _review_share(loaded: Any, paths: list[Path]) -> dict[str, Any]:
    """How many of ``paths`` go to _review, and for which reason."""
    from xreg.inference.predict import SourceFile, predict_files
    from xreg.sort.scope import decide_placement

    sources = [SourceFile(p, p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    reasons: dict[str, int] = {}
    scored = 0
    threshold = loaded.card.thresholds.get("min_confidence", 0.0)
    for batch in predict_files(sources, loaded):
        for pred in batch:
            if pred.status != "ok":
                continue
            scored += 1
            place = decide_placement(pred.labels["body_part"], pred.confidence("body_part"),
                                     threshold, unfamiliar=pred.unfamiliar)
            key = "sorted" if place.status == "sorted" else (place.reason or "review") \
                .split(" (")[0].split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
    return {"films": scored, "review": scored - reasons.get("sorted", 0), "by_reason": reasons}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of site folders")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / f"{NAME}.yaml")
    parser.add_argument("--cache", type=Path, default=None,
                        help="shared decode cache (default: WORK/cache)")
    parser.add_argument("--epochs", type=int, default=None, help="override max_epochs")
    parser.add_argument("--sweep", type=Path, default=None,
                        help="sweep.json of benchmarks/site_generalisation.py for the card")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--ship", action="store_true",
                        help="copy the result into xreg/weights/ with its ONNX export and card")
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    write_site_manifests(args.data, work)
    config_path = work / f"{NAME}.yaml"
    shutil.copyfile(args.config, config_path)
    config = load_train_config(config_path, {"max_epochs": args.epochs})
    trained, run_dir = work / "trained.pt", work / "trained.run"
    if not trained.exists():
        say = Callbacks(message=lambda text: print(text, flush=True),
                        decode_start=lambda n: print(f"decoding {n} films once", flush=True),
                        epoch_end=lambda e: print(f"epoch {e.epoch}: {e.row()}", flush=True))
        train(config, None, trained, run_dir=run_dir, callbacks=say,
              resume=(run_dir / "state.pt").exists(), decode_cache=args.cache or work / "cache")
    loaded = load_checkpoint(trained)
    labels = loaded.card.head("body_part").labels

    # 3. Operating point and guard on every site's validation split.
    loaded, calibration = calibrate(loaded, split_images(run_dir, "val", labels))
    print(f"calibrated: {json.dumps(calibration)}", flush=True)

    # 4. Each site's test split, with the final card.
    test = split_images(run_dir, "test", labels)
    test_ev = evaluate_images(loaded, test, root=common_root(test), data="test split",
                              n_resamples=args.resamples, seed=0).to_dict()
    oos = work / "oos"
    if not (oos / "out_of_scope").is_dir():
        generate_dataset(oos, 0, seed=4000, size=384, out_of_scope=200)
    from pydicom.data import get_testdata_file

    real_dicom = [Path(p) for p in (get_testdata_file(n) for n in REAL_NON_MSK) if p]
    sweep = json.loads(args.sweep.read_text()) if args.sweep else {}
    summary = {
        "config": args.config.name, "calibration": calibration,
        "test_sites": test_ev["sites"], "test_overall": _brief(test_ev),
        "out_of_scope_phantoms": _review_share(loaded, sorted((oos / "out_of_scope")
                                                              .iterdir())),
        "real_non_msk_dicom": _review_share(loaded, real_dicom),
        "leave_one_site_out": sweep,
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    t = loaded.card.training
    card = dataclasses.replace(
        loaded.card, name=NAME, notes=NOTE,
        training={**no_local_paths(t),
                  "data": {**no_local_paths(t)["data"],
                           "source": "four real sites (scripts/sites.py) and "
                           "phantoms (xreg synth, seed 1000)", "credits": CREDITS},
                  "calibration": calibration,
                  "test_groups": _test_groups(test)},
        metrics={"test_sites": {s: _site_brief(f) for s, f in test_ev["sites"].items()},
                 "test_overall": summary["test_overall"],
                 "out_of_scope_phantoms": summary["out_of_scope_phantoms"],
                 "real_non_msk_dicom": summary["real_non_msk_dicom"],
                 "leave_one_site_out": {k: {"figures": _site_brief(v["figures"]),
                                            "settings": v["settings"]}
                                        for k, v in sweep.items()}})
    final = work / f"{NAME}.pt"
    sha = save_checkpoint(final, loaded.model, card)
    export_onnx(final)
    shipped = load_checkpoint(final)
    (work / f"{NAME}.md").write_text(model_card(shipped, summary))
    print(f"wrote {final} (sha256 {sha[:12]}), its .onnx and {work / f'{NAME}.md'}")
    if args.ship:
        for suffix in (".pt", ".onnx", ".md"):
            shutil.copyfile(final.with_suffix(suffix),
                            ROOT / "xreg" / "weights" / f"{NAME}{suffix}")
        print(f"shipped to {ROOT / 'xreg' / 'weights'}")
    return 0


def _test_groups(test: list[Any]) -> dict[str, list[str]]:
    """Each site's test-split patient groups as short hashes, so tests can pick films
    the model never trained on or chose a threshold with (no id is stored as such)."""
    import hashlib

    groups: dict[str, set[str]] = {}
    for im in test:
        raw = (im.patient_id or "").split(":", 1)[-1]
        if raw:
            groups.setdefault(im.source, set()).add(
                hashlib.sha256(raw.encode()).hexdigest()[:16])
    return {site: sorted(keys) for site, keys in sorted(groups.items())}


def _site_brief(figures: dict[str, Any]) -> dict[str, Any]:
    return {k: figures.get(k) for k in ("films", *SITE_ROWS, "confusion")}


def _brief(ev: dict[str, Any]) -> dict[str, Any]:
    bp = ev.get("body_part") or {}
    return {"counts": ev.get("counts"), "sorting": {k: v for k, v in
                                                    (ev.get("sorting") or {}).items()
                                                    if k != "confusion"},
            "body_part_mcc": bp.get("mcc"), "instrument": ev.get("instrument"),
            "fracture": ev.get("fracture")}


def _v(value: Any) -> str:
    if not value or value[0] is None or (isinstance(value[0], float) and math.isnan(value[0])):
        return "n/a"
    return ci(value)


def _sweep_rows(sweep: dict[str, Any]) -> list[str]:
    rows = ["| variant | held-out site | films | correct folder | wrong folder | review rate "
            "| settings |", "|---|---|---|---|---|---|---|"]
    for row in sweep.values():
        f = row["figures"]
        rows.append(f"| {row['variant']} | {row['site']} | {f['films']} | "
                    f"{_v(f.get('correct_folder'))} | {_v(f.get('wrong_folder'))} | "
                    f"{_v(f.get('review_rate'))} | {row['settings']} |")
    return rows


def model_card(loaded: Any, summary: dict[str, Any]) -> str:
    """The Markdown model card: data and credits, recipe, per-site and held-out figures."""
    card = loaded.card
    t = card.training
    point = summary["calibration"]["min_confidence"]
    guard = card.guard
    sites = summary["test_sites"]
    lines = [
        f"**{NOTE}**", "", f"# {card.name}", "",
        f"`{NAME}.pt`: sha256 `{loaded.sha256}`, {card.arch}, input {card.input_size}x"
        f"{card.input_size} grey, grey levels `{card.normalise}` (each film's 1st-99th "
        f"percentile to 0-1, in training and sorting alike), mean {card.mean:.4f}, std "
        f"{card.std:.4f}; heads "
        + ", ".join(f"{h.name} ({', '.join(h.labels)})" for h in card.heads)
        + f". xreg {card.xreg_version}, created {card.created}. Rebuild: "
        "`python scripts/make_site_weights.py --data ../shared/data --work DIR`.", "",
        "## Data (each source is a site)", "",
        *[f"- **{site}**: {text}" for site, text in CREDITS.items()],
        "- **Phantoms** (`xreg synth`, seed 1000): hardware of many kinds and out-of-scope "
        "images (skull, abdomen, blank, photos) as `other`.",
        f"- Split 70/20/10 grouped by {t['split']['grouped_by']}, stratified by site and "
        "body part: " + "; ".join(
            f"{k} {v['images']} ({', '.join(f'{a} {b}' for a, b in v['source'].items())})"
            for k, v in t["split"]["counts"].items()) + ".", "",
        "## Recipe", "",
        f"`configs/{summary['config']}`: ImageNet {card.arch}, Adam lr "
        f"{t['recipe']['lr']:g}, MultiStepLR x0.5, batch 16, label smoothing 0.1 "
        f"(hesitant labels as sets), {t['recipe']['samples_per_epoch']} draws per epoch by "
        "site weight (" + ", ".join(f"{d['name']} {d['weight']:g}"
                                    for d in t["recipe"]["datasets"]) + "), "
        f"{t['epochs_run']} epochs on {t['device']} ({t['seconds'] / 60:.0f} min), best "
        f"epoch {t['best_epoch']}. Films cached at {t['recipe']['cache_size']} px; site "
        "augmentation (probability each): " + ", ".join(
            f"{k} {v:g}" for k, v in t["recipe"]["site_augment"].items()) + "; flips and "
        "90-degree turns.", "",
        f"Thresholds: min_confidence {point['threshold']:.3f} (validation of every site: "
        f"accuracy among sorted nine-class films >= {point.get('target_accuracy', 0.97)}, "
        f"at most {point.get('max_outside', 0.1):.0%} of other films into the nine; "
        f"{'met' if point.get('met') else 'not met: the most accurate threshold'}); "
        f"instrument {card.thresholds.get('instrument', 0.5):.3f} and fracture "
        f"{card.thresholds.get('fracture', 0.5):.3f} (Youden on validation). "
        + (f"Unfamiliar-film guard: a film whose body-part energy exceeds "
           f"{guard['energy_max']:.3f} (the {guard['coverage']:.0%} quantile of "
           f"{guard['films']} musculoskeletal validation films) goes to `_review` as "
           "`unfamiliar film`." if guard else "No unfamiliar-film guard."), "",
        "## Each site's test split (95% bootstrap CIs)", "",
        "Grouped by patient and duplicate cluster, used for no decision. Correct folder: of "
        "a site's nine-class films, the share sorted into the right folder. Wrong folder: of "
        "all its films, the share sorted into a folder not its own (a chest film in any "
        "body-part folder). Outside nine into nine: of its films that are none of the nine, "
        "the share in a nine-class folder.", "",
        "| site | films | " + " | ".join(k.replace("_", " ") for k in SITE_ROWS) + " |",
        "|---|---|" + "---|" * len(SITE_ROWS),
        *[f"| {s} | {f['films']} | " + " | ".join(_v(f.get(k)) for k in SITE_ROWS) + " |"
          for s, f in sites.items()], "",
    ]
    for s, f in sites.items():
        lines += [f"Destinations, {s} test split (rows: truth; columns: folder):", "",
                  *confusion_rows(f["confusion"]), ""]
    sweep = summary.get("leave_one_site_out") or {}
    lines += ["## Leave-one-site-out (held-out sites)", ""]
    if sweep:
        lines += ["Each row: a model trained without that site (the recipe at the sweep's "
                  "short schedule; `benchmarks/site_generalisation.py`), thresholds chosen "
                  "on the other sites' validation films, then every film of the left-out "
                  "site sorted. This is the figure that predicts a new hospital. FracAtlas, "
                  "the only real source of most classes, is not left out; its test split "
                  "above stands in for it.", "", *_sweep_rows(sweep), ""]
    else:
        lines += ["Not run for this build.", ""]
    oos, dicom = summary["out_of_scope_phantoms"], summary["real_non_msk_dicom"]
    lines += [
        f"Out of scope: {oos['review']} of {oos['films']} out-of-scope phantoms of an unseen "
        f"seed ({json.dumps(oos['by_reason'])}) and {dicom['review']} of {dicom['films']} "
        "real non-musculoskeletal DICOM files (pydicom's CT, MR, ultrasound, secondary "
        f"capture: {json.dumps(dicom['by_reason'])}) go to `_review`.", "",
        "## Intended use", "",
        "Sorting musculoskeletal radiographs into body-part folders for research registries, "
        "with `_review` for what the model is unsure of or has not seen the like of; a "
        "starting point for an institution's own training. Not for clinical use.", "",
        "## Limits", "",
        "- Ankle, elbow and wrist come only from FracAtlas (three hospitals in Bangladesh, "
        "many children): no other public source was found. Expect lower figures for them "
        "at other hospitals.",
        "- Spine comes from one export of scoliosis films (CLAHE'd, small) and phantoms; "
        "chest from one US hospital; shoulder hardware from tight implant crops.",
        "- Hardware labels exist for FracAtlas and the shoulder set only (unknown "
        "elsewhere); fracture labels for FracAtlas only. Fracture is a single-film head, "
        "not a diagnosis.",
        "- Body-part labels of FracAtlas are a non-physician's visual review with measured "
        "border noise (hand/wrist, foot/ankle, shoulder/humerus, hip/femur).",
        "- Intervals resample films, not patients, so they are if anything too narrow; "
        "sites with few films have wide intervals.", "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
