"""Find the AP and the lateral film of each hip study: pure planning, no I/O.

The thesis's fracture model sees an AP and a lateral view of one hip side by
side but never said how the two are found in a real folder. Here:

1. Each image gets a study, a view and a side, from the first source that
   knows: an explicit pairs CSV; DICOM headers (StudyInstanceUID, else
   AccessionNumber; ViewPosition, else SeriesDescription words;
   ImageLaterality/Laterality); a filename pattern (``<study>_AP.png``,
   ``<study>_LAT.png``, ...); and for the view only, the classifier's view
   head when nothing else says.
2. :func:`pair_views` groups images by (study, side) and pairs exactly one
   AP with exactly one lateral. A missing view, several candidates, or an
   image whose study or view nobody knows is reported with the reason;
   nothing is guessed silently.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from xreg.errors import ConfigError

__all__ = [
    "DEFAULT_FILENAME_PATTERN",
    "HipImage",
    "HipStudy",
    "compile_pattern",
    "pair_views",
    "parse_filename",
    "side_from_dicom",
    "view_from_dicom",
]

AP, LAT = "AP", "LAT"
NO_STUDY = "?"  # prefix of the study name of a film nobody gave a study

#: ``<study><sep>[<side><sep>]<view>[<sep><side>]`` where sep is ``_``, ``-``,
#: ``.`` or a space, case-insensitive: ``1234_AP``, ``smith-hip-R-lat``, ``A17 L AXIAL``.
DEFAULT_FILENAME_PATTERN = (
    r"^(?P<study>.+?)[ _.\-]+(?:(?P<side>l|r|left|right)[ _.\-]+)?"
    r"(?P<view>ap|pa|frontal|lat|lateral|ll|rl|xtable|cross[ _\-]?table|axial|frog"
    r"|lauenstein)(?:[ _.\-]+(?P<side2>l|r|left|right))?$"
)

_AP_WORDS = {"AP", "PA", "FRONTAL"}
_LAT_WORDS = {"LAT", "LATERAL", "LL", "RL", "XTABLE", "CROSSTABLE", "AXIAL", "FROG",
              "LAUENSTEIN"}
_SIDES = {"L": "L", "LEFT": "L", "R": "R", "RIGHT": "R"}


@dataclass(frozen=True)
class HipImage:
    """One hip film with what is known about it (None: unknown).

    ``view_source`` says where the view came from: csv, dicom, filename or model.
    """

    path: str
    study: str | None
    view: str | None
    side: str | None = None
    view_source: str = ""


@dataclass(frozen=True)
class HipStudy:
    """One (study, side): its AP and lateral film, or why there is no pair.

    ``status`` is ``paired``, ``missing_ap``, ``missing_lateral``,
    ``ambiguous`` (several candidates for a view) or ``unknown`` (no study
    or no view for an image). ``candidates`` lists every image considered.
    """

    study: str
    side: str | None
    ap: str | None
    lateral: str | None
    status: str
    reason: str
    candidates: tuple[str, ...]

    @property
    def paired(self) -> bool:
        return self.status == "paired"

    @property
    def no_study(self) -> bool:
        """A lone film with no study at all (named ``?<file name>``)."""
        return self.status == "unknown" and self.study.startswith(NO_STUDY)


def _words(text: str) -> list[str]:
    return re.sub(r"[^A-Z]+", " ", text.upper().replace("CROSS-TABLE", "CROSSTABLE")
                  .replace("CROSS TABLE", "CROSSTABLE")).split()


def view_from_dicom(view_position: str | None, series_description: str | None = None
                    ) -> str | None:
    """``AP``, ``LAT`` or None from ViewPosition, else SeriesDescription words.

    ViewPosition AP/PA is frontal, LL/RL/LATERAL lateral; a description is
    searched for words such as AP, PA, LAT, LATERAL, AXIAL, CROSS-TABLE, FROG,
    LAUENSTEIN. A description naming both views says nothing.
    """
    position = (view_position or "").strip().upper()
    if position in _AP_WORDS:
        return AP
    if position in _LAT_WORDS or position.startswith("LAT"):
        return LAT
    words = set(_words(series_description or ""))
    is_ap, is_lat = bool(words & _AP_WORDS), bool(words & _LAT_WORDS)
    if is_ap != is_lat:
        return AP if is_ap else LAT
    return None


def side_from_dicom(laterality: str | None) -> str | None:
    """``L``, ``R`` or None (``B``, ``U`` and empty say nothing about one hip)."""
    return _SIDES.get((laterality or "").strip().upper())


def compile_pattern(pattern: str | None) -> re.Pattern[str]:
    """The filename regex (default :data:`DEFAULT_FILENAME_PATTERN`), case-insensitive.

    It must have named groups ``study`` and ``view``; ``side`` is optional.
    """
    try:
        compiled = re.compile(pattern or DEFAULT_FILENAME_PATTERN, re.IGNORECASE)
    except re.error as exc:
        raise ConfigError(f"bad filename pattern {pattern!r}: {exc}") from None
    missing = {"study", "view"} - set(compiled.groupindex)
    if missing:
        raise ConfigError(f"filename pattern {pattern!r} needs named group(s) "
                          f"{', '.join(sorted(missing))}")
    return compiled


def parse_filename(name: str, pattern: re.Pattern[str]) -> tuple[str, str | None,
                                                                  str | None] | None:
    """``(study, view, side)`` from a file name (extension ignored), or None."""
    stem = re.sub(r"\.(dcm|dicom|png|jpe?g|tiff?|jp2)$", "", name, flags=re.IGNORECASE)
    match = pattern.match(stem)
    if match is None:
        return None
    groups = match.groupdict()
    view_text = (groups.get("view") or "").upper()
    view = view_from_dicom(view_text) or view_from_dicom(None, view_text)
    side_text = groups.get("side") or groups.get("side2") or ""
    return match.group("study"), view, _SIDES.get(side_text.upper())


def pair_views(images: Iterable[HipImage],
               explicit: Mapping[str, tuple[str, str]] | None = None) -> list[HipStudy]:
    """Pair one AP with one lateral per (study, side); report every other case.

    ``explicit`` maps a study to its (AP path, lateral path) from a pairs CSV;
    those win and their images are not paired again. Studies come out sorted
    by study, then side.
    """
    studies: list[HipStudy] = []
    used: set[str] = set()
    for study, (ap, lateral) in sorted((explicit or {}).items()):
        studies.append(HipStudy(study, None, ap, lateral, "paired", "pairs CSV",
                                (ap, lateral)))
        used.update((ap, lateral))
    groups: dict[tuple[str, str | None], list[HipImage]] = defaultdict(list)
    for im in images:
        if im.path in used:
            continue
        if im.study is None:
            name = im.path.replace("\\", "/").rsplit("/", 1)[-1]
            studies.append(HipStudy(f"{NO_STUDY}{name}", im.side, None, None, "unknown",
                                    "no study: no DICOM study UID or accession, and the "
                                    "file name does not match the pattern", (im.path,)))
            continue
        groups[(im.study, im.side)].append(im)
    # A study with both sided and unsided films: the unsided ones could be either.
    sided = {study for (study, side) in groups if side is not None}
    for (study, side), members in sorted(groups.items(), key=lambda kv: (kv[0][0],
                                                                         kv[0][1] or "")):
        studies.append(_pair_group(study, side, members, study in sided and side is None))
    return sorted(studies, key=lambda s: (s.study, s.side or ""))


def _pair_group(study: str, side: str | None, members: Sequence[HipImage],
                side_unclear: bool) -> HipStudy:
    paths = tuple(sorted(m.path for m in members))
    aps = sorted(m.path for m in members if m.view == AP)
    lats = sorted(m.path for m in members if m.view == LAT)
    unknown = sorted(m.path for m in members if m.view not in (AP, LAT))

    def report(status: str, reason: str) -> HipStudy:
        return HipStudy(study, side, aps[0] if len(aps) == 1 else None,
                        lats[0] if len(lats) == 1 else None, status, reason, paths)

    if side_unclear:
        return report("ambiguous", "films without laterality in a study that has sided "
                      "films: which hip they show is unknown")
    if unknown:
        return report("unknown", f"view unknown for {len(unknown)} film(s)")
    if len(aps) > 1 or len(lats) > 1:
        return report("ambiguous", f"{len(aps)} AP and {len(lats)} lateral candidates")
    if not aps:
        return report("missing_ap", "no AP film")
    if not lats:
        return report("missing_lateral", "no lateral film")
    return report("paired", "one AP and one lateral")
