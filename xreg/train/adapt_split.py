"""The site's films for ``xreg adapt``, and the split that judges it.

A reviewed film's truth is its latest review; the split is grouped (patient,
else study, else the folder a film came from) and stratified by reviewed
class, so the hold-out judges every class it can, and says which it cannot.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from xreg.errors import ConfigError
from xreg.model.labels import OTHER
from xreg.train.finetune import Film

__all__ = ["group_split", "site_films", "split_notes", "unlike_reviewed"]


def site_films(out_root: Path, labels: Sequence[str], registry_path: Path | None = None
               ) -> tuple[list[Film], list[Film]]:
    """The reviewed and the unreviewed films placed in ``out_root``.

    A reviewed film's truth is its latest review (``not_msk`` reads as
    ``other`` when the model has that class, else the film is left out); an
    instrument or fracture the reviewer did not judge stays unknown. Films
    missing from disk are left out.
    """
    from xreg.registry import Registry
    from xreg.registry.reviews import NOT_MSK, latest_reviews

    path = registry_path or out_root / "registry.sqlite"
    if not path.is_file():
        raise ConfigError(f"{out_root} has no registry ({path.name}): run xreg sort into it "
                          "and review some films first")
    reviewed: list[Film] = []
    unreviewed: list[Film] = []
    with Registry(path, readonly=True) as reg:
        reviews = latest_reviews(reg)
        for row in reg.iter_images():
            film_path = out_root / row["dest_path"]
            if row["status"] == "unreadable" or not film_path.is_file():
                continue
            group = row["patient_key"] or row["study_uid"] or row.get("study_key") or \
                _folder(row["source_paths"], row["dest_path"])
            review = reviews.get(row["sha256"])
            if review is None:
                unreviewed.append(Film(film_path, group=group))
                continue
            truth = _truth(review["body_part"], labels, NOT_MSK)
            if truth is None:
                continue
            reviewed.append(Film(film_path, truth, review["instrument"], review["fracture"],
                                 group, review["reviewer"]))
    return reviewed, unreviewed


def _truth(body_part: str, labels: Sequence[str], not_msk: str) -> tuple[str, ...] | None:
    if body_part == not_msk:
        return (OTHER,) if OTHER in labels else None
    members = tuple(m for m in body_part.split("|") if m)
    unknown = [m for m in members if m not in labels]
    if not members or unknown:
        raise ConfigError(f"a review says {body_part!r}, which the model cannot learn "
                          f"(it knows {', '.join(labels)})")
    return members


def _folder(sources: Sequence[str], dest: str) -> str:
    """The folder a film came from (its group when there is no patient or study)."""
    first = sorted(sources)[0] if sources else dest
    return "folder:" + str(PurePosixPath(first.replace("\\", "/")).parent)


def _groups(films: Sequence[Film]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, film in enumerate(films):
        groups.setdefault(film.group or f"film:{film.path}", []).append(i)
    return groups


def _primary(film: Film) -> str:
    return film.truth[0] if film.truth else ""


def group_split(films: Sequence[Film], holdout: float, seed: int = 0
                ) -> tuple[list[int], list[int]]:
    """Indices of train and hold-out films; each group falls wholly on one side.

    Stratified by each film's reviewed class: first, for every class reviewed
    in at least two groups (rarest first), one of its groups goes to the
    hold-out unless the hold-out has the class already; then groups in a
    seeded order fill the hold-out up to the ``holdout`` share. No group moves
    if that would leave a class without training films. With a single group
    nothing can be held out and ``ConfigError`` says so.
    """
    groups = _groups(films)
    if len(groups) < 2:
        raise ConfigError(f"{len(films)} reviewed film(s) from one patient/study/folder: "
                          "review films of at least two, so some can be held out")
    order = sorted(groups, key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
    classes_of = {g: {_primary(films[i]) for i in groups[g]} for g in groups}
    holders: dict[str, list[str]] = {}
    for g in order:
        for c in classes_of[g]:
            holders.setdefault(c, []).append(g)
    held: list[str] = []
    target = holdout * len(films)

    def size() -> int:
        return sum(len(groups[g]) for g in held)

    def may_hold(g: str) -> bool:  # every class of g keeps a group on the train side
        return all(any(h != g and h not in held for h in holders[c]) for c in classes_of[g])

    for c in sorted(holders, key=lambda c: (len(holders[c]), c)):
        if len(holders[c]) < 2 or any(g in held for g in holders[c]):
            continue
        for g in holders[c]:
            if may_hold(g) and size() + len(groups[g]) <= max(target * 1.5, 1):
                held.append(g)
                break
    for g in order:
        if size() >= target:
            break
        if g in held or not may_hold(g) or (held and size() + len(groups[g]) > target):
            continue
        held.append(g)
    if not held:  # every group holds the only films of some class: hold out the first
        held = [order[0]]
    held_set = {i for g in held for i in groups[g]}
    if len(held_set) == len(films):
        raise ConfigError("every reviewed film fell into the hold-out; review more films")
    return [i for i in range(len(films)) if i not in held_set], sorted(held_set)


def split_notes(films: Sequence[Film], train: Sequence[int], held: Sequence[int],
                min_per_class: int = 3) -> list[str]:
    """What the split cannot judge, and what to review next to mend it."""
    notes = []
    classes = sorted({_primary(f) for f in films if f.truth})
    on_train = {_primary(films[i]) for i in train}
    on_hold = [_primary(films[i]) for i in held]
    groups = _groups(films)
    for c in classes:
        n_groups = sum(any(_primary(films[i]) == c for i in idx) for idx in groups.values())
        if c not in on_hold:
            notes.append(f"the hold-out has no {c} film ({n_groups} patient/study/folder "
                         f"reviewed): review {c} films of another patient, study or folder "
                         "so the verdict can judge it")
        elif c not in on_train:
            notes.append(f"no {c} film trains (all in the hold-out): review more {c} films")
        elif on_hold.count(c) < min_per_class:
            notes.append(f"the hold-out judges {c} on {on_hold.count(c)} film(s): review "
                         f"about {min_per_class * 4} {c} films for a firmer verdict")
    return notes


#: Quantile of the reviewed films' distances to their nearest reviewed film of another
#: group beyond which an unreviewed film counts as unlike every reviewed film.
UNLIKE_QUANTILE = 0.95


def unlike_reviewed(reviewed: torch.Tensor, groups: Sequence[str], others: torch.Tensor
                    ) -> float | None:
    """The share of ``others`` (a site's unreviewed films) unlike every reviewed film.

    Rows are films' unit features (:func:`xreg.model.ensemble.unit_features`). A
    reviewed film's own distance is the cosine distance to its nearest reviewed film
    of another group (patient, study, folder); an unreviewed film is unlike the
    reviews when its nearest reviewed film is farther than :data:`UNLIKE_QUANTILE` of
    those. None when there are too few films to say.
    """
    if len(others) < 20 or len(reviewed) < 10 or len(set(groups)) < 2:
        return None
    key = np.array(groups, dtype=object)
    within = 1.0 - reviewed @ reviewed.T
    within[torch.as_tensor(key[:, None] == key[None, :])] = float("inf")
    nearest = within.min(dim=1).values
    limit = torch.quantile(nearest[torch.isfinite(nearest)], UNLIKE_QUANTILE)
    return round(float(((1.0 - others @ reviewed.T).min(dim=1).values > limit)
                       .float().mean()), 4)
