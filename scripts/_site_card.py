"""The Markdown model card of the shipped default (scripts/make_site_weights.py)."""

from __future__ import annotations

import json
import math
from typing import Any

from _shipping import ci, confusion_rows

NAME = "bodypart_sites"
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


def _replay_text(card: Any) -> list[str]:
    """The replay file ``xreg adapt`` uses (``scripts/make_replay.py``), if the card names one."""
    rp = card.replay
    if not rp:
        return []
    per = "; ".join(f"{k} {v['films']} ({v['holdout']} held out)"
                    for k, v in rp["per_site"].items())
    return [
        "## Replay for `xreg adapt`", "",
        f"`{rp['file']}` (sha256 `{rp['sha256']}`, recorded in the card and checked on "
        f"load): for {rp['films']} films of the model's own split ({per}), both members' "
        f"penultimate features ({rp['dim']} numbers per film, float16) and the films' "
        "labels; derived numbers, no film. Training films (up to 100 per site and body "
        "part) are replayed beside the reviews when `xreg adapt` trains the heads; "
        f"validation films (up to 30 per site and body part, {rp['holdout']} in all) are "
        "the replay hold-out on which adapt measures forgetting. No test-split film is in "
        "it. Rebuild: `python scripts/make_replay.py xreg/weights/bodypart_sites.pt RUN` "
        "(RUN: the first member's training run folder).", ""]


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
        *_members_text(card, summary),
        f"`configs/{summary['config'][0]}`: ImageNet {card.arch}, Adam lr "
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
        *_guard_text(card),
        *_replay_text(card),
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
    lines += _fracture_text(card, summary)
    lines += _selective_text(summary.get("selective") or {})
    sweep = summary.get("leave_one_site_out") or {}
    lines += ["## Leave-one-site-out (held-out sites)", ""]
    if sweep:
        lines += ["Each row: a model trained without that site (the recipe at the sweep's "
                  "short schedule; `benchmarks/site_generalisation.py`), thresholds chosen "
                  "on the other sites' validation films, then every film of the left-out "
                  "site sorted, by one member alone (no agreement, no bank). FracAtlas-out "
                  "is the fold that looks like a new hospital: most classes are then unseen "
                  "as real films. The `mix` rows are the second member's recipe (hardware "
                  "pasted, other sites' look): the ablation of those steps.", "",
                  *_sweep_rows(sweep), ""]
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



def _members_text(card: Any, summary: dict[str, Any]) -> list[str]:
    members = card.training.get("members") or []
    if not members:
        return []
    return [f"An ensemble of {len(members)} networks in one graph (one runtime call per "
            "batch), each trained on the same sites and split with its own recipe: "
            + "; ".join(f"`configs/{c}` ({m['arch']}, sha256 {m['sha256'][:12]})"
                        for c, m in zip(summary["config"], members))
            + ". Body-part, instrument, fracture and view probabilities are the members' "
            "mean. The first member's recipe:", ""]


def _guard_text(card: Any) -> list[str]:
    g = card.guard
    out = []
    if "agree_min" in g:
        out.append(f"Agreement: a film any member gives the ensemble's label less than "
                   f"{g['agree_min']:.3f} (passed by {g['agree_coverage']:.0%} of "
                   "musculoskeletal validation films) goes to `_review` as `models disagree: "
                   "a / b`.")
    if "bank" in g:
        b = g["bank"]
        out.append(f"Feature bank: the joined unit features of {b['films']} training films "
                   f"({b['dim']} numbers each, float16; derived numbers, no film). A film "
                   f"whose cosine distance to its {b['k']}th nearest exceeds "
                   f"{g['distance_max']:.3f} (passed by {g['distance_coverage']:.0%} of "
                   "musculoskeletal validation films) goes to `_review` as `unlike the "
                   "training films`.")
    return [" ".join(out), ""] if out else []


def _fracture_text(card: Any, summary: dict[str, Any]) -> list[str]:
    judged = card.guard.get("fracture_classes")
    flags = summary.get("fracture_flags") or {}
    if judged is None and not flags:
        return []
    lines = ["## Fracture flag", ""]
    if judged is not None:
        lines += ["The registry records a fracture call only for a film sorted into one of "
                  "the nine and whose body part the fracture head learned from labelled "
                  f"films ({', '.join(judged)}; at least 30 labelled training films and 5 "
                  "fractures each); elsewhere it is unknown (NULL).", ""]
    if flags:
        lines += ["| site (test split) | films | flagged fracture | unknown | fracture AUC |",
                  "|---|---|---|---|---|",
                  *[f"| {site} | {f['films']} | {f['flagged']:.3f} | {f['unknown']:.3f} | "
                    f"{_v(f.get('auc'))} |" for site, f in flags.items()], ""]
    return lines


def _selective_text(sel: dict[str, Any]) -> list[str]:
    if not sel:
        return []
    lines = ["## The guard on leave-one-site-out folds", "",
             "Each fold: members trained without that site (short schedule), every rule's "
             "threshold set on the other sites' validation films to pass 95% of films of "
             "the nine, then every film of the left-out site sorted "
             "(`benchmarks/selective_prediction.py`). Wrong folder is the safety figure.", "",
             "| fold (left out) | rule | sorted | correct folder | wrong folder |",
             "|---|---|---|---|---|"]
    for site, fold in sel.items():
        for rule, row in fold["operating"].items():
            lines.append(f"| {site} | {rule} | {row['sorted']:.3f} | "
                         f"{row['correct_folder']:.3f} | {row['wrong_folder']:.3f} |")
    return lines + [""]
