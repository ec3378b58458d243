"""Write an evaluation as a Markdown report with ROC curves, a confusion matrix,
the sort outcome (folders, review, risk-coverage) and per-site figures.

matplotlib is imported lazily (Agg backend, no display needed) so that the
rest of xreg works without it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from xreg.errors import ConfigError
from xreg.evaluation.evaluate import Evaluation
from xreg.evaluation.metrics import Estimate
from xreg.evaluation.sites import SITE_METRICS, SiteFigures
from xreg.evaluation.sorting import CoverageRow, SortingReport

__all__ = ["BINARY_METRICS", "MULTICLASS_METRICS", "SORTING_METRICS", "format_estimate",
           "format_number", "make_report_dir", "plot_risk_coverage", "plot_roc", "write_report"]

REPORT_NAME = "report.md"
ROC_NAME = "roc_instrument.png"
FRACTURE_ROC_NAME = "roc_fracture.png"
RISK_COVERAGE_NAME = "risk_coverage.png"
CONFUSION_NAME = "confusion_body_part.png"
MULTICLASS_METRICS = (("log_loss", "Log loss"), ("mcc", "MCC"),
                      ("cohen_kappa", "Cohen's kappa"), ("accuracy", "Accuracy"))
BINARY_METRICS = (("auc", "AUC"), ("sensitivity", "Sensitivity"),
                  ("specificity", "Specificity"), ("youden", "Youden's J"), ("f1", "F1"),
                  ("accuracy", "Accuracy"), ("ppv", "PPV"), ("npv", "NPV"))
#: SortingReport attributes and how tables name them.
SORTING_METRICS = (
    ("correct_folder", "Right folder (nine-class films)"),
    ("accuracy_among_sorted", "Accuracy among sorted (nine-class films)"),
    ("correct_folder_in_set", "Right folder, any label of the set"),
    ("accuracy_among_sorted_in_set", "Accuracy among sorted, any label of the set"),
    ("review_rate", "Sent to _review (all films)"),
    ("wrong_folder", "Sorted into a wrong folder (all films)"),
    ("outside_nine_into_nine", "Not of the nine, sorted into one of the nine"),
    ("long_bone_correct_folder", "Right folder (long-bone films)"),
)


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("the report needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def format_number(value: float) -> str:
    """``0.912``, or ``n/a`` where the figure is undefined (nan)."""
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def format_estimate(e: Estimate | None) -> str:
    """``0.912 (0.870-0.950)``; ``n/a`` parts where undefined (all of it for None)."""
    if e is None:
        return "n/a"
    if math.isnan(e.low) or math.isnan(e.high):
        return format_number(e.value)
    return f"{format_number(e.value)} ({format_number(e.low)}-{format_number(e.high)})"


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
        auc = format_number(ev.body_part.auc_per_class[label])
        lines.append(f"| {label} | {auc} | {support[i]} |")
    if CONFUSION_NAME in figures:
        lines += ["", f"![Body part confusion matrix]({CONFUSION_NAME})"]
    lines += _binary_markdown(
        "Instrument", ev.instrument, ev.instrument_true, ev.instrument_threshold,
        ROC_NAME in figures, ROC_NAME, "Not evaluated: no image has an instrument label.")
    lines += _binary_markdown(
        "Fracture", ev.fracture, ev.fracture_true, ev.fracture_threshold,
        FRACTURE_ROC_NAME in figures, FRACTURE_ROC_NAME,
        "Not evaluated: the model has no fracture head or no image has a fracture label.")
    if ev.sorting is not None:
        lines += _sorting_markdown(ev.sorting)
    if ev.risk_coverage:
        lines += _risk_coverage_markdown(ev.risk_coverage, figures)
    if ev.sites:
        lines += _sites_markdown(ev.sites)
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


def _sorting_markdown(sr: SortingReport) -> list[str]:
    c = sr.counts
    lines = ["", "## Sort outcome", "",
             f"What `xreg sort` would do at min_confidence {sr.min_confidence:g}: "
             f"{c['nine']} films of the nine classes ({c['sorted_nine']} sorted), "
             f"{c['outside_nine']} of none of them, {c['review']} of {c['images']} "
             "sent to _review.", "", "| Figure | Value (95% CI) |", "|---|---|"]
    for key, name in SORTING_METRICS:
        value = getattr(sr, key)
        if value is not None:
            lines.append(f"| {name} | {format_estimate(value)} |")
    lines += ["", "| Class | Films | Right folder (95% CI) |", "|---|---|---|"]
    lines += [f"| {label} | {c['per_class'][label]} | {format_estimate(e)} |"
              for label, e in sr.correct_folder_per_class.items()]
    lines += ["", "Truth (rows) against the folder each film would land in (columns):", "",
              "| Truth | " + " | ".join(sr.destinations) + " |",
              "|---|" + "---|" * len(sr.destinations)]
    for label, row in zip(sr.truth_labels, sr.confusion):
        if row.sum():
            lines.append(f"| {label} | " + " | ".join(str(v) for v in row) + " |")
    return lines


def _sites_markdown(sites: dict[str, SiteFigures]) -> list[str]:
    lines = ["", "## Per site", "",
             "Each site's films scored on their own, by the same rule as the sort "
             "outcome. Right folder and accuracy among sorted: of its nine-class films; "
             "wrong folder and _review: of all its films; AUCs only where both classes "
             "are labelled.", "",
             "| Site | Films | " + " | ".join(name for _, name in SITE_METRICS) + " |",
             "|---|---|" + "---|" * len(SITE_METRICS)]
    for site, f in sites.items():
        lines.append(f"| {_md_cell(site)} | {f.films} | "
                     + " | ".join(format_estimate(getattr(f, key)) for key, _ in SITE_METRICS)
                     + " |")
    for site, f in sites.items():
        lines += ["", f"### {_md_cell(site)}: truth (rows) against folder (columns)", "",
                  "| Truth | " + " | ".join(f.destinations) + " |",
                  "|---|" + "---|" * len(f.destinations)]
        lines += [f"| {label} | " + " | ".join(str(v) for v in row) + " |"
                  for label, row in zip(f.truth_labels, f.confusion) if row.sum()]
    return lines


def _risk_coverage_markdown(rows: list[CoverageRow], figures: dict[str, str]) -> list[str]:
    lines = ["", "## Risk-coverage", "",
             "Coverage: share of nine-class films sorted (not sent to _review). "
             "The operating point is marked *. (in set): a folder within the film's "
             "label set counts as right.", "",
             "| min_confidence | Coverage | Accuracy among sorted | (in set) | "
             "Not of the nine, into the nine | (in set) |", "|---|---|---|---|---|---|"]
    for r in rows:
        figures_of_row = (r.coverage, r.accuracy_among_sorted, r.accuracy_among_sorted_in_set,
                          r.outside_nine_into_nine, r.outside_nine_into_nine_in_set)
        lines.append(f"| {r.threshold:g}{' *' if r.operating else ''} | "
                     + " | ".join(format_number(v) for v in figures_of_row) + " |")
    if RISK_COVERAGE_NAME in figures:
        lines += ["", f"![Risk-coverage]({RISK_COVERAGE_NAME})"]
    return lines


def plot_risk_coverage(rows: list[CoverageRow], path: Path) -> None:
    """Accuracy among sorted films against coverage, one labelled point per threshold."""
    plt = _pyplot()
    shown = [r for r in rows if not (math.isnan(r.coverage) or
                                     math.isnan(r.accuracy_among_sorted))]
    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=100)
    try:
        ax.plot([r.coverage for r in shown], [r.accuracy_among_sorted for r in shown],
                marker="o", lw=1.5)
        # Thresholds that sort alike share a point; one label names them all.
        points: dict[tuple[float, float], list[str]] = {}
        for r in shown:
            points.setdefault((r.coverage, r.accuracy_among_sorted), []).append(
                f"{r.threshold:g}")
        for xy, names in points.items():
            ax.annotate(", ".join(names), xy, textcoords="offset points", xytext=(4, 4),
                        fontsize=7)
        operating = [r for r in shown if r.operating]
        if operating:
            r = operating[0]
            ax.plot([r.coverage], [r.accuracy_among_sorted], marker="*", ms=16,
                    color="tab:red", ls="none", label=f"operating point ({r.threshold:g})")
            ax.legend(loc="lower left")
        ax.set(xlim=(0, 1.02), ylim=(0, 1.02), xlabel="Coverage (nine-class films sorted)",
               ylabel="Accuracy among sorted", title="Risk-coverage (labels: min_confidence)")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def plot_roc(y: np.ndarray, prob: np.ndarray, auc: float, title: str, path: Path) -> None:
    """A ROC curve PNG with its AUC in the legend."""
    from sklearn.metrics import roc_curve

    plt = _pyplot()
    fpr, tpr, _ = roc_curve(y, prob)
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    try:
        ax.plot(fpr, tpr, lw=2, label=f"AUC {format_number(auc)}")
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


def _binary_markdown(name: str, metrics: Any, truth: Any, threshold: float, has_roc: bool,
                     roc_file: str, missing: str) -> list[str]:
    """The report section of one binary head: counts, metrics with CIs, its ROC."""
    lines = ["", f"## {name}", ""]
    if metrics is None:
        return [*lines, missing]
    lines += [f"{truth.size} labelled images ({int(truth.sum())} with {name.lower()}); "
              f"threshold {threshold:g}.", "", "| Metric | Value (95% CI) |", "|---|---|"]
    lines += [f"| {label} | {format_estimate(metrics[key])} |" for key, label in BINARY_METRICS]
    lines += ["", f"![{name} ROC curve]({roc_file})" if has_roc
              else "No ROC curve: the labels hold only one class."]
    return lines


def write_report(evaluation: Evaluation, out_dir: Path) -> list[Path]:
    """Write ``report.md`` and its figures into ``out_dir``; return the written paths.

    A ROC curve is drawn only when the head's labels hold both classes.
    """
    out_dir = make_report_dir(out_dir)
    written: list[Path] = []
    figures: dict[str, str] = {}
    confusion = out_dir / CONFUSION_NAME
    _plot_confusion(evaluation, confusion)
    written.append(confusion)
    figures[CONFUSION_NAME] = str(confusion)
    for name, title, metrics, y, prob in (
            (ROC_NAME, "Instrument ROC", evaluation.instrument, evaluation.instrument_true,
             evaluation.instrument_prob),
            (FRACTURE_ROC_NAME, "Fracture ROC", evaluation.fracture,
             evaluation.fracture_true, evaluation.fracture_prob)):
        if metrics is not None and 0 < int(y.sum()) < y.size:
            roc = out_dir / name
            plot_roc(y, prob, metrics["auc"].value, title, roc)
            written.append(roc)
            figures[name] = str(roc)
    if evaluation.risk_coverage:
        curve = out_dir / RISK_COVERAGE_NAME
        plot_risk_coverage(evaluation.risk_coverage, curve)
        written.append(curve)
        figures[RISK_COVERAGE_NAME] = str(curve)
    report = out_dir / REPORT_NAME
    report.write_text(_markdown(evaluation, figures), encoding="utf-8")
    written.append(report)
    return written
