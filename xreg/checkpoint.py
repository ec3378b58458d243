"""Self-describing checkpoints: a ModelCard plus weights in one safe file.

A checkpoint is ``torch.save({"format": "xreg-checkpoint", "card": <JSON str>,
"state_dict": ...})``. It is loaded with ``weights_only=True`` and never with
unsafe pickle, so a checkpoint from a stranger cannot run code.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from xreg import __version__
from xreg.errors import CheckpointError, ConfigError
from xreg.hashing import file_sha256
from xreg.models import (
    ARCHS,
    FRACTURE_HEAD,
    STANDARD_HEADS,
    HeadSpec,
    MultiHeadNet,
    build_model,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "CARD_FORMAT_VERSION",
    "LoadedModel",
    "ModelCard",
    "file_sha256",
    "load_checkpoint",
    "default_weights",
    "make_random_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "xreg-checkpoint"
CARD_FORMAT_VERSION = 1
#: The checkpoint ``xreg sort`` uses when no --weights is given, shipped in the
#: repository's ``weights/`` folder (trained on real FracAtlas films and phantoms;
#: see its model card).
DEFAULT_WEIGHTS = "bodypart_real.pt"
RANDOM_WEIGHTS_NOTE = (
    "RANDOM WEIGHTS, for tests and the placeholder demo only; "
    "predictions are meaningless."
)


# Card keys added after format version 1 was first written; older cards lack them.
_OPTIONAL_KEYS = frozenset({"views"})


def _today() -> str:
    return datetime.now(timezone.utc).date().isoformat()


def _plain_json(value: Any, key: str) -> Any:
    """Return ``value`` as it reads back from JSON (tuples become lists)."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"card key {key!r} is not JSON-serialisable: {exc}") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class ModelCard:
    """What a checkpoint is: arch, heads, preprocessing, thresholds, provenance.

    ``mean``/``std`` are single-channel grey statistics: the network input is
    the grey image normalised, then repeated to 3 channels. ``thresholds``
    maps a head name (or ``"min_confidence"``) to a probability in [0, 1].
    ``training`` and ``metrics`` are free-form JSON-able summaries.
    """

    name: str
    arch: str
    heads: tuple[HeadSpec, ...]
    input_size: int
    mean: float
    std: float
    thresholds: Mapping[str, float] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)
    xreg_version: str = __version__
    created: str = field(default_factory=_today)
    notes: str = ""
    format_version: int = CARD_FORMAT_VERSION
    views: int = 1  # 2: an AP and a lateral film side by side (the hip fracture model)

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> CheckpointError:
            return CheckpointError(f"model card key {key!r}: {why}")

        if isinstance(self.format_version, bool) or self.format_version != CARD_FORMAT_VERSION:
            raise bad("format_version", f"{self.format_version!r} is not supported "
                      f"(this xreg reads version {CARD_FORMAT_VERSION})")
        for key in ("name", "arch", "xreg_version", "created", "notes"):
            if not isinstance(getattr(self, key), str):
                raise bad(key, "must be a string")
        if not self.name:
            raise bad("name", "must not be empty")
        if self.arch not in ARCHS:
            raise bad("arch", f"unknown arch {self.arch!r}; known: {sorted(ARCHS)}")
        try:
            datetime.fromisoformat(self.created)
        except ValueError:
            raise bad("created", f"{self.created!r} is not an ISO date") from None
        heads = tuple(self.heads) if isinstance(self.heads, (list, tuple)) else ()
        if not heads or not all(isinstance(h, HeadSpec) for h in heads):
            raise bad("heads", "must be a non-empty sequence of HeadSpec")
        if len({h.name for h in heads}) != len(heads):
            raise bad("heads", "duplicate head names")
        object.__setattr__(self, "heads", heads)
        if not isinstance(self.input_size, int) or isinstance(self.input_size, bool) \
                or self.input_size < 32:
            raise bad("input_size", f"must be an integer >= 32, got {self.input_size!r}")
        for key in ("mean", "std"):
            value = getattr(self, key)
            if not _is_number(value) or not math.isfinite(value):
                raise bad(key, f"must be a finite number, got {value!r}")
            object.__setattr__(self, key, float(value))
        if self.std <= 0:
            raise bad("std", f"must be > 0, got {self.std!r}")
        if self.views not in (1, 2) or isinstance(self.views, bool):
            raise bad("views", f"must be 1 or 2, got {self.views!r}")
        if not isinstance(self.thresholds, Mapping):
            raise bad("thresholds", "must be a mapping")
        for head, value in self.thresholds.items():
            if not isinstance(head, str) or not _is_number(value) or not 0 <= value <= 1:
                raise bad("thresholds", f"{head!r}: {value!r} is not a probability")
        object.__setattr__(
            self, "thresholds", {k: float(v) for k, v in self.thresholds.items()}
        )
        for key in ("training", "metrics"):
            value = getattr(self, key)
            if not isinstance(value, Mapping):
                raise bad(key, "must be a mapping")
            # Normalise now so that a card equals itself after a JSON round trip
            # and the caller's later edits to its dict cannot leak in.
            object.__setattr__(self, key, _plain_json(dict(value), key))

    def head(self, name: str) -> HeadSpec:
        """The head called ``name``; ``ConfigError`` if the card has none."""
        for h in self.heads:
            if h.name == name:
                return h
        raise ConfigError(f"model {self.name!r} has no head {name!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict; ``ModelCard.from_dict`` reverses it."""
        return {
            "format_version": self.format_version,
            "name": self.name,
            "arch": self.arch,
            "heads": [{"name": h.name, "labels": list(h.labels)} for h in self.heads],
            "input_size": self.input_size,
            "mean": self.mean,
            "std": self.std,
            "thresholds": dict(self.thresholds),
            "training": _plain_json(self.training, "training"),
            "metrics": _plain_json(self.metrics, "metrics"),
            "xreg_version": self.xreg_version,
            "created": self.created,
            "notes": self.notes,
            "views": self.views,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelCard:
        """Validate and build a card; ``CheckpointError`` names a missing or bad key."""
        if not isinstance(data, Mapping):
            raise CheckpointError("model card must be a JSON object")
        version = data.get("format_version")
        if version is not None and version != CARD_FORMAT_VERSION:
            # A newer card may have other keys; say so rather than list them.
            raise CheckpointError(
                f"model card format_version {version!r} is not supported "
                f"(this xreg reads version {CARD_FORMAT_VERSION}); upgrade xreg"
            )
        expected = {f.name for f in fields(cls)}
        missing = [k for k in sorted(expected - _OPTIONAL_KEYS) if k not in data]
        if missing:
            raise CheckpointError(f"model card is missing key {missing[0]!r}")
        extra = sorted(set(data) - expected)
        if extra:
            raise CheckpointError(f"model card has unknown key {extra[0]!r}")
        raw_heads = data["heads"]
        if not isinstance(raw_heads, list):
            raise CheckpointError("model card key 'heads': must be a list")
        heads = []
        for h in raw_heads:
            if not isinstance(h, Mapping) or set(h) != {"name", "labels"} \
                    or not isinstance(h["labels"], list):
                raise CheckpointError(
                    "model card key 'heads': each head must be {name, labels: [...]}"
                )
            try:
                heads.append(HeadSpec(h["name"], tuple(h["labels"])))
            except ConfigError as exc:
                raise CheckpointError(f"model card key 'heads': {exc}") from None
        return cls(**{**dict(data), "heads": tuple(heads)})


def default_weights() -> Path:
    """The shipped default checkpoint, ``weights/bodypart_real.pt``.

    It lives beside the package in a source checkout (the quick start's
    setup). Raises ``ConfigError`` saying what to pass when it is absent.
    """
    path = Path(__file__).resolve().parent.parent / "weights" / DEFAULT_WEIGHTS
    if not path.is_file():
        raise ConfigError(f"no model weights: pass --weights FILE or set XREG_WEIGHTS "
                          f"(the shipped default {path} is not there)")
    return path


@dataclass
class LoadedModel:
    """A checkpoint ready for inference: the model in eval mode and its card."""

    model: MultiHeadNet
    card: ModelCard
    sha256: str
    path: Path


def _write_atomic(path: Path, data: bytes | memoryview) -> None:
    """Write via temp file + fsync + rename so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable; not possible on every OS
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def save_checkpoint(
    path: str | os.PathLike[str], model: MultiHeadNet, card: ModelCard
) -> str:
    """Write ``model`` and ``card`` atomically to one file; return its sha256."""
    if (card.arch, card.heads, card.input_size) != (
        model.arch, model.head_specs, model.input_size
    ):
        raise CheckpointError(
            f"card ({card.arch}, {[h.name for h in card.heads]}, {card.input_size}) "
            f"does not describe the model ({model.arch}, "
            f"{[h.name for h in model.head_specs]}, {model.input_size})"
        )
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {
        "format": CHECKPOINT_FORMAT,
        # A JSON string keeps the card free of anything weights_only could refuse.
        "card": json.dumps(card.to_dict(), sort_keys=True),
        "state_dict": state,
    }
    # Serialise to memory first so the returned hash is of exactly these bytes.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getbuffer()
    try:
        _write_atomic(Path(path), data)
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint {path}: {exc.strerror}") from exc
    return hashlib.sha256(data).hexdigest()


def _read_payload(data: bytes, path: Path) -> Mapping[str, Any]:
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's own message suggests weights_only=False; we never do that.
        raise CheckpointError(
            f"{path} contains objects other than weights and was refused "
            "(xreg loads checkpoints with weights_only=True)"
        ) from exc
    except Exception as exc:
        raise CheckpointError(
            f"{path} is not a readable torch file (truncated or corrupt?)"
        ) from exc
    if not isinstance(payload, Mapping) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is a torch file but not an xreg checkpoint")
    return payload


def load_checkpoint(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> LoadedModel:
    """Load a checkpoint safely and return the model (eval mode, on ``device``).

    Any problem (missing file, not a torch file, foreign pickled objects,
    wrong format, bad card, weights that do not fit) raises ``CheckpointError``.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror}") from exc
    # Hash the very bytes we load, so the recorded sha256 names these weights.
    sha256 = hashlib.sha256(data).hexdigest()
    payload = _read_payload(data, path)
    raw_card = payload.get("card")
    if not isinstance(raw_card, str):
        raise CheckpointError(f"{path}: checkpoint has no model card")
    try:
        card_dict = json.loads(raw_card)
    except ValueError:
        raise CheckpointError(f"{path}: model card is not valid JSON") from None
    card = ModelCard.from_dict(card_dict)
    state = payload.get("state_dict")
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise CheckpointError(f"{path}: checkpoint has no state_dict of tensors")
    try:
        model = build_model(card.arch, card.heads, input_size=card.input_size)
    except ConfigError as exc:  # e.g. a ViT card whose size is not a multiple of 16
        raise CheckpointError(f"{path}: model card describes no buildable model: {exc}") from None
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # raised for shape mismatches even when not strict
        raise CheckpointError(
            f"{path}: weights do not fit {card.arch}: tensor shapes differ"
        ) from exc
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path}: weights do not fit {card.arch}: "
            f"{len(result.missing_keys)} missing (e.g. {result.missing_keys[:2]}), "
            f"{len(result.unexpected_keys)} unexpected "
            f"(e.g. {result.unexpected_keys[:2]})"
        )
    return LoadedModel(model.to(device).eval(), card, sha256, path.resolve())


def make_random_checkpoint(
    path: str | os.PathLike[str],
    arch: str = "mobilenet_v2",
    input_size: int = 224,
    seed: int = 0,
    name: str | None = None,
    hip: bool = False,
) -> str:
    """Write a seeded random-weight checkpoint; return its sha256.

    The standard heads, or with ``hip`` a two-view fracture model. For tests
    and benchmarks only: its card says its predictions are meaningless.
    """
    heads = (FRACTURE_HEAD,) if hip else STANDARD_HEADS
    # fork_rng keeps the caller's global RNG stream untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(arch, heads, input_size=input_size)
    card = ModelCard(
        name=name or f"random-{arch}-{input_size}-seed{seed}",
        arch=arch,
        heads=heads,
        input_size=input_size,
        mean=0.5,
        std=0.25,
        views=2 if hip else 1,
        thresholds={"fracture": 0.5} if hip else {"instrument": 0.5, "min_confidence": 0.5},
        training={"data": "none: random initialisation", "seed": seed, "epochs": 0},
        metrics={},
        notes=RANDOM_WEIGHTS_NOTE,
    )
    return save_checkpoint(path, model, card)

