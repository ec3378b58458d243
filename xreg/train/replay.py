"""What ``xreg adapt`` replays to keep what a model knew: features, never films.

A shipped model carries, beside its weights, ``<name>.replay.npz``: for a few
thousand of its training films (per site and class), each member's
penultimate features (float16) with the films' labels, and which of them
are the *replay hold-out* (validation films: nothing trained on them).
Adapt trains heads over frozen features, so these numbers are exactly what
the films themselves would give the heads: the labels are replayed beside the
reviews, the base's answers on them are distilled, and the hold-out says
how much the adapted model forgot. The card records the file's sha256 and
:func:`shipped_replay` refuses a file that does not match it.

``--replay-data`` films (a manifest or a source's ``labels.csv``) become a
:class:`ReplaySet` the same way, through the model (:func:`replay_from_grey`).
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from xreg.errors import CheckpointError, ConfigError
from xreg.model.card import ModelCard

__all__ = ["REPLAY_SUFFIX", "ReplaySet", "backbone_features", "load_replay", "pick_replay",
           "replay_path", "replay_from_grey", "save_replay", "shipped_replay"]

REPLAY_SUFFIX = ".replay.npz"


@dataclass(frozen=True)
class ReplaySet:
    """Films as features: each member's penultimate features side by side (``dims``)."""

    features: np.ndarray   # (N, sum(dims)) float16
    dims: tuple[int, ...]
    labels: tuple[str, ...]  # the body-part head's labels: the columns of ``truth``
    truth: np.ndarray      # (N, len(labels)) bool: the film's label set
    instrument: np.ndarray  # (N,) int8: 1, 0, or -1 unknown
    fracture: np.ndarray    # (N,) int8
    site: np.ndarray        # (N,) int16 index into ``sites``
    sites: tuple[str, ...]
    holdout: np.ndarray     # (N,) bool: scored for forgetting, never trained on

    def __len__(self) -> int:
        return len(self.features)

    def take(self, rows: np.ndarray) -> ReplaySet:
        return ReplaySet(self.features[rows], self.dims, self.labels, self.truth[rows],
                         self.instrument[rows], self.fracture[rows], self.site[rows],
                         self.sites, self.holdout[rows])

    def member_features(self) -> list[Tensor]:
        """Each member's features as float32 tensors."""
        x = torch.from_numpy(self.features.astype(np.float32))
        return list(torch.split(x, list(self.dims), dim=1))

    def truth_sets(self) -> list[tuple[str, ...]]:
        return [tuple(self.labels[j] for j in np.flatnonzero(row)) for row in self.truth]

    def join(self, other: ReplaySet) -> ReplaySet:
        if (other.dims, other.labels) != (self.dims, self.labels):
            raise ConfigError("replay sets of different models cannot be joined")
        sites = tuple(dict.fromkeys(self.sites + other.sites))
        remap = np.array([sites.index(s) for s in other.sites], dtype=np.int16)
        return ReplaySet(
            np.concatenate([self.features, other.features]), self.dims, self.labels,
            np.concatenate([self.truth, other.truth]),
            np.concatenate([self.instrument, other.instrument]),
            np.concatenate([self.fracture, other.fracture]),
            np.concatenate([self.site, remap[other.site] if len(other) else other.site]),
            sites, np.concatenate([self.holdout, other.holdout]))

    def summary(self) -> dict[str, Any]:
        counts = Counter(self.sites[int(s)] for s in self.site)
        held = Counter(self.sites[int(s)] for s in self.site[self.holdout])
        return {"films": len(self), "holdout": int(self.holdout.sum()),
                "per_site": {s: {"films": counts[s], "holdout": held[s]}
                             for s in sorted(counts)}}


def replay_path(checkpoint: Path) -> Path:
    """``bodypart_sites.pt`` -> ``bodypart_sites.replay.npz`` (beside it)."""
    return checkpoint.with_name(checkpoint.stem + REPLAY_SUFFIX)


def save_replay(path: Path, replay: ReplaySet) -> str:
    """Write ``replay`` atomically; returns the file's sha256 (for the card)."""
    from xreg.model.checkpoint import _write_atomic

    buffer = io.BytesIO()
    np.savez_compressed(
        buffer, features=replay.features.astype(np.float16), dims=np.array(replay.dims),
        labels=np.array(replay.labels), truth=replay.truth.astype(bool),
        instrument=replay.instrument.astype(np.int8), fracture=replay.fracture.astype(np.int8),
        site=replay.site.astype(np.int16), sites=np.array(replay.sites),
        holdout=replay.holdout.astype(bool))
    data = buffer.getvalue()
    _write_atomic(Path(path), data)
    return hashlib.sha256(data).hexdigest()


def load_replay(path: Path, sha256: str | None = None) -> ReplaySet:
    """Read a replay file; with ``sha256`` the file must match it (the card's)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read replay file {path}: {exc.strerror}") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise CheckpointError(f"{path.name} does not match the sha256 its model card "
                              "records (changed or damaged): reinstall xreg, or adapt with "
                              "--no-replay")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return ReplaySet(z["features"], tuple(int(d) for d in z["dims"]),
                             tuple(str(s) for s in z["labels"]), z["truth"].astype(bool),
                             z["instrument"], z["fracture"], z["site"],
                             tuple(str(s) for s in z["sites"]), z["holdout"].astype(bool))
    except (KeyError, ValueError, OSError) as exc:
        raise CheckpointError(f"{path.name} is not a replay file: {exc}") from None


def shipped_replay(card: ModelCard, checkpoint: Path | None) -> ReplaySet | None:
    """The replay file the card names, checked; None when the card names none."""
    if not card.replay:
        return None
    if checkpoint is None:
        raise ConfigError("the model's card names a replay file but the model has no path")
    path = Path(checkpoint).parent / str(card.replay["file"])
    if not path.is_file():
        raise ConfigError(f"the model's replay file {path.name} is missing beside "
                          f"{Path(checkpoint).name}: reinstall xreg, or adapt with "
                          "--no-replay")
    replay = load_replay(path, str(card.replay["sha256"]))
    if replay.labels != card.head("body_part").labels:
        raise CheckpointError(f"{path.name} was made for other body-part labels")
    return replay


def pick_replay(split_csv: Path, labels: Sequence[str], per_class: int,
                holdout_per_class: int, seed: int = 0) -> list[tuple[Any, bool]]:
    """(film, held out) for a replay file from a training run's ``split.csv``: up to
    ``per_class`` training films and ``holdout_per_class`` validation films per site
    and first body part, seeded; no phantom, no test film."""
    import csv

    from xreg.datasets import load_labels

    with Path(split_csv).open(newline="") as fh:
        split_of = {r["path"]: r["split"] for r in csv.DictReader(fh)}
    buckets: dict[tuple[str, str, str], list[Any]] = {}
    for im in load_labels(split_csv, labels):
        split = split_of.get(str(im.path), "")
        if im.source and im.source != "phantoms" and split in ("train", "val"):
            buckets.setdefault((split, im.source, im.body_part), []).append(im)
    rng = np.random.default_rng(seed)
    chosen: list[tuple[Any, bool]] = []
    for (split, _, _), members in sorted(buckets.items()):
        cap = per_class if split == "train" else holdout_per_class
        chosen += [(members[i], split == "val")
                   for i in sorted(rng.permutation(len(members))[:cap])]
    return chosen


# -- features through a network -------------------------------------------------------


def backbone_features(model: nn.Module, x: Tensor) -> list[Tensor]:
    """Each member's penultimate features for the network input ``x`` (one for a
    single network)."""
    from xreg.model.ensemble import EnsembleNet

    if isinstance(model, EnsembleNet):
        return model.features(x)[0]
    return [model.backbone(x)]  # type: ignore[operator]


@torch.no_grad()
def grey_features(model: nn.Module, grey: Tensor, card: ModelCard, batch_size: int = 64
                  ) -> list[Tensor]:
    """Each member's features of films decoded to grey (eval mode, no augmentation)."""
    from xreg.train.finetune import network_input

    model.eval()
    parts: list[list[Tensor]] = []
    for start in range(0, len(grey), batch_size):
        parts.append(backbone_features(model, network_input(grey[start:start + batch_size],
                                                            card)))
    if not parts:
        return []
    return [torch.cat([p[m] for p in parts]).float() for m in range(len(parts[0]))]


def replay_from_grey(model: nn.Module, card: ModelCard, grey: Tensor,
                     truth: Sequence[tuple[str, ...]], instrument: Sequence[int | None],
                     fracture: Sequence[int | None], sites: Sequence[str],
                     holdout: Sequence[bool]) -> ReplaySet:
    """Labelled films (decoded to grey) as a :class:`ReplaySet` of ``model``."""
    labels = card.head("body_part").labels
    feats = grey_features(model, grey, card)
    names = tuple(dict.fromkeys(sites))
    return ReplaySet(
        torch.cat(feats, dim=1).numpy().astype(np.float16) if feats else
        np.zeros((0, 0), np.float16),
        tuple(int(f.shape[1]) for f in feats), labels,
        np.array([[label in t for label in labels] for t in truth], dtype=bool).reshape(
            len(truth), len(labels)),
        np.array([-1 if v is None else int(v) for v in instrument], dtype=np.int8),
        np.array([-1 if v is None else int(v) for v in fracture], dtype=np.int8),
        np.array([names.index(s) for s in sites], dtype=np.int16), names,
        np.array(holdout, dtype=bool))
