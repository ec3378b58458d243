"""A contact sheet: every class x view x instrument as one captioned PNG grid.

Lets a person judge the phantoms at a glance: rows are body parts, columns
AP, AP with an instrument, LAT, LAT with an instrument; two extra rows show
hip fractures (an AP+LAT pair per kind) and non-instrument distractors.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from xreg.errors import ConfigError
from xreg.synth.hardware import compatible_instruments
from xreg.synth.spec import BODY_PARTS, FRACTURES, Phantom, PhantomSpec

_CAPTION = 16
_COLUMNS = 4
_DISTRACTOR_EXAMPLES = (("wrist", "AP", ("cast",)), ("hand", "AP", ("ring",)),
                        ("shoulder", "AP", ("ecg_electrode",)), ("hip", "AP", ("button", "zip")))


def sheet_specs(seed: int = 0, tile: int = 192) -> list[tuple[PhantomSpec, str]]:
    """The specs of the sheet, row by row, each with its caption (pure)."""
    rng = np.random.default_rng([seed, 0x5EE7])

    def spec(body_part: str, view: str, **kw: object) -> PhantomSpec:
        return PhantomSpec(body_part=body_part, view=view, laterality="L" if view == "AP"
                           else "R", seed=int(rng.integers(2**31 - 1)), size=tile,
                           **kw)  # type: ignore[arg-type]

    cells: list[tuple[PhantomSpec, str]] = []
    for body_part in BODY_PARTS:
        kinds = compatible_instruments(body_part)
        for view in ("AP", "LAT"):
            kind = kinds[0] if view == "AP" else kinds[1 % len(kinds)]
            cells.append((spec(body_part, view), f"{body_part} {view}"))
            cells.append((spec(body_part, view, instrument=kind), f"{body_part} {view} +{kind}"))
    for fracture in FRACTURES:
        patient = int(rng.integers(2**31 - 1))
        for view in ("AP", "LAT"):
            cells.append((spec("hip", view, fracture=fracture, patient_seed=patient),
                          f"hip {view} fx:{fracture}"))
    for body_part, view, distractors in _DISTRACTOR_EXAMPLES:
        cells.append((spec(body_part, view, distractors=distractors),
                      f"{body_part} {'+'.join(distractors)}"))
    return cells


def write_contact_sheet(
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    tile: int = 192,
    renderer: Callable[[PhantomSpec], Phantom] | None = None,
) -> Path:
    """Render :func:`sheet_specs` and save them as one 8-bit PNG grid at ``path``."""
    if tile < 32:
        raise ConfigError(f"contact sheet tile must be at least 32 pixels, not {tile}")
    if renderer is None:
        from xreg.synth.render import render_phantom

        renderer = render_phantom
    cells = sheet_specs(seed, tile)
    rows = -(-len(cells) // _COLUMNS)
    sheet = Image.new("L", (_COLUMNS * tile, rows * (tile + _CAPTION)), color=32)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for index, (spec, caption) in enumerate(cells):
        image = np.clip(renderer(spec).image, 0.0, 1.0)
        tile_image = Image.fromarray(np.rint(image * 255).astype(np.uint8))
        if tile_image.size != (tile, tile):
            tile_image = tile_image.resize((tile, tile))
        x, y = (index % _COLUMNS) * tile, (index // _COLUMNS) * (tile + _CAPTION)
        sheet.paste(tile_image, (x, y + _CAPTION))
        draw.text((x + 3, y + 2), caption, fill=255, font=font)
        draw.rectangle((x, y, x + tile - 1, y + tile + _CAPTION - 1), outline=90)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(target, format="PNG")
    return target
