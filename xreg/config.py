"""Options for ``xreg sort``: built-in defaults < YAML config file < command line."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from xreg.errors import ConfigError
from xreg.sort.grouping import parse_group_by
from xreg.sort.header_check import HEADER_CHECKS
from xreg.sort.placement import DEFAULT_LAYOUT, MODES, validate_layout


@dataclass(frozen=True)
class SortOptions:
    """Everything a sort run needs besides its input and output folders."""

    weights: Path | None = None
    mode: str = "copy"
    dry_run: bool = False
    batch_size: int = 16
    workers: int = 2
    device: str = "auto"
    runtime: str = "auto"  # auto: ONNX Runtime when the model has an export, else torch
    engine: str = "local"  # local: threads in this process; ray: Ray Data workers
    ray_address: str | None = None  # None: start a local Ray for the run; auto or host:port
    gpus_per_worker: float = 0.0  # --engine ray: GPUs each model actor takes
    min_confidence: float | None = None  # None: the model card's threshold
    min_age: float = 10.0
    layout: str = DEFAULT_LAYOUT
    registry: Path | None = None
    strict: bool = False
    header_vocabulary: Path | None = None  # None: xreg/configs/header_vocabulary.yaml
    header_check: str = "review"  # review: a header naming another class sends to _review
    group_by: str | None = None  # folder levels under IN: {patient}/{study} (grouping.py)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.batch_size < 1 or self.batch_size > 1024:
            raise ConfigError("batch_size must be between 1 and 1024")
        if self.workers < 1 or self.workers > 64:
            raise ConfigError("workers must be between 1 and 64")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, not {self.device!r}")
        if self.engine not in ("local", "ray"):
            raise ConfigError(f"engine must be local or ray, not {self.engine!r}")
        if self.gpus_per_worker < 0 or (self.gpus_per_worker and self.engine != "ray"):
            raise ConfigError("gpus_per_worker is a positive number, for --engine ray")
        if self.ray_address is not None and self.engine != "ray":
            raise ConfigError("ray_address goes with --engine ray")
        if self.runtime not in ("auto", "onnx", "torch"):
            raise ConfigError(f"runtime must be auto, onnx or torch, not {self.runtime!r}")
        if self.min_confidence is not None and not 0.0 <= self.min_confidence <= 1.0:
            raise ConfigError("min_confidence must be between 0 and 1")
        if self.min_age < 0:
            raise ConfigError("min_age must not be negative")
        if self.header_check not in HEADER_CHECKS:
            raise ConfigError(f"header_check must be {' or '.join(HEADER_CHECKS)}, "
                              f"not {self.header_check!r}")
        validate_layout(self.layout)
        if self.group_by is not None:
            parse_group_by(self.group_by)
            if self.mode == "link":
                # A symlink in OUT would hold the source path, patient folder and all.
                raise ConfigError("group_by does not go with mode link: a link's target would "
                                  "put the patient folder name into OUT; use copy, move or "
                                  "hardlink")


_PATH_KEYS = {"weights", "registry", "header_vocabulary"}


def read_section(path: Path | None, section: str) -> dict[str, Any]:
    """The ``section:`` mapping of a YAML file (or the whole file); {} for no file.

    No expressions, no references: plain YAML values only (``safe_load``).
    """
    if path is None:
        return {}
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    values = data.get(section, data)
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: {section!r} must be a mapping")
    return dict(values)


def load_sort_options(config: Path | None, overrides: Mapping[str, Any]) -> SortOptions:
    """Merge a YAML file (its ``sort:`` section) and command-line overrides.

    ``overrides`` holds only the options the user actually gave (None means
    not given). Unknown keys are rejected by name.
    """
    values = read_section(config, "sort")
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in dataclasses.fields(SortOptions)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown sort option(s): {', '.join(unknown)}")
    if values.get("header_check") is False:
        values["header_check"] = "off"  # YAML 1.1 reads a bare `off` as false
    for key in _PATH_KEYS & set(values):
        values[key] = Path(values[key]).expanduser()
    try:
        return SortOptions(**values)
    except TypeError as exc:
        raise ConfigError(f"bad sort option: {exc}") from None
