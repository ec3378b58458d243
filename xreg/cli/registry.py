"""``xreg registry`` and ``xreg weights``: query a registry, inspect checkpoints."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer
from rich.table import Table

from xreg.cli._common import (
    EXIT_ATTENTION,
    EXIT_USAGE,
    err,
    handle_errors,
    out,
    registry_app,
    require_train,
    weights_app,
)

if TYPE_CHECKING:
    from xreg.registry.imports import ImportReport


class ExportFormat(str, Enum):
    csv = "csv"
    json = "json"
    manifest = "manifest"


@registry_app.command("stats")
def registry_stats(
    out_dir: Annotated[Path, typer.Argument(metavar="OUT", help="A sorted folder.")],
    registry: Annotated[Path | None, typer.Option(help="Registry file if not in OUT.")] = None,
) -> None:
    """Counts of images per status, scope (nine, long_bone, other), body part,
    instrument and fracture."""
    from xreg.registry import Registry

    with handle_errors(), Registry(registry or out_dir / "registry.sqlite", readonly=True) as reg:
        rows = reg.stats()
        audits = reg.header_audit_counts()
    table = Table(title="registry")
    for col in ("status", "scope", "body part", "instrument", "fracture", "images",
                "source paths"):
        table.add_column(col, justify="right" if col in ("images", "source paths") else "left")
    for r in rows:
        instrument = {1: "instrument", 0: "no_instrument"}.get(r["instrument"], "")
        fracture = {1: "fracture", 0: "no_fracture"}.get(r["fracture"], "")
        table.add_row(r["status"], r["scope"] or "", r["body_part"] or "", instrument,
                      fracture, str(r["images"]), str(r["sources"]))
    table.add_row("total", "", "", "", "", str(sum(r["images"] for r in rows)),
                  str(sum(r["sources"] for r in rows)), style="bold")
    out.print(table)
    if audits:
        _print_audit_counts(audits)


class AuditFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


AUDIT_COLUMNS = ("dest_path", "header_tag", "header_term", "header_class", "body_part",
                 "body_part_prob", "header_audit", "view_position", "view", "header_view_audit")


@registry_app.command("audit")
def registry_audit(
    out_dir: Annotated[Path, typer.Argument(metavar="OUT", help="A sorted folder.")],
    fmt: Annotated[AuditFormat, typer.Option("--format", help="table: the summary and the "
                                             "films that disagree; csv or json: every DICOM "
                                             "film.")] = AuditFormat.table,
    registry: Annotated[Path | None, typer.Option(help="Registry file if not in OUT.")] = None,
) -> None:
    """Do the DICOM headers agree with the films? For every DICOM film: BodyPartExamined
    (or a body part named in StudyDescription/SeriesDescription) against the model's
    body part, and ViewPosition against its view: agrees, disagrees, coarse (the header
    names only a region, e.g. EXTREMITY), empty or unmapped (a term the vocabulary,
    xreg/configs/header_vocabulary.yaml, does not know). Recorded by `xreg sort`."""
    from xreg.registry import Registry

    with handle_errors(), Registry(registry or out_dir / "registry.sqlite", readonly=True) as reg:
        rows = [_audit_row(r) for r in reg.iter_images() if r.get("header_audit")]
        counts = reg.header_audit_counts()
    if fmt is AuditFormat.json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    if fmt is AuditFormat.csv:
        import csv

        writer = csv.DictWriter(sys.stdout, fieldnames=AUDIT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        return
    _print_audit_counts(counts)
    wrong = [r for r in rows if r["header_audit"] == "disagrees"
             or r["header_view_audit"] == "disagrees"]
    if wrong:
        table = Table(title=f"{len(wrong)} film(s) whose header disagrees with the model")
        for col in ("film", "tag", "header", "means", "model", "confidence", "body part",
                    "view: header / model"):
            table.add_column(col)
        for r in wrong:
            table.add_row(*(str(r[k]) for k in ("dest_path", "header_tag", "header_term",
                                                  "header_class", "body_part")),
                          f"{r['body_part_prob']:.2f}", str(r["header_audit"]),
                          f"{r['view_position'] or '-'} / {r['view'] or '-'}: "
                          f"{r['header_view_audit'] or '-'}")
        out.print(table)


def _audit_row(r: dict[str, Any]) -> dict[str, Any]:
    probs = json.loads(str(r.get("probabilities") or "{}")).get("view", {})
    view = max(probs, key=probs.__getitem__) if probs else ""
    row = {k: r.get(k) or "" for k in AUDIT_COLUMNS}
    row["view"] = view
    row["body_part_prob"] = round(float(r.get("body_part_prob") or 0.0), 4)
    return row


def _print_audit_counts(counts: list[dict[str, object]]) -> None:
    table = Table(title="header audit (DICOM films)")
    for col in ("body part", "view", "films"):
        table.add_column(col, justify="right" if col == "films" else "left")
    for c in counts:
        table.add_row(str(c["verdict"]), str(c["view"] or "-"), str(c["images"]))
    out.print(table)


@registry_app.command("runs")
def registry_runs(
    out_dir: Annotated[Path, typer.Argument(metavar="OUT", help="A sorted folder.")],
    registry: Annotated[Path | None, typer.Option(help="Registry file if not in OUT.")] = None,
) -> None:
    """Every run: when, by whom, with which model, and what it did."""
    from xreg.registry import Registry

    with handle_errors(), Registry(registry or out_dir / "registry.sqlite", readonly=True) as reg:
        runs = reg.runs()
    table = Table(title="runs")
    for col in ("id", "started", "status", "user", "model", "model sha256", "counts"):
        table.add_column(col)
    for r in runs:
        counts = json.loads(r["counts"] or "{}")
        done = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if v)
        table.add_row(str(r["id"]), r["started"], r["status"], r["user"] or "",
                      r["model_name"] or "", (r["model_sha256"] or "")[:12], done)
    out.print(table)


@registry_app.command("export")
def registry_export(
    out_dir: Annotated[Path, typer.Argument(metavar="OUT", help="A sorted folder.")],
    fmt: Annotated[ExportFormat, typer.Option(
        "--format", help="csv or json: every image row with its source paths; manifest: "
                         "a training manifest `xreg train --data` reads.")] = ExportFormat.csv,
    reviewed: Annotated[bool, typer.Option(
        "--reviewed", help="Manifest: only the films a person reviewed in `xreg serve` "
                           "(else also the model's sorted films).")] = False,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write here instead of standard output.")] = None,
    registry: Annotated[Path | None, typer.Option(help="Registry file if not in OUT.")] = None,
) -> None:
    """Every image row with its source paths, as CSV or JSON; or, with --format
    manifest, training rows (path, body_part, instrument, fracture, patient_id as the
    registry's keyed hash, label_source review|model, reviewer): the latest review's
    labels where there is one, else the model's for sorted films."""
    from xreg.registry import Registry
    from xreg.registry.export import manifest_rows, write_export, write_manifest

    if reviewed and fmt is not ExportFormat.manifest:
        err.print("[bold red]error:[/] --reviewed goes with --format manifest")
        raise typer.Exit(EXIT_USAGE)
    with handle_errors(), Registry(registry or out_dir / "registry.sqlite", readonly=True) as reg:
        with _open_output(output) as stream:
            if fmt is ExportFormat.manifest:
                count = write_manifest(manifest_rows(reg, out_dir, reviewed_only=reviewed),
                                       stream)
            else:
                count = write_export(reg.iter_images(), fmt.value, stream)
    if output is not None:
        err.print(f"wrote {count} row(s) to {output}", highlight=False)


@contextmanager
def _open_output(output: Path | None) -> Iterator[TextIO]:
    if output is None:
        yield sys.stdout
        return
    with open(output, "w", newline="", encoding="utf-8") as fh:
        yield fh


# -- registry import-reviews ---------------------------------------------------

_SHOWN_BAD_ROWS = 50


@registry_app.command("import-reviews")
def registry_import_reviews(
    out_dir: Annotated[Path, typer.Argument(metavar="OUT", help="A sorted folder.")],
    file: Annotated[Path, typer.Argument(
        metavar="FILE.csv", help="The labels: columns sha256 or path, body_part, and "
                                 "optionally instrument and fracture.")],
    reviewer: Annotated[str, typer.Option(
        help="Who the labels are from (recorded with each review; a person or a "
             "source, e.g. 'PACS report 2024').")],
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Check every row and report; import nothing.")] = False,
    header_vocabulary: Annotated[Path | None, typer.Option(
        help="YAML whose coarse section names the region words body_part may use "
             "(UPPER EXTREMITY -> elbow|hand|shoulder|wrist); default: the shipped "
             "xreg/configs/header_vocabulary.yaml.")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the report as JSON (keys: file, reviewer, rows, valid, added, "
                       "already_imported, duplicates, bad, disagree_with_model, dry_run, "
                       "labels, bad_rows: each with row and reason).")] = False,
    registry: Annotated[Path | None, typer.Option(help="Registry file if not in OUT.")] = None,
) -> None:
    """Import labels you already have (e.g. from radiology reports) as reviews.

    Each row names a placed film by `sha256` or by `path`: the source path the
    sort saw (absolute, or relative to the sort's input folder). `body_part`
    is a body part the model knows, `not_msk`, a set `hand|wrist` (trained as
    "one of these"), or a region word of the header vocabulary (`UPPER
    EXTREMITY`); `instrument` and `fracture` take 1/0/true/false/yes/no, empty
    for not judged. The model's labels are kept; reviews sit beside them, as
    from `xreg serve`, and `registry export --reviewed --format manifest` and
    `xreg train --data OUT` use them.

    All or nothing: if any row is bad (unknown value, no such film) nothing is
    imported, every bad row is listed with its reason, and the exit code is 1.
    Importing the same file again adds nothing (a film whose latest review by
    this reviewer has the same labels counts as already imported).
    """
    from xreg.errors import RegistryError
    from xreg.registry import Registry
    from xreg.registry.imports import import_reviews
    from xreg.sort.audit import load_vocabulary

    path = registry or out_dir / "registry.sqlite"
    with handle_errors():
        if not path.is_file():
            raise RegistryError(f"no registry at {path}")
        vocabulary = load_vocabulary(header_vocabulary)
        with Registry(path, readonly=dry_run) as reg:
            report = import_reviews(reg, file, reviewer, dry_run=dry_run,
                                    vocabulary=vocabulary)
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        _print_import(report)
    if not report.ok:
        raise typer.Exit(EXIT_ATTENTION)


def _print_import(report: ImportReport) -> None:
    from rich.markup import escape

    table = Table(title=f"import {escape(report.file)} as {escape(report.reviewer)}")
    table.add_column("rows")
    table.add_column("count", justify="right")
    for label, value in (("read", report.rows), ("valid, new", len(report.reviews)),
                         ("already imported", report.already),
                         ("repeated in the file", report.duplicates),
                         ("bad", len(report.bad)),
                         ("disagree with the model", report.disagree),
                         ("reviews to add (dry run)", len(report.reviews)) if report.dry_run
                         else ("reviews added", report.added)):
        table.add_row(label, str(value), style="bold red" if label == "bad" and value
                      else None)
    out.print(table)
    if report.reviews:
        labels = Table(title="labels of the new reviews")
        labels.add_column("body part")
        labels.add_column("reviews", justify="right")
        for name, count in report.labels().items():
            labels.add_row(name, str(count))
        out.print(labels)
    if report.bad:
        bad = Table(title=f"{len(report.bad)} bad row(s)")
        bad.add_column("row", justify="right")
        bad.add_column("reason")
        for row in report.bad[:_SHOWN_BAD_ROWS]:
            bad.add_row(str(row.number), escape(row.reason))
        out.print(bad)
        more = len(report.bad) - _SHOWN_BAD_ROWS
        if more > 0:
            out.print(f"... and {more} more (--json lists every one)")
        err.print(f"[bold red]nothing imported:[/] {len(report.bad)} bad row(s); fix them "
                  "and import the file again")
    elif report.dry_run:
        err.print(f"dry run: {len(report.reviews)} review(s) would be added, "
                  f"{report.already} already imported", highlight=False)
    else:
        err.print(f"added {report.added} review(s); already imported: {report.already}",
                  highlight=False)


# -- the registry by patient and study (xreg.registry.patients) ------------------------
class ViewFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


_RegistryOpt = Annotated[Path | None, typer.Option(help="Registry file if not in OUT.")]
_BodyPartOpt = Annotated[str | None, typer.Option(
    "--body-part", help="Only studies (patients) with a film of this body part.")]
_InstrumentOpt = Annotated[bool | None, typer.Option(
    "--instrument/--no-instrument", help="Only studies (patients) with a film with / "
                                         "without hardware.", show_default=False)]
_FractureOpt = Annotated[bool | None, typer.Option(
    "--fracture/--no-fracture", help="Only studies (patients) with a film with / without "
                                     "a fracture (a hip pair's decision counts).",
    show_default=False)]
_SinceOpt = Annotated[str | None, typer.Option(help="Studies on or after this date "
                                                     "(YYYY-MM-DD).")]
_UntilOpt = Annotated[str | None, typer.Option(help="Studies on or before this date "
                                                     "(YYYY-MM-DD).")]
_FormatOpt = Annotated[ViewFormat, typer.Option("--format", help="table, csv or json "
                                                "(shape: docs/registry.md).")]
_LimitOpt = Annotated[int | None, typer.Option(min=0, help="At most this many rows.")]
_OffsetOpt = Annotated[int, typer.Option(min=0, help="Skip this many rows first.")]


@registry_app.command("patients")
def registry_patients(
    out_dir: Annotated[Path, typer.Argument(metavar="OUT", help="A sorted folder.")],
    body_part: _BodyPartOpt = None, instrument: _InstrumentOpt = None,
    fracture: _FractureOpt = None, since: _SinceOpt = None, until: _UntilOpt = None,
    fmt: _FormatOpt = ViewFormat.table, limit: _LimitOpt = None, offset: _OffsetOpt = 0,
    registry: _RegistryOpt = None,
) -> None:
    """Patients (keyed hashes, never PatientIDs) with their studies, body parts, the
    date hardware was first seen in each body part, and fractures. Labels are the
    latest review's where there is one, else the model's."""
    from xreg.cli import _registry_views as views
    from xreg.registry import Registry
    from xreg.registry.patients import RegistryFilter, patients, unassigned_films

    with handle_errors(), Registry(registry or out_dir / "registry.sqlite", readonly=True) as reg:
        flt = RegistryFilter(body_part, instrument, fracture, since, until)
        rows, total = patients(reg, flt, limit=limit, offset=offset)
        loose = unassigned_films(reg)
    if fmt is ViewFormat.json:
        views.write_json("patients", {"filter": flt.to_dict(), "total": total, "limit": limit,
                                      "offset": offset, "unassigned_films": loose,
                                      "rows": rows})
    elif fmt is ViewFormat.csv:
        views.write_csv(rows, views.PATIENT_COLUMNS)
    else:
        views.print_table(f"{len(rows)} of {total} patient(s)", rows, views.PATIENT_COLUMNS)
        err.print(f"{loose} film(s) without a patient key", highlight=False)


@registry_app.command("studies")
def registry_studies(
    out_dir: Annotated[Path, typer.Argument(metavar="OUT", help="A sorted folder.")],
    body_part: _BodyPartOpt = None, instrument: _InstrumentOpt = None,
    fracture: _FractureOpt = None, since: _SinceOpt = None, until: _UntilOpt = None,
    fmt: _FormatOpt = ViewFormat.table, limit: _LimitOpt = None, offset: _OffsetOpt = 0,
    per_month: Annotated[bool, typer.Option(
        "--per-month", help="Count dated studies per month and body part instead.")] = False,
    registry: _RegistryOpt = None,
) -> None:
    """Studies (StudyInstanceUID, else the keyed --group-by study), oldest first: films,
    body parts, views, hardware, fracture, hip pair score, films waiting in _review."""
    from xreg.cli import _registry_views as views
    from xreg.registry import Registry
    from xreg.registry.patients import (
        RegistryFilter,
        films_without_study,
        studies,
        studies_per_month,
    )

    with handle_errors(), Registry(registry or out_dir / "registry.sqlite", readonly=True) as reg:
        flt = RegistryFilter(body_part, instrument, fracture, since, until)
        if per_month:
            rows, total = studies_per_month(reg, flt), None
        else:
            rows, total = studies(reg, flt, limit=limit, offset=offset)
        loose = films_without_study(reg)
    kind, columns = (("studies_per_month", views.MONTH_COLUMNS) if per_month
                     else ("studies", views.STUDY_COLUMNS))
    if fmt is ViewFormat.json:
        payload: dict[str, Any] = {"filter": flt.to_dict(), "total": total}
        if not per_month:
            payload |= {"limit": limit, "offset": offset, "films_without_study": loose}
        views.write_json(kind, payload | {"rows": rows})
    elif fmt is ViewFormat.csv:
        views.write_csv(rows, columns)
    else:
        title = (f"studies per month ({sum(r['studies'] for r in rows)})" if per_month
                 else f"{len(rows)} of {total} studies")
        views.print_table(title, rows, columns)


@registry_app.command("patient")
def registry_patient(
    out_dir: Annotated[Path, typer.Argument(metavar="OUT", help="A sorted folder.")],
    key: Annotated[str, typer.Argument(help="The patient key (as `registry patients` "
                                            "lists it).")],
    fmt: Annotated[ViewFormat, typer.Option("--format", help="table or json.")] = (
        ViewFormat.table),
    registry: _RegistryOpt = None,
) -> None:
    """One patient's timeline: every study in date order with its films."""
    from xreg.cli import _registry_views as views
    from xreg.cli._common import EXIT_ATTENTION
    from xreg.registry import Registry
    from xreg.registry.patients import patient_timeline

    if fmt is ViewFormat.csv:
        err.print("[bold red]error:[/] a timeline prints as table or json")
        raise typer.Exit(EXIT_USAGE)
    with handle_errors(), Registry(registry or out_dir / "registry.sqlite", readonly=True) as reg:
        timeline = patient_timeline(reg, key)
    if timeline is None:
        err.print("[bold red]error:[/] no patient with that key in this registry")
        raise typer.Exit(EXIT_ATTENTION)
    if fmt is ViewFormat.json:
        views.write_json("patient", {"patient": timeline})
    else:
        views.print_timeline(timeline)


@weights_app.command("info")
def weights_info(
    path: Annotated[Path, typer.Argument(help="A checkpoint file.")],
) -> None:
    """Print a checkpoint's model card and sha256 (of an ONNX export: the sha256 of
    the checkpoint it was made from)."""
    with handle_errors():
        if path.suffix == ".onnx":
            from xreg.inference.runtime import read_onnx_metadata

            card, sha = read_onnx_metadata(path)
        else:
            require_train("xreg weights info", ("torch", "torchvision"))
            from xreg.model.checkpoint import load_checkpoint

            loaded = load_checkpoint(path)
            card, sha = loaded.card, loaded.sha256
    sys.stdout.write(json.dumps(card.to_dict() | {"sha256": sha}, indent=2, default=str)
                     + "\n")


@weights_app.command("export")
def weights_export(
    path: Annotated[Path, typer.Argument(help="A checkpoint (.pt) to export.")],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Where to write it.  [default: beside PATH, .onnx]")] = None,
) -> None:
    """Export a checkpoint to ONNX for `--runtime onnx` (what a slim install sorts with).

    The file carries the model card and the checkpoint's sha256 in its metadata;
    `xreg sort` uses an export beside the checkpoint only if that sha256 matches.
    Batch size is dynamic and batch norms are folded. ONNX Runtime must
    reproduce torch's logits to 1e-4 before the file is written.
    """
    require_train("xreg weights export", ("torch", "torchvision", "onnx"))
    from xreg.inference.export import OPSET, export_onnx

    with handle_errors():
        target, worst = export_onnx(path, output)
    err.print(f"wrote {target} (opset {OPSET}; largest logit difference from torch "
              f"{worst:.1e})", highlight=False)


@weights_app.command("random")
def weights_random(
    path: Annotated[Path, typer.Argument(help="Where to write the checkpoint.")],
    arch: Annotated[str, typer.Option(help="Backbone architecture.")] = "mobilenet_v2",
    input_size: Annotated[int, typer.Option(help="Model input size in pixels.")] = 224,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Write a RANDOM-weight checkpoint (tests, benchmarks, the placeholder demo)."""
    require_train("xreg weights random", ("torch", "torchvision"))
    from xreg.model.checkpoint import make_random_checkpoint

    with handle_errors():
        sha = make_random_checkpoint(path, arch=arch, input_size=input_size, seed=seed)
    err.print(f"wrote {path} (random weights: predictions are meaningless) sha256={sha}")


@weights_app.command("operating-point")
def weights_operating_point(
    path: Annotated[Path, typer.Argument(help="The checkpoint to set min_confidence on.")],
    labelled: Annotated[Path, typer.Argument(
        help="Labelled films: a manifest CSV (e.g. a training run's split.csv) or a "
             "sort-layout folder. Never the films you will report on.")],
    split: Annotated[str | None, typer.Option(
        help="Only the manifest rows of this split (e.g. val).")] = None,
    target_accuracy: Annotated[float, typer.Option(
        help="Accuracy among sorted nine-class films to reach.", min=0.5, max=1.0)] = 0.97,
    max_outside: Annotated[float, typer.Option(
        help="Most films outside the nine that may land in a nine-class folder.",
        min=0.0, max=1.0)] = 0.10,
    by_set: Annotated[bool, typer.Option(
        "--by-set/--by-primary",
        help="Count a folder within a film's label set (hand|wrist) as right, or only "
             "its first label.")] = True,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write the checkpoint here (default: replace PATH "
                               "atomically).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Set min_confidence on your own labelled films: the lowest threshold (most films
    sorted) whose accuracy among sorted reaches --target-accuracy while at most
    --max-outside of the films outside the nine land in a nine-class folder.

    `xreg evaluate --report` shows the whole risk-coverage table to pick from.
    """
    require_train("xreg weights operating-point")
    from xreg.evaluation.calibrate import set_operating_point

    with handle_errors():
        point = set_operating_point(path, labelled, output or path, split=split,
                                    target_accuracy=target_accuracy,
                                    max_outside=max_outside, by_set=by_set)
    if as_json:
        sys.stdout.write(json.dumps(point.to_dict(), indent=2) + "\n")
        return
    verdict = "met" if point.met else "NOT met; took the most accurate threshold"
    out.print(f"min_confidence {point.threshold:.3f} ({verdict}): coverage "
              f"{point.coverage:.3f}, accuracy among sorted {point.accuracy_among_sorted:.3f}, "
              f"outside the nine into the nine {point.outside_nine_into_nine:.3f} "
              f"(scored by {point.scored_by}); wrote {output or path}", highlight=False)


@weights_app.command("calibrate")
def weights_calibrate(
    path: Annotated[Path, typer.Argument(help="The checkpoint to calibrate.")],
    in_scope: Annotated[Path, typer.Option(
        help="Labelled in-scope images: a manifest CSV or sort-layout folder (ideally "
             "not the training images).")],
    out_of_scope: Annotated[Path, typer.Option(
        help="A folder of images that are none of the body parts (chest, skull, "
             "abdomen, photos; `xreg synth --out-of-scope` writes some).")],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write the calibrated checkpoint here (default: replace "
                               "PATH atomically).")] = None,
    keep: Annotated[float, typer.Option(
        help="Fraction of in-scope images that must stay out of _review.",
        min=0.5, max=1.0)] = 0.99,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Set the card's min_confidence so out-of-scope images go to _review.

    Picks the highest threshold on the top body-part probability that keeps
    --keep of the in-scope images sorted, then reports the fraction of the
    out-of-scope images it sends to _review. The result is recorded in the
    card (training.calibration).
    """
    require_train("xreg weights calibrate")
    from xreg.evaluation.calibrate import calibrate_checkpoint

    with handle_errors():
        result = calibrate_checkpoint(path, in_scope, out_of_scope, output or path, keep=keep)
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
        return
    out.print(f"min_confidence {result.threshold:.4f}: {result.in_scope_to_review:.1%} of "
              f"{result.in_scope} in-scope and {result.out_of_scope_to_review:.1%} of "
              f"{result.out_of_scope} out-of-scope images go to _review; wrote "
              f"{output or path}", highlight=False)
