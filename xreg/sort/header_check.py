"""The DICOM header as a second opinion on the body part (a pure rule).

The header audit (:mod:`xreg.sort.audit`) only records whether a film's
header agrees with the model. With ``--header-check review`` (the default)
a header that names exactly one class the model disagrees with also holds
the film back: it goes to ``_review`` with a reason such as
``header says CHEST, model says shoulder``. Non-MSK regions map to a class
too (the shipped vocabulary maps CHEST to ``other``), so a film whose header
says CHEST never lands in a body-part folder on the model's word alone.

A coarse header (``EXTREMITY``), an empty one, or a term the vocabulary
does not know changes nothing: none of them names a class.
"""

from __future__ import annotations

from collections.abc import Mapping

from xreg.sort.audit import HeaderAudit, Vocabulary

__all__ = ["HEADER_CHECKS", "header_reason"]

#: ``review``: a header naming another class sends the film to review; ``off``: audit only.
HEADER_CHECKS = ("review", "off")


def header_reason(
    audit: HeaderAudit | None, model_label: str, vocabulary: Vocabulary,
    dicom: Mapping[str, str], mode: str = "review",
) -> str | None:
    """Why the header holds this film back, or None when it does not.

    Only a header term that the vocabulary maps to exactly one class, other
    than ``model_label``, yields a reason. The reason quotes the header's own
    BodyPartExamined value, upper-cased as written (a term found in a
    description is quoted as the vocabulary's term).
    """
    if mode == "off" or audit is None or audit.verdict != "disagrees" or not audit.header:
        return None
    named = vocabulary.classes.get(audit.header)
    if named is None or named == model_label:
        return None  # a coarse set, or no class at all
    written = audit.header
    if audit.from_tag == "BodyPartExamined":
        written = " ".join(str(dicom.get("BodyPartExamined") or "").upper().split()) or written
    return f"header says {written}, model says {model_label}"
