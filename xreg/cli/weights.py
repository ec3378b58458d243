"""``xreg weights``: inspect, export, create and calibrate checkpoints."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from xreg.cli._common import (
    err,
    handle_errors,
    out,
    require_train,
    weights_app,
)


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
