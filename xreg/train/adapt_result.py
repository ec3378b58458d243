"""What an adapt run judged: figures, the verdict, and the adapted model's card."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from xreg.evaluation.sorting import place
from xreg.model.card import ModelCard
from xreg.model.checkpoint import LoadedModel
from xreg.model.labels import BODY_PARTS
from xreg.train.finetune import BODY_PART, AdaptOptions, held_back

__all__ = ["FORGET_CORRECT", "FORGET_WRONG", "UNLIKE_MAX", "WRONG_COST", "AdaptResult",
           "adapted_card", "forgetting", "holdout_figures", "judge", "sort_figures"]

#: A film sorted into a wrong folder costs this many films sorted right (the verdict).
WRONG_COST = 2.0
#: Most the adapted model may lose in correct folder on the replay hold-out, and add in
#: wrong folder there, before it is refused (shares, so 0.02 is two points).
FORGET_CORRECT = 0.02
FORGET_WRONG = 0.01
#: Most of a site's unreviewed films that may be unlike every reviewed film
#: (:func:`xreg.train.adapt_split.unlike_reviewed`). At the pseudo-hospital of
#: benchmarks/adapt_new_site.py, uniform samples of 50 or 100 reviews left 2-10% unlike;
#: 100 reviews in the old `spread` order (no knee among them) left 60%, and the model
#: adapted on them filed 56% of the rest wrongly.
UNLIKE_MAX = 0.30


@dataclass
class AdaptResult:
    """The adapted model (its card filled in), the figures and the verdict."""

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
    #: base and adapted on the replay hold-out (films the base knew); None: not measured
    forgetting: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "verdict": self.verdict,
                "base": {"name": self.base.card.name, "sha256": self.base.sha256},
                "holdout": {"before": self.before, "after": self.after},
                "forgetting": self.forgetting, "notes": list(self.notes),
                "counts": self.counts, "seconds": round(self.seconds, 1),
                "steps": self.steps,
                "thresholds": dict(self.loaded.card.thresholds),
                "guard": {k: v for k, v in self.loaded.card.guard.items()}}


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


def holdout_figures(card: ModelCard, outputs: Mapping[str, torch.Tensor],
                    truth: Sequence[tuple[str, ...]]) -> dict[str, Any]:
    """:func:`sort_figures` for a network's outputs, with the card's thresholds and guard."""
    labels = card.head(BODY_PART).labels
    probs = torch.softmax(outputs[BODY_PART], dim=1).numpy()
    return sort_figures(labels, probs, truth, float(card.thresholds.get("min_confidence", 0.5)),
                        held_back(outputs, card))


def forgetting(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Base and adapted on the replay hold-out, the changes, and whether they pass."""
    lost = (before["correct_folder"] or 0.0) - (after["correct_folder"] or 0.0)
    added = (after["wrong_folder"] or 0.0) - (before["wrong_folder"] or 0.0)
    return {"before": before, "after": after, "correct_drop": round(lost, 4),
            "wrong_rise": round(added, 4),
            "ok": lost <= FORGET_CORRECT + 1e-9 and added <= FORGET_WRONG + 1e-9}


def judge(before: dict[str, Any], after: dict[str, Any], forgot: dict[str, Any] | None,
          unlike: float | None = None) -> tuple[bool, str]:
    """Kept only if the site's hold-out is sorted no worse, nothing known is forgotten
    and the reviews represent the site (``unlike``: the share of its other films unlike
    every reviewed one, at most :data:`UNLIKE_MAX`)."""
    site_ok = after["utility"] >= before["utility"]
    site = (f"on the hold-out it sorts {after['correct']} right and {after['wrong']} wrong, "
            f"against the base's {before['correct']} and {before['wrong']}")
    known = "; forgetting not measured: nothing was replayed"
    if forgot is not None:
        b, a = forgot["before"], forgot["after"]
        known = (f"; on {a['films']} films the base knew, correct folder "
                 f"{b['correct_folder'] or 0:.3f} -> {a['correct_folder'] or 0:.3f}, wrong "
                 f"{b['wrong_folder'] or 0:.3f} -> {a['wrong_folder'] or 0:.3f}")
    if unlike is not None and unlike > UNLIKE_MAX:
        return False, (f"refused: the reviews do not represent the site: {unlike:.0%} of its "
                       f"other films are unlike every reviewed film (allowed: "
                       f"{UNLIKE_MAX:.0%}), and the model would file them by what it learned "
                       "from the others; review a uniform sample (the review page's default "
                       f"order) and adapt again; {site}{known}")
    if site_ok and (forgot is None or forgot["ok"]):
        return True, "kept: " + site + known
    if not site_ok:
        return False, (f"refused: worse than the base on the hold-out ({site}; a wrong "
                       f"folder costs {WRONG_COST:g} right ones)" + known)
    assert forgot is not None
    return False, (f"refused: it forgets what the base knew (allowed: {FORGET_CORRECT:.0%} "
                   f"less correct, {FORGET_WRONG:.0%} more wrong){known}; {site}")


def adapted_card(card: ModelCard, base: LoadedModel, options: AdaptOptions,
                 counts: dict[str, Any], before: dict[str, Any], after: dict[str, Any],
                 seconds: float, method: str, forgot: dict[str, Any] | None,
                 replay: Mapping[str, Any] | None = None) -> ModelCard:
    """The card of the adapted model: where it came from, on what, and how it did.

    ``replay``: the base's replay entry when the features did not change (heads
    only), so the adapted model can be adapted again with the same file."""
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
                 "forgetting": forgot, "base_metrics": dict(base.card.metrics)},
        notes=notes, created=time.strftime("%Y-%m-%d"), replay=dict(replay or {}))
