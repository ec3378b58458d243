"""Write an evaluation as a Markdown report with a ROC curve and a confusion matrix.

matplotlib is imported lazily (Agg backend, no display needed) so that the
rest of xreg works without it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from xreg.errors import ConfigError
from xreg.evaluate import Evaluation
from xreg.metrics import Estimate

__all__ = ["BINARY_METRICS", "MULTICLASS_METRICS", "format_estimate", "make_report_dir",
           "plot_roc",
           "write_report"]

REPORT_NAME = "report.md"
ROC_NAME = "roc_instrument.png"
CONFUSION_NAME = "confusion_body_part.png"
MULTICLASS_METRICS = (("log_loss", "Log loss"), ("mcc", "MCC"),
                      ("cohen_kappa", "Cohen's kappa"), ("accuracy", "Accuracy"))
BINARY_METRICS = (("auc", "AUC"), ("sensitivity", "Sensitivity"),
                  ("specificity", "Specificity"), ("youden", "Youden's J"), ("f1", "F1"),
                  ("accuracy", "Accuracy"), ("ppv", "PPV"), ("npv", "NPV"))


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("the report needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def format_estimate(e: Estimate) -> str:
    """``0.912 (0.870-0.950)``; ``n/a`` parts where undefined."""
    if math.isnan(e.low) or math.isnan(e.high):
        return _fmt(e.value)
    return f"{_fmt(e.value)} ({_fmt(e.low)}-{_fmt(e.high)})"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown(ev: Evaluation, figures: dict[str, str]) -> str:
    lines = [f"# Evaluation of {ev.checkpoint}", "",
             f"- Checkpoint: `{ev.checkpoint}`", f"- sha256: `{ev.sha256}`"]
    if ev.note:
        lines.append(f"- Model card note: {ev.note}")
    lines += [f"- Data: `{ev.data}`",
              f"- Images: {len(ev.paths)} evaluated, {len(ev.skipped)} could not be read", "",
              "Intervals are 95% bootstrap confidence intervals.", "",
              "## Body part", "", "| Metric | Value (95% CI) |", "|---|---|"]
    for key, name in MULTICLASS_METRICS:
        lines.append(f"| {name} | {format_estimate(getattr(ev.body_part, key))} |")
    lines += ["", "| Class | AUC (one vs rest) | Images |", "|---|---|---|"]
    support = ev.body_part.confusion.sum(axis=1)
    for i, label in enumerate(ev.body_part.labels):
        lines.append(f"| {label} | {_fmt(ev.body_part.auc_per_class[label])} | {support[i]} |")
    if CONFUSION_NAME in figures:
        lines += ["", f"![Body part confusion matrix]({CONFUSION_NAME})"]
    lines += ["", "## Instrument", ""]
    if ev.instrument is None:
        lines.append("Not evaluated: no image has an instrument label.")
    else:
        lines += [f"{ev.instrument_true.size} labelled images "
                  f"({int(ev.instrument_true.sum())} with instrument); "
                  f"threshold {ev.instrument_threshold:g}.", "",
                  "| Metric | Value (95% CI) |", "|---|---|"]
        for key, name in BINARY_METRICS:
            lines.append(f"| {name} | {format_estimate(ev.instrument[key])} |")
        if ROC_NAME in figures:
            lines += ["", f"![Instrument ROC curve]({ROC_NAME})"]
        else:
            lines += ["", "No ROC curve: the labels hold only one class."]
    lines += ["", "## Misclassified files", ""]
    if ev.misclassified:
        lines += ["| File | Head | True | Predicted | Probability |", "|---|---|---|---|---|"]
        lines += [f"| {_md_cell(m.path)} | {m.head} | {m.true} | {m.predicted} | "
                  f"{m.probability:.3f} |" for m in ev.misclassified]
    else:
        lines.append("None.")
    if ev.skipped:
        lines += ["", "## Files that could not be read", "", "| File | Status | Reason |",
                  "|---|---|---|"]
        lines += [f"| {_md_cell(s.path)} | {s.status} | {_md_cell(s.reason)} |"
                  for s in ev.skipped]
    return "\n".join(lines) + "\n"


def plot_roc(y: np.ndarray, prob: np.ndarray, auc: float, title: str, path: Path) -> None:
    """A ROC curve PNG with its AUC in the legend."""
    from sklearn.metrics import roc_curve

    plt = _pyplot()
    fpr, tpr, _ = roc_curve(y, prob)
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    try:
        ax.plot(fpr, tpr, lw=2, label=f"AUC {_fmt(auc)}")
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity",
               ylabel="Sensitivity", title=title)
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def _plot_confusion(ev: Evaluation, path: Path) -> None:
    plt = _pyplot()
    c = ev.body_part.confusion
    labels = ev.body_part.labels
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(labels), 0.8 + 0.6 * len(labels)), dpi=100)
    try:
        ax.imshow(c, cmap="Blues")
        ticks = np.arange(len(labels))
        ax.set_xticks(ticks, labels, rotation=45, ha="right")
        ax.set_yticks(ticks, labels)
        ax.set(xlabel="Predicted", ylabel="True", title="Body part")
        top = c.max() if c.size else 0
        for i in range(c.shape[0]):
            for j in range(c.shape[1]):
                ax.text(j, i, str(c[i, j]), ha="center", va="center",
                        color="white" if top and c[i, j] > top / 2 else "black")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def make_report_dir(out_dir: Path) -> Path:
    """Create the report folder, or say why it cannot be."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create report folder {out_dir}: {exc.strerror}") from None
    return out_dir


def write_report(evaluation: Evaluation, out_dir: Path) -> list[Path]:
    """Write ``report.md`` and its figures into ``out_dir``; return the written paths.

    The ROC curve is drawn only when the instrument labels hold both classes.
    """
    out_dir = make_report_dir(out_dir)
    written: list[Path] = []
    figures: dict[str, str] = {}
    confusion = out_dir / CONFUSION_NAME
    _plot_confusion(evaluation, confusion)
    written.append(confusion)
    figures[CONFUSION_NAME] = str(confusion)
    y = evaluation.instrument_true
    if evaluation.instrument is not None and 0 < int(y.sum()) < y.size:
        roc = out_dir / ROC_NAME
        auc = evaluation.instrument["auc"].value
        plot_roc(y, evaluation.instrument_prob, auc, "Instrument ROC", roc)
        written.append(roc)
        figures[ROC_NAME] = str(roc)
    report = out_dir / REPORT_NAME
    report.write_text(_markdown(evaluation, figures), encoding="utf-8")
    written.append(report)
    return written
