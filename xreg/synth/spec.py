"""What a phantom is: the contract between anatomy/rendering and the writers.

``render_phantom(spec) -> Phantom`` (in ``xreg.synth.render``) draws one
radiograph from a :class:`PhantomSpec`; the writers and ``xreg synth`` turn
phantoms into files and ``labels.csv``. Same spec (seed included), same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

BODY_PARTS = ("ankle", "elbow", "foot", "hand", "hip", "knee", "shoulder", "spine", "wrist")
VIEWS = ("AP", "LAT")
INSTRUMENTS = ("screws", "plate", "nail", "kwire", "hip_prosthesis", "knee_prosthesis",
               "spinal_rods", "anchor")
DISTRACTORS = ("cast", "iv_line", "ring", "ecg_electrode", "button", "zip")
FRACTURES = ("neck", "intertrochanteric")


@dataclass(frozen=True)
class PhantomSpec:
    """Everything that decides one phantom's pixels."""

    body_part: str
    view: str                      # "AP" or "LAT"
    laterality: str                # "L" or "R"
    seed: int                      # drives every random choice inside the phantom
    size: int = 1024               # output is size x size pixels
    instrument: str | None = None  # one of INSTRUMENTS, or None
    distractors: tuple[str, ...] = ()
    fracture: str | None = None    # hip only: one of FRACTURES, or None
    patient_seed: int | None = None  # shared by the views of one patient (hip pairs):
                                   # same anatomy proportions, implants and fracture


@dataclass
class Phantom:
    """A rendered phantom: float32 pixels in [0, 1], bone bright, plus masks.

    ``masks`` holds boolean arrays the size of ``image``: ``"hardware"`` where
    radiopaque instruments are, ``"distractor"`` where non-instrument bright
    objects are, ``"fracture"`` around the fracture line (hip fractures).
    """

    image: np.ndarray
    spec: PhantomSpec
    masks: dict[str, np.ndarray] = field(default_factory=dict)
