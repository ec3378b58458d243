"""What is being learned from what: one film per item, or an AP + lateral pair.

A task turns the labelled data into items with their files, labels per head,
split groups and class counts, and scores the finished model on the test
split through the same inference path ``xreg sort`` / ``xreg hip`` use.
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from xreg.datasets import HipPair, LabelledImage, load_labels, load_pairs
from xreg.errors import ConfigError
from xreg.model.checkpoint import LoadedModel
from xreg.model.models import BODY_PARTS, EXTENDED_BODY_PARTS, KNOWN_HEADS, HeadSpec
from xreg.train.config import DataSource, TrainConfig
from xreg.train.loop import IGNORE
from xreg.train.sources import load_sources
from xreg.train.split import SPLITS, assign_splits, given_or_planned, plan_split, write_split

__all__ = ["ImageTask", "PairTask", "Task", "make_task"]


class Task:
    """Base: ``items``, their ``paths`` (1 or 2 files each) and labels per head."""

    views = 1
    heads: tuple[HeadSpec, ...]
    data: Path

    def __len__(self) -> int:
        raise NotImplementedError

    def paths(self, i: int) -> tuple[Path, ...]:
        raise NotImplementedError

    def label(self, i: int, head: HeadSpec) -> int:
        raise NotImplementedError

    def splits(self, config: TrainConfig) -> list[str]:
        raise NotImplementedError

    def grouped_by(self) -> str:
        raise NotImplementedError

    def counts(self, splits: Sequence[str]) -> dict[str, Any]:
        raise NotImplementedError

    def write_split(self, path: Path, splits: Sequence[str]) -> None:
        raise NotImplementedError

    def score_test(self, loaded: LoadedModel, test: Sequence[int], device: torch.device,
                   workers: int, config: TrainConfig) -> tuple[Any, dict[str, Any]]:
        raise NotImplementedError

    def targets(self, members: Sequence[int]) -> dict[str, torch.Tensor]:
        return {h.name: torch.tensor([self.label(i, h) for i in members], dtype=torch.long)
                for h in self.heads}

    def sample_weights(self, members: Sequence[int], config: TrainConfig
                       ) -> torch.Tensor | None:
        """Per-item draw weights for the training split; None: the classic sampler."""
        return None

    def check_labels(self) -> None:
        for head in self.heads:
            if all(self.label(i, head) == IGNORE for i in range(len(self))):
                raise ConfigError(f"the config trains a {head.name!r} head but {self.data} "
                                  f"labels no item's {head.name}")


class ImageTask(Task):
    """Body part (+ instrument, view, fracture) from one film, from one or more sources.

    The body-part target is a set (a multi-hot row): a sure label is a set of
    one, a hesitant or coarse one lists every candidate.
    """

    def __init__(self, config: TrainConfig, data: Path | None, run_dir: Path) -> None:
        labels = EXTENDED_BODY_PARTS if config.body_parts == "extended" else BODY_PARTS
        self.heads = tuple(HeadSpec("body_part", labels) if name == "body_part"
                           else KNOWN_HEADS[name] for name in config.heads)
        self.sources: tuple[DataSource, ...] = config.datasets
        if data is not None:
            self.data = Path(data)
            self.sources = ()
            self.images: list[LabelledImage] = load_labels(
                data, labels, reviewed_only=config.reviewed_only)
        elif config.datasets:
            self.data = run_dir / "split.csv"
            self.images = sorted(load_sources(config.datasets, labels, run_dir),
                                 key=lambda im: (im.source, str(im.path)))
        else:
            raise ConfigError("no training data: pass --data or list datasets in the config")
        self.check_labels()

    def targets(self, members: Sequence[int]) -> dict[str, torch.Tensor]:
        out = super().targets(members)
        head = self.heads[0]
        mask = torch.zeros((len(members), len(head.labels)), dtype=torch.float32)
        for row, i in enumerate(members):
            for k, label in enumerate(self.images[i].body_parts):
                mask[row, head.labels.index(label)] = 2.0 if k == 0 else 1.0  # 2: primary
        out["body_part"] = mask
        return out

    def sample_weights(self, members: Sequence[int], config: TrainConfig
                       ) -> torch.Tensor | None:
        """Each source gets its weight's share of draws; within a source the
        instrument classes are balanced to the power ``balance_power``.

        One source with full balancing is the classic sampler (None)."""
        if not self.sources and (config.balance_power == 1.0 or not config.weighted_sampling):
            return None
        share = {s.name: s.weight for s in self.sources} or {"": 1.0}
        by_source: dict[str, list[int]] = {}
        for row, i in enumerate(members):
            # --data: one manifest is one share, whatever sources its rows name.
            key = self.images[i].source if self.sources else ""
            by_source.setdefault(key, []).append(row)
        weights = torch.zeros(len(members), dtype=torch.float64)
        total = sum(share[name] for name in by_source)
        for name, rows in by_source.items():
            w = torch.ones(len(rows), dtype=torch.float64)
            if config.weighted_sampling and "instrument" in config.heads:
                classes = [self.images[members[r]].instrument for r in rows]
                counts = Counter(classes)
                w = torch.tensor([counts[c] ** -config.balance_power for c in classes],
                                 dtype=torch.float64)
            weights[rows] = w / w.sum() * share[name] / total
        return weights

    def __len__(self) -> int:
        return len(self.images)

    def paths(self, i: int) -> tuple[Path, ...]:
        return (self.images[i].path,)

    def label(self, i: int, head: HeadSpec) -> int:
        im = self.images[i]
        if head.name == "body_part":
            return head.labels.index(im.body_part)
        if head.name in ("instrument", "fracture"):
            value01 = getattr(im, head.name)
            return IGNORE if value01 is None else int(value01)
        value = getattr(im, head.name, None)
        return IGNORE if value is None else head.labels.index(value)

    def splits(self, config: TrainConfig) -> list[str]:
        return assign_splits(self.images, config.split, config.seed)

    def grouped_by(self) -> str:
        keys = [k for k, present in (("patient_id", any(im.patient_id for im in self.images)),
                                     ("dup_of", any(im.dup_of for im in self.images)))
                if present]
        return " + ".join(keys) or "image"

    def counts(self, splits: Sequence[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in SPLITS:
            members = [im for im, s in zip(self.images, splits) if s == name]
            out[name] = {
                "images": len(members),
                "body_part": dict(sorted(Counter(im.body_part for im in members).items())),
                "body_part_sets": sum(len(im.body_parts) > 1 for im in members),
                "fracture": dict(sorted(Counter(
                    "unknown" if im.fracture is None else str(im.fracture)
                    for im in members).items())),
                "source": dict(sorted(Counter(im.source or "data"
                                              for im in members).items())),
                "instrument": dict(sorted(Counter(
                    "unknown" if im.instrument is None else str(im.instrument)
                    for im in members).items())),
                "view": dict(sorted(Counter(im.view or "unknown" for im in members).items())),
            }
        return out

    def write_split(self, path: Path, splits: Sequence[str]) -> None:
        write_split(path, self.images, splits)

    def score_test(self, loaded: LoadedModel, test: Sequence[int], device: torch.device,
                   workers: int, config: TrainConfig) -> tuple[Any, dict[str, Any]]:
        from xreg.evaluation.evaluate import evaluate_images

        root = self.data if self.data.is_dir() else self.data.parent
        keys = ("counts", "body_part", "instrument", "fracture", "sorting", "risk_coverage")
        first: Any = None
        metrics: dict[str, Any] = {}
        names = [s.name for s in self.sources] or [""]
        for name in names:
            members = [self.images[i] for i in test if self.images[i].source == name]
            if not members:
                continue
            evaluation = evaluate_images(
                loaded, members, root=root, data=f"{os.fspath(self.data)}"
                f"{f' (source {name})' if name else ''}", device=device, workers=workers,
                n_resamples=config.resamples, seed=config.seed)
            result = evaluation.to_dict()
            scored = {k: result[k] for k in keys if k in result}
            first = first or evaluation
            if not name:
                return evaluation, scored
            metrics[name] = scored
        return first, {"by_source": metrics}


class PairTask(Task):
    """Hip fracture from an AP and a lateral film joined side by side (a pairs CSV)."""

    views = 2

    def __init__(self, config: TrainConfig, data: Path) -> None:
        self.data = Path(data)
        self.heads = (KNOWN_HEADS["fracture"],)
        if Path(data).is_dir():
            raise ConfigError(f"{data}: the hip_fracture task reads a pairs CSV (study, "
                              "ap_path, lateral_path, fracture), e.g. the hip_pairs.csv "
                              "of `xreg synth --hip-pairs`")
        self.pairs: list[HipPair] = load_pairs(data, need_fracture=True)

    def __len__(self) -> int:
        return len(self.pairs)

    def paths(self, i: int) -> tuple[Path, ...]:
        return (self.pairs[i].ap, self.pairs[i].lateral)

    def label(self, i: int, head: HeadSpec) -> int:
        value = self.pairs[i].fracture
        return IGNORE if value is None else value

    def splits(self, config: TrainConfig) -> list[str]:
        pairs = self.pairs
        groups = [p.patient_id or f"study:{p.study}" for p in pairs]
        return given_or_planned([p.split for p in pairs], lambda: plan_split(
            groups, [str(p.fracture) for p in pairs], config.split, config.seed))

    def grouped_by(self) -> str:
        return "patient_id" if any(p.patient_id for p in self.pairs) else "study"

    def counts(self, splits: Sequence[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in SPLITS:
            members = [p for p, s in zip(self.pairs, splits) if s == name]
            out[name] = {"studies": len(members), "fracture": dict(sorted(Counter(
                "unknown" if p.fracture is None else str(p.fracture) for p in members).items()))}
        return out

    def write_split(self, path: Path, splits: Sequence[str]) -> None:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["study", "ap_path", "lateral_path", "fracture", "patient_id", "split"])
        for p, s in zip(self.pairs, splits):
            writer.writerow([p.study, os.fspath(p.ap.resolve()), os.fspath(p.lateral.resolve()),
                             "" if p.fracture is None else p.fracture, p.patient_id or "", s])
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(buf.getvalue(), encoding="utf-8")
        os.replace(tmp, path)

    def score_test(self, loaded: LoadedModel, test: Sequence[int], device: torch.device,
                   workers: int, config: TrainConfig) -> tuple[Any, dict[str, Any]]:
        from xreg.evaluation.pairs import evaluate_pair_list

        evaluation = evaluate_pair_list(
            loaded, [self.pairs[i] for i in test], data=os.fspath(self.data), device=device,
            workers=workers, n_resamples=config.resamples, seed=config.seed)
        result = evaluation.to_dict()
        return evaluation, {k: result[k] for k in ("counts", "fracture")}


def make_task(config: TrainConfig, data: Path | None, run_dir: Path) -> Task:
    """The task the config names, with its labelled data loaded and checked.

    ``data`` None: the config's ``datasets`` (phantoms are rendered into
    ``run_dir`` on first use).
    """
    if config.task == "hip_fracture":
        if data is None:
            raise ConfigError("the hip_fracture task needs --data (a pairs CSV)")
        return PairTask(config, data)
    return ImageTask(config, data, run_dir)
