"""One hip study once scored: its score and what ``xreg hip`` leaves of it (films
placed under ``OUT/hip/<decision>/<study>``, the joined two-view image, a heatmap).
:mod:`xreg.hip.run` decides; this module writes."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from xreg.hip.pairing import HipStudy
from xreg.inference.runtime import Model
from xreg.sort.grouping import Grouper
from xreg.sort.placement import Move, apply_move, sanitise

if TYPE_CHECKING:
    from xreg.model.checkpoint import LoadedModel

__all__ = ["ScoredStudy", "add_heatmaps", "place_study", "study_folder", "write_joined"]


@dataclass(frozen=True)
class ScoredStudy:
    """A hip study with its score and what was done with it."""

    study: HipStudy
    fracture_prob: float | None = None
    decision: str | None = None  # fracture | no_fracture | None (not scored)
    error: str | None = None
    dest: str | None = None
    joined: str | None = None
    view_sources: dict[str, str] = field(default_factory=dict)
    heatmap: str | None = None  # relative to the heatmap root
    # A single_view study is scored by the classifier's fracture head, not the pair model.
    threshold: float | None = None
    model_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        s = self.study
        return {"study": s.study, "side": s.side, "status": s.status, "reason": s.reason,
                "ap": s.ap, "lateral": s.lateral, "candidates": list(s.candidates),
                "fracture_prob": self.fracture_prob, "decision": self.decision,
                "error": self.error, "dest": self.dest, "joined": self.joined,
                "heatmap": self.heatmap}



def study_folder(s: ScoredStudy) -> PurePosixPath:
    """``hip/<fracture|no_fracture|unpaired>/<study>[_<side>]`` (sanitised)."""
    group = s.decision or "unpaired"
    name = sanitise(s.study.study) + (f"_{s.study.side}" if s.study.side else "")
    return PurePosixPath("hip", group, name)


def place_study(s: ScoredStudy, out: Path, sha: Callable[[str], str],
           grouper: Grouper) -> ScoredStudy:
    folder = study_folder(s)
    files = [p for p in (s.study.ap, s.study.lateral) if p] if s.study.paired \
        else list(s.study.candidates)
    for path in files:
        src = Path(path)
        st = src.stat()
        move = Move(src, sha(path), folder / sanitise(grouper.file_name(src)), "sorted")
        apply_move(move, out, "copy", (st.st_size, st.st_mtime_ns))
    return dataclasses.replace(s, dest=str(folder))


def write_joined(s: ScoredStudy, folder: Path, model: Model) -> ScoredStudy:
    if not s.study.paired or s.error:
        return s
    from PIL import Image

    from xreg.inference.preprocess import join_views, resize_grey
    from xreg.io import load_image

    size = model.card.input_size
    views = [resize_grey(load_image(Path(p), target_size=size).pixels, size)
             for p in (s.study.ap, s.study.lateral) if p]
    joined = join_views(np.stack(views))
    folder.mkdir(parents=True, exist_ok=True)
    name = sanitise(s.study.study) + (f"_{s.study.side}" if s.study.side else "") + ".png"
    target = folder / name
    tmp = folder / f".{name}.tmp"
    Image.fromarray((np.clip(joined, 0, 1) * 255).round().astype(np.uint8), "L").save(tmp,
                                                                                       "PNG")
    os.replace(tmp, target)
    return dataclasses.replace(s, joined=str(target))


def add_heatmaps(studies: list[ScoredStudy], root: Path | None,
                  model: LoadedModel) -> list[ScoredStudy]:
    from xreg.explain.heatmaps import HEATMAP_DIR, explain_pairs

    assert root is not None  # run_hip checked this before any work
    scored = [s for s in studies if s.decision is not None and s.study.paired]
    rel = {id(s): PurePosixPath(HEATMAP_DIR, "hip", study_folder(s).name + ".png")
           for s in scored}
    explained = explain_pairs([(Path(s.study.ap or ""), Path(s.study.lateral or ""))
                               for s in scored], model, [root / rel[id(s)] for s in scored])
    done = {id(s): str(rel[id(s)]) for s, e in zip(scored, explained) if e.overlay}
    return [dataclasses.replace(s, heatmap=done.get(id(s))) for s in studies]
