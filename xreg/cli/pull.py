"""``xreg pull``: query a DICOMweb server, retrieve what OUT lacks, sort it."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from xreg.cli._common import (
    EXIT_ATTENTION,
    EXIT_OK,
    RUNTIME_HELP,
    Device,
    Runtime,
    app,
    err,
    handle_errors,
    out,
)
from xreg.cli._common import _Reporter as _SortReporter
from xreg.cli.sort import HeaderCheck, _sort_exit_code

PULL_HELP = """Query a DICOMweb server (QIDO-RS), retrieve (WADO-RS) the instances OUT does
not hold yet, and sort them into OUT as `xreg sort` does.

URL is the server's DICOMweb root, e.g. http://pacs:8042/dicom-web. Instances
whose SOP Instance UID the registry already holds are not transferred again,
so the same pull run twice transfers nothing the second time. Each instance
is retrieved whole (retried with backoff, see --tries), written to the spool
inside OUT under a temp name, fsynced and renamed, then sorted with the
spool's --mode move guarantees; the registry records the URL, without
credentials, as each film's origin and "pull" as the run's intake.

Credentials: HTTP basic in the URL (https://user:password@host/dicom-web), or
a bearer token from the environment variable named by --token-env (never a
flag value). Neither is ever printed or recorded.

Exit codes: 0 done; 1 some instances could not be retrieved after --tries, or
a file could not be placed (or, with --strict, some went to _review or
_unreadable); 2 usage, config, weights or server error; 3 OUT is locked
(another run or a listener).
"""

_DATE = ["%Y-%m-%d"]


@app.command("pull", help=PULL_HELP)
def pull_cmd(
    url: Annotated[str, typer.Argument(metavar="URL", help="DICOMweb root of the server.")],
    out_dir: Annotated[Path, typer.Argument(metavar="OUT", help="Sorted output folder.")],
    since: Annotated[datetime | None, typer.Option(
        formats=_DATE, help="Studies on or after this date (StudyDate, YYYY-MM-DD).")] = None,
    until: Annotated[datetime | None, typer.Option(
        formats=_DATE, help="Studies on or before this date (StudyDate, YYYY-MM-DD).")] = None,
    modality: Annotated[list[str] | None, typer.Option(
        help="Only instances of this modality, e.g. CR or DX (repeatable).")] = None,
    study: Annotated[list[str] | None, typer.Option(
        help="Only this StudyInstanceUID (repeatable).")] = None,
    token_env: Annotated[str | None, typer.Option(
        help="Environment variable holding a bearer token (Authorization: Bearer); "
             "named here, it must be set.  [default: XREG_DICOMWEB_TOKEN, if set]")] = None,
    tries: Annotated[int, typer.Option(
        help="Attempts per instance before it counts as failed (waits 1 s, 2 s, ... "
             "between).", min=1, max=10)] = 3,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Query and count what would be transferred; retrieve, sort "
                          "and record nothing.")] = False,
    weights: Annotated[Path | None, typer.Option(
        help="Model checkpoint (.pt) to classify with.  [default: XREG_WEIGHTS, else "
             "the shipped xreg/weights/bodypart_sites.pt]", envvar="XREG_WEIGHTS")] = None,
    batch_size: Annotated[int | None, typer.Option(
        help="Images per model batch.  [default: 16]", min=1)] = None,
    workers: Annotated[int | None, typer.Option(
        help="Threads decoding images while the model runs.  [default: 2]", min=1)] = None,
    device: Annotated[Device | None, typer.Option(
        help="Where the model runs; auto picks CUDA when present.  [default: auto]")] = None,
    runtime: Annotated[Runtime | None, typer.Option(help=RUNTIME_HELP)] = None,
    min_confidence: Annotated[float | None, typer.Option(
        help="Body-part probability below which an image goes to _review.  "
             "[default: the model card's threshold]", min=0.0, max=1.0)] = None,
    layout: Annotated[str | None, typer.Option(
        help="Destination template under OUT, as for xreg sort.  "
             "[default: {body_part}/{instrument}/{name}]")] = None,
    registry: Annotated[Path | None, typer.Option(
        help="Registry database.  [default: OUT/registry.sqlite]")] = None,
    header_vocabulary: Annotated[Path | None, typer.Option(
        help="YAML that maps DICOM header terms to body parts, as for xreg sort.")] = None,
    header_check: Annotated[HeaderCheck | None, typer.Option(
        help="review: a film whose header names another body part than the model goes "
             "to _review; off: the header is only audited.  [default: review]")] = None,
    config: Annotated[Path | None, typer.Option(
        help="YAML file with sort defaults (its 'sort:' section); command-line options "
             "win.")] = None,
    strict: Annotated[bool | None, typer.Option(
        "--strict/--no-strict",
        help="Exit 1 when any film went to _review or _unreadable.  "
             "[default: no-strict]")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print a JSON summary instead of tables.")] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="No progress and no summary; just the exit code.")] = False,
) -> None:
    from xreg.config import load_sort_options
    from xreg.pacs.pull import PullQuery, pull

    with handle_errors():
        options = load_sort_options(config, {
            "weights": weights, "dry_run": dry_run or None, "batch_size": batch_size,
            "workers": workers, "device": device.value if device else None,
            "runtime": runtime.value if runtime else None, "min_confidence": min_confidence,
            "layout": layout, "registry": registry, "strict": strict,
            "header_vocabulary": header_vocabulary,
            "header_check": header_check.value if header_check else None,
        })
        query = PullQuery(since.date() if since else None, until.date() if until else None,
                          tuple(m.upper() for m in modality or ()), tuple(study or ()))
        with _reporters(quiet or as_json) as (fetching, sorting):
            result = pull(url, out_dir, query, options, token_env=token_env,
                          reporter=fetching, sort_reporter=sorting, tries=tries)
    code = EXIT_ATTENTION if result.failed else EXIT_OK
    if result.sort is not None:
        code = max(code, _sort_exit_code(result.sort.counts, options.strict))
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict() | {"exit_code": code}, indent=2) + "\n")
    elif not quiet:
        _print_pull_summary(result, out_dir)
    raise typer.Exit(code)


def _print_pull_summary(result: Any, out_dir: Path) -> None:
    if result.dry_run:
        out.print(f"dry run: {result.queried} instance(s) found at {result.origin}, "
                  f"{result.held} already held, {result.to_retrieve} would be retrieved",
                  highlight=False)
        return
    if result.queried and not result.to_retrieve:
        out.print(f"nothing to transfer: all {result.queried} instance(s) found at "
                  f"{result.origin} are already held", highlight=False)
    elif not result.queried:
        out.print(f"nothing to transfer: no instance at {result.origin} matches",
                  highlight=False)
    table = Table(title="xreg pull", caption=str(out_dir))
    table.add_column(f"from {result.origin}")
    table.add_column("instances", justify="right")
    rows = [("queried", result.queried), ("already held", result.held),
            ("retrieved", result.retrieved), ("  of which retried", result.retried),
            ("failed", len(result.failed))]
    if result.sort is not None:
        rows += [(f"sort: {status}", n) for status, n in result.sort.counts.items() if n]
    for label, n in rows:
        if n or label in ("queried", "retrieved", "failed"):
            table.add_row(label, str(n))
    out.print(table)
    for f in result.failed:
        err.print(f"[red]failed:[/] instance {escape(f.sop)}: {escape(str(f.error))} "
                  f"after {f.tries} tries; the next pull tries again", highlight=False)
    if result.sort is not None:
        for o in result.sort.outcomes:
            if o.status == "failed":
                err.print(f"[red]failed to place:[/] {escape(o.source)}: {escape(str(o.error))}",
                          highlight=False)


class _RetrieveBar:
    """A rich bar on a terminal; a log line every 10 s otherwise (cron, CI)."""

    def __init__(self, progress: Progress | None, quiet: bool) -> None:
        self.progress, self.quiet = progress, quiet
        self.total = self.done = self.failed = 0
        self.task: Any = None
        self.last_log = self.started = time.monotonic()

    def start(self, total: int) -> None:
        self.total = total
        if self.progress is not None:
            self.task = self.progress.add_task("retrieving", total=total)
        elif not self.quiet and total:
            err.print(f"xreg: {total} instance(s) to retrieve", highlight=False)

    def advance(self, outcome: Any) -> None:
        self.done += 1
        self.failed += outcome.error is not None
        if outcome.error is not None and not self.quiet:
            err.print(f"xreg: retrieve of {escape(outcome.sop)} failed after {outcome.tries} "
                      f"tries: {escape(outcome.error)}", highlight=False)
        if self.progress is not None:
            self.progress.advance(self.task)
            return
        now = time.monotonic()
        if not self.quiet and (now - self.last_log >= 10 or self.done == self.total):
            err.print(f"xreg: {self.done}/{self.total} retrieved or tried "
                      f"({self.failed} failed)", highlight=False)
            self.last_log = now


@contextmanager
def _reporters(quiet: bool) -> Iterator[tuple[_RetrieveBar, _SortReporter]]:
    """The retrieve bar and the sort bar, on one rich display (two would clash)."""
    if quiet or not err.is_terminal:
        yield _RetrieveBar(None, quiet), _SortReporter(None, quiet)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        yield _RetrieveBar(progress, quiet), _SortReporter(progress, quiet)
