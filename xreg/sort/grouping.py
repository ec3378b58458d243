"""``--group-by``: patients and studies from folder levels, for archives without DICOM identity.

A JPEG or PNG archive knows no PatientID; its folders often do
(``IN/<patient>/<study>/film.jpg``). A pattern such as ``{patient}/{study}``
or ``*/{patient}/{study}`` names which folder levels under IN are which
(``*`` skips a level). Parsing is done once, here, with errors that say
what is wrong; locating a file's levels is pure.

The raw patient folder name must never be stored, logged or shown, so a
:class:`Grouper` turns it into the registry's keyed hash (the same
:class:`~xreg.registry.pseudonym.Pseudonymiser` as PatientID, so a folder
named by PatientID meets the DICOM films of that patient) and gives the
*masked* form of a path (the patient level, and the patient's name inside
deeper folder or file names, replaced by the key) for everything that is
kept or printed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath

from xreg.errors import ConfigError

__all__ = ["PLACEHOLDERS", "FolderIdentity", "GroupBy", "Grouper", "parse_group_by"]

PLACEHOLDERS = ("patient", "study")
SKIP = "*"


@dataclass(frozen=True)
class GroupBy:
    """A parsed ``--group-by`` pattern: the level index of each placeholder.

    ``depth`` is how many folder levels under IN the pattern spans; a file in
    fewer folders than that is outside the pattern, a deeper one belongs to it.
    """

    pattern: str
    depth: int
    patient: int | None = None
    study: int | None = None


@dataclass(frozen=True)
class FolderIdentity:
    """The raw folder values of one file (in memory only; never stored or shown).

    ``study`` is the folder path down to and including the study level, so two
    patients' ``study1`` folders are two studies.
    """

    patient: str | None
    study: tuple[str, ...] | None
    patient_level: int | None


def parse_group_by(pattern: str) -> GroupBy:
    """Check a ``--group-by`` pattern once; return it parsed or raise ConfigError saying why.

    Each ``/``-separated level is ``*``, ``{patient}`` or ``{study}``; each
    placeholder at most once; at least one of them.
    """
    if not isinstance(pattern, str) or not pattern.strip():
        raise ConfigError("group_by must be a pattern such as '{patient}/{study}'")
    levels = pattern.split("/")
    where: dict[str, int] = {}
    for i, level in enumerate(levels):
        if level == "":
            raise ConfigError(f"group_by {pattern!r} has an empty level (level {i + 1}); "
                              "separate levels with one '/' and no leading or trailing '/'")
        if level == SKIP:
            continue
        match = re.fullmatch(r"\{(\w*)\}", level)
        if match is None:
            raise ConfigError(f"group_by level {level!r} must be '*', "
                              + " or ".join(f"'{{{p}}}'" for p in PLACEHOLDERS))
        name = match.group(1)
        if name not in PLACEHOLDERS:
            raise ConfigError(f"group_by placeholder {{{name}}} is unknown; use "
                              + " or ".join(f"{{{p}}}" for p in PLACEHOLDERS)
                              + " (and * to skip a level)")
        if name in where:
            raise ConfigError(f"group_by placeholder {{{name}}} appears twice in {pattern!r}")
        where[name] = i
    if not where:
        raise ConfigError(f"group_by {pattern!r} names no level: use {{patient}} and/or "
                          "{study}")
    return GroupBy(pattern, len(levels), where.get("patient"), where.get("study"))


def locate(group_by: GroupBy, relative: PurePath) -> FolderIdentity | None:
    """The folder values of a file at ``relative`` (to IN); None when outside the pattern."""
    folders = relative.parts[:-1]
    if len(folders) < group_by.depth:
        return None
    patient = folders[group_by.patient] if group_by.patient is not None else None
    study = folders[: group_by.study + 1] if group_by.study is not None else None
    return FolderIdentity(patient, study, group_by.patient)


def _replace_name(text: str, raw: str, key: str) -> str:
    """``text`` with every case-insensitive occurrence of ``raw`` replaced by ``key``."""
    return re.sub(re.escape(raw), key, text, flags=re.IGNORECASE) if raw else text


def mask_parts(parts: tuple[str, ...], identity: FolderIdentity | None,
               key: str) -> tuple[str, ...]:
    """Path parts (relative to IN) with the patient level, and the patient's name
    inside deeper folder and file names, replaced by ``key``. A file name keeps
    its extension."""
    if identity is None or identity.patient is None or identity.patient_level is None:
        return parts
    level, raw = identity.patient_level, identity.patient
    masked = list(parts[:level]) + [key]
    for part in parts[level + 1:-1]:
        masked.append(_replace_name(part, raw, key))
    if len(parts) > level + 1:
        masked.append(mask_file_name(parts[-1], raw, key))
    return tuple(masked)


def mask_file_name(name: str, raw: str, key: str) -> str:
    """A file name with the patient's name in its stem replaced by ``key``."""
    suffix = PurePosixPath(name).suffix
    stem = name[: len(name) - len(suffix)] if suffix else name
    return _replace_name(stem, raw, key) + suffix


class Grouper:
    """A pattern bound to IN and the registry's key: identities and masked paths.

    ``Grouper(None, ...)`` is the no-pattern case: no identity, paths unchanged.
    """

    def __init__(self, group_by: GroupBy | None, in_root: Path,
                 pseudonymise: Callable[[str | None], str | None]) -> None:
        self.group_by = group_by
        self.in_root = in_root.absolute()
        self._key = pseudonymise

    @property
    def pattern(self) -> str | None:
        return self.group_by.pattern if self.group_by is not None else None

    def identity(self, path: Path) -> FolderIdentity | None:
        """The raw folder values of ``path``; None without a pattern or outside it."""
        if self.group_by is None:
            return None
        try:
            relative = path.absolute().relative_to(self.in_root)
        except ValueError:
            return None
        return locate(self.group_by, relative)

    def keys(self, path: Path) -> tuple[str | None, str | None]:
        """``(patient_key, study_key)`` of ``path``: keyed hashes, never the names."""
        found = self.identity(path)
        if found is None:
            return None, None
        patient = self._key(found.patient) if found.patient else None
        # A prefix keeps a study key from ever equalling a patient key.
        study = self._key("study:" + "/".join(found.study)) if found.study else None
        return patient, study

    def patient_key(self, path: Path) -> str:
        found = self.identity(path)
        return (self._key(found.patient) or "") if found and found.patient else ""

    def label(self, path: Path) -> str:
        """``path`` as it may be stored and shown: the patient level is its key."""
        found = self.identity(path)
        if found is None or found.patient is None:
            return str(path)
        relative = path.absolute().relative_to(self.in_root)
        parts = mask_parts(relative.parts, found, self.patient_key(path))
        return str(self.in_root.joinpath(*parts))

    def file_name(self, path: Path, name: str | None = None) -> str:
        """The file name (or ``name``, derived from it) safe to put into OUT."""
        name = path.name if name is None else name
        found = self.identity(path)
        if found is None or found.patient is None:
            return name
        return mask_file_name(name, found.patient, self.patient_key(path))

    def scrub(self, text: str | None, path: Path) -> str | None:
        """An error message about ``path`` with the raw path and name masked."""
        found = self.identity(path)
        if text is None or found is None or found.patient is None:
            return text
        key = self.patient_key(path)
        text = text.replace(str(path.absolute()), self.label(path))
        return _replace_name(text, found.patient, key)
