"""``xreg sort --engine ray``: hashing, decoding and the model on Ray Data workers.

Only the stateless work moves: each file is read, hashed, decoded at model
size and preprocessed in Ray Data map tasks (exactly
:func:`xreg.inference.predict.decode_source`, the local engine's step), and
scored by a fixed-size pool of model actors (ONNX Runtime or torch, CPU or
GPU). Predictions stream back to the driver in input order, in batches, and
the driver does everything else through the local engine's own code: plan,
journal, place, commit, under the one OUT lock and the one registry writer.
So a killed driver leaves what a killed local run leaves, and either engine
finishes it.

IN and OUT must be on a filesystem every worker can read: a worker reads the
file by its path. A file a worker cannot read is that file's failure (it
stays where it is), never the run's.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Collection, Container, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from xreg.errors import ConfigError
from xreg.inference.predict import (
    Prediction,
    SourceFile,
    decide,
    decode_source,
    score_logits,
)
from xreg.inference.preprocess import Preprocessor
from xreg.inference.runtime import Model
from xreg.io import ImageMeta

__all__ = ["RAY_EXTRA", "RayOptions", "predict_files_ray", "require_ray"]

RAY_EXTRA = 'pip install "xreg[ray]"'


def require_ray() -> None:
    """``ConfigError`` naming the extra when Ray is not installed."""
    if importlib.util.find_spec("ray") is None:
        raise ConfigError(f"--engine ray needs Ray: {RAY_EXTRA}")


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide: ``address`` None starts (and stops) a local Ray."""

    address: str | None = None
    workers: int = 2  # model actors
    gpus_per_worker: float = 0.0
    batch_size: int = 16


def _decode_batch(batch: dict[str, np.ndarray], card: dict[str, Any],
                  known: Container[str]) -> dict[str, np.ndarray]:
    """Ray Data map task: read, hash, decode, preprocess (the local engine's step)."""
    from xreg.model.card import ModelCard

    pre = Preprocessor(ModelCard.from_dict(card))
    done = [decode_source(SourceFile(Path(p), int(s), int(m)), pre, known)
            for p, s, m in zip(batch["path"], batch["size"], batch["mtime_ns"])]
    return {
        "index": batch["index"],
        "sha256": np.array([d.sha256 for d in done], dtype=object),
        "status": np.array([d.status for d in done], dtype=object),
        "error": np.array([d.error for d in done], dtype=object),
        "meta": np.array([d.meta for d in done] + [None], dtype=object)[:-1],
        "tensor": np.array([d.tensor for d in done] + [None], dtype=object)[:-1],
    }


class _Score:
    """A model actor: loads the model once, scores the decoded films of each batch."""

    def __init__(self, weights: str, runtime: str, device: str) -> None:
        from xreg.inference.runtime import load_model

        self.model = load_model(Path(weights), runtime=runtime, device=device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ready = [i for i, t in enumerate(batch["tensor"]) if t is not None]
        probs: list[dict[str, dict[str, float]] | None] = [None] * len(batch["index"])
        energies = np.full(len(batch["index"]), np.nan)
        distances = np.full(len(batch["index"]), np.nan)
        reasons = [""] * len(batch["index"])  # "": not held back by the guard
        if ready:
            logits = self.model.runtime.run(np.stack([batch["tensor"][i] for i in ready]))
            for i, one in zip(ready, score_logits(logits, self.model.card)):
                probs[i], energies[i] = one.probabilities, one.energy
                distances[i] = np.nan if one.distance is None else one.distance
                reasons[i] = one.unfamiliar or ""
        out = {k: v for k, v in batch.items() if k != "tensor"}
        out["energy"] = energies
        out["distance"] = distances
        out["unfamiliar"] = np.array(reasons, dtype=object)
        out["probabilities"] = np.array(probs + [None], dtype=object)[:-1]
        return out


def predict_files_ray(files: list[SourceFile], model: Model, options: RayOptions, *,
                      device: str = "cpu", known: Collection[str] = frozenset(),
                      ) -> Iterator[list[Prediction]]:
    """Predictions for ``files`` in input order, one list per batch, computed on Ray.

    The same :class:`~xreg.inference.predict.Prediction` values the local
    engine yields; a local Ray instance lives as long as the iteration.
    """
    require_ray()
    # Ray's own chatter (execution plans, C++ worker notes) would drown a cron log.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import ray

    started = not ray.is_initialized()
    if started:
        if options.address:
            ray.init(address=options.address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        else:  # a local instance for this run, as wide as the actor pool
            ray.init(num_cpus=max(2, options.workers), include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
    try:
        if files:
            yield from _stream(files, model, options, device, known)
    finally:
        if started:
            ray.shutdown()


def _stream(files: list[SourceFile], model: Model, options: RayOptions, device: str,
            known: Collection[str]) -> Iterator[list[Prediction]]:
    import ray

    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # the driver commits in input order
    context.enable_progress_bars = False  # the driver draws its own bar
    items = [{"index": i, "path": str(f.path), "size": f.size, "mtime_ns": f.mtime_ns}
             for i, f in enumerate(files)]
    runtime = "onnx" if model.path.suffix == ".onnx" else "torch"
    known_set = frozenset(known)  # shipped to every map task once
    blocks = max(1, min(len(items), 4 * options.workers))
    scored = (ray.data.from_items(items, override_num_blocks=blocks)
              .map_batches(cast(Any, _decode_batch), batch_size=options.batch_size,
                           fn_kwargs={"card": model.card.to_dict(), "known": known_set})
              .map_batches(_Score, batch_size=options.batch_size,
                           fn_constructor_kwargs={"weights": str(model.path),
                                                  "runtime": runtime, "device": device},
                           compute=ray.data.ActorPoolStrategy(size=options.workers),
                           num_gpus=options.gpus_per_worker or None))
    for batch in scored.iter_batches(batch_size=options.batch_size, batch_format="numpy"):
        out = []
        for i, sha, status, error, meta, probs, e, dist, why in zip(
                batch["index"], batch["sha256"], batch["status"], batch["error"],
                batch["meta"], batch["probabilities"], batch["energy"], batch["distance"],
                batch["unfamiliar"]):
            # Ray's columnar blocks turn a None into NaN: take only real values back.
            probs = probs if isinstance(probs, dict) else {}
            meta = meta if isinstance(meta, ImageMeta) else None
            e = float(e) if probs and np.isfinite(e) else None
            dist = float(dist) if probs and np.isfinite(dist) else None
            out.append(Prediction(files[int(i)], str(sha), str(status), meta, probs,
                                  decide(probs, model.card) if probs else {},
                                  error if isinstance(error, str) else None, energy=e,
                                  distance=dist,
                                  unfamiliar=why if probs and isinstance(why, str) and why
                                  else None))
        yield out
