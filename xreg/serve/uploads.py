"""Films dropped on the upload page: analysed from a private temp folder, kept only on request.

An upload is judged by its content, through the very path ``xreg sort`` uses
(:func:`xreg.inference.predict.predict_files`: sha256, format sniffing, the
decompression-bomb guard, the model, the card's thresholds and
:func:`xreg.sort.record.judge`, with the header check). Nothing reaches OUT unless the user
asks; then :func:`add_to_registry` hands the files to
:func:`xreg.sort.runner.sort_sources`, the sort's own lock, journal and
placement.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xreg.config import SortOptions
from xreg.inference.predict import SourceFile, predict_files
from xreg.inference.runtime import Model, as_model
from xreg.io.detect import SNIFF_BYTES, sniff_format
from xreg.model.checkpoint import LoadedModel, load_checkpoint
from xreg.sort.audit import load_vocabulary
from xreg.sort.placement import sanitise
from xreg.sort.record import judge
from xreg.sort.runner import SortResult, sort_sources

__all__ = ["Analyser", "PairResult", "UploadResult", "UploadStore", "add_to_registry"]

_FORMATS = "DICOM, PNG, JPEG, TIFF or JPEG 2000"


@dataclass(frozen=True)
class UploadResult:
    """What the model said about one uploaded film, or why it could not say."""

    sha256: str
    name: str
    status: str  # sorted | review (where it would go) | unreadable | refused
    format: str | None = None
    reason: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    probabilities: dict[str, dict[str, float]] = field(default_factory=dict)
    scope: str | None = None
    warning: str | None = None
    overlay: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class PairResult:
    """The two-view hip model's score for an uploaded AP + lateral, or why none."""

    key: str
    ap: str
    lateral: str
    status: str  # ok | unreadable | refused
    fracture_prob: float | None = None
    decision: str | None = None
    threshold: float | None = None
    model_sha256: str | None = None
    reason: str | None = None
    overlay: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class UploadStore:
    """A private temp folder of recent uploads, by content hash (oldest dropped first)."""

    def __init__(self, keep: int = 256) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="xreg-serve-"))
        self.keep = keep
        self._entries: OrderedDict[str, Path] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, name: str, data: bytes, sha256: str) -> Path:
        folder = self.root / sha256
        folder.mkdir(exist_ok=True)
        path = folder / sanitise(Path(name).name or "upload")
        existing = self._entries.get(sha256)
        if existing is not None and existing.exists():
            return existing
        tmp = folder / ".partial"
        tmp.write_bytes(data)
        tmp.replace(path)
        with self._lock:
            self._entries[sha256] = path
            while len(self._entries) > self.keep:
                old, _ = self._entries.popitem(last=False)
                shutil.rmtree(self.root / old, ignore_errors=True)
        return path

    def path(self, sha256: str) -> Path | None:
        with self._lock:
            path = self._entries.get(sha256)
        return path if path is not None and path.exists() else None

    def overlay(self, key: str) -> Path:
        return self.root / key / "overlay.png"

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Analyser:
    """The models behind the upload page; one request uses them at a time."""

    def __init__(self, loaded: LoadedModel, store: UploadStore, *,
                 hip_weights: Path | None = None, heatmaps: bool = True) -> None:
        self.loaded, self.store, self.heatmaps = loaded, store, heatmaps
        # The inference copy (BN folded, channels-last) once, not per request.
        self.model = as_model(loaded)
        self.vocabulary = load_vocabulary()  # the sort's default, as add-to-registry uses
        self._hip_weights = hip_weights
        self._hip: LoadedModel | None = None
        self._lock = threading.Lock()

    @property
    def min_confidence(self) -> float:
        return float(self.loaded.card.thresholds.get("min_confidence", 0.0))

    def analyse(self, files: list[tuple[str, bytes]]) -> list[UploadResult]:
        """Predict body part, instrument and fracture for each file, with an overlay."""
        results: dict[int, UploadResult] = {}
        sources: list[tuple[int, str, SourceFile]] = []
        for i, (name, data) in enumerate(files):
            sha = _sha256(data)
            shown = sanitise(Path(name).name or "upload")
            if sniff_format(data[:SNIFF_BYTES]) is None:
                results[i] = UploadResult(sha, shown, "refused", reason=(
                    f"not a {_FORMATS} file (judged by its content, not its name)"))
                continue
            path = self.store.add(name, data, sha)
            sources.append((i, shown, SourceFile(path, len(data), path.stat().st_mtime_ns)))
        with self._lock:
            preds = [p for batch in predict_files([s for _, _, s in sources], self.model)
                     for p in batch]
            for (i, shown, src), pred in zip(sources, preds):
                if pred.status != "ok":
                    results[i] = UploadResult(pred.sha256, shown, "unreadable",
                                              reason=pred.error)
                    continue
                where, _ = judge(pred, self.min_confidence, self.vocabulary)
                results[i] = UploadResult(
                    pred.sha256, shown, where.status,
                    pred.meta.format if pred.meta else None, where.reason,
                    dict(pred.labels), {h: dict(p) for h, p in pred.probabilities.items()},
                    where.scope, pred.meta.warning if pred.meta else None)
            self._overlays(results)
        return [results[i] for i in range(len(files))]

    def _overlays(self, results: dict[int, UploadResult]) -> None:
        if not self.heatmaps:
            return
        from xreg.explain.heatmaps import explain_files

        todo = [(i, r) for i, r in results.items() if r.status in ("sorted", "review")]
        paths = [self.store.path(r.sha256) for _, r in todo]
        ready = [(i, r, p) for (i, r), p in zip(todo, paths) if p is not None]
        done = explain_files([p for _, _, p in ready], self.loaded,
                             [self.store.overlay(r.sha256) for _, r, _ in ready])
        for (i, r, _), explained in zip(ready, done):
            if explained.overlay is not None:
                results[i] = dataclasses.replace(r, overlay=True)

    def analyse_pair(self, ap: tuple[str, bytes], lateral: tuple[str, bytes]) -> PairResult:
        """Score an AP + lateral hip pair with the two-view model, with the joined overlay."""
        from xreg.explain.heatmaps import explain_pairs
        from xreg.inference.pairs import predict_pairs

        names = (sanitise(Path(ap[0]).name), sanitise(Path(lateral[0]).name))
        shas = (_sha256(ap[1]), _sha256(lateral[1]))
        key = _sha256((shas[0] + shas[1]).encode())
        for role, (_, data) in (("AP", ap), ("lateral", lateral)):
            if sniff_format(data[:SNIFF_BYTES]) is None:
                return PairResult(key, *names, "refused",
                                  reason=f"the {role} file is not a {_FORMATS} file")
        paths = (self.store.add(ap[0], ap[1], shas[0]),
                 self.store.add(lateral[0], lateral[1], shas[1]))
        with self._lock:
            model = self._hip_model()
            pred = predict_pairs([paths], model)[0]
            if pred.status != "ok":
                return PairResult(key, *names, "unreadable", reason=pred.error)
            head = model.card.heads[0]
            positive = head.labels[-1]
            overlay = self.store.overlay(key)
            overlay.parent.mkdir(parents=True, exist_ok=True)
            drawn = explain_pairs([paths], model, [overlay]) if self.heatmaps else []
        return PairResult(key, *names, "ok", pred.probabilities[head.name][positive],
                          pred.labels[head.name], model.card.thresholds.get(head.name),
                          model.sha256, overlay=bool(drawn and drawn[0].overlay))

    def explain_placed(self, film: Path, target: Path) -> str | None:
        """Draw the body-part overlay of a placed film at ``target``; None, or why not."""
        from xreg.explain.heatmaps import explain_files

        with self._lock:
            done = explain_files([film], self.loaded, [target], head="body_part")[0]
        return None if done.overlay is not None else done.error or "no overlay"

    def _hip_model(self) -> LoadedModel:
        if self._hip is None:
            from xreg.hip.run import hip_weights

            self._hip = load_checkpoint(hip_weights(self._hip_weights))
        return self._hip


def add_to_registry(store: UploadStore, shas: list[str], out_root: Path,
                    options: SortOptions, loaded: Model | None = None,
                    ) -> tuple[SortResult, list[str]]:
    """Place kept uploads in OUT the way ``xreg sort`` would; also the hashes not kept.

    Raises :class:`~xreg.errors.LockedError` while another run holds OUT.
    """
    files, missing = [], []
    for sha in dict.fromkeys(shas):
        path = store.path(sha)
        if path is None:
            missing.append(sha)
            continue
        st = path.stat()
        files.append(SourceFile(path, st.st_size, st.st_mtime_ns))
    result = sort_sources(files, out_root, options, input_root="web upload (xreg serve)",
                          loaded=loaded)
    return result, missing
