"""One batch of a sort: decide, plan, journal, place, commit.

``start_batch`` judges each prediction, plans the batch (``plan_moves``),
journals it in the registry and hands each placement (``apply_move``) to the
placer pool; ``finish_batch`` commits each finished placement in plan order
and only then, for ``--mode move``, removes the source. The run around the
batches (lock, recovery, run row, prediction) is ``xreg/sort/runner.py``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from xreg.config import SortOptions
from xreg.errors import XregError
from xreg.inference.predict import Prediction
from xreg.inference.runtime import Model
from xreg.registry import ImageRecord, Pseudonymiser, Registry
from xreg.sort.audit import HeaderAudit, Vocabulary
from xreg.sort.grouping import Grouper
from xreg.sort.placement import Move, PlanItem, apply_move, plan_moves, remove_source
from xreg.sort.record import fracture_call, image_fields, judge, layout_fields
from xreg.sort.result import FileOutcome
from xreg.sort.scope import Placement

__all__ = ["BatchContext", "Job", "finish_batch", "start_batch"]


@dataclass(frozen=True)
class BatchContext:
    """What every batch of one run shares: its registry, run, OUT, options and model."""

    registry: Registry | None  # None only in a dry run with no registry yet
    run_id: int
    out_root: Path
    options: SortOptions
    loaded: Model
    min_confidence: float
    pseudonymise: Pseudonymiser
    vocabulary: Vocabulary
    grouper: Grouper
    origins: Mapping[Path, str]  # source path -> who sent it (sources.origin)

    @property
    def dry(self) -> bool:
        return self.options.dry_run

    def label(self, path: Path) -> str:
        """A source path as the registry keeps it and outcomes show it."""
        return self.grouper.label(path)

    def failed(self, path: Path, error: str | None) -> FileOutcome:
        return FileOutcome(self.label(path), "failed", error=self.grouper.scrub(error, path))


@dataclass(frozen=True)
class Job:
    """One planned film whose placement is under way (or a duplicate of one)."""

    move: Move
    pred: Prediction
    placed: Future[PurePosixPath] | None  # None: a duplicate within the batch
    where: Placement | None = None


def start_batch(
    batch: list[Prediction], ctx: BatchContext, placer: ThreadPoolExecutor, jobs: list[Job]
) -> Iterator[FileOutcome]:
    """Plan a batch, journal it, and start its placements (appended to ``jobs``)."""
    items, by_source = [], {}
    where: dict[Path, Placement] = {}
    audits: dict[Path, HeaderAudit | None] = {}
    for p in batch:
        if p.status == "failed":
            yield ctx.failed(p.source.path, p.error)
        elif p.status == "known" or _done(ctx.registry, p.sha256):
            yield _record_duplicate(p, ctx)
        else:
            where[p.source.path], audits[p.source.path] = judge(
                p, ctx.min_confidence, ctx.vocabulary, ctx.options.header_check)
            items.append(PlanItem(p.source.path, p.sha256, where[p.source.path].status,
                                  layout_fields(p, audits[p.source.path],
                                                name=ctx.grouper.file_name(p.source.path),
                                                where=where[p.source.path])))
            by_source[p.source.path] = p
    moves = plan_moves(items, layout=ctx.options.layout)
    if ctx.dry or ctx.registry is None:
        for move in moves:
            pred = by_source[move.source]
            if move.duplicate_of is not None:
                yield _record_duplicate(pred, ctx, str(move.dest))
            else:
                yield _outcome(pred, move.status, str(move.dest), where[move.source], ctx)
        return
    ctx.registry.begin_images(ctx.run_id, [
        ImageRecord(m.sha256, by_source[m.source].source.size, m.status, str(m.dest),
                    ctx.options.mode, ctx.label(m.source), by_source[m.source].source.mtime_ns,
                    image_fields(by_source[m.source], ctx.loaded.sha256, ctx.pseudonymise,
                                 where[m.source], audits[m.source],
                                 folder_keys=ctx.grouper.keys(m.source)),
                    ctx.origins.get(m.source))
        for m in moves if m.duplicate_of is None
    ])
    for move in moves:
        placed = None
        if move.duplicate_of is None:
            src = by_source[move.source].source
            placed = placer.submit(apply_move, move, ctx.out_root, ctx.options.mode,
                                   (src.size, src.mtime_ns))
        jobs.append(Job(move, by_source[move.source], placed, where[move.source]))


def finish_batch(jobs: list[Job], ctx: BatchContext) -> Iterator[FileOutcome]:
    """Commit each finished placement, in plan order; then remove moved sources."""
    for job in jobs:
        if job.placed is None:
            if _done(ctx.registry, job.move.sha256):
                yield _record_duplicate(job.pred, ctx, str(job.move.dest))
            else:
                yield FileOutcome(ctx.label(job.move.source), "failed",
                                  error="identical file failed to place; retried next run")
        else:
            yield _commit(job.move, job.pred, job.placed, ctx, job.where)


def _done(registry: Registry | None, sha256: str) -> bool:
    stored = registry.get_image(sha256) if registry else None
    return stored is not None and stored.state == "done"


def _outcome(pred: Prediction, status: str, dest: str | None,
             where: Placement | None, ctx: BatchContext) -> FileOutcome:
    body_part = pred.labels.get("body_part")
    fracture, fracture_prob = fracture_call(pred, where)
    return FileOutcome(
        ctx.label(pred.source.path), status, dest, body_part,
        round(pred.confidence("body_part"), 4) if body_part else None,
        pred.labels.get("instrument"), ctx.grouper.scrub(pred.error, pred.source.path),
        scope=(where.scope or None) if where is not None else None,
        reason=where.reason if where is not None and status == "review" else None,
        fracture=fracture,
        fracture_prob=None if fracture_prob is None else round(fracture_prob, 4),
        warning=pred.meta.warning if pred.meta is not None else None,
    )


def _commit(
    move: Move, pred: Prediction, placed: Future[PurePosixPath], ctx: BatchContext,
    where: Placement | None = None,
) -> FileOutcome:
    assert ctx.registry is not None
    try:
        dest = placed.result()
    except (XregError, OSError) as exc:
        ctx.registry.discard_pending(move.sha256)
        return ctx.failed(move.source, str(exc))
    ctx.registry.complete_image(move.sha256, str(dest))
    if ctx.options.mode == "move" and remove_source(move.source, move.sha256,
                                                    ctx.out_root / dest):
        ctx.registry.mark_source_removed(ctx.label(move.source))
    return _outcome(pred, move.status, str(dest), where, ctx)


def _record_duplicate(p: Prediction, ctx: BatchContext, dest: str | None = None) -> FileOutcome:
    """Content already placed: record this path too; ``--mode move`` removes it."""
    registry = ctx.registry
    label = ctx.label(p.source.path)
    if registry is not None and not ctx.dry:
        registry.add_source(p.sha256, label, p.source.size, p.source.mtime_ns, ctx.run_id,
                            ctx.origins.get(p.source.path))
        if ctx.options.mode == "move" and remove_source(p.source.path, p.sha256):
            registry.mark_source_removed(label)
    stored = registry.get_image(p.sha256) if registry else None
    return FileOutcome(label, "duplicate", stored.dest_path if stored else dest)
