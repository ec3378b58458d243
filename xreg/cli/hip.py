"""``xreg hip``: pair AP and lateral hip films and score fracture."""

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
    GROUP_BY_HELP,
    RUNTIME_HELP,
    Device,
    Runtime,
    app,
    err,
    handle_errors,
    out,
    require_train,
)

HIP_HELP = """Find the hip films under IN, pair each study's AP with its lateral, score fracture.

A film counts as a hip when its DICOM BodyPartExamined says HIP/PELVIS or the
body-part classifier (--classifier, default the shipped one) says hip. Each
film's study, view and side come from, in order: --pairs CSV (study,
ap_path, lateral_path); DICOM headers (StudyInstanceUID or AccessionNumber;
ViewPosition or SeriesDescription words such as AP, LAT, AXIAL, CROSS-TABLE;
ImageLaterality); the --group-by study folder (as a keyed hash); the file
name (--pattern, default names like 1234_AP.png, 1234-L-lat.jpg); for the
view only, the classifier's view head. Studies with a missing or doubled view
are listed with the reason, never guessed; films with no study at all are
counted in one line of the table (the registry keeps a row each).

Each pair goes to the two-view model (--weights, default the shipped
xreg/weights/hip_fracture_phantom.pt): AP and lateral side by side, as in the
thesis. With OUT, each study's films are copied (verified, never
overwriting) to OUT/hip/<fracture|no_fracture|unpaired>/<study>/ and a
hip_studies row per study goes to OUT/registry.sqlite (or --registry).
--joined DIR writes each pair's joined model input as a PNG.

--json prints {model_sha256, threshold, hip_films, run_id, registry,
studies: [{study, side, status, reason, ap, lateral, candidates,
fracture_prob, decision, error, dest, joined}]}.

Exit codes: 0 done; 1 with --strict when a study could not be paired or
scored; 2 usage, data or weights error; 3 OUT is locked by another run.
"""


@app.command("hip", help=HIP_HELP)
def hip_cmd(
    in_dir: Annotated[Path, typer.Argument(metavar="IN", help="Folder to scan, recursively.")],
    out_dir: Annotated[Path | None, typer.Argument(
        metavar="[OUT]", help="Place studies under OUT/hip/... and record them.")] = None,
    weights: Annotated[Path | None, typer.Option(
        help="Two-view hip fracture checkpoint.  [default: the shipped one]")] = None,
    classifier: Annotated[Path | None, typer.Option(
        help="Body part (+ view) checkpoint that finds hip films.  [default: the shipped "
             "one]", envvar="XREG_WEIGHTS")] = None,
    pairs: Annotated[Path | None, typer.Option(
        help="CSV with columns study, ap_path, lateral_path (paths relative to the CSV).")
    ] = None,
    pattern: Annotated[str | None, typer.Option(
        help="Regex for file names with named groups study and view (side optional), "
             "matched case-insensitively against the name without extension.")] = None,
    joined: Annotated[Path | None, typer.Option(
        help="Write each pair's joined two-view image here.")] = None,
    group_by: Annotated[str | None, typer.Option(
        help=GROUP_BY_HELP + " Each hip film's study is then its study folder (after the "
             "DICOM header, before the file name), so an AP and a lateral in one study "
             "folder pair.")] = None,
    heatmaps: Annotated[bool, typer.Option(
        "--heatmaps", help="Write an overlay of each scored pair's joined input to "
                           "OUT/_heatmaps/hip/ and record it (needs OUT).")] = False,
    registry: Annotated[Path | None, typer.Option(
        help="Registry file.  [default: OUT/registry.sqlite; none without OUT]")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per model batch.", min=1)] = 16,
    device: Annotated[Device, typer.Option(
        help="Where the models run; auto picks CUDA when present.")] = Device.auto,
    runtime: Annotated[Runtime, typer.Option(help=RUNTIME_HELP)] = Runtime.auto,
    min_age: Annotated[float, typer.Option(
        help="Skip files modified less than this many seconds ago.", min=0)] = 10.0,
    strict: Annotated[bool, typer.Option(
        help="Exit 1 when any study could not be paired or scored.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    from xreg.hip.run import HipOptions, run_hip

    if heatmaps:
        require_train("xreg hip --heatmaps", ("torch", "torchvision", "captum", "matplotlib"))

    options = HipOptions(weights=weights, classifier=classifier, out=out_dir, pairs=pairs,
                         pattern=pattern, joined=joined, registry=registry,
                         batch_size=batch_size, device=device.value, runtime=runtime.value,
                         min_age=min_age, heatmaps=heatmaps, group_by=group_by)
    progress = None if (quiet or as_json) else \
        (lambda text: err.print(f"xreg: {text}", highlight=False))
    with handle_errors():
        result = run_hip(in_dir, options, progress)
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
    elif not quiet:
        print_hip_table(result)
    unscored = [s for s in result.studies if s.decision is None]
    raise typer.Exit(EXIT_ATTENTION if strict and unscored else EXIT_OK)


def print_hip_table(result: Any) -> None:
    table = Table(title=f"Hip studies ({result.hip_films} hip films; fracture threshold "
                        f"{result.threshold:.3f})")
    for col in ("study", "side", "AP file", "lateral file", "P(fracture)", "decision"):
        table.add_column(col, overflow="fold")
    # Films with no study at all would fill the table with one identical row
    # each; one line counts them (the registry still has a row per film).
    no_study = [s for s in result.studies if s.study.no_study]
    for s in result.studies:
        st = s.study
        if st.no_study:
            continue
        prob = "" if s.fracture_prob is None else f"{s.fracture_prob:.3f}"
        decision = s.decision or f"{st.status}: {s.error or st.reason}"
        table.add_row(st.study, st.side or "", Path(st.ap).name if st.ap else "",
                      Path(st.lateral).name if st.lateral else "", prob, decision)
    if no_study:
        table.add_row("(no study)", "", "", "", "",
                      f"unknown: {len(no_study)} film(s) with no study (no DICOM study UID or "
                      "accession, and the file name does not match --pattern; --group-by "
                      "can give them their folder's)")
    out.print(table)
    if result.registry is not None:
        out.print(f"recorded {len(result.studies)} stud(ies) in {result.registry} "
                  f"(run {result.run_id})", highlight=False)
