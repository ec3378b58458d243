"""Train/val/test split, grouped by patient so no patient spans two splits.

Pure planning: :func:`plan_split` maps items to split names from their group
(patient) and stratum (body part) alone, seeded, so the same labels always
give the same split. :func:`write_split` saves it as a manifest that
``xreg evaluate DATA --split test`` reads back.
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from xreg.datasets import LabelledImage
from xreg.errors import ConfigError

__all__ = ["SPLITS", "assign_splits", "given_or_planned", "plan_split", "split_groups",
           "write_split"]

SPLITS = ("train", "val", "test")


def plan_split(
    groups: Sequence[str],
    strata: Sequence[str],
    fractions: Sequence[float],
    seed: int,
) -> list[str]:
    """Split name (``train``/``val``/``test``) for each item.

    Items sharing a group always share a split. Groups are stratified by
    their most common stratum, shuffled with ``seed``, and each goes to the
    split furthest below its target share of images, so every stratum is
    spread over the splits in roughly ``fractions``.
    """
    if len(groups) != len(strata):
        raise ValueError("groups and strata differ in length")
    sizes: Counter[str] = Counter(groups)
    labels: dict[str, Counter[str]] = defaultdict(Counter)
    for g, s in zip(groups, strata):
        labels[g][s] += 1
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for g in sorted(sizes):
        # Ties broken by name so the plan never depends on input order.
        top = min(labels[g].items(), key=lambda kv: (-kv[1], kv[0]))[0]
        by_stratum[top].append(g)
    rng = np.random.default_rng(seed)
    target = np.asarray(fractions, dtype=np.float64)
    split_of: dict[str, str] = {}
    for stratum in sorted(by_stratum):
        members = by_stratum[stratum]
        order = rng.permutation(len(members))
        filled = np.zeros(len(SPLITS))
        for i in order:
            g = members[i]
            total = filled.sum() + sizes[g]
            # The split whose share after taking this group falls shortest of its target.
            deficit = target * total - filled
            deficit[target == 0] = -np.inf
            k = int(np.argmax(deficit))
            filled[k] += sizes[g]
            split_of[g] = SPLITS[k]
    return [split_of[g] for g in groups]


def given_or_planned(given: Sequence[str | None], plan: Callable[[], list[str]]) -> list[str]:
    """The data's own split labels if every row has one, else ``plan()``.

    A manifest that names splits for some rows but not others is refused
    rather than half-trusted.
    """
    if all(s is not None for s in given):
        unknown = sorted({str(s) for s in given if s not in SPLITS})
        if unknown:
            raise ConfigError(f"unknown split value(s) {unknown}; use {', '.join(SPLITS)}")
        return [str(s) for s in given]
    if any(s is not None for s in given):
        raise ConfigError("the manifest gives a split for some rows but not all; "
                          "fill the column or leave it empty everywhere")
    return plan()


def split_groups(images: Sequence[LabelledImage]) -> list[str]:
    """One group name per image: images sharing a patient or a duplicate cluster share one.

    ``dup_of`` names the first file of a near-duplicate cluster (by file name
    or path); that file, every file naming it, and their patients' other
    images form one group. Without a patient_id or cluster an image is its
    own group.
    """
    parent = list(range(len(images)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)

    first: dict[str, int] = {}
    by_name: dict[tuple[str, str], int] = {}
    for i, im in enumerate(images):
        by_name.setdefault((im.source, Path(im.path).name), i)
        by_name.setdefault((im.source, str(im.path)), i)
    for i, im in enumerate(images):
        keys = []
        if im.patient_id is not None:
            keys.append(f"patient:{im.patient_id}")
        if im.dup_of is not None:
            keys.append(f"dup:{im.dup_of}")
            # dup_of is source-prefixed by load_sources; the file it names is not.
            target = im.dup_of.split(":", 1)[1] if im.source and \
                im.dup_of.startswith(f"{im.source}:") else im.dup_of
            for named in ((im.source, target), (im.source, Path(target).name)):
                if named in by_name:
                    union(i, by_name[named])
        for key in keys:
            if key in first:
                union(i, first[key])
            else:
                first[key] = i
    return [f"group:{find(i)}" for i in range(len(images))]


def assign_splits(images: Sequence[LabelledImage], fractions: Sequence[float],
                  seed: int) -> list[str]:
    """Splits for ``images``: their own ``split`` labels if all have one, else planned.

    Groups come from :func:`split_groups` (patient and duplicate cluster);
    strata are body parts within each source, so every site is split alike.
    """
    groups = split_groups(images)
    return given_or_planned([im.split for im in images], lambda: plan_split(
        groups, [f"{im.source}/{im.body_part}" if im.source else im.body_part
                 for im in images], fractions, seed))


def write_split(path: Path, images: Sequence[LabelledImage], splits: Sequence[str]) -> None:
    """Save the split as a manifest (absolute paths) next to the training run."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "body_part", "instrument", "patient_id", "split", "view",
                     "fracture", "dup_of", "source"])
    for im, s in zip(images, splits):
        writer.writerow([os.fspath(Path(im.path).resolve()), "|".join(im.body_parts),
                         "" if im.instrument is None else im.instrument,
                         im.patient_id or "", s, im.view or "",
                         "" if im.fracture is None else im.fracture, im.dup_of or "",
                         im.source])
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    os.replace(tmp, path)
