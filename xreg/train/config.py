"""Training recipes: YAML (its ``train:`` section) into a frozen, validated dataclass.

``configs/bodypart_instrument.yaml`` is the thesis recipe. Keys are flat and
plain (no expressions); an unknown key or a bad value is rejected by name.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xreg.config import read_section
from xreg.errors import ConfigError
from xreg.model.card import INTENSITY_MODES
from xreg.model.models import ARCHS, KNOWN_HEADS
from xreg.train.augment import SITE_DEFAULTS, check_steps

__all__ = ["BODY_PART_SETS", "PRETRAINED", "DataSource", "TrainConfig", "load_train_config"]

PRETRAINED = ("imagenet", "none")
TASKS = ("body_part", "hip_fracture")
#: ``nine``: the thesis's classes; ``extended``: also forearm, humerus, lower_leg,
#: femur and ``other`` (see :data:`xreg.model.models.EXTENDED_BODY_PARTS`).
BODY_PART_SETS = ("nine", "extended")
_SYNTH_KEYS = {"count": int, "seed": int, "out_of_scope": int, "size": int,
               "hip_pairs": int}


@dataclass(frozen=True)
class DataSource:
    """One dataset of a multi-source run: a manifest/folder, or phantoms made on the fly.

    ``weight`` is the source's share of each epoch's draws (normalised over
    the sources); ``synth`` holds ``xreg synth`` arguments (count, seed,
    out_of_scope, size, hip_pairs) for phantoms rendered into the run folder.
    """

    name: str
    path: str = ""
    weight: float = 1.0
    synth: Mapping[str, int] | None = None

    def __post_init__(self) -> None:
        def bad(why: str) -> ConfigError:
            return ConfigError(f"train config key 'datasets', entry {self.name!r}: {why}")

        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            raise ConfigError("train config key 'datasets': every entry needs a name "
                              "without '/'")
        if not _is_number(self.weight) or self.weight <= 0:
            raise bad(f"weight must be a number > 0, got {self.weight!r}")
        if bool(self.path) == (self.synth is not None):
            raise bad("give exactly one of path (a manifest or folder) or synth")
        if self.synth is not None:
            if not isinstance(self.synth, Mapping):
                raise bad("synth must be a mapping")
            unknown = sorted(set(self.synth) - set(_SYNTH_KEYS))
            if unknown:
                raise bad(f"unknown synth key(s) {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(_SYNTH_KEYS))})")
            for key, value in self.synth.items():
                if not _is_int(value) or value < 0:
                    raise bad(f"synth {key} must be an integer >= 0, got {value!r}")
            object.__setattr__(self, "synth", dict(self.synth))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "weight": float(self.weight)}
        if self.synth is not None:
            out["synth"] = dict(self.synth)
        else:
            out["path"] = self.path
        return out


@dataclass(frozen=True)
class TrainConfig:
    """One training recipe; defaults are the thesis's (see DESIGN.md)."""

    name: str = ""  # model name in the card; empty: the output file's stem
    task: str = "body_part"  # body_part: one film; hip_fracture: AP + lateral side by side
    arch: str = "mobilenet_v2"
    input_size: int = 224
    dropout: float = 0.2
    heads: tuple[str, ...] = ("body_part", "instrument")  # body_part first; view, fracture
    body_parts: str = "nine"  # nine | extended (long bones and other as well)
    datasets: tuple[DataSource, ...] = ()  # several sources; --data replaces them
    pretrained: str = "imagenet"  # imagenet | none
    allow_random_init: bool = False  # imagenet unavailable: random init instead of failing
    lr: float = 2e-5
    milestones: tuple[int, ...] = (20, 40, 60, 80)
    gamma: float = 0.5
    batch_size: int = 16
    max_epochs: int = 100
    patience: int = 10  # epochs without a better validation loss before stopping
    label_smoothing: float = 0.1  # body part head only
    primary_weight: float = 0.0  # set labels: extra -log p(first member), 0 = pure set loss
    weighted_sampling: bool = True  # balance the instrument classes in each epoch
    balance_power: float = 1.0  # 1: classes drawn equally; 0.5: by sqrt of their counts
    samples_per_epoch: int = 0  # 0: one draw per training item
    reviewed_only: bool = False  # --data OUT: only the films a person reviewed
    hflip: bool = True
    rot90: bool = True
    rotate: float = 0.0  # beyond the thesis: random rotation up to this many degrees
    scale: float = 0.0  # random zoom by up to this fraction
    shift: float = 0.0  # random shift by up to this fraction of the side
    intensity: float = 0.0  # random gamma, contrast and brightness (e.g. 0.2)
    # Site augmentation (xreg/train/augment.py): step -> probability; "default" takes
    # SITE_DEFAULTS, {} or "off" switches it off; {default: true, hardware: 0.3} is
    # SITE_DEFAULTS plus (or overriding) the steps named.
    site_augment: Mapping[str, float] | str = dataclasses.field(default_factory=dict)
    cache_size: int = 0  # films cached at this size for crops (0: input_size)
    normalise: str = "none"  # none | percentile: the card's grey-level normalisation
    split: tuple[float, float, float] = (0.7, 0.2, 0.1)  # train, val, test
    seed: int = 0
    instrument_threshold: str | float = "youden"  # youden (on val) or a probability
    fracture_threshold: str | float = "youden"  # the single-film fracture head's
    min_confidence: float = 0.5
    resamples: int = 5000  # bootstrap resamples for the test metrics' CIs

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"train config key {key!r}: {why}")

        if not isinstance(self.name, str):
            raise bad("name", "must be a string")
        if self.arch not in ARCHS:
            raise bad("arch", f"unknown arch {self.arch!r}; choose one of {sorted(ARCHS)}")
        for key, low in (("input_size", 32), ("batch_size", 2), ("max_epochs", 1),
                         ("patience", 1), ("resamples", 1), ("samples_per_epoch", 0)):
            value = getattr(self, key)
            if not _is_int(value) or value < low:
                raise bad(key, f"must be an integer >= {low}, got {value!r}")
        if not _is_int(self.seed):
            raise bad("seed", f"must be an integer, got {self.seed!r}")
        if self.pretrained not in PRETRAINED:
            raise bad("pretrained", f"must be one of {', '.join(PRETRAINED)}")
        for key in ("allow_random_init", "weighted_sampling", "hflip", "rot90"):
            if not isinstance(getattr(self, key), bool):
                raise bad(key, "must be true or false")
        steps = self.site_augment
        if steps == "default":
            steps = dict(SITE_DEFAULTS)
        elif steps in ("off", None):
            steps = {}
        object.__setattr__(self, "site_augment", check_steps(steps))
        if not _is_int(self.cache_size) or (self.cache_size and self.cache_size < 32):
            raise bad("cache_size", f"must be 0 or an integer >= 32, got {self.cache_size!r}")
        if self.normalise not in INTENSITY_MODES:
            raise bad("normalise", f"must be one of {', '.join(INTENSITY_MODES)}, "
                      f"not {self.normalise!r}")
        for key, lo, hi in (("dropout", 0.0, 0.99), ("label_smoothing", 0.0, 0.99),
                            ("gamma", 1e-6, 1.0), ("min_confidence", 0.0, 1.0),
                            ("balance_power", 0.0, 1.0), ("rotate", 0.0, 45.0),
                            ("primary_weight", 0.0, 10.0),
                            ("scale", 0.0, 0.5), ("shift", 0.0, 0.5),
                            ("intensity", 0.0, 1.0)):
            value = getattr(self, key)
            if not _is_number(value) or not lo <= value <= hi:
                raise bad(key, f"must be a number in [{lo}, {hi}], got {value!r}")
        if not _is_number(self.lr) or not 0 < self.lr < 1:
            raise bad("lr", f"must be a number in (0, 1), got {self.lr!r}")
        if self.task not in TASKS:
            raise bad("task", f"must be one of {', '.join(TASKS)}, not {self.task!r}")
        heads = _as_tuple(self.heads, "heads")
        if self.task == "hip_fracture":
            if heads != ("fracture",):
                raise bad("heads", "the hip_fracture task has one head: [fracture]")
        elif not heads or heads[0] != "body_part" or len(set(heads)) != len(heads) \
                or not set(heads) <= set(KNOWN_HEADS):
            raise bad("heads", "must list body_part first, then any of instrument, view, "
                      "fracture, each once")
        object.__setattr__(self, "heads", heads)
        if self.body_parts not in BODY_PART_SETS:
            raise bad("body_parts", f"must be one of {', '.join(BODY_PART_SETS)}, "
                      f"not {self.body_parts!r}")
        sources = _as_tuple(self.datasets, "datasets")
        if not all(isinstance(d, DataSource) for d in sources):
            raise bad("datasets", "entries must be mappings with name and path or synth")
        if len({d.name for d in sources}) != len(sources):
            raise bad("datasets", "dataset names must be unique")
        object.__setattr__(self, "datasets", sources)
        milestones = _as_tuple(self.milestones, "milestones")
        if not all(_is_int(m) and m >= 1 for m in milestones) \
                or list(milestones) != sorted(set(milestones)):
            raise bad("milestones", "must be increasing positive epoch numbers")
        object.__setattr__(self, "milestones", milestones)
        split = _as_tuple(self.split, "split")
        if len(split) != 3 or not all(_is_number(f) and f >= 0 for f in split) \
                or not math.isclose(sum(split), 1.0, abs_tol=1e-6) or split[0] <= 0 \
                or split[1] <= 0:
            raise bad("split", "must be [train, val, test] fractions summing to 1, "
                      "train and val > 0")
        object.__setattr__(self, "split", tuple(float(f) for f in split))
        for key in ("instrument_threshold", "fracture_threshold"):
            t = getattr(self, key)
            if t != "youden" and not (_is_number(t) and 0 <= float(t) <= 1):
                raise bad(key, f"must be 'youden' or a probability, got {t!r}")

    @property
    def balance_head(self) -> str:
        """The head whose classes weighted sampling balances (the rarer class)."""
        return "fracture" if self.task == "hip_fracture" else "instrument"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (stored in the card and in resume state)."""
        data = dataclasses.asdict(self)
        data["milestones"] = list(self.milestones)
        data["heads"] = list(self.heads)
        data["split"] = list(self.split)
        data["datasets"] = [d.to_dict() for d in self.datasets]
        data["site_augment"] = dict(self.site_augment)
        return data

    @property
    def decode_size(self) -> int:
        """The size films are decoded and cached at (crops cut from it)."""
        return max(self.cache_size, self.input_size)

    def threshold_rule(self, head: str) -> str | float:
        """How a binary head's threshold is chosen: ``youden`` or a fixed probability."""
        return self.fracture_threshold if head == "fracture" and self.task == "body_part" \
            else self.instrument_threshold


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def _as_tuple(value: Any, key: str) -> tuple[Any, ...]:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"train config key {key!r}: must be a list")
    return tuple(value)


def _data_sources(entries: Any, config_path: Path | None) -> tuple[DataSource, ...]:
    """``datasets:`` entries; a relative ``path`` is relative to the config file."""
    if not isinstance(entries, (list, tuple)):
        raise ConfigError("train config key 'datasets': must be a list")
    base = Path(config_path).parent if config_path is not None else Path()
    sources = []
    for i, entry in enumerate(entries):
        if isinstance(entry, DataSource):
            sources.append(entry)
            continue
        if not isinstance(entry, Mapping):
            raise ConfigError(f"train config key 'datasets', entry {i + 1}: must be a mapping")
        unknown = sorted(set(entry) - {"name", "path", "weight", "synth"})
        if unknown:
            raise ConfigError(f"train config key 'datasets', entry {i + 1}: unknown key(s) "
                              f"{', '.join(unknown)} (known: name, path, weight, synth)")
        path = entry.get("path") or ""
        if path and not Path(path).is_absolute():
            path = str(base / path)
        sources.append(DataSource(name=entry.get("name", ""), path=str(path),
                                  weight=entry.get("weight", 1.0), synth=entry.get("synth")))
    return tuple(sources)


def load_train_config(path: Path | None, overrides: Mapping[str, Any] | None = None
                      ) -> TrainConfig:
    """Read ``path`` (its ``train:`` section, or the whole file) over the defaults.

    ``overrides`` (keys given on the command line; None values ignored) win
    over the file. Raises ``ConfigError`` naming an unknown key or bad value.
    """
    values = read_section(path, "train")
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if "datasets" in values:
        values["datasets"] = _data_sources(values["datasets"], path)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown train config key(s): {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(known))})")
    return TrainConfig(**values)
