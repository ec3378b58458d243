"""The review library: the teaching order of the queue, and undoing a decision."""

from __future__ import annotations

from pathlib import Path

import pytest

from xreg.errors import ConfigError, RegistryError
from xreg.model.models import BODY_PARTS
from xreg.registry.core import Registry, _now
from xreg.registry.reviews import (
    Review,
    add_review,
    finish_apply,
    journal_apply,
    queue_hashes,
    review_queue,
    teaching_order,
    undo_review,
)

# ----------------------------------------------------------------- teaching_order


def test_teaching_order_takes_classes_in_turn_least_confident_first() -> None:
    predicted = ["hand", "hand", "hand", "knee", "hand", "knee", "hip"]
    confidence = [0.30, 0.10, 0.20, 0.50, 0.40, 0.45, 0.90]
    order = teaching_order(predicted, confidence)
    # Round 1: each class's least confident (hand 0.10, knee 0.45, hip 0.90),
    # round 2: hand 0.20, knee 0.50; then the hands left.
    assert order == [1, 5, 6, 2, 3, 0, 4]


def test_teaching_order_is_a_permutation_that_never_repeats_a_class_while_others_wait(
) -> None:
    predicted = ["a"] * 20 + ["b"] * 3 + ["c"] * 2
    confidence = [((i * 37) % 101) / 101 for i in range(len(predicted))]
    order = teaching_order(predicted, confidence)
    assert sorted(order) == list(range(len(predicted)))
    first_rounds = [predicted[i] for i in order[:6]]
    assert sorted(first_rounds[:3]) == ["a", "b", "c"]
    assert sorted(first_rounds[3:6]) == ["a", "b", "c"]
    # Each class's own films come least confident first.
    for name in "abc":
        mine = [confidence[i] for i in order if predicted[i] == name]
        assert mine == sorted(mine)


def test_teaching_order_breaks_ties_by_class_then_index_and_checks_lengths() -> None:
    assert teaching_order(["k", "h", "k", "h"], [0.5] * 4) == [1, 0, 3, 2]
    assert teaching_order([], []) == []
    with pytest.raises(ValueError, match="2 predicted classes but 1"):
        teaching_order(["a", "b"], [0.5])


# ----------------------------------------------------------------- review_queue


def _registry_with(path: Path, films: list[tuple[str, float]]) -> list[str]:
    """Placed films with (predicted class, confidence); returns their hashes."""
    shas = [f"{i:064x}" for i in range(len(films))]
    with Registry(path) as reg, reg._transaction() as db:
        for sha, (part, prob) in zip(shas, films, strict=True):
            db.execute("INSERT INTO images (sha256, size, state, status, dest_path, mode,"
                       " body_part, body_part_prob, created, updated) VALUES"
                       " (?, 1, 'done', 'review', ?, 'copy', ?, ?, ?, ?)",
                       (sha, f"_review/{sha}.png", part, prob, _now(), _now()))
    return shas


def test_review_queue_is_shuffled_by_default_spread_or_by_confidence_on_request(
        tmp_path: Path) -> None:
    films = [("hand", 0.1), ("hand", 0.2), ("hand", 0.3), ("knee", 0.6), ("knee", 0.7)]
    shas = _registry_with(tmp_path / "r.sqlite", films)
    with Registry(tmp_path / "r.sqlite") as reg:
        shuffled, total = review_queue(reg, per_page=10)
        assert total == 5
        assert [q["sha256"] for q in shuffled] == sorted(shas)  # content-hash order
        spread, _ = review_queue(reg, per_page=10, order="spread")
        assert [q["sha256"] for q in spread] == [shas[i] for i in (0, 3, 1, 4, 2)]
        plain, _ = review_queue(reg, per_page=10, order="confidence")
        assert [q["sha256"] for q in plain] == shas
        page2, total2 = review_queue(reg, page=2, per_page=2, order="spread")
        assert [q["sha256"] for q in page2] == [shas[1], shas[4]] and total2 == 5
        assert review_queue(reg, page=9, per_page=2) == ([], 5)
        with pytest.raises(ConfigError, match="unknown queue order"):
            review_queue(reg, order="newest")  # type: ignore[arg-type]


def test_queue_hashes_lists_the_whole_queue_in_either_order(tmp_path: Path) -> None:
    shas = _registry_with(tmp_path / "r.sqlite",
                          [("hand", 0.3), ("knee", 0.2), ("hand", 0.1)])
    with Registry(tmp_path / "r.sqlite") as reg:
        assert queue_hashes(reg) == sorted(shas)
        assert queue_hashes(reg, order="spread") == [shas[2], shas[1], shas[0]]
        assert queue_hashes(reg, order="confidence") == [shas[2], shas[1], shas[0]]
        add_review(reg, Review(shas[1], "a", "knee"), BODY_PARTS)
        assert queue_hashes(reg, order="spread") == [shas[2], shas[0]]
        assert queue_hashes(reg) == sorted([shas[2], shas[0]])
        assert len(queue_hashes(reg, include_reviewed=True)) == 3


# ----------------------------------------------------------------- undo_review


def _reviews(reg: Registry) -> list[tuple[str, str, str]]:
    return [(r["sha256"], r["reviewer"], r["body_part"]) for r in reg._db.execute(
        "SELECT sha256, reviewer, body_part FROM reviews ORDER BY id")]


def test_undo_removes_only_the_reviewers_latest_review(tmp_path: Path) -> None:
    shas = _registry_with(tmp_path / "r.sqlite", [("hand", 0.3), ("knee", 0.2)])
    with Registry(tmp_path / "r.sqlite") as reg:
        add_review(reg, Review(shas[0], "ann", "wrist"), BODY_PARTS)
        add_review(reg, Review(shas[1], "ann", "hip"), BODY_PARTS)
        add_review(reg, Review(shas[0], "bob", "hand"), BODY_PARTS)
        undone = undo_review(reg, " ann ")
        assert (undone["sha256"], undone["body_part"]) == (shas[1], "hip")
        assert _reviews(reg) == [(shas[0], "ann", "wrist"), (shas[0], "bob", "hand")]
        assert shas[1] in queue_hashes(reg)  # back in the queue
        assert undo_review(reg, "ann")["body_part"] == "wrist"
        with pytest.raises(RegistryError, match="ann has no review to undo"):
            undo_review(reg, "ann")
        assert _reviews(reg) == [(shas[0], "bob", "hand")]


def test_undo_refuses_an_applied_review_and_keeps_it(tmp_path: Path) -> None:
    shas = _registry_with(tmp_path / "r.sqlite", [("hand", 0.3)])
    with Registry(tmp_path / "r.sqlite") as reg:
        review_id = add_review(reg, Review(shas[0], "ann", "wrist"), BODY_PARTS)
        journal_apply(reg, review_id, "_review/x.png", "wrist/x.png")
        with pytest.raises(RegistryError, match="has been applied"):
            undo_review(reg, "ann")
        finish_apply(reg, review_id)
        with pytest.raises(RegistryError, match="has been applied"):
            undo_review(reg, "ann")
        assert _reviews(reg) == [(shas[0], "ann", "wrist")]
