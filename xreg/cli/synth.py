"""``xreg synth``: phantom radiographs with labels."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from xreg.cli._common import (
    app,
    err,
    handle_errors,
    out,
    progress_reporter,
    require_train,
)

SYNTH_HELP = """Render COUNT phantom radiographs (plus --hip-pairs AP+LAT hip studies) into OUT.

Writes OUT/images/ (16-bit PNG, JPEG and DICOM, some DICOM without an
extension) and OUT/labels.csv: path, body_part, instrument, instrument_kind,
distractors, view, laterality, patient_id, study_id, pair_role, fracture,
format, seed. The same options give byte-identical files. OUT must be empty,
new, or a previous synth output (whose images and labels are replaced).
Phantoms are simplified drawings, not patient data.
"""


@app.command("synth", help=SYNTH_HELP)
def synth_cmd(
    out_dir: Annotated[Path, typer.Argument(metavar="OUT", help="Folder to write.")],
    count: Annotated[int, typer.Option(help="Single images, balanced over body parts and "
                                            "views.", min=0)] = 100,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same files.")] = 0,
    size: Annotated[int, typer.Option(help="Image side in pixels.", min=32)] = 1024,
    formats: Annotated[str, typer.Option(
        help="Comma-separated formats, used in turn: png16, jpeg, dicom.")] = "png16,jpeg,dicom",
    instrument_rate: Annotated[float, typer.Option(
        help="Probability that an image shows an instrument.", min=0.0, max=1.0)] = 0.15,
    hip_pairs: Annotated[int, typer.Option(
        help="Extra hip studies, each an AP and a LAT image of one patient.", min=0)] = 0,
    fracture_rate: Annotated[float, typer.Option(
        help="Fraction of hip pairs with a fracture.", min=0.0, max=1.0)] = 0.45,
    out_of_scope: Annotated[int, typer.Option(
        help="Also write this many images that are none of the body parts (chest, "
             "skull, abdomen, blank, photo) to OUT/out_of_scope/, listed in "
             "OUT/out_of_scope.csv.", min=0)] = 0,
    contact_sheet: Annotated[Path | None, typer.Option(
        help="Also write a PNG grid of every class x view x instrument.")] = None,
    workers: Annotated[int | None, typer.Option(
        help="Rendering processes.  [default: CPU count]", min=1)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress, no summary.")] = False,
) -> None:
    require_train("xreg synth", ("scipy",))
    from xreg.synth.generate import generate_dataset

    kinds = tuple(f.strip() for f in formats.split(",") if f.strip())
    quiet_bar = quiet or as_json or not err.is_terminal
    with handle_errors(), progress_reporter(quiet_bar, "rendering") as reporter:
        summary = generate_dataset(
            out_dir, count, seed, size=size, formats=kinds, instrument_rate=instrument_rate,
            hip_pairs=hip_pairs, fracture_rate=fracture_rate, workers=workers,
            contact_sheet=contact_sheet, reporter=reporter, out_of_scope=out_of_scope)
    if as_json:
        sys.stdout.write(json.dumps(summary.to_dict(), indent=2) + "\n")
    elif not quiet:
        _print_synth_summary(summary)


def _print_synth_summary(summary: Any) -> None:
    table = Table(title="xreg synth", caption=str(summary.labels))
    table.add_column("body part")
    table.add_column("images", justify="right")
    for part, n in summary.by_body_part.items():
        table.add_row(part, str(n))
    table.add_row("total", str(summary.images), style="bold")
    out.print(table)
    formats_line = ", ".join(f"{k} {n}" for k, n in summary.by_format.items())
    out.print(f"{summary.instrument} with instrument; {summary.out_of_scope} out of scope; "
              f"{summary.hip_pairs} hip pair(s), "
              f"{summary.fractures} fractured; {formats_line}; {summary.seconds:.1f} s")
    if summary.contact_sheet:
        out.print(f"contact sheet: {summary.contact_sheet}")
