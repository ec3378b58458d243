"""From a prediction to the values the planner and the registry store.

Header values are copied only from a short list of non-identifying DICOM
fields; PatientID and AccessionNumber pass only through a keyed hash, and so
do the ``--group-by`` patient and study folders (already keyed by the caller).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import PurePosixPath
from typing import Any

from xreg.inference.predict import Prediction
from xreg.sort.audit import HeaderAudit, Vocabulary, audit_headers
from xreg.sort.header_check import header_reason
from xreg.sort.scope import Placement, decide_placement, judges_fracture

_EXTENSIONS = {"dicom": ".dcm", "png": ".png", "jpeg": ".jpg", "tiff": ".tif", "jp2": ".jp2"}


def placement(pred: Prediction, min_confidence: float,
              second_opinions: Sequence[str | None] = ()) -> Placement:
    """Where a prediction goes; see :func:`xreg.sort.scope.decide_placement`.

    ``unreadable`` when nothing could be decoded; otherwise ``review`` (not
    one of the known body parts, below ``min_confidence``, or the first
    reason among ``second_opinions``; first of all, the unfamiliar-film
    guard's reason) or ``sorted``.
    """
    if pred.status == "unreadable" or not pred.labels:
        return Placement("unreadable", "", pred.error)
    label = pred.labels["body_part"]
    return decide_placement(label, pred.confidence("body_part"), min_confidence,
                            second_opinions, unfamiliar=pred.unfamiliar)


def judge(pred: Prediction, min_confidence: float, vocabulary: Vocabulary,
          header_check: str = "review") -> tuple[Placement, HeaderAudit | None]:
    """Where a prediction goes, and its header audit: the one decision every way in uses.

    ``xreg sort`` (either engine), the web upload's preview and its
    add-to-registry all call this. Further second opinions join the list
    below, in order; the first reason wins.
    """
    dicom = pred.meta.dicom if pred.meta is not None else {}
    audit = audit_headers(dicom, pred.labels, vocabulary) if pred.labels else None
    opinions = [
        header_reason(audit, pred.labels.get("body_part", ""), vocabulary, dicom,
                      header_check),
    ]
    return placement(pred, min_confidence, opinions), audit


def fracture_call(pred: Prediction, where: Placement | None) -> tuple[str | None, float | None]:
    """The fracture head's label and probability, or (None, None): unknown.

    The one place the rule of :func:`xreg.sort.scope.judges_fracture` is
    applied: a call only for a film sorted into one of the nine by a model
    with a fracture head. The registry row, the ``--json`` files and the
    ``{fracture}`` layout field all take it from here.
    """
    if "fracture" not in pred.labels or not judges_fracture(where):
        return None, None
    return pred.labels["fracture"], pred.probabilities["fracture"].get("fracture")


def fracture_fields(pred: Prediction, where: Placement | None) -> dict[str, Any]:
    """The ``images`` row's ``fracture`` (1, 0, NULL: unknown) and ``fracture_prob``."""
    label, prob = fracture_call(pred, where)
    return {"fracture": None if label is None else int(label == "fracture"),
            "fracture_prob": prob}


def layout_fields(pred: Prediction, audit: HeaderAudit | None = None, *,
                  name: str | None = None, where: Placement | None = None) -> dict[str, str]:
    """Values for ``--layout``; the sorter sanitises each before use.

    ``name`` replaces the source's file name (``--group-by`` masks the
    patient's name in it before it can reach OUT); ``where`` is the film's
    placement, without which ``{fracture}`` is unknown.
    """
    name = pred.source.path.name if name is None else name
    if pred.meta is not None and not PurePosixPath(name).suffix:
        # DICOM files often have no extension; viewers need one.
        name += _EXTENSIONS.get(pred.meta.format, "")
    dicom = pred.meta.dicom if pred.meta is not None else {}
    date = dicom.get("StudyDate", "")
    stem, _, ext = name.partition(".")
    return {
        "body_part": pred.labels.get("body_part", ""),
        "instrument": pred.labels.get("instrument", ""),
        "fracture": fracture_call(pred, where)[0] or "",  # unknown: sanitised to 'unknown'
        "view": dicom.get("ViewPosition", ""),
        "laterality": dicom.get("Laterality", ""),
        "study_date": date,
        "year": date[:4],
        "modality": dicom.get("Modality", ""),
        "study_uid": dicom.get("StudyInstanceUID", ""),
        "name": name,
        "stem": stem,
        "ext": ext,
        "sha8": pred.sha256[:8],
        "header_agrees": audit.verdict if audit is not None else "no_header",
    }


def image_fields(
    pred: Prediction, model_sha256: str, pseudonymise: Callable[[str | None], str | None],
    where: Placement | None = None, audit: HeaderAudit | None = None,
    folder_keys: tuple[str | None, str | None] = (None, None),
) -> dict[str, Any]:
    """Columns of the registry's ``images`` row for one prediction.

    Fracture is recorded only where ``where`` lets it mean something
    (:func:`fracture_fields`). ``folder_keys`` is the keyed (patient, study) of the ``--group-by``
    folders; the DICOM header's PatientID and StudyInstanceUID win where present.
    A DICOM file that did not decode keeps its header's UIDs (read up to the
    pixels), so the instance is known when it is offered again.
    """
    meta = pred.meta
    dicom = meta.dicom if meta is not None else _header_only(pred)
    fields: dict[str, Any] = {
        "format": meta.format if meta else None,
        "error": pred.error,
        "model_sha256": model_sha256 if pred.labels else None,
        "warning": meta.warning if meta is not None else None,
    }
    if where is not None and pred.labels:
        fields.update(scope=where.scope,
                      review_reason=where.reason if where.status == "review" else None)
    if audit is not None:
        fields.update(header_audit=audit.verdict, header_term=audit.header or None,
                      header_class=audit.header_class or None,
                      header_tag=audit.from_tag or None,
                      header_view_audit=audit.view or None)
    fields.update(fracture_fields(pred, where))
    if meta is not None:
        fields.update(rows=meta.original_shape[0], cols=meta.original_shape[1],
                      frames=meta.frames)
    if pred.labels:
        fields.update(
            body_part=pred.labels["body_part"],
            body_part_prob=pred.confidence("body_part"),
            instrument=int(pred.labels.get("instrument") == "instrument"),
            instrument_prob=pred.probabilities.get("instrument", {}).get("instrument"),
            probabilities=json.dumps(pred.probabilities, sort_keys=True),
        )
    fields.update(
        study_uid=dicom.get("StudyInstanceUID"),
        series_uid=dicom.get("SeriesInstanceUID"),
        sop_uid=dicom.get("SOPInstanceUID"),
        modality=dicom.get("Modality"),
        body_part_examined=dicom.get("BodyPartExamined"),
        view_position=dicom.get("ViewPosition"),
        laterality=dicom.get("Laterality"),
        study_date=dicom.get("StudyDate"),
        patient_key=pseudonymise(dicom.get("PatientID")) or folder_keys[0],
        accession_key=pseudonymise(dicom.get("AccessionNumber")),
        study_key=None if dicom.get("StudyInstanceUID") else folder_keys[1],
    )
    return fields


def _header_only(pred: Prediction) -> dict[str, str]:
    if pred.status != "unreadable":
        return {}
    from xreg.io.dicom import read_header  # pydicom only for a film that did not decode

    return read_header(pred.source.path)
