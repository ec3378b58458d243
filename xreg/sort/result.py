"""What one sort run reports: each file's outcome, the counts, and a new-site notice.

Plain records, no I/O; ``SortResult.to_dict`` is the ``xreg sort --json``
shape (docs/architecture.md, step 11).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from xreg.sort.scope import is_shift_reason, new_site_notice

__all__ = ["STATUSES", "FileOutcome", "NewSite", "SortResult", "count_shift"]

STATUSES = ("sorted", "review", "unreadable", "duplicate", "already_done", "too_new", "failed")


@dataclass(frozen=True)
class FileOutcome:
    """What happened to one input file (``dest`` is relative to OUT)."""

    source: str
    status: str
    dest: str | None = None
    body_part: str | None = None
    confidence: float | None = None
    instrument: str | None = None
    error: str | None = None
    scope: str | None = None  # nine | long_bone | other
    reason: str | None = None  # why a readable film went to _review
    fracture: str | None = None  # None: no fracture head, or not sorted into the nine
    fracture_prob: float | None = None
    warning: str | None = None  # decoded despite a defect (e.g. a truncated JPEG)


@dataclass(frozen=True)
class NewSite:
    """How many of a run's predicted films were held back as unlike the training films."""

    predicted: int  # films sorted or held back for review this run
    held_back: int  # of those, held back for a reason in SHIFT_REASONS
    notice: str | None  # the plain-English notice, when the run looks like a new site

    @property
    def share(self) -> float:
        return self.held_back / self.predicted if self.predicted else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"predicted": self.predicted, "held_back_as_unfamiliar": self.held_back,
                "share": round(self.share, 4), "notice": self.notice}


def count_shift(outcomes: list[FileOutcome], out: str = "OUT") -> NewSite:
    """Count predicted and shift-held films among ``outcomes`` and judge them (pure)."""
    predicted = sum(o.status in ("sorted", "review") for o in outcomes)
    held = sum(o.status == "review" and is_shift_reason(o.reason) for o in outcomes)
    return NewSite(predicted, held, new_site_notice(predicted, held, out=out))


@dataclass
class SortResult:
    """The outcome of a run; ``counts`` has every key of ``STATUSES``."""

    run_id: int | None
    dry_run: bool
    model_sha256: str
    counts: Counter[str] = field(default_factory=Counter)
    outcomes: list[FileOutcome] = field(default_factory=list)
    recovered: int = 0
    model_name: str = ""
    header_check: str = "review"  # the run's --header-check mode
    group_by: str | None = None  # the run's --group-by pattern
    outside_group: int = 0  # files outside --group-by: no patient or study from folders
    out_root: str = "OUT"  # the output folder, as the new-site notice names it

    def add(self, outcome: FileOutcome) -> FileOutcome:
        self.counts[outcome.status] += 1
        self.outcomes.append(outcome)
        return outcome

    def new_site(self) -> NewSite:
        """This run's films held back as unfamiliar, and the notice if it looks like a new site."""
        return count_shift(self.outcomes, self.out_root)

    def to_dict(self) -> dict[str, Any]:
        shift = self.new_site()
        return {
            "run_id": self.run_id,
            "dry_run": self.dry_run,
            "model_sha256": self.model_sha256,
            "header_check": self.header_check,
            "counts": {k: self.counts.get(k, 0) for k in STATUSES},
            "recovered": self.recovered,
            "group_by": None if self.group_by is None else {
                "pattern": self.group_by, "outside": self.outside_group},
            "new_site": shift.to_dict() if shift.notice else None,
            "files": [asdict(o) for o in self.outcomes],
        }
