"""The Markdown card ``xreg adapt`` writes beside an adapted checkpoint.

It takes plain data (:meth:`xreg.train.adapt_result.AdaptResult.to_dict` with
the written card), so it imports nothing of the adapt code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["card_markdown"]


def _share(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _table(title: str, base: Mapping[str, Any], adapted: Mapping[str, Any]) -> list[str]:
    """A section: base and adapted, correct / wrong folder and review (share, count)."""
    rows = [f"| {name} | {fig['films']} | {_share(fig['correct_folder'])} ({fig['correct']}) "
            f"| {_share(fig['wrong_folder'])} ({fig['wrong']}) | "
            f"{_share(fig['review_rate'])} ({fig['review']}) |"
            for name, fig in (("base", base), ("adapted", adapted))]
    return [f"## {title}", "", "| model | films | correct folder | wrong folder | review |",
            "|---|---|---|---|---|", *rows, ""]


def card_markdown(result: Mapping[str, Any], sha: str) -> str:
    """The adapted model's card as Markdown (what was reviewed, how it did, its limits).

    ``result``: the adapt result as a dict, with ``card`` (the written card's
    dict) and ``base_sha256``.
    """
    card, c = result["card"], result["counts"]
    training = card.get("training", {})
    hold = result["holdout"]
    forgot = result.get("forgetting")
    per_class = ", ".join(f"{k} {v}" for k, v in c["per_class"].items())
    lines = [
        f"# {card['name']}",
        "",
        f"Adapted by `xreg adapt` on {card['created']}: **tuned to one site** (the films "
        "reviewed in one sorted folder). Use it there; at any other site use the base.",
        "",
        f"- checkpoint sha256: `{sha}`",
        f"- base: {result['base']['name']}, sha256 `{result['base_sha256']}`",
        f"- method: {training.get('method')}; {result['steps']} steps per training, "
        f"{result['seconds']:.0f} s",
        f"- reviewed films: {c['reviewed']} ({c['train']} judged the procedure, "
        f"{c['holdout']} held out by patient/study/folder): {per_class}",
        f"- reviewers: {', '.join(c['reviewers']) or '–'}",
        f"- replayed training films of the base: {c.get('replay', 0)} "
        f"({'shipped with the base' if c.get('replay_shipped') else 'given'}); films whose "
        f"base answers were kept otherwise: {c.get('distilled_on', 0)}",
        "- unreviewed films of the site unlike every reviewed film: "
        + (f"{c['unlike_reviewed']:.0%} of {c['unreviewed_seen']}"
           if c.get("unlike_reviewed") is not None else "not measured (too few films)"),
        f"- min_confidence {card['thresholds'].get('min_confidence')}; guard "
        f"{ {k: v for k, v in card.get('guard', {}).items() if k != 'bank'} or 'none'}",
        "",
        *_table("Hold-out (reviewed films of the site that trained nothing)",
                hold["before"], hold["after"]),
    ]
    if forgot:
        lines += [
            *_table("Films the base knew (replay hold-out: forgetting)", forgot["before"],
                    forgot["after"]),
            f"Correct folder fell by {forgot['correct_drop']:.3f}, wrong folder rose by "
            f"{forgot['wrong_rise']:.3f}.",
            "",
        ]
    lines += [f"Verdict: {result['verdict']}.", ""]
    if result.get("notes"):
        lines += ["## What the hold-out could not judge", "",
                  *(f"- {n}" for n in result["notes"]), ""]
    lines += [
        "## Limits",
        "",
        "- The hold-out is small; its figures are counts, not a promise. The base's "
        "card gives the figures measured on many films.",
        "- Classes nobody reviewed were kept by replaying the base's training films (as "
        "features) and distilling its answers, not by new evidence.",
        "",
    ]
    return "\n".join(lines)
