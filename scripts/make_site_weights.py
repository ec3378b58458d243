"""Rebuild the shipped default from every real site and phantoms: two members, one network.

    python scripts/fetch_imagenet_weights.py          # once: MobileNetV2's ImageNet file
    python scripts/make_site_weights.py --data ../shared/data --work /tmp/xreg-sites \\
        [--sweep SWEEP.json] [--selective SELECTIVE.json] [--ship]

Steps (each skipped when its output already exists in --work; training resumes):
 1. One manifest per site (scripts/sites.py).
 2. ``xreg train`` for each member recipe (``--member``; default
    configs/bodypart_sites.yaml and configs/bodypart_sites_mix.yaml) in WORK/<recipe>/:
    the four sites plus phantoms, split 70/20/10 grouped by patient and near-duplicate
    cluster, stratified by site and body part (the same split for every member).
 3. The members joined into one network (xreg/train/guard.py) with a feature bank of
    2,000 training films; on the *validation* split of every site: ``distance_max``
    (95% of musculoskeletal films pass), ``agree_min`` (97%), the body parts whose
    fracture call means something, then min_confidence (accuracy among sorted
    nine-class films >= 0.97, at most 10% of other films into the nine) and the
    energy guard (99%).
 4. Each site's *test* split (used for no decision) is scored with the final card:
    per-site figures with 95% bootstrap CIs and fracture flag rates; also out-of-scope
    phantoms of an unseen seed and pydicom's real non-musculoskeletal DICOM files.
 5. The leave-one-site-out tables (benchmarks/site_generalisation.py: --sweep;
    benchmarks/selective_prediction.py: --selective) go into the card. The
    checkpoint, its ONNX export and the Markdown card go to
    xreg/weights/bodypart_sites.{pt,onnx,md} with --ship. ``--refresh-card`` rewrites
    only the fold tables of a finished WORK.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from _shipping import no_local_paths
from _site_card import CREDITS, NAME, NOTE, SITE_ROWS, model_card
from sites import write_site_manifests

from xreg.evaluation.evaluate import evaluate_images
from xreg.inference.export import export_onnx
from xreg.model.checkpoint import load_checkpoint, save_checkpoint
from xreg.synth.generate import generate_dataset
from xreg.train import Callbacks, load_train_config, train
from xreg.train.guard import ensemble_card, fit_guard, fracture_classes, join_loaded
from xreg.train.sites import calibrate, common_root, split_images

ROOT = Path(__file__).resolve().parent.parent
REAL_NON_MSK = ("CT_small.dcm", "MR_small.dcm", "SC_rgb.dcm", "emri_small.dcm",
                "JPGLosslessP14SV1_1s_1f_8b.dcm", "MR_small_RLE.dcm", "US1_J2KR.dcm")
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


def _fracture_flags(loaded: Any, test: list[Any], sites: dict[str, Any]) -> dict[str, Any]:
    """Per site: the share of test films the registry records as fractured, and as unknown
    (held back, not of the nine, or a body part the fracture head never learned)."""
    from xreg.inference.predict import SourceFile, predict_files
    from xreg.sort.record import fracture_call
    from xreg.sort.scope import decide_placement

    site_of = {im.path: im.source for im in test}
    sources = [SourceFile(im.path, im.path.stat().st_size, im.path.stat().st_mtime_ns)
               for im in test]
    threshold = loaded.card.thresholds.get("min_confidence", 0.0)
    counts: dict[str, list[int]] = {}
    for batch in predict_files(sources, loaded):
        for pred in batch:
            if pred.status != "ok":
                continue
            where = decide_placement(pred.labels["body_part"], pred.confidence("body_part"),
                                     threshold, unfamiliar=pred.unfamiliar)
            label, _ = fracture_call(pred, where)
            row = counts.setdefault(site_of[pred.source.path], [0, 0, 0])
            row[0] += 1
            row[1] += label == "fracture"
            row[2] += label is None
    return {site: {"films": n, "flagged": f / n, "unknown": u / n,
                   "auc": (sites.get(site) or {}).get("fracture_auc")}
            for site, (n, f, u) in sorted(counts.items())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of site folders")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--member", type=Path, action="append", default=None,
                        help="a member's recipe (repeatable; default: configs/bodypart_sites"
                        ".yaml and configs/bodypart_sites_mix.yaml); one recipe and "
                        "--no-bank give a single network as before")
    parser.add_argument("--no-bank", action="store_true",
                        help="no feature bank (no distance test); only with one member")
    parser.add_argument("--cache", type=Path, default=None,
                        help="shared decode cache (default: WORK/cache)")
    parser.add_argument("--epochs", type=int, default=None, help="override max_epochs")
    parser.add_argument("--sweep", type=Path, default=None,
                        help="sweep.json of benchmarks/site_generalisation.py for the card")
    parser.add_argument("--selective", type=Path, default=None,
                        help="JSON of benchmarks/selective_prediction.py (the guard "
                        "comparison on the folds) for the card")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--ship", action="store_true",
                        help="copy the result into xreg/weights/ with its ONNX export and card")
    parser.add_argument("--refresh-card", action="store_true",
                        help="rewrite only the card's fold figures (--sweep, --selective) "
                        "of a finished WORK, weights unchanged")
    args = parser.parse_args()
    if args.refresh_card:
        return _refresh(args)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    write_site_manifests(args.data, work)
    recipes = args.member or [ROOT / "configs" / f"{NAME}.yaml",
                              ROOT / "configs" / f"{NAME}_mix.yaml"]
    members = [_train_member(recipe, work, args) for recipe in recipes]
    run_dir = members[0][1]
    labels = members[0][0].card.head("body_part").labels
    if len(members) == 1 and args.no_bank:
        loaded, guard_fit = members[0][0], {}
    else:
        loaded, guard_fit = _ensemble(members, work)

    # 3. Operating point and energy guard on every site's validation split.
    loaded, calibration = calibrate(loaded, split_images(run_dir, "val", labels))
    calibration["guard_fit"] = guard_fit
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
        "config": [r.name for r in recipes], "calibration": calibration,
        "test_sites": test_ev["sites"], "test_overall": _brief(test_ev),
        "out_of_scope_phantoms": _review_share(loaded, sorted((oos / "out_of_scope")
                                                              .iterdir())),
        "real_non_msk_dicom": _review_share(loaded, real_dicom),
        "leave_one_site_out": sweep,
        "fracture_flags": _fracture_flags(loaded, test, test_ev["sites"]),
        "selective": json.loads(args.selective.read_text()) if args.selective else {},
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
                 "fracture_flags": summary["fracture_flags"],
                 "real_non_msk_dicom": summary["real_non_msk_dicom"],
                 **_folds_metrics(summary)})
    final = work / f"{NAME}.pt"
    save_checkpoint(final, loaded.model, card)
    return _write(final, summary, args)


def _folds_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    return {"guard_on_folds": {site: {"films": f["films"], "operating": f["operating"]}
                               for site, f in summary["selective"].items()},
            "leave_one_site_out": {k: {"figures": _site_brief(v["figures"]),
                                       "settings": v["settings"]}
                                   for k, v in summary["leave_one_site_out"].items()}}


def _refresh(args: argparse.Namespace) -> int:
    """Only the card's fold figures (--sweep, --selective) anew; the weights stay."""
    final = args.work / f"{NAME}.pt"
    summary = json.loads((args.work / "summary.json").read_text())
    if args.sweep:
        summary["leave_one_site_out"] = json.loads(args.sweep.read_text())
    if args.selective:
        summary["selective"] = json.loads(args.selective.read_text())
    (args.work / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    loaded = load_checkpoint(final)
    card = dataclasses.replace(loaded.card, training=no_local_paths(dict(loaded.card.training)),
                               metrics={**loaded.card.metrics, **_folds_metrics(summary)})
    save_checkpoint(final, loaded.model, card)
    return _write(final, summary, args)


def _write(final: Path, summary: dict[str, Any], args: argparse.Namespace) -> int:
    """The ONNX export and the Markdown card beside ``final``; with --ship, all three."""
    export_onnx(final)
    shipped = load_checkpoint(final)
    (final.parent / f"{NAME}.md").write_text(model_card(shipped, summary))
    print(f"wrote {final} (sha256 {shipped.sha256[:12]}), its .onnx and {NAME}.md")
    if args.ship:
        for suffix in (".pt", ".onnx", ".md"):
            shutil.copyfile(final.with_suffix(suffix),
                            ROOT / "xreg" / "weights" / f"{NAME}{suffix}")
        print(f"shipped to {ROOT / 'xreg' / 'weights'}")
    return 0


def _train_member(recipe: Path, work: Path, args: argparse.Namespace) -> tuple[Any, Path]:
    """Train one member's recipe in WORK/<recipe name>/ (resumed, or skipped when done)."""
    folder = work / recipe.stem
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / recipe.name
    shutil.copyfile(recipe, config_path)
    # the manifests lie in WORK: the recipe names them relative to its own folder
    for manifest in work.glob("*.csv"):
        target = folder / manifest.name
        if not target.exists():
            shutil.copyfile(manifest, target)
    config = load_train_config(config_path, {"max_epochs": args.epochs})
    trained, run_dir = folder / "trained.pt", folder / "trained.run"
    if not trained.exists():
        say = Callbacks(message=lambda text: print(text, flush=True),
                        decode_start=lambda n: print(f"decoding {n} films once", flush=True),
                        epoch_end=lambda e: print(f"epoch {e.epoch}: {e.row()}", flush=True))
        train(config, None, trained, run_dir=run_dir, callbacks=say,
              resume=(run_dir / "state.pt").exists(), decode_cache=args.cache or work / "cache")
    return load_checkpoint(trained), run_dir


def _ensemble(members: list[tuple[Any, Path]], work: Path) -> tuple[Any, dict[str, Any]]:
    """Members joined into one network with a feature bank; agreement and distance set."""
    loaded = [m for m, _ in members]
    run_dir = members[0][1]
    for _, other in members[1:]:  # one split for all, or validation films were trained on
        if _split_of(other) != _split_of(run_dir):
            raise SystemExit(f"{other} was split differently from {run_dir}")
    labels = loaded[0].card.head("body_part").labels
    net = join_loaded(loaded)
    train_films = split_images(run_dir, "train", labels)
    card, fit = fit_guard(net, ensemble_card(loaded, NAME), train_films,
                          split_images(run_dir, "val", labels))
    card = dataclasses.replace(card, guard={**card.guard,
                                            "fracture_classes": fracture_classes(train_films)})
    fit["fracture_classes"] = card.guard["fracture_classes"]
    print(f"guard: {json.dumps(fit)}", flush=True)
    joined = work / "joined.pt"
    save_checkpoint(joined, net, card)
    return load_checkpoint(joined), fit


def _split_of(run_dir: Path) -> list[tuple[str, str]]:
    """(film, split) of a run, phantoms named relative to the run (each run renders its own)."""
    import csv

    with (run_dir / "split.csv").open(newline="") as f:
        return sorted((row["path"].replace(str(run_dir.resolve()), "RUN").replace(
            str(run_dir), "RUN"), row["split"]) for row in csv.DictReader(f))


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


if __name__ == "__main__":
    sys.exit(main())
