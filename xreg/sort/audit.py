"""Do a film's DICOM headers agree with what the model sees? A pure comparison.

BodyPartExamined is often empty, generic (``EXTREMITY``) or wrong. A
vocabulary (``xreg/configs/header_vocabulary.yaml``, or the user's) maps
header terms to the model's classes, or to a coarse set of them. Each
DICOM film gets one verdict:

- ``agrees``: the header names the model's class (or the model's class lies
  in the header's coarse set);
- ``disagrees``: the header names another class, or a coarse set the model's
  class is outside of;
- ``coarse``: the header names only a region (agreement is not decidable);
- ``empty``: no body part in BodyPartExamined or the descriptions;
- ``unmapped``: a header term the vocabulary does not know.

and a view verdict (``agrees``/``disagrees``/``empty``/``unmapped``) when the
model has a view head. Films without DICOM headers get none.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from xreg.errors import ConfigError
from xreg.model.labels import EXTENDED_BODY_PARTS, VIEW_LABELS

__all__ = ["VERDICTS", "HeaderAudit", "Vocabulary", "audit_headers", "load_vocabulary"]

VERDICTS = ("agrees", "disagrees", "coarse", "empty", "unmapped")
_NOT_ALNUM = re.compile(r"[^A-Z0-9]+")


def normalise(term: str) -> str:
    """``"l-spine "`` -> ``"L SPINE"``: how header values and vocabulary terms compare."""
    return _NOT_ALNUM.sub(" ", str(term).upper()).strip()


@dataclass(frozen=True)
class Vocabulary:
    """Normalised header term -> a class, or a coarse set of classes; view terms."""

    classes: Mapping[str, str]
    coarse: Mapping[str, frozenset[str]]
    views: Mapping[str, str]
    source: str = ""

    def body_part(self, term: str) -> str | frozenset[str] | None:
        key = normalise(term)
        return self.classes.get(key) or self.coarse.get(key)

    def find_in(self, text: str) -> str | None:
        """The longest vocabulary term among the words of ``text`` (a description)."""
        words = f" {normalise(text)} "
        found = [t for t in (*self.classes, *self.coarse) if f" {t} " in words]
        return max(found, key=len) if found else None


def load_vocabulary(path: Path | None = None) -> Vocabulary:
    """Read and check a vocabulary (default: the shipped one); errors name the bad key."""
    source = path or Path(str(resources.files("xreg") / "configs" / "header_vocabulary.yaml"))
    try:
        data = yaml.safe_load(Path(source).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read header vocabulary {source}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with body_part, coarse, view")
    unknown = sorted(set(data) - {"body_part", "coarse", "view"})
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r} (known: body_part, coarse, "
                          "view)")
    seen: dict[str, str] = {}

    def terms(where: str, values: Any) -> list[str]:
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{source}: {where} must be a non-empty list")
        out = []
        for v in values:
            term = normalise(v)
            if not term:
                raise ConfigError(f"{source}: {where} has an empty term")
            if term in seen and seen[term] != where:
                raise ConfigError(f"{source}: term {term!r} is in both {seen[term]} and {where}")
            seen[term] = where
            out.append(term)
        return out

    classes: dict[str, str] = {}
    for label, values in _mapping(data, "body_part", source).items():
        if label not in EXTENDED_BODY_PARTS:
            raise ConfigError(f"{source}: body_part.{label}: not a class "
                              f"(known: {', '.join(EXTENDED_BODY_PARTS)})")
        classes.update({t: label for t in terms(f"body_part.{label}", values)})
    coarse: dict[str, frozenset[str]] = {}
    for term, members in _mapping(data, "coarse", source).items():
        key = terms(f"coarse.{term}", [term])[0]
        if not isinstance(members, list) or not members or \
                any(m not in EXTENDED_BODY_PARTS for m in members):
            raise ConfigError(f"{source}: coarse.{term}: must list classes of "
                              f"{', '.join(EXTENDED_BODY_PARTS)}")
        coarse[key] = frozenset(members)
    views: dict[str, str] = {}
    for label, values in _mapping(data, "view", source).items():
        if label not in VIEW_LABELS:
            raise ConfigError(f"{source}: view.{label}: not a view ({', '.join(VIEW_LABELS)})")
        views.update({t: label for t in terms(f"view.{label}", values)})
    return Vocabulary(classes, coarse, views, str(source))


def _mapping(data: Mapping[str, Any], key: str, source: Path) -> Mapping[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: {key} must be a mapping")
    return value


@dataclass(frozen=True)
class HeaderAudit:
    """One film's verdicts and the header values they came from."""

    verdict: str
    header: str = ""  # the header term compared (normalised)
    header_class: str = ""  # its class, or the coarse set joined by '|'
    from_tag: str = ""  # BodyPartExamined, StudyDescription or SeriesDescription
    view: str = ""  # view verdict; '' when the model has no view head
    extra: Mapping[str, str] = field(default_factory=dict)


def audit_headers(dicom: Mapping[str, str], labels: Mapping[str, str],
                  vocabulary: Vocabulary) -> HeaderAudit | None:
    """Compare a film's header with the model's labels; None for a film without one."""
    if not dicom or "body_part" not in labels:
        return None
    model = labels["body_part"]
    term, tag = "", ""
    value = (dicom.get("BodyPartExamined") or "").strip()
    if value:
        term, tag = normalise(value), "BodyPartExamined"
    else:
        for key in ("StudyDescription", "SeriesDescription"):
            found = vocabulary.find_in(dicom.get(key) or "")
            if found:
                term, tag = found, key
                break
    meaning = vocabulary.body_part(term) if term else None
    if not term:
        verdict, shown = "empty", ""
    elif meaning is None:
        verdict, shown = "unmapped", ""
    elif isinstance(meaning, frozenset):
        verdict, shown = ("coarse" if model in meaning else "disagrees"), "|".join(
            sorted(meaning))
    else:
        verdict, shown = ("agrees" if meaning == model else "disagrees"), meaning
    return HeaderAudit(verdict, term, shown, tag, _view(dicom, labels, vocabulary))


def _view(dicom: Mapping[str, str], labels: Mapping[str, str], vocabulary: Vocabulary) -> str:
    if "view" not in labels:
        return ""
    value = normalise(dicom.get("ViewPosition") or "")
    if not value:
        return "empty"
    view = vocabulary.views.get(value)
    if view is None:
        return "unmapped"
    return "agrees" if view == labels["view"] else "disagrees"
