"""``xreg registry``: query and export a registry, import reviews.

The registry by patient and study is in :mod:`xreg.cli.patients`; ``xreg weights``
in :mod:`xreg.cli.weights`.
"""

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
from rich.text import Text

from xreg.cli._common import (
    EXIT_ATTENTION,
    EXIT_USAGE,
    err,
    handle_errors,
    out,
    registry_app,
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
    """Every run: when, by whom, how its films came (a folder, xreg listen, xreg pull),
    with which model, and what it did; whether a sort run
    held back so many films as unfamiliar that it looks like a new site."""
    from xreg.registry import Registry
    from xreg.sort.scope import new_site_notice

    with handle_errors(), Registry(registry or out_dir / "registry.sqlite", readonly=True) as reg:
        runs = reg.runs()
    table = Table(title="runs")
    for col in ("id", "started", "status", "intake", "user", "model", "model sha256", "counts",
                "new site"):
        table.add_column(col)
    for r in runs:
        counts = json.loads(r["counts"] or "{}")
        done = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if v)
        table.add_row(str(r["id"]), r["started"], r["status"], _intake_cell(r), r["user"] or "",
                      r["model_name"] or "", (r["model_sha256"] or "")[:12], done,
                      _new_site_cell(r))
    out.print(table)
    last = runs[-1] if runs else None
    if last is not None and last.get("new_site"):
        counts = json.loads(last["counts"] or "{}")
        notice = new_site_notice(counts.get("sorted", 0) + counts.get("review", 0),
                                 last["shift_held"] or 0, out=last["output_root"] or "OUT",
                                 min_films=0, share=0.0)
        out.print(Text.assemble((f"run {last['id']}, new site: ", "bold yellow"),
                                (notice or "", "yellow")))


def _intake_cell(run: dict[str, Any]) -> str:
    """How the run's films arrived: ``folder``, ``listen`` or ``pull`` (and from where)."""
    intake = run.get("intake")
    if intake in ("listen", "pull"):
        return f"{intake} {run['input_root'] or ''}".strip()
    return intake or ""


def _new_site_cell(run: dict[str, Any]) -> str:
    """``yes (62% unfamiliar)``, ``no (4% unfamiliar)``, or empty before schema v11."""
    if run.get("new_site") is None:
        return ""
    share = f"{run['shift_share'] or 0:.0%} unfamiliar"
    return f"yes ({share})" if run["new_site"] else f"no ({share})"


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
