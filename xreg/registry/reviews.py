"""Human decisions about films, kept beside what the model said (never over it).

A review is one row: who, when, the model (sha256) and its labels copied at
review time, and the reviewer's labels. Applying a review (moving the file
to the folder the reviewer's body part earns) is journalled in the same row
(``apply_state``: pending, placed, done) so a killed apply is finished or
undone by the next run; :mod:`xreg.sort.relocate` does the moving.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from xreg.errors import ConfigError, RegistryError
from xreg.registry.core import Registry, _now

__all__ = ["DEFAULT_ORDER", "NOT_MSK", "QUEUE_ORDERS", "QueueOrder", "Review", "add_review",
           "add_reviews", "body_part_members", "film_review", "latest_reviews", "queue_films",
           "queue_hashes", "review_queue", "teaching_order", "undo_review"]

#: The reviewer's body part for a film that is not a musculoskeletal radiograph.
NOT_MSK = "not_msk"
_MAX_NOTE = 2000
_MAX_NAME = 80
#: ``shuffled``: content-hash order, a uniform sample of the site that every reload and
#: every reviewer sees alike; ``confidence``: least confident first; ``spread``: the same,
#: taken in turn per predicted class.
QueueOrder = Literal["shuffled", "confidence", "spread"]
QUEUE_ORDERS: tuple[str, ...] = ("shuffled", "confidence", "spread")
#: The queue's default, measured on a pseudo-hospital (benchmarks/adapt_new_site.py):
#: at a site the model never saw, its predicted classes are the wrong guide to what to
#: review first (a class it never predicts is never reviewed early), and a uniform
#: sample taught adapt far more (rest correct folder 0.747 against 0.321 at K = 100,
#: wrong 0.040 against 0.559; docs/adapt.md).
DEFAULT_ORDER: QueueOrder = "shuffled"


@dataclass(frozen=True)
class Review:
    """What a reviewer decided about one film; ``None`` means not judged."""

    sha256: str
    reviewer: str
    body_part: str
    instrument: int | None = None
    fracture: int | None = None
    note: str | None = None

    def check(self, body_parts: tuple[str, ...]) -> None:
        if not self.reviewer.strip() or len(self.reviewer) > _MAX_NAME:
            raise ConfigError(f"a review needs a reviewer name of 1 to {_MAX_NAME} characters")
        members = body_part_members(self.body_part)
        if len(members) > 1 and (NOT_MSK in members or len(set(members)) < len(members)
                                 or "" in members):
            raise ConfigError(f"a body-part set is distinct body parts joined by '|' "
                              f"(e.g. hand|wrist), without {NOT_MSK}; got {self.body_part!r}")
        for member in members:
            if member != NOT_MSK and member not in body_parts:
                raise ConfigError(f"unknown body part {member!r}; choose one of "
                                  f"{', '.join(body_parts)}, a set of them joined by '|' "
                                  f"(hand|wrist) or {NOT_MSK}")
        for name in ("instrument", "fracture"):
            if getattr(self, name) not in (None, 0, 1):
                raise ConfigError(f"{name} must be 1, 0 or not given")
        if self.note is not None and len(self.note) > _MAX_NOTE:
            raise ConfigError(f"a note is at most {_MAX_NOTE} characters")


def body_part_members(body_part: str) -> tuple[str, ...]:
    """``"hand|wrist"`` -> ``("hand", "wrist")``: a set review's members, primary first.

    A reviewer unsure between two classes (or a hospital label that names
    only a region) records a set; training reads it as "the truth is one of
    these", as manifests do (:func:`xreg.datasets.parse_body_parts`).
    """
    return tuple(body_part.split("|"))


def add_review(registry: Registry, review: Review, body_parts: tuple[str, ...]) -> int:
    """Record ``review`` with the model's labels as they are now; return its id."""
    return add_reviews(registry, [review], body_parts)[0]


def add_reviews(registry: Registry, reviews: Sequence[Review],
                body_parts: tuple[str, ...]) -> list[int]:
    """Record several reviews in one transaction (all or none); return their ids.

    Each keeps a copy of the model's labels as they are now. One film that
    is not placed rolls the whole batch back, so an import never lands half.
    """
    for review in reviews:
        review.check(body_parts)
    ids = []
    with registry._transaction() as db:
        for review in reviews:
            row = db.execute("SELECT body_part, body_part_prob, instrument, fracture,"
                             " model_sha256 FROM images WHERE sha256 = ? AND state = 'done'",
                             (review.sha256,)).fetchone()
            if row is None:
                raise RegistryError("no placed image with that content hash")
            cur = db.execute(
                "INSERT INTO reviews (sha256, reviewer, created, model_sha256, model_body_part,"
                " model_body_part_prob, model_instrument, model_fracture, body_part,"
                " instrument, fracture, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (review.sha256, review.reviewer.strip(), _now(), row["model_sha256"],
                 row["body_part"], row["body_part_prob"], row["instrument"], row["fracture"],
                 review.body_part, review.instrument, review.fracture,
                 (review.note or "").strip() or None))
            ids.append(int(cur.lastrowid or 0))
    return ids


def teaching_order(predicted: Sequence[str], confidence: Sequence[float]) -> list[int]:
    """Indices in the order a reviewer should see them: least confident, classes in turn.

    Least confident first teaches a retrained model most, but twenty unsure
    "hand" films in a row teach it little more than one. So each predicted
    class keeps its own least-confident-first line, and the queue takes one
    film from each line per round; within a round the less confident film
    goes first. Ties fall to the class name, then the index, so the order
    never depends on anything but the inputs.
    """
    if len(predicted) != len(confidence):
        raise ValueError(f"{len(predicted)} predicted classes but {len(confidence)} "
                         "confidences")
    lines: dict[str, list[int]] = {}
    for i in sorted(range(len(predicted)), key=lambda i: (confidence[i], i)):
        lines.setdefault(predicted[i], []).append(i)
    order: list[int] = []
    for depth in range(max((len(line) for line in lines.values()), default=0)):
        heads = [(confidence[line[depth]], name, line[depth])
                 for name, line in lines.items() if depth < len(line)]
        order.extend(i for _, _, i in sorted(heads))
    return order


_QUEUE_COLUMNS = ("i.sha256, i.status, i.dest_path, i.body_part, i.body_part_prob,"
                  " i.instrument, i.instrument_prob, i.fracture, i.fracture_prob, i.scope,"
                  " i.review_reason")


def _queue_clause(include_reviewed: bool) -> str:
    clause = ("i.state = 'done' AND i.status IN ('review', 'sorted')"
              " AND i.body_part IS NOT NULL")
    if not include_reviewed:
        clause += " AND NOT EXISTS (SELECT 1 FROM reviews r WHERE r.sha256 = i.sha256)"
    return clause


def queue_hashes(registry: Registry, *, order: QueueOrder = DEFAULT_ORDER,
                 include_reviewed: bool = False) -> list[str]:
    """Every film of the review queue, as content hashes in ``order``.

    Reads three small columns per candidate: what a one-film-at-a-time
    reviewer needs to know which film comes before and after this one.
    """
    if order not in QUEUE_ORDERS:
        raise ConfigError(f"unknown queue order {order!r}; choose one of "
                          f"{', '.join(QUEUE_ORDERS)}")
    keys = registry._db.execute(
        "SELECT i.sha256, i.body_part, i.body_part_prob FROM images i"
        f" WHERE {_queue_clause(include_reviewed)} ORDER BY i.sha256").fetchall()
    confidence = [k["body_part_prob"] if k["body_part_prob"] is not None else 0.0
                  for k in keys]
    if order == "shuffled":
        ranked = list(range(len(keys)))  # keys come in sha256 order
    elif order == "confidence":
        ranked = sorted(range(len(keys)), key=lambda i: (confidence[i], i))
    else:
        ranked = teaching_order([k["body_part"] for k in keys], confidence)
    return [keys[i]["sha256"] for i in ranked]


def queue_films(registry: Registry, shas: Sequence[str]) -> list[dict[str, Any]]:
    """The queue's view of placed films (what the model said), in the order asked."""
    if not shas:
        return []
    marks = ", ".join("?" * len(shas))
    found = {r["sha256"]: dict(r) for r in registry._db.execute(
        f"SELECT {_QUEUE_COLUMNS} FROM images i WHERE i.sha256 IN ({marks})"
        " AND i.state = 'done'", list(shas))}
    return [found[sha] for sha in shas if sha in found]


def review_queue(registry: Registry, *, page: int = 1, per_page: int = 24,
                 include_reviewed: bool = False,
                 order: QueueOrder = DEFAULT_ORDER) -> tuple[list[dict[str, Any]], int]:
    """Films to review in ``order`` (see :data:`DEFAULT_ORDER`), and how many there are.

    ``_review`` films and sorted ones alike; unreadable files have nothing to
    review. Reviewed films leave the queue. ``order="confidence"`` is the
    plain least-confident-first order, kept so the two can be compared.
    """
    offset = (max(1, page) - 1) * per_page
    if order == "confidence":
        clause = _queue_clause(include_reviewed)
        db = registry._db
        total = int(db.execute(f"SELECT COUNT(*) FROM images i WHERE {clause}").fetchone()[0])
        rows = db.execute(
            f"SELECT {_QUEUE_COLUMNS} FROM images i WHERE {clause}"
            " ORDER BY i.body_part_prob ASC, i.sha256 LIMIT ? OFFSET ?",
            (per_page, offset)).fetchall()
        return [dict(r) for r in rows], total
    shas = queue_hashes(registry, order=order, include_reviewed=include_reviewed)
    return queue_films(registry, shas[offset:offset + per_page]), len(shas)


def undo_review(registry: Registry, reviewer: str) -> dict[str, Any]:
    """Remove ``reviewer``'s latest review and return it, unless it has been applied.

    The one exception to "reviews are never overwritten": a reviewer taking
    back the keystroke they just made. An applied review moved a file, and
    deleting its row would hide why the file is where it is, so that is
    refused (a later review corrects it instead).
    """
    name = reviewer.strip()
    with registry._transaction() as db:
        row = db.execute("SELECT * FROM reviews WHERE reviewer = ? ORDER BY id DESC LIMIT 1",
                         (name,)).fetchone()
        if row is None:
            raise RegistryError(f"{name or 'this reviewer'} has no review to undo")
        if row["apply_state"] is not None:
            raise RegistryError("your latest review has been applied (its film was moved); "
                                "record a new review of that film instead of undoing")
        db.execute("DELETE FROM reviews WHERE id = ?", (row["id"],))
    return dict(row)


def latest_reviews(registry: Registry) -> dict[str, dict[str, Any]]:
    """The most recent review of each reviewed content hash."""
    rows = registry._db.execute(
        "SELECT r.* FROM reviews r WHERE r.id = (SELECT MAX(id) FROM reviews x"
        " WHERE x.sha256 = r.sha256)").fetchall()
    return {r["sha256"]: dict(r) for r in rows}


def film_review(registry: Registry, sha256: str) -> dict[str, Any] | None:
    """The most recent review of one film, or ``None`` when it has none."""
    row = registry._db.execute("SELECT * FROM reviews WHERE sha256 = ? ORDER BY id DESC"
                               " LIMIT 1", (sha256,)).fetchone()
    return dict(row) if row else None


def get_review(registry: Registry, review_id: int) -> dict[str, Any] | None:
    row = registry._db.execute("SELECT * FROM reviews WHERE id = ?", (review_id,)).fetchone()
    return dict(row) if row else None


def unapplied_reviews(registry: Registry) -> list[dict[str, Any]]:
    """Latest reviews not yet applied (or whose apply was undone)."""
    return [r for r in latest_reviews(registry).values() if r["apply_state"] != "done"]


def interrupted_applies(registry: Registry) -> list[dict[str, Any]]:
    """Reviews whose apply was journalled but not finished (a killed process)."""
    return [dict(r) for r in registry._db.execute(
        "SELECT r.*, i.mode, i.dest_path AS image_dest FROM reviews r JOIN images i"
        " USING (sha256) WHERE r.apply_state IN ('pending', 'placed') ORDER BY r.id")]


def journal_apply(registry: Registry, review_id: int, from_path: str, to_path: str) -> None:
    """Step 1 of an apply: record where the file is and where it is going."""
    with registry._transaction() as db:
        db.execute("UPDATE reviews SET apply_state = 'pending', from_path = ?, to_path = ?,"
                   " apply_error = NULL WHERE id = ?", (from_path, to_path, review_id))


def commit_apply(registry: Registry, review_id: int, sha256: str, dest: str,
                 status: str) -> None:
    """Step 2, one transaction: the image's new place and the review's ``placed``."""
    with registry._transaction() as db:
        db.execute("UPDATE images SET dest_path = ?, status = ?, updated = ? WHERE sha256 = ?",
                   (dest, status, _now(), sha256))
        db.execute("UPDATE reviews SET apply_state = 'placed', to_path = ?, applied = ?"
                   " WHERE id = ?", (dest, _now(), review_id))


def finish_apply(registry: Registry, review_id: int) -> None:
    """Step 3: the old copy is gone."""
    with registry._transaction() as db:
        db.execute("UPDATE reviews SET apply_state = 'done' WHERE id = ?", (review_id,))


def undo_apply(registry: Registry, review_id: int, why: str) -> None:
    """An apply that never placed its file: the review stands, unapplied, with why."""
    with registry._transaction() as db:
        db.execute("UPDATE reviews SET apply_state = NULL, to_path = NULL, apply_error = ?"
                   " WHERE id = ?", (why, review_id))


def image_row(registry: Registry, sha256: str) -> dict[str, Any] | None:
    """The placed image's row and the layout of the run that placed it."""
    row = registry._db.execute(
        "SELECT i.*, r.options AS run_options FROM images i LEFT JOIN runs r"
        " ON r.id = i.run_id WHERE i.sha256 = ? AND i.state = 'done'", (sha256,)).fetchone()
    return dict(row) if row else None
