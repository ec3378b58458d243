"""The ``xreg`` command line: a thin skin over the library.

Each command parses options, makes one library call and renders the result.
Errors become messages and exit codes here, and only here.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from xreg import __version__
from xreg.errors import ConfigError, LockedError, XregError

EXIT_OK, EXIT_ATTENTION, EXIT_USAGE, EXIT_LOCKED = 0, 1, 2, 3

app = typer.Typer(
    help="Sort folders of musculoskeletal radiographs into a patient registry.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold patient data
    add_completion=False,
)
registry_app = typer.Typer(help="Query the SQLite registry of a sorted folder.",
                           no_args_is_help=True)
app.add_typer(registry_app, name="registry")
weights_app = typer.Typer(help="Inspect and create model checkpoints.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")

out = Console()
err = Console(stderr=True, soft_wrap=True)  # messages stay greppable in logs


class Mode(str, Enum):
    copy = "copy"
    move = "move"
    link = "link"
    hardlink = "hardlink"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class ExportFormat(str, Enum):
    csv = "csv"
    json = "json"


@contextmanager
def _errors() -> Iterator[None]:
    """Map library errors to a one-line message and an exit code."""
    try:
        yield
    except LockedError as exc:
        err.print(f"[bold red]locked:[/] {exc}")
        raise typer.Exit(EXIT_LOCKED) from None
    except (ConfigError, XregError) as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(EXIT_USAGE) from None


def _version(value: bool) -> None:
    if value:
        out.print(f"xreg {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """xreg: body part, instrument and hip-fracture registry for radiographs."""


SORT_HELP = """Sort every radiograph under IN into OUT.

Files go to OUT/<body_part>/<instrument|no_instrument>/ (see --layout);
images the model is unsure about to OUT/_review/; files that cannot be
decoded to OUT/_unreadable/. OUT/registry.sqlite records, for every file,
its content hash, source path(s), the model's output and where it went.

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
        help="Model checkpoint (.pt) to classify with.  [default: XREG_WEIGHTS]",
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
        help="Threads decoding images while the model runs.  [default: 2]", min=1)] = None,
    device: Annotated[Device | None, typer.Option(
        help="Where the model runs; auto picks CUDA when present.  [default: auto]")] = None,
    min_confidence: Annotated[float | None, typer.Option(
        help="Body-part probability below which an image goes to _review.  "
             "[default: the model card's threshold]", min=0.0, max=1.0)] = None,
    min_age: Annotated[float | None, typer.Option(
        help="Skip files modified less than this many seconds ago (still being "
             "written); the next run picks them up.  [default: 10]", min=0.0)] = None,
    layout: Annotated[str | None, typer.Option(
        help="Destination template under OUT. Fields: {body_part} {instrument} {view} "
             "{laterality} {study_date} {year} {modality} {study_uid} {name} {stem} {ext} "
             "{sha8}. Header values are reduced to letters, digits, '.', '_' and '-', so "
             "none can leave OUT.  [default: {body_part}/{instrument}/{name}]")] = None,
    registry: Annotated[Path | None, typer.Option(
        help="Registry database.  [default: OUT/registry.sqlite]")] = None,
    config: Annotated[Path | None, typer.Option(
        help="YAML file with defaults (a 'sort:' section, e.g. configs/sort.yaml); "
             "command-line options win.")] = None,
    strict: Annotated[bool | None, typer.Option(
        "--strict/--no-strict",
        help="Exit 1 when any file went to _review or _unreadable.  [default: no-strict]")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print a JSON summary (counts and every file) instead of tables.")] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="No progress and no summary; just the exit code.")] = False,
) -> None:
    from xreg.config import load_sort_options
    from xreg.runner import run_sort

    with _errors():
        options = load_sort_options(config, {
            "weights": weights, "mode": mode.value if mode else None,
            "dry_run": dry_run or None, "batch_size": batch_size, "workers": workers,
            "device": device.value if device else None, "min_confidence": min_confidence,
            "min_age": min_age, "layout": layout, "registry": registry, "strict": strict,
        })
        with _progress(quiet or as_json) as reporter:
            result = run_sort(in_dir, out_dir, options, reporter)
    code = _sort_exit_code(result.counts, options.strict)
    if as_json:
        payload = result.to_dict() | {"exit_code": code}
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
    elif not quiet:
        _print_sort_summary(result, out_dir)
    raise typer.Exit(code)


def _sort_exit_code(counts: Any, strict: bool) -> int:
    if counts.get("failed", 0):
        return EXIT_ATTENTION
    if strict and (counts.get("review", 0) or counts.get("unreadable", 0)):
        return EXIT_ATTENTION
    return EXIT_OK


class _Reporter:
    """Rich bar on a terminal; plain periodic log lines otherwise (cron, CI)."""

    def __init__(self, progress: Progress | None, quiet: bool,
                 description: str = "sorting") -> None:
        self.progress, self.quiet, self.description = progress, quiet, description
        self.total = self.done = 0
        self.task: Any = None
        self.last_log = self.started = time.monotonic()

    def start(self, total: int) -> None:
        self.total = total
        if self.progress is not None:
            self.task = self.progress.add_task(self.description, total=total)
        elif not self.quiet:
            err.print(f"xreg: {total} file(s) to sort", highlight=False)

    def advance(self, outcome: Any) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress.advance(self.task)
            return
        now = time.monotonic()
        if not self.quiet and (now - self.last_log >= 10 or self.done == self.total):
            rate = self.done / max(now - self.started, 1e-9)
            err.print(f"xreg: {self.done}/{self.total} files ({rate:.1f}/s)", highlight=False)
            self.last_log = now


@contextmanager
def _progress(quiet: bool, description: str = "sorting") -> Iterator[_Reporter]:
    if quiet or not err.is_terminal:
        yield _Reporter(None, quiet, description)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        yield _Reporter(progress, quiet, description)


def _print_sort_summary(result: Any, out_dir: Path) -> None:
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
    out.print(table)
    for o in result.outcomes:
        if o.status == "failed":
            err.print(f"[red]failed:[/] {o.source}: {o.error}", highlight=False)
    if result.recovered:
        out.print(f"finished {result.recovered} placement(s) left by an interrupted run")


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
    contact_sheet: Annotated[Path | None, typer.Option(
        help="Also write a PNG grid of every class x view x instrument.")] = None,
    workers: Annotated[int | None, typer.Option(
        help="Rendering processes.  [default: CPU count]", min=1)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress, no summary.")] = False,
) -> None:
    from xreg.synth.generate import generate_dataset

    kinds = tuple(f.strip() for f in formats.split(",") if f.strip())
    with _errors(), _progress(quiet or as_json or not err.is_terminal, "rendering") as reporter:
        summary = generate_dataset(
            out_dir, count, seed, size=size, formats=kinds, instrument_rate=instrument_rate,
            hip_pairs=hip_pairs, fracture_rate=fracture_rate, workers=workers,
            contact_sheet=contact_sheet, reporter=reporter)
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
    out.print(f"{summary.instrument} with instrument; {summary.hip_pairs} hip pair(s), "
              f"{summary.fractures} fractured; {formats_line}; {summary.seconds:.1f} s")
    if summary.contact_sheet:
        out.print(f"contact sheet: {summary.contact_sheet}")


@registry_app.command("stats")
def registry_stats(
    out_dir: Annotated[Path, typer.Argument(metavar="OUT", help="A sorted folder.")],
    registry: Annotated[Path | None, typer.Option(help="Registry file if not in OUT.")] = None,
) -> None:
    """Counts of images per status, body part and instrument."""
    from xreg.registry import Registry

    with _errors(), Registry(registry or out_dir / "registry.sqlite", readonly=True) as reg:
        rows = reg.stats()
    table = Table(title="registry")
    for col in ("status", "body part", "instrument", "images", "source paths"):
        table.add_column(col, justify="right" if col in ("images", "source paths") else "left")
    for r in rows:
        instrument = {1: "instrument", 0: "no_instrument"}.get(r["instrument"], "")
        table.add_row(r["status"], r["body_part"] or "", instrument, str(r["images"]),
                      str(r["sources"]))
    table.add_row("total", "", "", str(sum(r["images"] for r in rows)),
                  str(sum(r["sources"] for r in rows)), style="bold")
    out.print(table)


@registry_app.command("runs")
def registry_runs(
    out_dir: Annotated[Path, typer.Argument(metavar="OUT", help="A sorted folder.")],
    registry: Annotated[Path | None, typer.Option(help="Registry file if not in OUT.")] = None,
) -> None:
    """Every run: when, by whom, with which model, and what it did."""
    from xreg.registry import Registry

    with _errors(), Registry(registry or out_dir / "registry.sqlite", readonly=True) as reg:
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
        "--format", help="Output format.")] = ExportFormat.csv,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write here instead of standard output.")] = None,
    registry: Annotated[Path | None, typer.Option(help="Registry file if not in OUT.")] = None,
) -> None:
    """Every image row with its source paths, as CSV or JSON."""
    from xreg.export import write_export
    from xreg.registry import Registry

    with _errors(), Registry(registry or out_dir / "registry.sqlite", readonly=True) as reg:
        if output is None:
            write_export(reg.iter_images(), fmt.value, sys.stdout)
        else:
            with open(output, "w", newline="", encoding="utf-8") as fh:
                write_export(reg.iter_images(), fmt.value, fh)


@weights_app.command("info")
def weights_info(
    path: Annotated[Path, typer.Argument(help="A checkpoint file.")],
) -> None:
    """Print a checkpoint's model card and sha256."""
    from xreg.checkpoint import load_checkpoint

    with _errors():
        loaded = load_checkpoint(path)
    sys.stdout.write(json.dumps(loaded.card.to_dict() | {"sha256": loaded.sha256},
                                indent=2, default=str) + "\n")


@weights_app.command("random")
def weights_random(
    path: Annotated[Path, typer.Argument(help="Where to write the checkpoint.")],
    arch: Annotated[str, typer.Option(help="Backbone architecture.")] = "mobilenet_v2",
    input_size: Annotated[int, typer.Option(help="Model input size in pixels.")] = 224,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Write a RANDOM-weight checkpoint (tests, benchmarks, the placeholder demo)."""
    from xreg.checkpoint import make_random_checkpoint

    with _errors():
        sha = make_random_checkpoint(path, arch=arch, input_size=input_size, seed=seed)
    err.print(f"wrote {path} (random weights: predictions are meaningless) sha256={sha}")
