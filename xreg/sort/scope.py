"""Which folder a body-part decision earns: the nine, a long-bone folder, or review.

The thesis's nine class folders receive only the nine. A model that also
knows long-bone exams (forearm, humerus, lower leg, femur) sends those to
folders of their own, in the same layout, when it is confident; whatever it
calls ``other`` (chest, several regions, not a musculoskeletal film) and
anything below ``min_confidence`` goes to ``_review`` with the reason. A
nine-class model decides as it always did.

Two rules follow from the decision. The fracture head speaks only for a film
sorted into one of the nine (:func:`judges_fracture`): for a film held back,
a long bone or an unreadable file its call is unknown. And a run in which
many films are held back as unlike the training films probably comes from a
new site (:func:`new_site_notice`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from xreg.model.labels import BODY_PARTS, LONG_BONES, OTHER

__all__ = ["SCOPES", "SHIFT_REASONS", "Placement", "body_part_scope", "decide_placement",
           "is_shift_reason", "judges_fracture", "new_site_notice"]

#: ``nine``: a thesis class; ``long_bone``: a long-bone exam; ``other``: neither.
SCOPES = ("nine", "long_bone", "other")

#: How review reasons that mean "unlike the films the model learned from" begin:
#: the unfamiliar-film guard, disagreeing models, a distance to the training films.
SHIFT_REASONS = ("unfamiliar film", "models disagree", "unlike the training films")

#: A run needs this many predicted films before its share held back says anything.
NEW_SITE_MIN_FILMS = 20
#: Share of a run's predicted films held back for shift reasons that suggests a new site.
NEW_SITE_SHARE = 0.3
#: About how many reviewed films ``xreg adapt`` needs to adapt to a site.
ADAPT_FILMS = 100


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


def judges_fracture(where: Placement | None) -> bool:
    """Whether a film's single-film fracture call means something (pure).

    Only for a film sorted into one of the nine: a film held back (for any
    reason), a long bone, ``other`` or an unreadable file was never judged on
    grounds the fracture head was trained for, so its fracture is unknown.
    """
    return where is not None and where.status == "sorted" and where.scope == "nine"


def is_shift_reason(reason: str | None) -> bool:
    """Whether a review reason says the film is unlike the training films (pure)."""
    return bool(reason) and str(reason).startswith(SHIFT_REASONS)


def new_site_notice(predicted: int, shifted: int, *, out: str = "OUT",
                    min_films: int = NEW_SITE_MIN_FILMS,
                    share: float = NEW_SITE_SHARE) -> str | None:
    """A plain-English notice when a run looks like a new site, else None (pure).

    ``predicted`` films got a prediction (sorted or held back for review),
    ``shifted`` of them were held back for a reason in :data:`SHIFT_REASONS`.
    A run of at least ``min_films`` films with at least ``share`` of them
    held back that way earns the notice; ``out`` is the folder it names.
    """
    if predicted < max(min_films, 1) or shifted / predicted < share:
        return None
    # The review queue offers every film of the run, held back or sorted.
    films = f"about {ADAPT_FILMS} films" if predicted >= ADAPT_FILMS else \
        f"all {predicted} films (about {ADAPT_FILMS} is best)"
    return (f"{shifted / predicted:.0%} of {predicted} films were held back as unlike the "
            f"films the model learned from: this looks like a new site. Review {films} "
            f"in `xreg serve {out}` and run `xreg adapt {out} --out site.pt`.")
