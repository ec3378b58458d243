"""Adapt a model to one hospital from a few reviewed films (``xreg adapt``).

The base model (the shipped default, or any checkpoint) is fine-tuned on the
films a person reviewed in one sorted folder, and kept close to what it knew:

* **reviews only.** A film's truth is its latest review; a label the model
  gave and nobody confirmed is never training truth (an unjudged
  instrument or fracture stays unknown, not the model's guess).
* **learning without forgetting.** The base's own answers on other films are
  a second target (distillation, temperature ``T``): rendered phantoms of
  every class by default, the site's unreviewed films, or both
  (``distill_on``), so classes the reviews never mention are not forgotten.
  Labelled films of the base's training sources (``replay``) join the
  batches when given.
* **an anchor.** An L2 pull towards the base weights (L2-SP) limits how far
  a handful of films can move them; batch-norm statistics stay frozen, and
  ``layers="heads"`` trains only the heads over the base's features.
* **AdaBN** (``adabn=True``, ``xreg adapt --unlabelled``): the batch-norm
  statistics re-estimated on the site's own films, no labels needed.

The reviewed films are split by patient (else study, else source folder)
into train and hold-out. The hold-out gives the before/after figures, the
new ``min_confidence``, and the verdict: a model worse than its base on the
hold-out is refused (:attr:`AdaptResult.accepted`) and, unless forced, never
written.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from torch import nn

from xreg.errors import ConfigError
from xreg.evaluation.calibrate import choose_operating_point
from xreg.evaluation.sorting import place
from xreg.model.card import ModelCard
from xreg.model.checkpoint import LoadedModel
from xreg.model.labels import BODY_PARTS, OTHER
from xreg.train.finetune import (
    BODY_PART,
    AdaptOptions,
    Film,
    adabn,
    decode_grey,
    energy_of,
    fine_tune,
    held_back,
    predict_grey,
    render_phantoms,
)
from xreg.train.sites import GUARD_COVERAGE

__all__ = ["AdaptOptions", "AdaptResult", "Film", "adapt", "group_split", "site_films",
           "sort_figures", "write_adapted"]

#: A film sorted into a wrong folder costs this many films sorted right (the verdict).
WRONG_COST = 2.0
#: Nine-class films the hold-out needs before it may move ``min_confidence``.
MIN_NINE_TO_CHOOSE = 20


@dataclass
class AdaptResult:
    """The adapted model (its card filled in), the hold-out figures and the verdict."""

    loaded: LoadedModel
    base: LoadedModel
    before: dict[str, Any]
    after: dict[str, Any]
    accepted: bool
    verdict: str
    counts: dict[str, Any]
    seconds: float
    steps: int = 0
    log: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "verdict": self.verdict,
                "base": {"name": self.base.card.name, "sha256": self.base.sha256},
                "holdout": {"before": self.before, "after": self.after},
                "counts": self.counts, "seconds": round(self.seconds, 1),
                "steps": self.steps,
                "thresholds": dict(self.loaded.card.thresholds),
                "guard": dict(self.loaded.card.guard)}



# -- the site's films ------------------------------------------------------------------


def site_films(out_root: Path, labels: Sequence[str], registry_path: Path | None = None
               ) -> tuple[list[Film], list[Film]]:
    """The reviewed and the unreviewed films placed in ``out_root``.

    A reviewed film's truth is its latest review (``not_msk`` reads as
    ``other`` when the model has that class, else the film is left out); an
    instrument or fracture the reviewer did not judge stays unknown. Films
    missing from disk are left out.
    """
    from xreg.registry import Registry
    from xreg.registry.reviews import NOT_MSK, latest_reviews

    path = registry_path or out_root / "registry.sqlite"
    if not path.is_file():
        raise ConfigError(f"{out_root} has no registry ({path.name}): run xreg sort into it "
                          "and review some films first")
    reviewed: list[Film] = []
    unreviewed: list[Film] = []
    with Registry(path, readonly=True) as reg:
        reviews = latest_reviews(reg)
        for row in reg.iter_images():
            film_path = out_root / row["dest_path"]
            if row["status"] == "unreadable" or not film_path.is_file():
                continue
            group = row["patient_key"] or row["study_uid"] or row.get("study_key") or \
                _folder(row["source_paths"], row["dest_path"])
            review = reviews.get(row["sha256"])
            if review is None:
                unreviewed.append(Film(film_path, group=group))
                continue
            truth = _truth(review["body_part"], labels, NOT_MSK)
            if truth is None:
                continue
            reviewed.append(Film(film_path, truth, review["instrument"], review["fracture"],
                                 group, review["reviewer"]))
    return reviewed, unreviewed


def _truth(body_part: str, labels: Sequence[str], not_msk: str) -> tuple[str, ...] | None:
    if body_part == not_msk:
        return (OTHER,) if OTHER in labels else None
    members = tuple(m for m in body_part.split("|") if m)
    unknown = [m for m in members if m not in labels]
    if not members or unknown:
        raise ConfigError(f"a review says {body_part!r}, which the model cannot learn "
                          f"(it knows {', '.join(labels)})")
    return members


def _folder(sources: Sequence[str], dest: str) -> str:
    """The folder a film came from (its group when there is no patient or study)."""
    first = sorted(sources)[0] if sources else dest
    return "folder:" + str(PurePosixPath(first.replace("\\", "/")).parent)


def group_split(films: Sequence[Film], holdout: float, seed: int = 0
                ) -> tuple[list[int], list[int]]:
    """Indices of train and hold-out films; each group falls wholly on one side.

    Groups are ordered by a seeded hash and the first ``holdout`` share of
    films (at least one group) is held out; with a single group nothing can be
    held out and ``ConfigError`` says so.
    """
    groups: dict[str, list[int]] = {}
    for i, film in enumerate(films):
        groups.setdefault(film.group or f"film:{film.path}", []).append(i)
    if len(groups) < 2:
        raise ConfigError(f"{len(films)} reviewed film(s) from one patient/study/folder: "
                          "review films of at least two, so some can be held out")
    order = sorted(groups, key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
    held: list[int] = []
    target = holdout * len(films)
    for g in order:
        if held and len(held) + len(groups[g]) > target:
            continue
        held += groups[g]
        if len(held) >= target:
            break
    held_set = set(held)
    if len(held_set) == len(films):
        raise ConfigError("every reviewed film fell into the hold-out; review more films")
    return [i for i in range(len(films)) if i not in held_set], sorted(held_set)


# -- figures and verdict ----------------------------------------------------------------


def sort_figures(labels: Sequence[str], probs: np.ndarray, truth: Sequence[tuple[str, ...]],
                 min_confidence: float, held: np.ndarray) -> dict[str, Any]:
    """What ``xreg sort`` would do with these films: correct, wrong, review (counts + shares)."""
    pred, placed = place(labels, probs, min_confidence, held)
    nine = np.array([t[0] in BODY_PARTS for t in truth], dtype=bool)
    in_set = np.array([labels[k] in t for k, t in zip(pred, truth)], dtype=bool)
    correct = int((placed & in_set & nine).sum())
    wrong = int((placed & ~in_set).sum())
    n = len(truth)
    return {"films": n, "nine": int(nine.sum()), "correct": correct, "wrong": wrong,
            "review": int((~placed).sum()),
            "correct_folder": correct / int(nine.sum()) if nine.any() else None,
            "wrong_folder": wrong / n if n else None,
            "review_rate": int((~placed).sum()) / n if n else None,
            "utility": correct - WRONG_COST * wrong}




def holdout_figures(card: ModelCard, logits: dict[str, torch.Tensor],
                    truth: Sequence[tuple[str, ...]]) -> dict[str, Any]:
    labels = card.head(BODY_PART).labels
    probs = torch.softmax(logits[BODY_PART], dim=1).numpy()
    return sort_figures(labels, probs, truth, float(card.thresholds.get("min_confidence", 0.5)),
                        held_back(logits, card))


# -- the whole step ---------------------------------------------------------------------


def adapt(base: LoadedModel, reviewed: Sequence[Film], unreviewed: Sequence[Film] = (),
          options: AdaptOptions = AdaptOptions(), *, replay: Sequence[Film] = (),
          on_stage: Callable[[str, int], None] | None = None,
          on_advance: Callable[[], None] | None = None,
          cache: dict[Path, np.ndarray | None] | None = None,
          phantoms: Sequence[Film] = (),
          ) -> AdaptResult:
    """Adapt ``base`` to the site of ``reviewed``/``unreviewed``; the base stays untouched.

    ``on_stage(name, total)`` and ``on_advance()`` report progress (decoding,
    training). ``phantoms`` are rendered films to distil on (default: rendered
    here, into a temporary folder, when the options ask for them). The result
    says whether the adapted model beat the base on the hold-out; writing it is
    the caller's (:func:`write_adapted`).
    """
    options.check()
    started = time.perf_counter()
    torch.manual_seed(options.seed)
    card = base.card
    if not reviewed:
        raise ConfigError("no reviewed films: review some in xreg serve (or import reviews "
                          "with xreg registry import-reviews) first")
    train_idx, hold_idx = group_split(reviewed, options.holdout, options.seed)

    def stage(name: str, total: int) -> Callable[[], None] | None:
        if on_stage is not None:
            on_stage(name, total)
        return on_advance

    rng = np.random.default_rng(options.seed)
    pool_films = list(unreviewed) if options.distill_on in ("site", "both") else []
    if len(pool_films) > options.distill_films:
        pick = sorted(rng.choice(len(pool_films), options.distill_films, replace=False))
        pool_films = [pool_films[i] for i in pick]
    if options.fine_tune and options.distill and options.distill_on in ("phantoms", "both"):
        if not phantoms:
            stage("rendering phantoms", 0)
        pool_films += phantoms or render_phantoms(options.phantoms, options.seed)
    paths = [f.path for f in reviewed] + [f.path for f in pool_films] + \
        [f.path for f in replay]
    grey, kept = decode_grey(paths, card.input_size, options.workers,
                             stage("decoding", len(paths)), cache)
    row_of = {i: n for n, i in enumerate(kept)}
    n_rev, n_pool = len(reviewed), len(pool_films)

    def take(indices: Sequence[int]) -> tuple[torch.Tensor, list[int]]:
        ok = [i for i in indices if i in row_of]
        return grey[[row_of[i] for i in ok]] if ok else grey[:0], ok

    train_grey, train_ok = take([i for i in train_idx])
    hold_grey, hold_ok = take([i for i in hold_idx])
    if not train_ok or not hold_ok:
        raise ConfigError("too few reviewed films could be decoded for a train and a "
                          "hold-out split")
    train_films = [reviewed[i] for i in train_ok]
    hold_truth = [reviewed[i].truth or () for i in hold_ok]
    site_grey, _ = take(range(n_rev + n_pool))
    pool_grey, _ = take(range(n_rev, n_rev + n_pool))
    replay_grey, replay_ok = take(range(n_rev + n_pool, len(paths)))

    model = copy.deepcopy(base.model).cpu().eval()
    before = holdout_figures(card, predict_grey(model, hold_grey, card), hold_truth)
    if options.adabn:
        adabn(model, site_grey, card, seed=options.seed)
    steps, log = 0, []
    if options.fine_tune:
        teacher_grey = torch.cat([pool_grey, replay_grey]) if len(replay_grey) else pool_grey
        teacher = predict_grey(model, teacher_grey, card) if options.distill else {}
        replay_films = [replay[i - n_rev - n_pool] for i in replay_ok]
        advance = stage("training", 0)
        steps, log = fine_tune(model, card, train_grey, train_films, teacher_grey, teacher,
                               options, (lambda s, n, loss: advance()) if advance else None,
                               replay=(replay_grey, replay_films) if replay_films else None)
    # One pass over the hold-out: thresholds and the guard do not change the logits.
    after_logits = predict_grey(model, hold_grey, card)
    adapted_card = _calibrated(model, card, train_grey, train_films, after_logits,
                               hold_truth, options)
    after = holdout_figures(adapted_card, after_logits, hold_truth)
    accepted = after["utility"] >= before["utility"]
    verdict = (f"kept: on the hold-out it sorts {after['correct']} right and {after['wrong']} "
               f"wrong, against the base's {before['correct']} and {before['wrong']}"
               if accepted else
               f"refused: worse than the base on the hold-out ({after['correct']} right, "
               f"{after['wrong']} wrong, against the base's {before['correct']} and "
               f"{before['wrong']}; a wrong folder costs {WRONG_COST:g} right ones)")
    counts = {"reviewed": len(reviewed), "train": len(train_films), "holdout": len(hold_ok),
              "distilled_on": int(len(pool_grey)), "replay": len(replay_ok),
              "per_class": dict(sorted(Counter("|".join(f.truth or ()) for f in reviewed
                                               ).items())),
              "reviewers": sorted({f.reviewer for f in reviewed if f.reviewer}),
              "undecodable": len(paths) - len(kept)}
    seconds = time.perf_counter() - started
    final_card = _adapted_card(adapted_card, base, options, counts, before, after, seconds)
    adapted = LoadedModel(model, final_card, "", base.path)
    return AdaptResult(adapted, base, before, after, accepted, verdict, counts, seconds,
                       steps, log)


def _calibrated(model: nn.Module, card: ModelCard, train_grey: torch.Tensor,
                train_films: Sequence[Film], hold: Mapping[str, torch.Tensor],
                hold_truth: Sequence[tuple[str, ...]], options: AdaptOptions) -> ModelCard:
    """The card with ``min_confidence`` chosen on the hold-out and the guard re-measured;
    ``hold`` is the adapted model's outputs on the hold-out films.

    ``min_confidence`` moves only when the hold-out has at least
    :data:`MIN_NINE_TO_CHOOSE` films of the nine classes and a threshold meets
    the targets there: a hold-out of chest films (or of a dozen films) says
    nothing about where to draw the line for a knee. The guard becomes the
    larger of the base's limit and the ``GUARD_COVERAGE`` quantile of the
    adapted model's energy over the reviewed musculoskeletal films, so the
    site's own films pass and films the base knew are held back no more often
    than before.
    """
    labels = card.head(BODY_PART).labels
    probs = torch.softmax(hold[BODY_PART], dim=1).numpy()
    y = [labels.index(t[0]) for t in hold_truth]
    thresholds = dict(card.thresholds)
    nine = sum(t[0] in BODY_PARTS for t in hold_truth)
    if nine >= MIN_NINE_TO_CHOOSE:
        try:
            point = choose_operating_point(labels, probs, y, truth_sets=hold_truth,
                                           target_accuracy=options.target_accuracy)
            if point.met:
                thresholds["min_confidence"] = point.threshold
        except ConfigError:
            pass  # nothing to choose from: keep the base's
    msk = [i for i, f in enumerate(train_films) if f.truth and f.truth[0] != OTHER]
    energies = list(energy_of(predict_grey(model, train_grey[msk], card))) if msk else []
    energies += [e for e, t in zip(energy_of(hold), hold_truth) if t and t[0] != OTHER]
    guard = dict(card.guard)
    if energies and card.guard.get("energy_max") is not None:
        site = float(np.quantile(energies, GUARD_COVERAGE))
        guard = {**guard, "energy_max": round(max(float(card.guard["energy_max"]), site), 4),
                 "site_quantile": round(site, 4), "site_films": len(energies),
                 "calibrated_on": "the larger of the base's limit and the quantile over "
                                  "the site's reviewed musculoskeletal films"}
    return dataclasses.replace(card, thresholds=thresholds, guard=guard)


def _adapted_card(card: ModelCard, base: LoadedModel, options: AdaptOptions,
                  counts: dict[str, Any], before: dict[str, Any], after: dict[str, Any],
                  seconds: float) -> ModelCard:
    method = ("AdaBN only" if not options.fine_tune else
              "fine-tuned" + (" after AdaBN" if options.adabn else ""))
    training = {
        "adapted_from": {"name": base.card.name, "sha256": base.sha256},
        "method": method,
        "options": {k: v for k, v in dataclasses.asdict(options).items() if k != "workers"},
        "reviewed": counts,
        "seconds": round(seconds, 1),
        "base_training": dict(base.card.training),
    }
    notes = (f"Tuned to one site: {method} from {base.card.name} "
             f"(sha256 {base.sha256[:12]}) on {counts['reviewed']} reviewed films of that "
             "site. Its figures at other sites are not known; use the base there.\n"
             + (base.card.notes or ""))
    return dataclasses.replace(
        card, name=f"{base.card.name}-adapted", training=training,
        metrics={"holdout": {"before": before, "after": after},
                 "base_metrics": dict(base.card.metrics)},
        notes=notes, created=time.strftime("%Y-%m-%d"))


def write_adapted(result: AdaptResult, out: Path) -> tuple[str, Path, Path]:
    """Write the adapted checkpoint, its ONNX export and a Markdown card beside it.

    Each file is written to a temporary name and renamed into place, the
    checkpoint last but one: a killed process leaves either no ``out`` or a
    whole one (its export is checked against its sha256 when loaded, so a
    stale ``.onnx`` is never used). Returns the checkpoint's sha256 and the
    two other paths.
    """
    from xreg.inference.export import export_onnx
    from xreg.inference.runtime import onnx_path
    from xreg.model.checkpoint import _write_atomic, save_checkpoint
    from xreg.train.adapt_card import card_markdown

    out = Path(out)
    onnx = onnx_path(out)
    onnx.unlink(missing_ok=True)  # an export of an earlier model must not outlive it
    sha = save_checkpoint(out, result.loaded.model, result.loaded.card)
    export_onnx(out, onnx)
    card_md = out.with_suffix(".md")
    _write_atomic(card_md, card_markdown(result, sha).encode())
    return sha, onnx, card_md
