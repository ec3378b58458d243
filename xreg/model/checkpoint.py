"""Self-describing checkpoints: a ModelCard plus weights in one safe file.

A checkpoint is ``torch.save({"format": "xreg-checkpoint", "card": <JSON str>,
"state_dict": ...})``. It is loaded with ``weights_only=True`` and never with
unsafe pickle, so a checkpoint from a stranger cannot run code.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from xreg.errors import CheckpointError, ConfigError
from xreg.hashing import file_sha256
from xreg.model.card import (
    CARD_FORMAT_VERSION,
    DEFAULT_WEIGHTS,
    ModelCard,
    default_weights,
    shipped_weights,
)
from xreg.model.ensemble import EnsembleNet, build_ensemble
from xreg.model.models import (
    FRACTURE_HEAD,
    STANDARD_HEADS,
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
    "shipped_weights",
    "DEFAULT_WEIGHTS",
]

CHECKPOINT_FORMAT = "xreg-checkpoint"
RANDOM_WEIGHTS_NOTE = (
    "RANDOM WEIGHTS, for tests and the placeholder demo only; "
    "predictions are meaningless."
)


@dataclass
class LoadedModel:
    """A checkpoint ready for inference: the model in eval mode and its card."""

    model: MultiHeadNet | EnsembleNet
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
    path: str | os.PathLike[str], model: MultiHeadNet | EnsembleNet, card: ModelCard
) -> str:
    """Write ``model`` and ``card`` atomically to one file; return its sha256."""
    archs = model.member_archs if isinstance(model, EnsembleNet) else ()
    if tuple(card.members) != archs:
        raise CheckpointError(f"card members {list(card.members)} do not describe the "
                              f"model's {list(archs)}")
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
        model: MultiHeadNet | EnsembleNet = build_ensemble(card) if card.members else \
            build_model(card.arch, card.heads, input_size=card.input_size)
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

