"""Plan a phantom dataset as plain data: one :class:`Item` per file to write.

Pure: no rendering, no disk. Same arguments, same plan. ``generate_dataset``
(in :mod:`xreg.synth.generate`) renders and writes what this decides.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from xreg.errors import ConfigError
from xreg.synth.hardware import compatible_instruments
from xreg.synth.spec import BODY_PARTS, DISTRACTORS, FRACTURES, VIEWS, PhantomSpec
from xreg.synth.writers import DicomHeader, DicomVariant

FORMATS = ("png16", "jpeg", "dicom")
IMAGE_DIR = "images"

#: Where each non-instrument object plausibly shows up.
_DISTRACTORS_FOR: dict[str, tuple[str, ...]] = {
    "ankle": ("cast", "iv_line", "zip"),
    "elbow": ("cast", "iv_line", "ring", "ecg_electrode"),
    "foot": ("cast", "iv_line", "zip"),
    "hand": ("cast", "iv_line", "ring"),
    "hip": ("button", "zip", "iv_line", "ecg_electrode"),
    "knee": ("cast", "zip", "button", "iv_line"),
    "shoulder": ("ecg_electrode", "button", "iv_line", "zip"),
    "spine": ("ecg_electrode", "button", "zip", "iv_line"),
    "wrist": ("cast", "iv_line", "ring"),
}
#: DICOM BodyPartExamined terms (PS3.16 CID 4031).
DICOM_BODY_PART = {
    "ankle": ("ANKLE",), "elbow": ("ELBOW",), "foot": ("FOOT",), "hand": ("HAND",),
    "hip": ("HIP",), "knee": ("KNEE",), "shoulder": ("SHOULDER",),
    "spine": ("LSPINE", "CSPINE", "TSPINE", "SPINE"), "wrist": ("WRIST",),
}
DISTRACTOR_RATE = 0.25
_BODYPART_EMPTY, _BODYPART_WRONG = 0.10, 0.05
_NO_EXTENSION = 0.3


@dataclass(frozen=True)
class Item:
    """One file of the dataset: what to render, where and how to write it."""

    spec: PhantomSpec
    path: str                   # relative to OUT, '/'-separated
    format: str                 # png16, jpeg or dicom
    patient_id: str
    study_id: str
    pair_role: str = ""         # AP or LAT for hip pairs
    jpeg_quality: int = 92
    dicom_header: DicomHeader | None = None
    dicom_variant: DicomVariant | None = None

    @property
    def laterality_label(self) -> str:
        """The laterality to record: empty for the spine, which has none."""
        return "" if self.spec.body_part == "spine" else self.spec.laterality


def _check(count: int, size: int, formats: tuple[str, ...], instrument_rate: float,
           hip_pairs: int, fracture_rate: float) -> None:
    if count < 0 or hip_pairs < 0:
        raise ConfigError("count and hip_pairs must be >= 0")
    if count + hip_pairs == 0:
        raise ConfigError("nothing to generate: count and hip_pairs are both 0")
    if size < 32:
        raise ConfigError(f"size must be at least 32 pixels, not {size}")
    if not formats or any(f not in FORMATS for f in formats):
        raise ConfigError(f"formats must be a non-empty list of {', '.join(FORMATS)}; "
                          f"got {','.join(formats) or '(empty)'}")
    for name, rate in (("instrument_rate", instrument_rate), ("fracture_rate", fracture_rate)):
        if not 0.0 <= rate <= 1.0:
            raise ConfigError(f"{name} must be between 0 and 1, not {rate}")


class _Planner:
    """Draws every random choice of a plan from one seeded generator, in order."""

    def __init__(self, seed: int, size: int, formats: tuple[str, ...],
                 instrument_rate: float) -> None:
        self.seed, self.size, self.formats = seed, size, formats
        self.instrument_rate = instrument_rate
        self.rng = np.random.default_rng([seed, 0x5E7])
        self.items: list[Item] = []
        self.patients = self.studies = 0

    def uid(self, *parts: object) -> str:
        """A 2.25 UID (a 128-bit number, PS3.5 B.2) derived from the seed: reproducible."""
        text = "/".join(["xreg-synth", str(self.seed), *map(str, parts)])
        return "2.25." + str(int.from_bytes(hashlib.sha256(text.encode()).digest()[:16], "big"))

    def new_patient(self) -> tuple[str, str]:
        self.patients += 1
        n = self.patients
        return f"PH{self.seed % 100000:05d}{n:06d}", f"PHANTOM^{n:06d}"

    def new_study(self) -> str:
        self.studies += 1
        return f"ST{self.seed % 100000:05d}{self.studies:06d}"

    def choice(self, options: tuple[str, ...]) -> str:
        return options[int(self.rng.integers(len(options)))]

    def instrument(self, body_part: str) -> str | None:
        if self.rng.random() >= self.instrument_rate:
            return None
        return self.choice(compatible_instruments(body_part))

    def distractors(self, body_part: str) -> tuple[str, ...]:
        if self.rng.random() >= DISTRACTOR_RATE:
            return ()
        allowed = tuple(d for d in _DISTRACTORS_FOR[body_part] if d in DISTRACTORS)
        k = 1 + int(self.rng.random() < 0.25)
        picks = self.rng.choice(len(allowed), size=min(k, len(allowed)), replace=False)
        return tuple(allowed[int(i)] for i in sorted(picks))

    def body_part_term(self, body_part: str) -> str:
        u = self.rng.random()
        if u < _BODYPART_EMPTY:
            return ""
        if u < _BODYPART_EMPTY + _BODYPART_WRONG:
            return self.choice(tuple(DICOM_BODY_PART[b][0] for b in BODY_PARTS if b != body_part))
        return self.choice(DICOM_BODY_PART[body_part])

    def dicom_variant(self) -> DicomVariant:
        r = self.rng
        return DicomVariant(
            modality=self.choice(("CR", "DX")),
            photometric="MONOCHROME1" if r.random() < 0.3 else "MONOCHROME2",
            rescale=bool(r.random() < 0.4),
            voi=bool(r.random() < 0.5),
            bits_stored=12 if r.random() < 0.6 else 16,
            compression=self.choice(("none", "none", "rle", "j2k")),
        )

    def add(self, spec: PhantomSpec, fmt: str, patient: tuple[str, str],
            study: tuple[str, str, str, str, str], variant: DicomVariant | None = None,
            pair_role: str = "") -> None:
        study_id, study_uid, accession, date, clock = study
        index = len(self.items)
        stem = f"{IMAGE_DIR}/img_{index:06d}"
        if pair_role and fmt != "dicom":
            # Hip-pair rasters are named as people name them, <study>_<view>: the
            # only way a folder of PNG/JPEG files can say which two films pair.
            stem = f"{IMAGE_DIR}/{study_id}_{pair_role}"
        quality, header = 92, None
        if fmt == "png16":
            path = stem + ".png"
        elif fmt == "jpeg":
            path, quality = stem + ".jpg", int(self.rng.integers(85, 96))
        else:
            path = stem if self.rng.random() < _NO_EXTENSION else stem + ".dcm"
            variant = variant or self.dicom_variant()
            if spec.view == "AP":
                view_position = "PA" if spec.body_part in ("hand", "wrist") else "AP"
            else:
                view_position = "LL" if spec.laterality == "L" else "RL"
            header = DicomHeader(
                patient_id=patient[0], patient_name=patient[1], study_uid=study_uid,
                series_uid=self.uid("series", index), sop_uid=self.uid("sop", index),
                accession=accession, study_date=date,
                study_time=clock,
                view_position=view_position,
                laterality="U" if spec.body_part == "spine" else spec.laterality,
                body_part_examined=self.body_part_term(spec.body_part),
                series_number=1 + int(pair_role == "LAT"),
                field_mm=float(self.rng.choice((240.0, 300.0, 350.0, 430.0))),
            )
        self.items.append(Item(spec, path, fmt, patient[0], study_id, pair_role,
                               quality, header, variant if fmt == "dicom" else None))

    def study(self) -> tuple[str, str, str, str, str]:
        """A new study: id, StudyInstanceUID, AccessionNumber, date, time."""
        study_id = self.new_study()
        days = int(self.rng.integers(0, 20 * 365))
        date = str(np.datetime64("2005-01-01") + np.timedelta64(days, "D")).replace("-", "")
        seconds = int(self.rng.integers(7 * 3600, 20 * 3600))
        clock = f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"
        accession = f"A{self.seed % 10000:04d}{self.studies:08d}"
        return study_id, self.uid("study", study_id), accession, date, clock

    def seed32(self) -> int:
        return int(self.rng.integers(0, 2**31 - 1))


def plan_dataset(
    count: int,
    seed: int,
    *,
    size: int = 1024,
    formats: tuple[str, ...] = FORMATS,
    instrument_rate: float = 0.15,
    hip_pairs: int = 0,
    fracture_rate: float = 0.45,
) -> list[Item]:
    """Decide every file of a phantom dataset: ``count`` single images plus ``hip_pairs`` studies.

    Single images are balanced over the 9 body parts x 2 views (counts differ
    by at most one) and cycle through ``formats``. Each is instrument-positive
    with probability ``instrument_rate`` and carries distractors on about a
    quarter of images, independently. Each hip pair is two items (AP, LAT) of
    one patient and study sharing patient_seed, laterality, instrument and
    fracture; exactly ``round(hip_pairs * fracture_rate)`` pairs are fractured,
    and fractured hips get no instrument (they are pre-operative films).
    """
    formats = tuple(formats)
    _check(count, size, formats, instrument_rate, hip_pairs, fracture_rate)
    p = _Planner(seed, size, formats, instrument_rate)
    combos = [(b, v) for b in BODY_PARTS for v in VIEWS]
    # Cycle through the classes in a random order so that the leftovers of an
    # uneven count land on random classes, then shuffle the sequence.
    order = p.rng.permutation(len(combos))
    cells = [combos[int(order[i % len(combos)])] for i in range(count)]
    p.rng.shuffle(cells)
    for i, (body_part, view) in enumerate(cells):
        spec = PhantomSpec(
            body_part=body_part, view=view, laterality=p.choice(("L", "R")),
            seed=p.seed32(), size=size, instrument=p.instrument(body_part),
            distractors=p.distractors(body_part),
        )
        p.add(spec, formats[i % len(formats)], p.new_patient(), p.study())
    fractured = set(p.rng.permutation(hip_pairs)[: round(hip_pairs * fracture_rate)].tolist())
    for k in range(hip_pairs):
        fracture = p.choice(FRACTURES) if k in fractured else None
        shared = dict(body_part="hip", laterality=p.choice(("L", "R")), size=size,
                      instrument=None if fracture else p.instrument("hip"),
                      distractors=p.distractors("hip"), fracture=fracture,
                      patient_seed=p.seed32())
        patient, study = p.new_patient(), p.study()
        fmt = formats[(count + k) % len(formats)]
        variant = p.dicom_variant()  # one device per study
        for view in VIEWS:
            spec = PhantomSpec(view=view, seed=p.seed32(), **shared)  # type: ignore[arg-type]
            p.add(spec, fmt, patient, study, variant, pair_role=view)
    return p.items
