"""``xreg sort``: classify and place every radiograph under IN."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

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
    progress_reporter,
    require_train,
)


class Engine(str, Enum):
    local = "local"
    ray = "ray"


class HeaderCheck(str, Enum):
    review = "review"
    off = "off"


class Mode(str, Enum):
    copy = "copy"
    move = "move"
    link = "link"
    hardlink = "hardlink"


SORT_HELP = """Sort every radiograph under IN into OUT.

Files go to OUT/<body_part>/<instrument|no_instrument>/ (see --layout): the
nine thesis classes, and with a model that knows them, long-bone exams
(forearm, humerus, lower_leg, femur) in folders of their own. Films the
model calls other (chest, several regions, not musculoskeletal) or is unsure
about (below --min-confidence) go to OUT/_review/ with the reason recorded,
and so do DICOM films whose header names another body part than the model
(see --header-check); files that cannot be decoded to OUT/_unreadable/. A JPEG cut short that
still decodes to at least 99% of its picture is sorted with a warning.
OUT/registry.sqlite records, for every file, its content hash, source
path(s), the model's output and where it went.

Nothing is ever overwritten or lost: each file is written under a temp name,
fsynced, verified, then linked into place; --mode move deletes a source only
after its copy is verified and recorded. Identical content is stored once.
A second run over the same input does nothing new; a killed run is finished
by the next one. Only one run may sort into an OUT at a time.

Exit codes: 0 done; 1 some files could not be placed (or, with --strict,
some went to _review/_unreadable); 2 usage, config or weights error;
3 another run holds the lock on OUT.
"""


@app.command("sort", help=SORT_HELP)
def sort_cmd(
    in_dir: Annotated[Path, typer.Argument(metavar="IN", help="Folder to scan, recursively.")],
    out_dir: Annotated[Path, typer.Argument(metavar="OUT", help="Sorted output folder.")],
    weights: Annotated[Path | None, typer.Option(
        help="Model checkpoint (.pt) to classify with.  [default: XREG_WEIGHTS, else "
             "the shipped xreg/weights/bodypart_sites.pt]",
        envvar="XREG_WEIGHTS")] = None,
    mode: Annotated[Mode | None, typer.Option(
        help="copy: leave IN as it is; move: delete each source once its copy is verified "
             "and recorded; link: symlink to the source; hardlink: same file, two names "
             "(same filesystem only).  [default: copy]")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Classify and print the plan; create, move and record nothing.")] = False,
    batch_size: Annotated[int | None, typer.Option(
        help="Images per model batch.  [default: 16]", min=1)] = None,
    workers: Annotated[int | None, typer.Option(
        help="Threads decoding images while the model runs (with --engine ray: model "
             "workers).  [default: 2]", min=1)] = None,
    device: Annotated[Device | None, typer.Option(
        help="Where the model runs; auto picks CUDA when present.  [default: auto]")] = None,
    runtime: Annotated[Runtime | None, typer.Option(help=RUNTIME_HELP)] = None,
    engine: Annotated[Engine | None, typer.Option(
        help="local: decode and run the model in this process; ray: hashing, decoding and "
             "the model on Ray Data workers (pip install \"xreg[ray]\"), while this process "
             "places and records every file as the local engine does. IN and OUT must be "
             "on a filesystem every worker can read.  [default: local]")] = None,
    ray_address: Annotated[str | None, typer.Option(
        help="--engine ray: a cluster to join (auto, or host:port); without it a local Ray "
             "is started for the run and stopped after.")] = None,
    gpus_per_worker: Annotated[float | None, typer.Option(
        help="--engine ray: GPUs each model worker takes (--workers sets how many "
             "workers).", min=0.0)] = None,
    min_confidence: Annotated[float | None, typer.Option(
        help="Body-part probability below which an image goes to _review.  "
             "[default: the model card's threshold]", min=0.0, max=1.0)] = None,
    min_age: Annotated[float | None, typer.Option(
        help="Skip files modified less than this many seconds ago (still being "
             "written); the next run picks them up.  [default: 10]", min=0.0)] = None,
    layout: Annotated[str | None, typer.Option(
        help="Destination template under OUT. Fields: {body_part} {instrument} {fracture} "
             "{view} "
             "{laterality} {study_date} {year} {modality} {study_uid} {name} {stem} {ext} "
             "{sha8} {header_agrees}. Header values are reduced to letters, digits, '.', "
             "'_' and '-', so none can leave OUT.  "
             "[default: {body_part}/{instrument}/{name}]")] = None,
    registry: Annotated[Path | None, typer.Option(
        help="Registry database.  [default: OUT/registry.sqlite]")] = None,
    group_by: Annotated[str | None, typer.Option(
        help=GROUP_BY_HELP + " Not with --mode link (a link would name the folder). "
             "With --hip, the hip studies use it too.")] = None,
    header_vocabulary: Annotated[Path | None, typer.Option(
        help="YAML that maps DICOM header terms to body parts, for the header audit "
             "recorded per film (and {header_agrees} in --layout).  [default: "
             "xreg/configs/header_vocabulary.yaml]")] = None,
    header_check: Annotated[HeaderCheck | None, typer.Option(
        help="review: a DICOM film whose BodyPartExamined (or a body part named in its "
             "descriptions) names one class and the model another goes to _review with "
             "a reason such as 'header says CHEST, model says shoulder' (non-MSK regions "
             "like CHEST name the class other); a header that agrees, names only a region "
             "(EXTREMITY), is empty or unknown changes nothing. off: the header is only "
             "audited.  [default: review]")] = None,
    config: Annotated[Path | None, typer.Option(
        help="YAML file with defaults (a 'sort:' section, e.g. configs/sort.yaml); "
             "command-line options win.")] = None,
    strict: Annotated[bool | None, typer.Option(
        "--strict/--no-strict",
        help="Exit 1 when any file went to _review or _unreadable.  [default: no-strict]")] = None,
    heatmaps: Annotated[bool, typer.Option(
        "--heatmaps", help="Also write a body-part heatmap overlay per sorted or reviewed "
                           "file to OUT/_heatmaps/ (integrated gradients) and record its "
                           "path in the registry.")] = False,
    dicom_out: Annotated[bool, typer.Option(
        "--dicom-out", help="For every sorted DICOM film, write a DICOM Structured Report of "
                            "the findings and the heatmap as a Secondary Capture image, in new "
                            "series of its study, to OUT/_dicom/ (implies --heatmaps; needs "
                            "highdicom and the train extra).")] = False,
    stow: Annotated[str | None, typer.Option(
        help="With --dicom-out: send what was written to this DICOMweb root (STOW-RS), e.g. "
             "http://pacs:8042/dicom-web.")] = None,
    hip: Annotated[bool, typer.Option(
        "--hip", help="Afterwards, pair and score the hip studies among the sorted films "
                      "as `xreg hip` does (from the sort's own predictions and headers) and "
                      "record them in the registry; films are not copied twice.")] = False,
    hip_weights: Annotated[Path | None, typer.Option(
        help="Hip fracture checkpoint for --hip.  [default: the shipped one]")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print a JSON summary (counts and every file) instead of tables.")] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="No progress and no summary; just the exit code.")] = False,
) -> None:
    from xreg.config import load_sort_options
    from xreg.sort.runner import run_sort

    heatmaps = heatmaps or dicom_out
    if stow and not dicom_out:
        err.print("[bold red]error:[/] --stow goes with --dicom-out")
        raise typer.Exit(2)
    if heatmaps:
        require_train("xreg sort --heatmaps", ("torch", "torchvision", "captum", "matplotlib"))
    if dicom_out:
        require_train("xreg sort --dicom-out", ("highdicom",))

    with handle_errors():
        options = load_sort_options(config, {
            "weights": weights, "mode": mode.value if mode else None,
            "dry_run": dry_run or None, "batch_size": batch_size, "workers": workers,
            "device": device.value if device else None, "min_confidence": min_confidence,
            "runtime": runtime.value if runtime else None,
            "engine": engine.value if engine else None, "ray_address": ray_address,
            "gpus_per_worker": gpus_per_worker,
            "min_age": min_age, "layout": layout, "registry": registry, "strict": strict,
            "header_vocabulary": header_vocabulary,
            "header_check": header_check.value if header_check else None,
            "group_by": group_by,
        })
        with progress_reporter(quiet or as_json) as reporter:
            result = run_sort(in_dir, out_dir, options, reporter)
        drawn = None
        if heatmaps and not options.dry_run:
            from xreg.explain.heatmaps import add_sort_heatmaps
            from xreg.model.checkpoint import default_weights, load_checkpoint

            drawn = add_sort_heatmaps(
                out_dir, options.registry or out_dir / "registry.sqlite",
                load_checkpoint(options.weights or default_weights()),
                batch_size=options.batch_size, workers=options.workers)
        hips = None
        if hip and not options.dry_run:
            from xreg.hip.run import HipOptions, run_hip

            hips = run_hip(in_dir, HipOptions(
                weights=hip_weights, classifier=options.weights,
                registry=options.registry or out_dir / "registry.sqlite",
                batch_size=options.batch_size, workers=options.workers,
                device=options.device, runtime=options.runtime, min_age=options.min_age,
                heatmaps=heatmaps, group_by=options.group_by,
                heatmap_root=out_dir, from_registry=True))
        dicom = None
        if dicom_out and not options.dry_run:
            from xreg.sort.dicom_out import write_sort_dicom

            dicom = write_sort_dicom(out_dir, options.registry or out_dir / "registry.sqlite",
                                     result.model_name, result.model_sha256, stow)
    code = _sort_exit_code(result.counts, options.strict)
    if as_json:
        payload = result.to_dict() | {"exit_code": code}
        if hips is not None:
            payload["hip"] = hips.to_dict()
        if drawn is not None:
            payload["heatmaps"] = {"written": drawn[0], "seconds": round(drawn[1], 2)}
        if dicom is not None:
            payload["dicom_out"] = {"films": dicom.films, "written": dicom.written,
                                    "seconds": round(dicom.seconds, 2), "stowed": dicom.stowed}
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
    elif not quiet:
        _print_sort_summary(result, out_dir, options.min_age)
        if drawn is not None:
            per = f", {drawn[1] / drawn[0] * 1000:.0f} ms each" if drawn[0] else ""
            out.print(f"wrote {drawn[0]} heatmap(s) to {out_dir / '_heatmaps'}{per}",
                      highlight=False)
        if dicom is not None:
            out.print(f"wrote {dicom.written} DICOM object(s) for {dicom.films} DICOM film(s) "
                      f"to {out_dir / '_dicom'}" + (f"; sent {dicom.stowed} to {stow}"
                                                    if dicom.stowed else ""), highlight=False)
        if hips is not None:
            from xreg.cli.hip import print_hip_table

            print_hip_table(hips)
    raise typer.Exit(code)


def _sort_exit_code(counts: Any, strict: bool) -> int:
    if counts.get("failed", 0):
        return EXIT_ATTENTION
    if strict and (counts.get("review", 0) or counts.get("unreadable", 0)):
        return EXIT_ATTENTION
    return EXIT_OK


def _print_sort_summary(result: Any, out_dir: Path, min_age: float) -> None:
    if result.dry_run:
        plan = Table(title="Plan (dry run: nothing was changed)")
        for col in ("source", "would go to", "confidence"):
            plan.add_column(col)
        for o in result.outcomes:
            if o.dest:
                conf = f"{o.confidence:.2f}" if o.confidence is not None else ""
                dest = f"(duplicate of) {o.dest}" if o.status == "duplicate" else o.dest
                plan.add_row(o.source, dest, conf)
        out.print(plan)
    table = Table(title="xreg sort", caption=str(out_dir))
    table.add_column("outcome")
    table.add_column("files", justify="right")
    for status, n in result.to_dict()["counts"].items():
        if n:
            table.add_row(status, str(n))
    long_bone = sum(o.status == "sorted" and o.scope == "long_bone" for o in result.outcomes)
    other = sum(o.status == "review" and o.scope == "other" for o in result.outcomes)
    shift = result.new_site()
    warned = sum(o.warning is not None for o in result.outcomes)
    outside = result.outside_group if result.group_by is not None else 0
    for label, n in (("  of sorted: long-bone folders", long_bone),
                     ("  of review: not a known body part", other),
                     ("  of review: unlike the training films", shift.held_back),
                     ("decoded with a warning", warned),
                     ("outside --group-by (no patient or study from folders)", outside)):
        if n:
            table.add_row(label, str(n))
    out.print(table)
    if shift.notice:
        out.print(Text.assemble(("new site: ", "bold yellow"), (shift.notice, "yellow")))
    for o in result.outcomes:
        if o.status == "failed":
            err.print(f"[red]failed:[/] {o.source}: {o.error}", highlight=False)
    if result.recovered:
        out.print(f"finished {result.recovered} placement(s) left by an interrupted run")
    young = result.counts.get("too_new", 0)
    if young:
        err.print(f"note: {young} file(s) changed less than --min-age {min_age:g} s ago and "
                  "were left for the next run (they may still be being written); "
                  "--min-age 0 takes them now", highlight=False)


