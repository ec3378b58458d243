"""``xreg adapt``: tune a model to one hospital from the films reviewed there."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from xreg.cli._common import EXIT_ATTENTION, app, err, handle_errors, out, require_train

ADAPT_HELP = """Adapt a model to this hospital from the films reviewed in OUT.

OUT is a folder `xreg sort` wrote, whose films a person reviewed in
`xreg serve` (or whose labels came in with `xreg registry import-reviews`).
Only reviews are truth: a model label nobody confirmed never trains, and an
instrument or fracture the reviewer left unjudged stays unknown.

By default every member's heads learn the reviewed films over the base's
frozen features, while keeping what the base knew: the base's training
films ride along as features and labels (the replay file shipped beside
the weights, `<name>.replay.npz`; no film), with the base's own answers on
them as a second target. --replay-data adds labelled films of your own (a
manifest, a sorted folder, or a public source's labels.csv as it comes).
The site's reviewed films join the model's memory of familiar films, and
min_confidence (never below the base's) and the guard are chosen on
out-of-fold answers for at most 4% wrong folder.

The reviewed films are split by patient (else study, else source folder),
stratified by class: about a quarter is held out, and the command says
which classes the hold-out cannot judge. The verdict: the procedure trained
without the hold-out must sort it no worse than the base (a film in a wrong
folder costs two sorted right), and the model written (the same procedure
on every reviewed film) must not forget: on the replay hold-out (films the
base knew, trained on by neither) it may lose at most 2 points of correct
folder and add at most 1 point of wrong folder. The reviews must also
represent the site: of its unreviewed films, at most 30% may be unlike every
reviewed film (a class nobody reviewed would be filed by what the model
learned from the others; review a uniform sample, the review page's default
order). Otherwise it is NOT written and the command exits 1 saying why,
unless --force. The card records all three.

Writes --out (a checkpoint), its ONNX export, its replay file and a
Markdown card beside it. Use it with `xreg sort --weights` and
`xreg serve --weights`. Writing is atomic, and adapt leaves no temporary
files behind, even when killed (phantoms, when used, are rendered in memory).

Exit codes: 0 written; 1 refused (worse than the base on the hold-out,
forgetting, or reviews unlike the site); 2 usage, data or weights error.
"""


@app.command("adapt", help=ADAPT_HELP)
def adapt_cmd(
    out_dir: Annotated[Path, typer.Argument(metavar="OUT", help="A sorted, reviewed folder.")],
    target: Annotated[Path, typer.Option("--out", "-o", help="Where to write the adapted "
                                         "checkpoint (.pt).")],
    weights: Annotated[Path | None, typer.Option(help="The base checkpoint (default: the "
                                                 "shipped model).")] = None,
    replay_data: Annotated[list[Path] | None, typer.Option(
        "--replay-data", help="Labelled films replayed alongside the reviews (repeatable): "
        "a manifest, a sorted folder, or a source's labels.csv as it comes (views other "
        "than AP/LAT read as unknown, body parts the model lacks as other).")] = None,
    replay_flag: Annotated[bool, typer.Option(
        "--replay/--no-replay", help="Replay the base's training films shipped beside its "
        "weights (features, no films).")] = True,
    force: Annotated[bool, typer.Option(help="Write even a model worse than the base on "
                                        "the hold-out (or with nothing to check it on).")
                     ] = False,
    holdout: Annotated[float, typer.Option(help="Share of reviewed films held out.")] = 0.25,
    epochs: Annotated[int, typer.Option(help="Passes over the reviewed training films "
                                        "(--layers all).")] = 15,
    steps: Annotated[int | None, typer.Option(help="Optimiser steps per training (heads: default "
                                                 "800; all: overrides --epochs).")
                     ] = None,
    layers: Annotated[str, typer.Option(
        help="What trains: heads (over the base's frozen features; the default), all "
             "(the whole network, for a base without a feature bank), or auto (heads, "
             "unless --replay-data is given for a base with no bank and no replay file).")
                      ] = "auto",
    lr: Annotated[float | None, typer.Option(
        help="Learning rate (Adam); default 2e-4 for the whole network, 3e-3 for the "
             "heads alone.")] = None,
    phantoms: Annotated[int, typer.Option(
        help="Phantoms of every class rendered in memory to keep the base's answers when "
             "there is nothing to replay (0: none).")] = 300,
    seed: Annotated[int, typer.Option(help="Seed for the split and the training.")] = 0,
    threads: Annotated[int, typer.Option(help="CPU threads for torch.")] = 2,
    registry: Annotated[Path | None, typer.Option(help="Registry file if not in OUT.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    _torch_cache_outside_tmp()
    require_train("xreg adapt", ("torch", "torchvision", "onnx"))
    import torch

    from xreg.model.checkpoint import default_weights, load_checkpoint
    from xreg.train.adapt import AdaptOptions, adapt, site_films, write_adapted

    with handle_errors():
        if target.suffix != ".pt":
            raise _usage("--out must name a .pt file")
        if weights is not None and target.resolve() == weights.resolve():
            raise _usage("--out must not overwrite the base checkpoint")
        torch.set_num_threads(max(1, threads))
        base = load_checkpoint(weights or default_weights())
        labels = base.card.head("body_part").labels
        reviewed, unreviewed = site_films(out_dir, labels, registry)
        replay_films = [_replay_film(im) for path in replay_data or ()
                        for im in _manifest(path, labels)]
        fixed = {} if steps is None else {"min_steps": steps, "max_steps": steps,
                                          "head_steps": steps}
        options = AdaptOptions(epochs=epochs, holdout=holdout, seed=seed, lr=lr, layers=layers,
                               phantoms=phantoms, replay=replay_flag,
                               workers=max(1, threads), **fixed)
        with _progress(quiet or as_json) as (stage, advance):
            result = adapt(base, reviewed, unreviewed, options, replay=replay_films,
                           on_stage=stage, on_advance=advance)
        written: dict[str, Any] = {}
        if result.accepted or force:
            sha, onnx, card = write_adapted(result, target)
            written = {"checkpoint": str(target), "sha256": sha, "onnx": str(onnx),
                       "card": str(card)}
    if as_json:
        out.print_json(json.dumps({**result.to_dict(), "written": written or None}))
    else:
        _print(result, written)
    if not written:
        err.print("[bold red]not written:[/] " + result.verdict.removeprefix("refused: ")
                  + "; review more films, or pass --force to write it anyway",
                  highlight=False)
        raise typer.Exit(EXIT_ATTENTION)


def _torch_cache_outside_tmp() -> None:
    """torch's first backward pass makes ``$TMPDIR/torchinductor_<user>``: point that
    cache at the user's cache folder (made only if torch ever writes to it), so adapt
    leaves nothing in the temp directory, however it ends."""
    import os

    if "torch" not in sys.modules and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache / "xreg" / "torchinductor")


def _usage(message: str) -> Exception:
    from xreg.errors import ConfigError

    return ConfigError(message)


def _manifest(path: Path, labels: Any) -> list[Any]:
    from xreg.datasets import load_labels

    return load_labels(path, labels, lenient=True)


def _replay_film(im: Any) -> Any:
    from xreg.train.adapt import Film

    return Film(Path(im.path), im.body_parts, im.instrument, im.fracture,
                group=im.patient_id or str(im.path))


@contextmanager
def _progress(quiet: bool) -> Iterator[tuple[Any, Any]]:
    if quiet:
        yield None, None
        return
    if not err.is_terminal:
        yield (lambda name, total: err.print(f"xreg: {name} {total or ''}".rstrip(),
                                             highlight=False)), None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=False) as progress:
        state: dict[str, Any] = {}

        def stage(name: str, total: int) -> None:
            state["task"] = progress.add_task(name, total=total or None)

        def advance() -> None:
            progress.advance(state["task"])

        yield stage, advance


def _print(result: Any, written: dict[str, Any]) -> None:
    c = result.counts
    out.print(f"base {result.base.card.name} (sha256 {result.base.sha256[:12]}); "
              f"{c['reviewed']} reviewed films: {c['train']} trained, {c['holdout']} held "
              f"out; {c.get('replay', 0)} training films of the base replayed, "
              f"{c['distilled_on']} more kept the base's answers; {result.seconds:.0f} s",
              highlight=False)
    table = Table(title="Hold-out (reviewed films that trained nothing)")
    for col in ("model", "films", "correct folder", "wrong folder", "review"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, fig in (("base", result.before), ("adapted", result.after)):
        table.add_row(name, str(fig["films"]), _cell(fig["correct_folder"], fig["correct"]),
                      _cell(fig["wrong_folder"], fig["wrong"]),
                      _cell(fig["review_rate"], fig["review"]))
    out.print(table)
    if result.forgetting:
        known = Table(title="Films the base knew (replay hold-out: forgetting)")
        for col in ("model", "films", "correct folder", "wrong folder", "review"):
            known.add_column(col, justify="left" if col == "model" else "right")
        for name, fig in (("base", result.forgetting["before"]),
                          ("adapted", result.forgetting["after"])):
            known.add_row(name, str(fig["films"]), _cell(fig["correct_folder"], fig["correct"]),
                          _cell(fig["wrong_folder"], fig["wrong"]),
                          _cell(fig["review_rate"], fig["review"]))
        out.print(known)
    else:
        out.print("forgetting not measured: nothing to replay (no replay file, no "
                  "--replay-data)", highlight=False)
    if c.get("unlike_reviewed") is not None:
        out.print(f"of {c['unreviewed_seen']} unreviewed films of the site, "
                  f"{c['unlike_reviewed']:.0%} are unlike every reviewed film", highlight=False)
    for note in result.notes:
        err.print(f"note: {note}", highlight=False)
    out.print(f"{result.verdict}", highlight=False)
    card = result.loaded.card
    out.print(f"min_confidence {card.thresholds.get('min_confidence')}, guard "
              f"{ {k: v for k, v in card.guard.items() if k in _GUARD_KEYS} } (chosen on "
              "out-of-fold answers)", highlight=False)
    if written:
        out.print(f"wrote {written['checkpoint']} (sha256 {written['sha256'][:12]}), "
                  f"{written['onnx']} and {written['card']}", highlight=False)


_GUARD_KEYS = ("agree_min", "distance_max", "energy_max")


def _cell(share: float | None, count: int) -> str:
    return f"– ({count})" if share is None else f"{share:.3f} ({count})"
