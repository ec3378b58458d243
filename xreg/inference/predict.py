"""Batched inference over files: decode in threads, run the model in batches.

Decoding (Pillow, pydicom's codecs, hashlib) releases the GIL, so a small
in-process thread pool keeps the model fed without the start-up cost and
thread oversubscription of DataLoader worker processes on a 2-core machine.
The model is a :class:`~xreg.inference.runtime.Model` (ONNX Runtime or
PyTorch); this module never imports PyTorch itself.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xreg.errors import ConfigError
from xreg.inference.preprocess import Preprocessor
from xreg.inference.runtime import Model, as_model, inference_model, resolve_device
from xreg.io import ImageMeta, try_load_image
from xreg.model.card import DISTANCE_OUTPUT, MEMBERS_OUTPUT, ModelCard

if TYPE_CHECKING:
    from xreg.model.checkpoint import LoadedModel

__all__ = ["Prediction", "Scored", "SourceFile", "decide", "decode_source", "disagreement_reason",
           "distance_reason", "energy", "guard_reason", "inference_model", "predict_files",
           "resolve_device", "score_logits", "softmax", "unfamiliar_reason"]


@dataclass(frozen=True)
class SourceFile:
    """A file found in the input folder, as stat saw it."""

    path: Path
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Prediction:
    """What became of one file: the model's output, or why there is none.

    ``status`` is ``ok`` (predicted), ``known`` (content already in the
    registry, not decoded), ``unreadable`` (not a decodable image; the file
    is still placed, in ``_unreadable``) or ``failed`` (could not even be
    read; it stays where it is).
    """

    source: SourceFile
    sha256: str
    status: str
    meta: ImageMeta | None = None
    probabilities: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    error: str | None = None
    energy: float | None = None  # -logsumexp of the body-part logits (low: familiar)
    unfamiliar: str | None = None  # the guard's reason (see guard_reason)
    distance: float | None = None  # to the k-th nearest training film (with a feature bank)
    agreement: float | None = None  # an ensemble's least member probability for the label

    def confidence(self, head: str) -> float:
        return self.probabilities[head][self.labels[head]]


def unfamiliar_reason(energy: float | None, card: ModelCard) -> str | None:
    """The guard's reason when a film is unlike the model's training films.

    A card with a ``guard`` gives the highest body-part energy it accepts,
    calibrated on held-out films of the kinds it was trained on; above it,
    the film goes to ``_review`` rather than to a confident, possibly wrong
    folder. None: familiar enough, or no guard.
    """
    limit = card.guard.get("energy_max") if card.guard else None
    if limit is None or energy is None or energy <= limit:
        return None
    return f"unfamiliar film (energy {energy:.2f} > {limit:.2f})"


def distance_reason(distance: float | None, card: ModelCard) -> str | None:
    """Held back: the film's features are far from every film the model learned from."""
    limit = card.guard.get("distance_max") if card.guard else None
    if limit is None or distance is None or distance <= limit:
        return None
    return f"unlike the training films (distance {distance:.3f} > {limit:.3f})"


def disagreement_reason(label: str, member_probs: np.ndarray, labels: tuple[str, ...],
                        card: ModelCard) -> str | None:
    """Held back: some member gives the ensemble's ``label`` less than ``agree_min``.

    ``member_probs`` is ``(members, classes)``. The reason names each member's
    own answer (``models disagree: knee / shoulder``), or the doubting member's
    probability when they name the same class.
    """
    least = card.guard.get("agree_min") if card.guard else None
    if least is None or member_probs.shape[0] < 2:
        return None
    k = labels.index(label)
    if float(member_probs[:, k].min()) >= least:
        return None
    tops = list(dict.fromkeys(labels[int(i)] for i in member_probs.argmax(axis=1)))
    if len(tops) > 1:
        return "models disagree: " + " / ".join(tops)
    return (f"models disagree: {label} at {float(member_probs[:, k].min()):.2f} "
            f"< {least:.2f} for one of them")


def guard_reason(card: ModelCard, label: str | None, energy_value: float | None,
                 distance: float | None = None,
                 member_probs: np.ndarray | None = None) -> str | None:
    """The first of the guard's reasons to hold a film back, or None.

    Far from the training films, then unfamiliar energy, then members that
    disagree about ``label`` (the body-part head's top label).
    """
    reason = distance_reason(distance, card) or unfamiliar_reason(energy_value, card)
    if reason is None and label is not None and member_probs is not None:
        reason = disagreement_reason(label, member_probs, card.heads[0].labels, card)
    return reason


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``(B, C)`` logits, in float64 for a stable sum."""
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    out: np.ndarray = z / z.sum(axis=1, keepdims=True)
    return out


def energy(logits: np.ndarray) -> np.ndarray:
    """Row-wise energy ``-logsumexp(logits)`` of ``(B, C)`` logits (Liu et al., 2020).

    Lower for inputs like the training films; an out-of-distribution film
    tends to give all classes low logits, hence a high energy.
    """
    z = np.asarray(logits, np.float64)
    top = z.max(axis=1)
    out: np.ndarray = -(top + np.log(np.exp(z - top[:, None]).sum(axis=1)))
    return out


def decide(probabilities: Mapping[str, Mapping[str, float]], card: ModelCard) -> dict[str, str]:
    """Turn probabilities into labels: thresholds for binary heads, argmax otherwise."""
    labels = {}
    for head in card.heads:
        probs = probabilities[head.name]
        if len(head.labels) == 2 and head.name in card.thresholds:
            positive = head.labels[1]
            labels[head.name] = (
                positive if probs[positive] >= card.thresholds[head.name] else head.labels[0]
            )
        else:
            labels[head.name] = max(probs, key=probs.__getitem__)
    return labels


@dataclass
class _Decoded:
    source: SourceFile
    sha256: str = ""
    status: str = "ok"
    meta: ImageMeta | None = None
    tensor: np.ndarray | None = None
    error: str | None = None


def decode_source(source: SourceFile, preprocess: Preprocessor,
                  known: Container[str] = frozenset()) -> _Decoded:
    """Read, hash, decode at model size and preprocess one file (or say why not).

    The per-file step of every engine: the local thread pool and Ray's map tasks.
    """
    try:
        data = source.path.read_bytes()
    except OSError as exc:
        return _Decoded(source, status="failed", error=f"cannot read file ({exc.strerror})")
    out = _Decoded(source, sha256=hashlib.sha256(data).hexdigest())
    if out.sha256 in known:
        out.status = "known"
        return out
    image = try_load_image(data, target_size=preprocess.size)
    if isinstance(image, str):
        out.status, out.error = "unreadable", image
        return out
    out.meta = image.meta
    out.tensor = preprocess(image.pixels)
    return out


def predict_files(
    files: Iterable[SourceFile],
    loaded: Model | LoadedModel,
    *,
    batch_size: int = 16,
    workers: int = 2,
    device: Any = None,
    known: Container[str] = frozenset(),
    on_decoded: Callable[[], None] | None = None,
) -> Iterator[list[Prediction]]:
    """Yield predictions in input order, one list per model batch.

    ``loaded`` is a :class:`~xreg.inference.runtime.Model`, or a torch
    checkpoint run on ``device``. Files whose content hash is in ``known``
    are hashed but not decoded. A file that fails to decode becomes an
    ``unreadable`` prediction; the batch goes on.
    """
    if batch_size < 1 or workers < 1:
        raise ConfigError("--batch-size and --workers must be at least 1")
    model = as_model(loaded, device)
    preprocess = Preprocessor(model.card)
    lookahead = batch_size * 2
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="xreg-decode") as pool:
        pending: deque[Future[_Decoded]] = deque()
        batch: list[_Decoded] = []
        iterator = iter(files)
        exhausted = False
        while True:
            while not exhausted and len(pending) < lookahead:
                nxt = next(iterator, None)
                if nxt is None:
                    exhausted = True
                    break
                pending.append(pool.submit(decode_source, nxt, preprocess, known))
            if not pending:
                break
            batch.append(pending.popleft().result())
            if on_decoded is not None:
                on_decoded()
            ready = sum(d.tensor is not None for d in batch)
            # Undecoded entries (known, unreadable) also flush, so progress never stalls.
            if ready >= batch_size or len(batch) >= lookahead or (not pending and exhausted):
                yield _run_batch(batch, model)
                batch = []
        if batch:
            yield _run_batch(batch, model)


def _run_batch(batch: list[_Decoded], model: Model) -> list[Prediction]:
    card = model.card
    decoded = [d for d in batch if d.tensor is not None]
    scored: dict[int, Scored] = {}
    if decoded:
        logits = model.runtime.run(np.stack([d.tensor for d in decoded
                                             if d.tensor is not None]))
        for d, film in zip(decoded, score_logits(logits, card)):
            scored[id(d)] = film
    out = []
    for d in batch:
        one = scored.get(id(d))
        out.append(Prediction(
            source=d.source, sha256=d.sha256, status=d.status, meta=d.meta, error=d.error,
            **(one.fields() if one is not None else {})))
    return out


@dataclass(frozen=True)
class Scored:
    """One film's model output read by the prediction layer (see :func:`score_logits`)."""

    probabilities: dict[str, dict[str, float]]
    labels: dict[str, str]
    energy: float
    distance: float | None
    agreement: float | None
    unfamiliar: str | None

    def fields(self) -> dict[str, Any]:
        return {"probabilities": self.probabilities, "labels": self.labels,
                "energy": self.energy, "distance": self.distance,
                "agreement": self.agreement, "unfamiliar": self.unfamiliar}


def score_logits(logits: Mapping[str, np.ndarray], card: ModelCard) -> list[Scored]:
    """Probabilities, labels, energy, distance and the guard's reason for a batch.

    Every engine's one reading of a network's outputs. An ensemble's heads are
    mean probabilities, so its energy is the members' mean energy, read from
    their own logits, and their answers decide agreement. A card whose guard
    lists ``fracture_classes`` (the body parts its fracture head learned from
    labelled films) gives no fracture label for any other body part.
    """
    per_head = {head.name: softmax(logits[head.name]).tolist() for head in card.heads}
    members = logits.get(MEMBERS_OUTPUT)
    member_probs: np.ndarray | None = None
    if members is not None:
        energies = np.mean([energy(members[:, m]) for m in range(members.shape[1])], axis=0)
        member_probs = np.stack([softmax(members[:, m]) for m in range(members.shape[1])],
                                axis=1)
    else:
        energies = energy(logits[card.heads[0].name])
    distances = logits.get(DISTANCE_OUTPUT)
    out = []
    for i in range(len(energies)):
        probs = {head.name: dict(zip(head.labels, per_head[head.name][i]))
                 for head in card.heads}
        labels = decide(probs, card)
        label = labels[card.heads[0].name]
        judged = card.guard.get("fracture_classes") if card.guard else None
        if judged is not None and label not in judged:
            labels.pop("fracture", None)  # the head never learned this class: unknown
        distance = None if distances is None else float(distances[i])
        votes = None if member_probs is None else member_probs[i]
        agreement = None if votes is None else \
            float(votes[:, card.heads[0].labels.index(label)].min())
        out.append(Scored(probs, labels, float(energies[i]), distance, agreement,
                          guard_reason(card, label, float(energies[i]), distance, votes)))
    return out
