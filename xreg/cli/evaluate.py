"""``xreg evaluate``: score a checkpoint on labelled radiographs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from xreg.cli._common import (
    EXIT_ATTENTION,
    EXIT_OK,
    Device,
    app,
    err,
    handle_errors,
    out,
    progress_reporter,
    require_train,
)

EVALUATE_HELP = """Score the checkpoint WEIGHTS on the labelled images in DATA.

For a two-view hip fracture checkpoint, DATA is a pairs CSV (study,
ap_path, lateral_path, fracture; `xreg synth --hip-pairs` writes
hip_pairs.csv) and the fracture metrics of thesis Table 5 are reported.

DATA is a CSV manifest (columns path, body_part [a label, or a set such as
hand|wrist], instrument [0/1/empty], optional fracture [0/1/empty],
patient_id, split and source [the site]; relative paths resolve against the CSV's
folder, as in `xreg synth`'s labels.csv; --split test scores only the test
rows, e.g. of the split.csv an `xreg train` run writes) or a folder in sort layout,
<body_part>/<instrument|no_instrument>/... (_review and _unreadable skipped).

Body part: log loss, MCC, Cohen's kappa, accuracy, per-class AUC and the
confusion matrix. Instrument, and fracture for a card with a fracture head,
at the card's thresholds: AUC, sensitivity, specificity, Youden's J, F1,
accuracy, PPV, NPV. Sort outcome at --min-confidence (default: the card's),
by the rule `xreg sort` applies: right folder, accuracy among sorted (also
counting any label of a body_part set as right), review rate, wrong folder (of
all films, the share sorted into a folder outside its label set), films of
none of the nine sorted into one of them, and a risk-coverage table over
thresholds. When films name their source, the same per site, with each site's
instrument and fracture AUC and confusion.
Every interval is a 95% bootstrap CI. --json prints: checkpoint {name, sha256,
note}, data, counts, body_part, instrument and fracture (null when not
evaluated), sorting, risk_coverage, sites ({site: {films, correct_folder,
wrong_folder, review_rate, outside_nine_into_nine, accuracy_among_sorted,
instrument_auc, fracture_auc, counts, confusion}}, empty without sources),
misclassified, skipped; metrics are
[value, low, high], null where undefined.

Exit codes: 0 done; 1 some labelled files could not be read (listed);
2 usage, data or weights error.
"""


@app.command("evaluate", help=EVALUATE_HELP)
def evaluate_cmd(
    weights: Annotated[Path, typer.Argument(help="Model checkpoint (.pt).")],
    data: Annotated[Path, typer.Argument(help="Manifest CSV or sort-layout folder.")],
    split: Annotated[str | None, typer.Option(
        help="Only the manifest rows of this split, e.g. test of a training "
             "run's split.csv.")] = None,
    report: Annotated[Path | None, typer.Option(
        help="Also write report.md with ROC curves, a confusion matrix and a "
             "risk-coverage plot here.")] = None,
    min_confidence: Annotated[float | None, typer.Option(
        help="Score the sort outcome at this body-part confidence instead of the card's.",
        min=0.0, max=1.0)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    batch_size: Annotated[int, typer.Option(help="Images per model batch.", min=1)] = 16,
    device: Annotated[Device, typer.Option(
        help="Where the model runs; auto picks CUDA when present.")] = Device.auto,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples per CI.", min=1)] = 5000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
) -> None:
    require_train("xreg evaluate")
    from xreg.evaluation.evaluate import evaluate
    from xreg.model.checkpoint import load_checkpoint

    with handle_errors():
        loaded = load_checkpoint(weights)  # once: both paths below take it as it is
        if loaded.card.views == 2:
            _evaluate_hip(loaded, data, split, report, as_json, batch_size, device.value,
                          resamples, seed)
            return
    with handle_errors(), progress_reporter(as_json or not err.is_terminal,
                                            "evaluating") as reporter:
        evaluation = evaluate(loaded, data, split=split, batch_size=batch_size,
                              device=device.value, n_resamples=resamples, seed=seed,
                              min_confidence=min_confidence, on_start=reporter.start,
                              on_decoded=lambda: reporter.advance(None))
        written = []
        if report is not None:
            from xreg.evaluation.report import write_report

            written = write_report(evaluation, report)
    if as_json:
        payload = evaluation.to_dict() | {"report": [str(p) for p in written]}
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
    else:
        _print_tables(evaluation)
        for path in written:
            out.print(f"wrote {path}", highlight=False)
    for s in evaluation.skipped:
        err.print(f"[yellow]{s.status}:[/] {s.path}: {s.reason}", highlight=False)
    raise typer.Exit(EXIT_ATTENTION if evaluation.skipped else EXIT_OK)


def _binary_table(title: str, metrics: Any) -> Table:
    from xreg.evaluation.report import BINARY_METRICS, format_estimate

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value (95% CI)", justify="right")
    for key, name in BINARY_METRICS:
        table.add_row(name, format_estimate(metrics[key]))
    return table


def _sorting_tables(ev: Any) -> list[Table]:
    from xreg.evaluation.report import SORTING_METRICS, format_estimate, format_number

    sr = ev.sorting
    tables = []
    if sr is not None:
        table = Table(title=f"Sort outcome (min_confidence {sr.min_confidence:g}, "
                            f"{sr.counts['review']} of {sr.counts['images']} to _review)")
        table.add_column("figure")
        table.add_column("value (95% CI)", justify="right")
        for key, name in SORTING_METRICS:
            if getattr(sr, key) is not None:
                table.add_row(name, format_estimate(getattr(sr, key)))
        for label, e in sr.correct_folder_per_class.items():
            table.add_row(f"right folder, {label} ({sr.counts['per_class'][label]})",
                          format_estimate(e))
        tables.append(table)
    if ev.risk_coverage:
        rc = Table(title="Risk-coverage (* operating point)")
        for col in ("min_confidence", "coverage", "accuracy among sorted", "(in set)",
                    "not of the nine, into the nine", "(in set)"):
            rc.add_column(col, justify="right")
        for r in ev.risk_coverage:
            rc.add_row(f"{r.threshold:g}{' *' if r.operating else ''}",
                       *(format_number(v) for v in (r.coverage, r.accuracy_among_sorted,
                                           r.accuracy_among_sorted_in_set,
                                           r.outside_nine_into_nine,
                                           r.outside_nine_into_nine_in_set)))
        tables.append(rc)
    if ev.sites:
        tables.append(_sites_table(ev.sites))
    return tables


def _sites_table(sites: Any) -> Table:
    from xreg.evaluation.report import format_estimate
    from xreg.evaluation.sites import SITE_METRICS

    table = Table(title=f"Per site ({len(sites)})")
    table.add_column("site", overflow="fold")
    table.add_column("films", justify="right")
    for _, name in SITE_METRICS:
        table.add_column(name.lower(), justify="right")
    for site, f in sites.items():
        table.add_row(site, str(f.films),
                      *(format_estimate(getattr(f, key)) for key, _ in SITE_METRICS))
    return table


def _print_tables(ev: Any) -> None:
    from xreg.evaluation.report import MULTICLASS_METRICS, format_estimate

    out.print(f"{ev.checkpoint}  sha256 {ev.sha256[:12]}  {ev.note}", highlight=False)
    body = Table(title=f"Body part ({len(ev.paths)} images)")
    body.add_column("metric")
    body.add_column("value (95% CI)", justify="right")
    for key, name in MULTICLASS_METRICS:
        body.add_row(name, format_estimate(getattr(ev.body_part, key)))
    for label, auc in ev.body_part.auc_per_class.items():
        body.add_row(f"AUC {label}", "n/a" if auc != auc else f"{auc:.3f}")
    out.print(body)
    if ev.instrument is not None:
        out.print(_binary_table(f"Instrument ({ev.instrument_true.size} images, "
                                f"threshold {ev.instrument_threshold:g})", ev.instrument))
    if ev.fracture is not None:
        out.print(_binary_table(f"Fracture ({ev.fracture_true.size} images, "
                                f"threshold {ev.fracture_threshold:g})", ev.fracture))
    for table in _sorting_tables(ev):
        out.print(table)
    if ev.misclassified:
        wrong = Table(title=f"Misclassified ({len(ev.misclassified)})")
        wrong.add_column("file", overflow="fold")
        for col in ("head", "true", "predicted", "probability"):
            wrong.add_column(col)
        for m in ev.misclassified:
            wrong.add_row(m.path, m.head, m.true, m.predicted, f"{m.probability:.3f}")
        out.print(wrong)


def _evaluate_hip(weights: Any, data: Path, split: str | None, report: Path | None,
                  as_json: bool, batch_size: int, device: str, resamples: int,
                  seed: int) -> None:
    from xreg.evaluation.pairs import evaluate_pairs, write_pair_report
    from xreg.evaluation.report import BINARY_METRICS, format_estimate

    with handle_errors():
        ev = evaluate_pairs(weights, data, split=split, batch_size=batch_size, device=device,
                            n_resamples=resamples, seed=seed)
        written = write_pair_report(ev, report) if report is not None else []
    if as_json:
        payload = ev.to_dict() | {"report": [str(p) for p in written]}
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
    else:
        out.print(f"{ev.checkpoint}  sha256 {ev.sha256[:12]}  {ev.note}", highlight=False)
        table = Table(title=f"Hip fracture ({len(ev.studies)} studies, threshold "
                            f"{ev.threshold:.3f})")
        table.add_column("metric")
        table.add_column("value (95% CI)", justify="right")
        for key, name in BINARY_METRICS:
            table.add_row(name, format_estimate(ev.metrics[key]))
        out.print(table)
        for m in ev.misclassified:
            out.print(f"misclassified: {m.path}: true {m.true}, predicted {m.predicted} "
                      f"({m.probability:.3f})", highlight=False)
        for path in written:
            out.print(f"wrote {path}", highlight=False)
    for s in ev.skipped:
        err.print(f"[yellow]{s.status}:[/] {s.path}: {s.reason}", highlight=False)
    raise typer.Exit(EXIT_ATTENTION if ev.skipped else EXIT_OK)
