"""Evaluate a two-view hip fracture checkpoint on labelled pairs (thesis Table 5).

The same binary metrics as the instrument head (AUC, sensitivity,
specificity, Youden's J, F1, accuracy, PPV, NPV, each with a seeded 95%
bootstrap CI) at the card's fracture threshold, per study.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from xreg.datasets import HipPair, load_pairs
from xreg.errors import ConfigError
from xreg.evaluation.evaluate import Misclassified, Skipped, select_split
from xreg.evaluation.metrics import Estimate, binary_metrics
from xreg.inference.pairs import predict_pairs
from xreg.inference.predict import resolve_device
from xreg.model.checkpoint import LoadedModel, ModelCard, load_checkpoint

__all__ = ["PairEvaluation", "evaluate_pair_list", "evaluate_pairs", "write_pair_report"]

FRACTURE = "fracture"


@dataclass(eq=False)
class PairEvaluation:
    """The result of :func:`evaluate_pairs`; arrays in the order of ``studies``."""

    checkpoint: str
    sha256: str
    card: ModelCard
    data: str
    studies: list[str]
    threshold: float
    y_true: NDArray[np.int64]
    prob: NDArray[np.float64]
    metrics: dict[str, Estimate]
    misclassified: list[Misclassified]
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def note(self) -> str:
        notes = self.card.notes.strip()
        return notes.splitlines()[0] if notes else ""

    def to_dict(self) -> dict[str, Any]:
        """Stable JSON-able summary; undefined metrics (nan) become null."""
        return {
            "checkpoint": {"name": self.checkpoint, "sha256": self.sha256, "note": self.note},
            "data": self.data,
            "counts": {"labelled": len(self.studies) + len(self.skipped),
                       "evaluated": len(self.studies), "skipped": len(self.skipped),
                       "fracture": int(self.y_true.sum())},
            "fracture": {"threshold": self.threshold,
                         **{k: v.to_json() for k, v in self.metrics.items()}},
            "misclassified": [vars(m) for m in self.misclassified],
            "skipped": [vars(s) for s in self.skipped],
        }


def evaluate_pair_list(
    loaded: LoadedModel,
    pairs: Sequence[HipPair],
    *,
    data: str,
    batch_size: int = 16,
    device: torch.device | None = None,
    workers: int = 2,
    n_resamples: int = 5000,
    seed: int = 0,
    on_decoded: Callable[[], None] | None = None,
) -> PairEvaluation:
    """Score ``loaded`` on labelled ``pairs`` through the inference path."""
    labelled = [p for p in pairs if p.fracture is not None]
    if not labelled:
        raise ConfigError(f"{data}: no pair has a fracture label")
    predictions = predict_pairs([(p.ap, p.lateral) for p in labelled], loaded,
                                batch_size=batch_size, workers=workers, device=device,
                                on_decoded=on_decoded)
    card = loaded.card
    threshold = card.thresholds.get(FRACTURE, 0.5)
    labels = card.head(FRACTURE).labels
    studies, y, prob, skipped, wrong = [], [], [], [], []
    for pair, pred in zip(labelled, predictions):
        if pred.status != "ok":
            skipped.append(Skipped(pair.study, pred.status, pred.error or pred.status))
            continue
        p = pred.probabilities[FRACTURE][labels[1]]
        truth = int(pair.fracture or 0)
        studies.append(pair.study)
        y.append(truth)
        prob.append(p)
        decided = int(p >= threshold)
        if decided != truth:
            wrong.append(Misclassified(f"{pair.study}: {pair.ap.name} + {pair.lateral.name}",
                                       FRACTURE, labels[truth], labels[decided],
                                       p if decided else 1 - p))
    if not studies:
        raise ConfigError(f"none of the {len(labelled)} labelled pairs in {data} could be read")
    yt, pp = np.asarray(y, dtype=np.int64), np.asarray(prob, dtype=np.float64)
    metrics = binary_metrics(yt, pp, threshold, n_resamples=n_resamples, seed=seed)
    return PairEvaluation(card.name, loaded.sha256, card, data, studies, threshold, yt, pp,
                          metrics, wrong, skipped)


def evaluate_pairs(
    weights: Path | LoadedModel,
    data: Path,
    *,
    split: str | None = None,
    batch_size: int = 16,
    device: str = "auto",
    workers: int = 2,
    n_resamples: int = 5000,
    seed: int = 0,
    on_decoded: Callable[[], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> PairEvaluation:
    """Run the hip checkpoint ``weights`` (a path, or loaded) over the pairs CSV ``data``."""
    torch_device = resolve_device(device)
    loaded = weights if isinstance(weights, LoadedModel) else load_checkpoint(weights)
    pairs = select_split(load_pairs(data, need_fracture=True), split, data)
    if on_start is not None:
        on_start(len(pairs))
    return evaluate_pair_list(loaded, pairs, data=os.fspath(data), batch_size=batch_size,
                              device=torch_device, workers=workers, n_resamples=n_resamples,
                              seed=seed, on_decoded=on_decoded)


def write_pair_report(ev: PairEvaluation, out_dir: Path) -> list[Path]:
    """``report.md`` plus ``roc_fracture.png`` (when both classes occur) in ``out_dir``."""
    from xreg.evaluation.report import BINARY_METRICS, format_estimate, make_report_dir, plot_roc

    out_dir = make_report_dir(out_dir)
    written: list[Path] = []
    lines = [f"# Hip fracture evaluation of {ev.checkpoint}", "",
             f"- sha256: `{ev.sha256}`"]
    if ev.note:
        lines.append(f"- Model card note: {ev.note}")
    lines += [f"- Data: `{ev.data}`",
              f"- Studies: {len(ev.studies)} evaluated ({int(ev.y_true.sum())} with fracture), "
              f"{len(ev.skipped)} could not be read; threshold {ev.threshold:g}", "",
              "Intervals are 95% bootstrap confidence intervals.", "",
              "| Metric | Value (95% CI) |", "|---|---|"]
    lines += [f"| {name} | {format_estimate(ev.metrics[key])} |" for key, name in BINARY_METRICS]
    if 0 < int(ev.y_true.sum()) < ev.y_true.size:
        roc = out_dir / "roc_fracture.png"
        plot_roc(ev.y_true, ev.prob, ev.metrics["auc"].value, "Hip fracture ROC", roc)
        written.append(roc)
        lines += ["", "![Hip fracture ROC curve](roc_fracture.png)"]
    lines += ["", "## Misclassified studies", ""]
    if ev.misclassified:
        lines += ["| Study | True | Predicted | Probability |", "|---|---|---|---|"]
        lines += [f"| {m.path} | {m.true} | {m.predicted} | {m.probability:.3f} |"
                  for m in ev.misclassified]
    else:
        lines.append("None.")
    for s in ev.skipped:
        lines.append(f"- could not read {s.path}: {s.reason}")
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    written.append(report)
    return written
