"""The Markdown card ``xreg adapt`` writes beside an adapted checkpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xreg.train.adapt import AdaptResult

__all__ = ["card_markdown"]


def _share(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def card_markdown(result: AdaptResult, sha: str) -> str:
    """The adapted model's card as Markdown (what was reviewed, how it did, its limits)."""
    card, c = result.loaded.card, result.counts
    rows = []
    for name, fig in (("base", result.before), ("adapted", result.after)):
        rows.append(f"| {name} | {fig['films']} | {_share(fig['correct_folder'])} "
                    f"({fig['correct']}) | {_share(fig['wrong_folder'])} ({fig['wrong']}) | "
                    f"{_share(fig['review_rate'])} ({fig['review']}) |")
    per_class = ", ".join(f"{k} {v}" for k, v in c["per_class"].items())
    return "\n".join([
        f"# {card.name}",
        "",
        f"Adapted by `xreg adapt` on {card.created}: **tuned to one site** (the films "
        "reviewed in one sorted folder). Use it there; at any other site use the base.",
        "",
        f"- checkpoint sha256: `{sha}`",
        f"- base: {result.base.card.name}, sha256 `{result.base.sha256}`",
        f"- method: {card.training.get('method')}; {result.steps} steps, "
        f"{result.seconds:.0f} s",
        f"- reviewed films: {c['reviewed']} ({c['train']} to train, {c['holdout']} held "
        f"out by patient/study/folder): {per_class}",
        f"- reviewers: {', '.join(c['reviewers']) or '–'}",
        f"- films whose base answers were kept (distillation, "
        f"{card.training.get('options', {}).get('distill_on')}): {c['distilled_on']}; "
        f"replay films: {c['replay']}",
        f"- min_confidence {card.thresholds.get('min_confidence')} (chosen on the hold-out); "
        f"guard {dict(card.guard) or 'none'}",
        "",
        "## Hold-out (reviewed films of the site that trained nothing)",
        "",
        "| model | films | correct folder | wrong folder | review |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"Verdict: {result.verdict}.",
        "",
        "## Limits",
        "",
        "- The hold-out is small; its figures are counts, not a promise. The base's "
        "card gives the figures measured on many films.",
        "- Classes nobody reviewed were kept by distilling the base's own answers, "
        "not by new evidence.",
        "",
    ])
