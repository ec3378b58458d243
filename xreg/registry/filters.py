"""Which studies and patients a registry rollup covers (:class:`RegistryFilter`)."""

from __future__ import annotations

import datetime as _dt
from dataclasses import asdict, dataclass
from typing import Any

from xreg.errors import ConfigError
from xreg.model.labels import EXTENDED_BODY_PARTS

__all__ = ["RegistryFilter"]


@dataclass(frozen=True)
class RegistryFilter:
    """Which studies (and so patients) a rollup covers; ``None`` means any.

    ``body_part``, ``instrument`` and ``fracture`` select studies having one
    film whose effective labels match all of them; ``since`` and ``until``
    (ISO dates, inclusive) select on the study date, and leave undated studies out.
    """

    body_part: str | None = None
    instrument: bool | None = None
    fracture: bool | None = None
    since: str | None = None
    until: str | None = None

    def __post_init__(self) -> None:
        if self.body_part is not None and self.body_part not in EXTENDED_BODY_PARTS:
            raise ConfigError(f"unknown body part {self.body_part!r}; choose one of "
                              f"{', '.join(EXTENDED_BODY_PARTS)}")
        for name in ("instrument", "fracture"):
            if getattr(self, name) not in (None, True, False):
                raise ConfigError(f"{name} must be true, false or not given")
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None:
                _check_date(name, value)
        if self.since and self.until and self.since > self.until:
            raise ConfigError(f"since ({self.since}) is after until ({self.until})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def selects_films(self) -> bool:
        return (self.body_part, self.instrument, self.fracture) != (None, None, None)


def _check_date(name: str, value: str) -> None:
    try:
        ok = isinstance(value, str) and len(value) == 10 and bool(
            _dt.date.fromisoformat(value))
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(f"{name} must be a date as YYYY-MM-DD, not {value!r}")
