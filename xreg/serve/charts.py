"""Chart geometry for server-side SVG: the page draws rectangles it is handed.

Pure functions from counts to coordinates, so a template needs no arithmetic
and the app needs no JavaScript (the CSP allows none inline, nor inline
styles: colours come from ``series-N`` classes in ``static/style.css``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["SERIES", "month_bars", "months_between"]

#: How many series colours style.css defines (``series-0`` ... ``series-13``).
SERIES = 14

_BAR, _GAP, _LEFT, _TOP, _HEIGHT = 6.0, 1.5, 10.0, 4.0, 50.0


def months_between(first: str, last: str) -> list[str]:
    """Every ``YYYY-MM`` from ``first`` to ``last``: a month without studies is a gap."""
    year, month = int(first[:4]), int(first[5:7])
    out = []
    while f"{year:04d}-{month:02d}" <= last:
        out.append(f"{year:04d}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return out


def month_bars(rows: Sequence[dict[str, Any]], order: Sequence[str]) -> dict[str, Any]:
    """A stacked bar per month, one segment per body part, in SVG user units.

    ``rows`` are :func:`xreg.registry.patients.studies_per_month` rows;
    ``order`` fixes each body part's colour (its index), so knee is the same
    colour on every page. A study with two body parts counts in both stacks.
    """
    if not rows:
        return {"months": [], "bars": [], "legend": [], "width": 0, "height": 0, "top": 0}
    counts: dict[str, dict[str, int]] = {}
    for r in rows:
        counts.setdefault(r["month"], {})[r["body_part"]] = int(r["studies"])
    months = months_between(min(counts), max(counts))
    present = {p for per in counts.values() for p in per}
    parts = [p for p in order if p in present] + sorted(present - set(order))
    colour = {p: (list(order).index(p) if p in order else len(order) + i) % SERIES
              for i, p in enumerate(parts)}
    top = max(sum(per.values()) for per in counts.values())
    scale = _HEIGHT / top
    bars = []
    for i, month in enumerate(months):
        x, y = _LEFT + i * (_BAR + _GAP), _TOP + _HEIGHT
        segments = []
        for part in parts:
            n = counts.get(month, {}).get(part, 0)
            if n:
                y -= n * scale
                segments.append({"body_part": part, "studies": n, "y": round(y, 2),
                                 "height": round(n * scale, 2), "series": colour[part]})
        bars.append({"month": month, "x": round(x, 2), "width": _BAR,
                     "centre": round(x + _BAR / 2, 2),
                     "total": sum(counts.get(month, {}).values()), "segments": segments,
                     "label": month if i % _label_every(len(months)) == 0 else ""})
    return {"months": months, "bars": bars, "top": top, "bar_width": _BAR,
            "legend": [{"body_part": p, "series": colour[p]} for p in parts],
            "width": max(100.0, round(_LEFT + len(months) * (_BAR + _GAP) + 2, 2)),
            "height": _TOP + _HEIGHT + 12, "base": _TOP + _HEIGHT, "plot_top": _TOP}


def _label_every(n: int) -> int:
    """Label every k-th month so the labels never overlap (about 12 at most)."""
    return max(1, -(-n // 12))
