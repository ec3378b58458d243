"""Model cards: what a model is, read and checked without PyTorch.

A card travels inside its checkpoint (``.pt``) and inside the ONNX file
exported from it, so the sort path can read one with ONNX Runtime alone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from xreg import __version__
from xreg.errors import CheckpointError, ConfigError
from xreg.model.labels import ARCH_NAMES, HeadSpec

__all__ = ["CARD_FORMAT_VERSION", "DEFAULT_WEIGHTS", "DISTANCE_OUTPUT", "MEMBERS_OUTPUT",
           "ModelCard", "default_weights", "extra_outputs", "shipped_weights"]

CARD_FORMAT_VERSION = 1
#: The checkpoint ``xreg sort`` uses when no --weights is given, shipped as package
#: data in ``xreg/weights/`` (trained on real FracAtlas films and phantoms; see its
#: model card).
DEFAULT_WEIGHTS = "bodypart_sites.pt"


# Card keys added after format version 1 was first written; older cards lack them.
_OPTIONAL_KEYS = frozenset({"views", "normalise", "guard", "members", "replay"})
#: Network outputs beyond the heads (see :mod:`xreg.model.ensemble`): every member's
#: body-part logits ``(B, members, classes)`` and the distance to the k-th nearest
#: training film ``(B,)``.
MEMBERS_OUTPUT = "body_part_members"
DISTANCE_OUTPUT = "distance"
#: Grey-level normalisation a model expects before mean/std (see
#: :func:`xreg.inference.preprocess.normalise_intensity`).
INTENSITY_MODES = ("none", "percentile")


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
    normalise: str = "none"  # none | percentile: grey levels before mean/std
    # The unfamiliar-film guard: {"energy_max": E, ...}; a film whose body-part energy
    # (-logsumexp of the logits) exceeds E goes to _review. Empty: no guard.
    guard: Mapping[str, Any] = field(default_factory=dict)
    # An ensemble's member archs, in order (``arch`` is the first's); empty: one network.
    # The guard may then also hold ``agree_min`` (the least probability every member
    # must give the label) and, with a feature bank (``bank``: films, dim, k), the
    # largest ``distance_max`` to the k-th nearest training film. ``fracture_classes``
    # lists the body parts whose fracture call means something (learned from labels).
    members: tuple[str, ...] = ()
    # What ``xreg adapt`` replays to keep what the model knew (``<name>.replay.npz`` beside
    # the weights: derived features and labels of training films, never the films):
    # file, sha256, films, holdout, per_site. Empty: none shipped.
    replay: Mapping[str, Any] = field(default_factory=dict)

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
        if self.arch not in ARCH_NAMES:
            raise bad("arch", f"unknown arch {self.arch!r}; known: {sorted(ARCH_NAMES)}")
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
        if self.normalise not in INTENSITY_MODES:
            raise bad("normalise", f"must be one of {', '.join(INTENSITY_MODES)}, "
                      f"got {self.normalise!r}")
        if not isinstance(self.guard, Mapping):
            raise bad("guard", "must be a mapping")
        if self.guard:
            limit = self.guard.get("energy_max")
            if not _is_number(limit) or not math.isfinite(limit):
                raise bad("guard", f"energy_max must be a finite number, got {limit!r}")
        self._check_members(bad)
        object.__setattr__(self, "guard", _plain_json(dict(self.guard), "guard"))
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

    def _check_members(self, bad: Any) -> None:
        members = tuple(self.members) if isinstance(self.members, (list, tuple)) else None
        if members is None or any(a not in ARCH_NAMES for a in members):
            raise bad("members", f"must be a list of known archs, got {self.members!r}")
        if members and members[0] != self.arch:
            raise bad("members", f"the first member must be the card's arch {self.arch!r}")
        object.__setattr__(self, "members", members)
        agree = self.guard.get("agree_min")
        if agree is not None and (not _is_number(agree) or not 0 <= agree <= 1
                                  or len(members) < 2):
            raise bad("guard", f"agree_min must be a probability and needs two or more "
                      f"members, got {agree!r}")
        judged = self.guard.get("fracture_classes")
        if judged is not None and (not isinstance(judged, (list, tuple)) or not all(
                isinstance(c, str) for c in judged)):
            raise bad("guard", f"fracture_classes must be a list of labels, got {judged!r}")
        bank = self.guard.get("bank")
        if bank is not None:
            if not members or not isinstance(bank, Mapping) or not all(
                    isinstance(bank.get(k), int) and bank[k] >= 1 for k in ("films", "dim", "k")):
                raise bad("guard", "bank must be {films, dim, k} (positive integers) "
                          "and needs members")
            limit = self.guard.get("distance_max")
            if not _is_number(limit) or not math.isfinite(limit):
                raise bad("guard", f"distance_max must be a finite number, got {limit!r}")

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
            "normalise": self.normalise,
            "guard": _plain_json(self.guard, "guard"),
            **({"members": list(self.members)} if self.members else {}),
            **({"replay": _plain_json(self.replay, "replay")} if self.replay else {}),
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
        return cls(**{**dict(data), "heads": tuple(heads),
                      "members": tuple(data.get("members") or ()),
                      "replay": dict(data.get("replay") or {})})


def extra_outputs(card: ModelCard) -> tuple[str, ...]:
    """The outputs a network of ``card`` gives after its heads, in order."""
    out = (MEMBERS_OUTPUT,) if len(card.members) > 1 else ()
    return out + ((DISTANCE_OUTPUT,) if card.guard.get("bank") else ())


def shipped_weights(name: str) -> Path:
    """A checkpoint shipped inside the package (``xreg/weights/NAME``), wheel or checkout."""
    return Path(str(resources.files("xreg") / "weights" / name))


def default_weights() -> Path:
    """The shipped default checkpoint, ``xreg/weights/bodypart_sites.pt``.

    Package data, so an installed wheel has it too. Raises ``ConfigError``
    saying what to pass when it is absent.
    """
    path = shipped_weights(DEFAULT_WEIGHTS)
    if not path.is_file():
        raise ConfigError(f"no model weights: pass --weights FILE or set XREG_WEIGHTS "
                          f"(the shipped default {path} is not there)")
    return path
