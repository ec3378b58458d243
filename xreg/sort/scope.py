"""Which folder a body-part decision earns: the nine, a long-bone folder, or review.

The thesis's nine class folders receive only the nine. A model that also
knows long-bone exams (forearm, humerus, lower leg, femur) sends those to
folders of their own, in the same layout, when it is confident; whatever it
calls ``other`` (chest, several regions, not a musculoskeletal film) and
anything below ``min_confidence`` goes to ``_review`` with the reason. A
nine-class model decides as it always did.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from xreg.model.labels import BODY_PARTS, LONG_BONES, OTHER

__all__ = ["SCOPES", "Placement", "body_part_scope", "decide_placement"]

#: ``nine``: a thesis class; ``long_bone``: a long-bone exam; ``other``: neither.
SCOPES = ("nine", "long_bone", "other")


def body_part_scope(label: str) -> str:
    """``nine``, ``long_bone`` or ``other`` for a body-part label."""
    if label in BODY_PARTS:
        return "nine"
    if label in LONG_BONES:
        return "long_bone"
    return "other"


@dataclass(frozen=True)
class Placement:
    """``sorted`` or ``review``, the label's scope, and why a film is held back."""

    status: str
    scope: str
    reason: str | None = None


def decide_placement(label: str, confidence: float, min_confidence: float,
                     second_opinions: Iterable[str | None] = (), *,
                     unfamiliar: str | None = None) -> Placement:
    """Where a film with body part ``label`` at ``confidence`` goes (pure).

    ``second_opinions`` are reasons, in order, to hold back a film the model
    would sort (None: no objection), e.g. a DICOM header naming another
    class (:mod:`xreg.sort.header_check`); the first reason wins. A film the
    model itself sends to review keeps the model's reason, except one the
    unfamiliar-film guard flags (``unfamiliar``, the guard's reason): unlike
    anything the model learned, its label and confidence mean little, so the
    guard's reason is the one recorded.
    """
    scope = body_part_scope(label)
    if unfamiliar:
        return Placement("review", scope, unfamiliar)
    if label == OTHER or scope == "other":
        return Placement("review", scope, f"not one of the known body parts ({label})")
    if confidence < min_confidence:
        return Placement("review", scope, f"low confidence: {label} {confidence:.2f} "
                         f"< {min_confidence:.2f}")
    for reason in second_opinions:
        if reason:
            return Placement("review", scope, reason)
    return Placement("sorted", scope)
