"""``xreg explain``: heatmap overlays that show what a prediction rests on."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from xreg.cli._common import EXIT_ATTENTION, EXIT_OK, app, err, handle_errors, out, require_train

EXPLAIN_HELP = """Write a heatmap overlay for each IMAGE: where the model looked for its answer.

The overlay is the film with the heatmap over it and a caption (head: label
(probability)), written to --out as <name>_<head>_<method>.png; the paths are
printed. --head picks the head (default body_part; the hip model's is
fracture) and the class explained is the predicted one.

Methods (captum): integrated-gradients (default; 8 steps from a black film)
points best at small things such as hardware; saliency is cheaper and
noisier; gradcam is coarse at small input sizes (a 4x4 map at 128 px).

With a two-view hip checkpoint, give IMAGEs in pairs (AP then lateral): the
joined two-view input is explained.
"""


class Method(str, Enum):
    gradcam = "gradcam"
    saliency = "saliency"
    integrated_gradients = "integrated-gradients"


@app.command("explain", help=EXPLAIN_HELP)
def explain_cmd(
    images: Annotated[list[Path], typer.Argument(metavar="IMAGE...", help="Films to explain.")],
    weights: Annotated[Path | None, typer.Option(
        help="Checkpoint.  [default: XREG_WEIGHTS, else the shipped one]",
        envvar="XREG_WEIGHTS")] = None,
    head: Annotated[str | None, typer.Option(
        help="Head to explain: body_part, instrument, view, fracture.")] = None,
    method: Annotated[Method, typer.Option(help="Attribution method.")] =
        Method.integrated_gradients,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the overlays.")] =
        Path("heatmaps"),
    batch_size: Annotated[int, typer.Option(help="Images per batch.", min=1)] = 16,
    dicom_out: Annotated[bool, typer.Option(
        "--dicom-out", help="For each DICOM IMAGE, also write a DICOM Structured Report of the "
                            "findings and the overlay as a Secondary Capture image (new series "
                            "of its study) to --out/_dicom/.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    require_train("xreg explain")
    from xreg.errors import ConfigError
    from xreg.explain.heatmaps import explain_files, explain_pairs
    from xreg.model.checkpoint import default_weights, load_checkpoint
    from xreg.sort.placement import sanitise

    with handle_errors():
        loaded = load_checkpoint(weights or default_weights())
        chosen = head or loaded.card.heads[0].name
        loaded.card.head(chosen)  # ConfigError for a head the model lacks
        if loaded.card.views == 2:
            if len(images) % 2:
                raise ConfigError("a two-view model needs IMAGEs in pairs: AP then lateral")
            pairs = list(zip(images[0::2], images[1::2]))
            targets = [out_dir / f"{sanitise(a.stem)}+{sanitise(b.stem)}_{chosen}_"
                       f"{method.value}.png" for a, b in pairs]
            results = explain_pairs(pairs, loaded, targets, method=method.value,
                                    batch_size=batch_size)
        else:
            targets, seen = [], set()
            for p in images:
                name = f"{sanitise(p.stem)}_{chosen}_{method.value}"
                while name in seen:
                    name += "_"
                seen.add(name)
                targets.append(out_dir / f"{name}.png")
            results = explain_files(images, loaded, targets, head=chosen,
                                    method=method.value, batch_size=batch_size)
        if dicom_out and loaded.card.views == 2:
            raise ConfigError("--dicom-out explains single films; for hip pairs use "
                              "`xreg sort --dicom-out --hip`")
        dicom = _dicom_results(images, results, loaded, out_dir) if dicom_out else {}
    rows: list[dict[str, Any]] = [{
        "source": r.source, "overlay": str(r.overlay) if r.overlay else None,
        "label": r.attribution.label if r.attribution else None,
        "probability": r.attribution.probability if r.attribution else None,
        "error": r.error, "dicom": dicom.get(r.source, [])} for r in results]
    if as_json:
        sys.stdout.write(json.dumps({"head": chosen, "method": method.value,
                                     "results": rows}, indent=2) + "\n")
    else:
        for r in rows:
            if r["overlay"]:
                out.print(f"{r['source']}: {chosen} {r['label']} ({r['probability']:.2f}) "
                          f"-> {r['overlay']}", highlight=False)
                for path in r["dicom"]:
                    out.print(f"  -> {path}", highlight=False)
            else:
                err.print(f"[yellow]unreadable:[/] {r['source']}: {r['error']}",
                          highlight=False)
    raise typer.Exit(EXIT_ATTENTION if any(r["error"] for r in rows) else EXIT_OK)


def _dicom_results(images: list[Path], results: list[Any], loaded: Any,
                   out_dir: Path) -> dict[str, list[str]]:
    """SR + SC for each DICOM input: the model's findings and its overlay."""
    from xreg.inference.predict import SourceFile, predict_files
    from xreg.sort.dicom_out import write_results

    done: dict[str, list[str]] = {}
    sources = [SourceFile(p, p.stat().st_size, p.stat().st_mtime_ns) for p in images]
    preds = [p for batch in predict_files(sources, loaded) for p in batch]
    for path, pred, explained in zip(images, preds, results):
        if pred.meta is None or pred.meta.format != "dicom" or not pred.labels:
            continue
        written = write_results(out_dir, path, pred.probabilities, pred.labels,
                                loaded.card.name, loaded.sha256, explained.overlay)
        done[explained.source] = [str(out_dir / w.path) for w in written]
    return done
