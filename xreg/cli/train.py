"""``xreg train``: the thesis recipe on labelled radiographs -> a checkpoint."""

from __future__ import annotations

import json
import math
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

from xreg.cli._common import Device, app, err, handle_errors, out, require_train

TRAIN_HELP = """Train on labelled radiographs: body part + instrument (+ view), or hip fracture.

CONFIG is a YAML recipe; configs/bodypart_instrument.yaml is the thesis's
(ImageNet transfer learning, Adam lr 2e-5 halved at milestones, batch 16,
label smoothing 0.1, weighted sampling for instrument, flips and 90-degree
rotations, early stopping on validation loss).

DATA is a CSV manifest (path, body_part, instrument, optional patient_id,
split and view; `xreg synth` writes one) or a folder in sort layout,
<body_part>/<instrument|no_instrument>/... . A folder `xreg sort` wrote is
labelled from its registry: a review made in `xreg serve` wins over the
model's label, films still in _review count only once reviewed, and
--reviewed-only keeps the reviewed films alone
(`xreg registry export OUT --reviewed --format manifest` writes the same rows).
For configs/hip_fracture.yaml (task: hip_fracture) DATA is a pairs CSV
(study, ap_path, lateral_path, fracture, optional patient_id, split), e.g. the hip_pairs.csv of
`xreg synth --hip-pairs`: AP and lateral joined side by side, as in the thesis.

Several sources at once: instead of --data, the config lists `datasets:`,
each a manifest/folder (`path`, relative to the config) or phantoms rendered
on the fly (`synth: {count, seed, out_of_scope, size}`), with a sampling
`weight`. A head whose label a row lacks (no view, no fracture label) is
masked for that row. body_part may be a set (`hand|wrist`): the loss is
minus the log of the set's summed probability.

Without a split column the items are split 70/20/10 by patient and
near-duplicate cluster (`dup_of`), so neither spans two splits; the test
split is scored only once, at the end.

Next to --out, a run folder (NAME.run/) keeps split.csv, log.csv, log.json,
a decode cache and the state that --resume continues from after an
interruption. The checkpoint's card records data, split, class counts,
recipe and the test metrics with 95% bootstrap CIs; `xreg sort --weights`
uses it directly.

Exit codes: 0 trained; 2 usage, config, data or weights error.
"""


@app.command("train", help=TRAIN_HELP)
def train_cmd(
    config: Annotated[Path, typer.Argument(help="Training recipe (YAML).")],
    data: Annotated[Path | None, typer.Option(
        help="Manifest CSV or sort-layout folder (pairs CSV for hip_fracture). Without "
             "it, the config's datasets: list is used.")] = None,
    out_path: Annotated[Path, typer.Option(
        "--out", help="Checkpoint to write (default: weights/<config name>.pt).")] = Path(),
    run_dir: Annotated[Path | None, typer.Option(
        help="Run folder for logs, split, cache and resume state (default: OUT "
             "with .run instead of .pt).")] = None,
    device: Annotated[Device, typer.Option(
        help="Where to train; auto picks CUDA when present.")] = Device.auto,
    resume: Annotated[bool, typer.Option(
        help="Continue the interrupted run in the run folder.")] = False,
    overwrite: Annotated[bool, typer.Option(
        help="Replace an existing checkpoint and start the run folder afresh.")] = False,
    epochs: Annotated[int | None, typer.Option(
        help="Override the config's max_epochs (also on --resume, to extend or cut a "
             "run short).", min=1)] = None,
    workers: Annotated[int, typer.Option(help="Decoding threads.", min=1)] = 2,
    reviewed_only: Annotated[bool, typer.Option(
        "--reviewed-only", help="With --data OUT (a sorted folder): train only on the films "
                                "a person reviewed in `xreg serve`.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    require_train("xreg train")
    from xreg.train import load_train_config, train

    with handle_errors():
        recipe = load_train_config(config, {"max_epochs": epochs,
                                            "reviewed_only": reviewed_only or None})
        if out_path == Path():
            out_path = Path("weights") / f"{recipe.name or config.stem}.pt"
        try:
            with _progress(quiet or as_json) as callbacks:
                result = train(recipe, data, out_path, run_dir=run_dir,
                               device=device.value, resume=resume, overwrite=overwrite,
                               workers=workers, callbacks=callbacks)
        except KeyboardInterrupt:
            # Each finished epoch was saved; say how to go on rather than dump a traceback.
            err.print("[yellow]interrupted:[/] finished epochs are saved in the run folder; "
                      "run the same command with --resume to continue", highlight=False)
            raise typer.Exit(130) from None
    summary = {
        "checkpoint": str(result.checkpoint), "sha256": result.sha256,
        "run_dir": str(result.run_dir), "card": result.card.to_dict(),
        "skipped": [{"path": p, "reason": r} for p, r in result.dropped],
    }
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2, allow_nan=False,
                                    default=str) + "\n")
        return
    _print_summary(result)


@contextmanager
def _progress(quiet: bool) -> Iterator[Any]:
    from xreg.train import Callbacks

    if quiet:
        yield Callbacks()
        return
    if not err.is_terminal:  # cron, CI: one line per epoch
        yield Callbacks(
            message=lambda text: err.print(f"xreg: {text}", highlight=False),
            decode_start=lambda n: err.print(f"xreg: decoding {n} images once",
                                             highlight=False),
            epoch_end=lambda e: err.print(f"xreg: {_epoch_line(e)}", highlight=False),
        )
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[stats]}"), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=err, transient=False) as progress:
        state: dict[str, Any] = {}

        def decode_start(n: int) -> None:
            state["task"] = progress.add_task("decoding", total=n, stats="")

        def decoded() -> None:
            progress.advance(state["task"])

        def epoch_start(epoch: int, max_epochs: int, steps: int) -> None:
            state["task"] = progress.add_task(f"epoch {epoch}/{max_epochs}", total=steps,
                                              stats="")

        def step(loss: float, acc: float) -> None:
            progress.update(state["task"], advance=1,
                            stats=f"loss {loss:.3f} body-part acc {acc:.3f}")

        def epoch_end(entry: Any) -> None:
            progress.update(state["task"], stats=_epoch_line(entry))

        yield Callbacks(message=lambda text: progress.console.print(text, highlight=False),
                        decode_start=decode_start, decoded=decoded,
                        epoch_start=epoch_start, step=step, epoch_end=epoch_end)


def _epoch_line(e: Any) -> str:
    accuracy = ", ".join(f"{k[4:]} {v:.3f}" for k, v in e.accuracy.items()
                         if k.startswith("val_") and not math.isnan(v))
    return (f"epoch {e.epoch}: train loss {e.train_loss:.3f}, val loss {e.val_loss:.3f}, "
            f"val acc {accuracy}{' (best)' if e.best else ''} [{e.seconds:.0f}s]")


def _print_summary(result: Any) -> None:
    from xreg.evaluation.report import format_estimate

    training = result.card.training
    out.print(f"wrote {result.checkpoint} (sha256 {result.sha256[:12]}); "
              f"run folder {result.run_dir}", highlight=False)
    out.print(f"{training['epochs_run']} epoch(s), best epoch {training['best_epoch']}"
              f"{', stopped early' if training['stopped_early'] else ''}; init "
              f"{training['init']}; thresholds {result.card.thresholds}", highlight=False)
    ev = result.evaluation
    if ev is None:
        out.print("no test split: nothing scored", highlight=False)
        return
    table = Table(title="Test split")
    table.add_column("metric")
    table.add_column("value (95% CI)", justify="right")
    if hasattr(ev, "studies"):  # a hip fracture model
        for key in ("auc", "sensitivity", "specificity", "accuracy"):
            table.add_row(f"fracture {key}", format_estimate(ev.metrics[key]))
        out.print(table)
        return
    table.add_row("body part MCC", format_estimate(ev.body_part.mcc))
    table.add_row("body part accuracy", format_estimate(ev.body_part.accuracy))
    table.add_row("body part log loss", format_estimate(ev.body_part.log_loss))
    if ev.instrument is not None:
        for key in ("auc", "sensitivity", "specificity"):
            table.add_row(f"instrument {key}", format_estimate(ev.instrument[key]))
    out.print(table)
