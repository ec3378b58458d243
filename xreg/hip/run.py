"""``xreg hip``: find hip films, pair AP with lateral, score fracture, record, place.

Plan, then act: classification and header reading give each hip film a
study, view and side; :func:`xreg.hip.pairing.pair_views` (pure) pairs them; the
two-view model scores each pair; then, in one place, rows go to the
registry's ``hip_studies`` table and, with an output folder, each study's
films are copied to ``OUT/hip/<fracture|no_fracture|unpaired>/<study>/``
with the same no-replace, verified placement ``xreg sort`` uses.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xreg import __version__
from xreg.datasets import load_pairs
from xreg.errors import ConfigError
from xreg.hashing import file_sha256
from xreg.hip.pairing import (
    HipImage,
    compile_pattern,
    pair_views,
    parse_filename,
    side_from_dicom,
    view_from_dicom,
)
from xreg.hip.study import ScoredStudy, add_heatmaps, place_study, write_joined
from xreg.inference.pairs import predict_pairs
from xreg.inference.predict import Prediction, predict_files
from xreg.inference.runtime import Model, load_model
from xreg.model.card import default_weights
from xreg.registry import Registry
from xreg.registry.pseudonym import Pseudonymiser
from xreg.sort.folders import check_folders, output_lock, scan_inputs
from xreg.sort.grouping import Grouper, parse_group_by
from xreg.sort.runner import REGISTRY_NAME

__all__ = ["HIP_WEIGHTS", "HipOptions", "HipResult", "ScoredStudy", "hip_weights", "run_hip"]

HIP_WEIGHTS = "hip_fracture_phantom.pt"
_HIP_HEADERS = {"HIP", "PELVIS", "HIP JOINT", "FEMUR"}


@dataclass(frozen=True)
class HipOptions:
    """What ``xreg hip`` needs besides its input folder."""

    weights: Path | None = None  # the two-view fracture model; default: shipped
    classifier: Path | None = None  # body part (+ view) model; default: shipped
    out: Path | None = None  # place studies under OUT/hip/...
    pairs: Path | None = None  # explicit pairs CSV
    pattern: str | None = None  # filename regex with study and view groups
    joined: Path | None = None  # write the joined two-view images here
    registry: Path | None = None  # default OUT/registry.sqlite when OUT is given
    batch_size: int = 16
    workers: int = 2
    device: str = "auto"
    runtime: str = "auto"  # auto | onnx | torch (see xreg.inference.runtime)
    min_age: float = 10.0
    from_registry: bool = False  # take the films a sort placed (OUT = heatmap_root)
    heatmaps: bool = False  # write overlays of the joined input to <root>/_heatmaps/hip/
    heatmap_root: Path | None = None  # default OUT
    group_by: str | None = None  # folder levels under IN: {patient}/{study} (sort.grouping)


@dataclass
class HipResult:
    """Every study found, the model's sha256, where the rows went."""

    studies: list[ScoredStudy]
    model_sha256: str
    threshold: float
    hip_films: int
    registry: Path | None = None
    run_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"model_sha256": self.model_sha256, "threshold": self.threshold,
                "hip_films": self.hip_films, "run_id": self.run_id,
                "registry": str(self.registry) if self.registry else None,
                "studies": [s.to_dict() for s in self.studies]}


def hip_weights(path: Path | None) -> Path:
    """The two-view hip checkpoint: ``path``, else the shipped one."""
    if path is not None:
        return path
    shipped = default_weights().with_name(HIP_WEIGHTS)
    if not shipped.is_file():
        raise ConfigError(f"no hip fracture weights: pass --weights (the shipped {shipped} "
                          "is not there)")
    return shipped


def _hip_image(path: str, name: str, *, body_part: str | None, header_part: str | None,
               study: str | None, view: str | None, laterality: str | None,
               model_view: str | None, pattern: Any) -> HipImage | None:
    """The film as a HipImage, or None if neither header nor model says hip.

    ``view`` is what the DICOM header says; then the file ``name``, then the
    classifier's ``model_view``, fill what is still unknown.
    """
    if body_part != "hip" and (header_part or "").strip().upper() not in _HIP_HEADERS:
        return None
    side = side_from_dicom(laterality)
    source = "dicom" if view else ""
    parsed = parse_filename(name, pattern)
    if parsed is not None:
        study = study or parsed[0]
        if view is None and parsed[1] is not None:
            view, source = parsed[1], "filename"
        side = side or parsed[2]
    if view is None and model_view is not None:
        view, source = model_view, "model"
    return HipImage(path, study, view, side, source)


def _describe(p: Prediction, pattern: Any, pseudonymise: Pseudonymiser,
              grouper: Grouper) -> HipImage | None:
    """A freshly classified film as a HipImage (None if not a hip).

    Its study: the DICOM header's, else the ``--group-by`` study folder's key,
    else the file name's (whose patient name, if any, reads as the key).
    """
    dicom = dict(p.meta.dicom) if p.meta is not None else {}
    return _hip_image(
        str(p.source.path), grouper.file_name(p.source.path),
        body_part=p.labels.get("body_part"), header_part=dicom.get("BodyPartExamined"),
        study=dicom.get("StudyInstanceUID") or pseudonymise(dicom.get("AccessionNumber"))
        or grouper.keys(p.source.path)[1],
        view=view_from_dicom(dicom.get("ViewPosition"), dicom.get("SeriesDescription")),
        laterality=dicom.get("Laterality"), model_view=p.labels.get("view"), pattern=pattern)


def run_hip(in_root: Path, options: HipOptions,
            on_progress: Callable[[str], None] | None = None) -> HipResult:
    """Find, pair, score, record and (with ``options.out``) place the hip studies of IN."""
    say = on_progress or (lambda _text: None)
    out = options.out
    exclude = check_folders(in_root, out) if out is not None else []
    if out is None and not in_root.is_dir():
        raise ConfigError(f"input folder {in_root} does not exist or is not a folder")
    if options.heatmaps and (options.heatmap_root or out) is None:
        raise ConfigError("--heatmaps needs an output folder (OUT) to write them into")
    pattern = compile_pattern(options.pattern)
    hip_model = load_model(hip_weights(options.weights), runtime=options.runtime,
                           device=options.device)
    if hip_model.card.views != 2:
        raise ConfigError(f"{hip_model.path} is not a two-view hip fracture checkpoint")
    registry_path = options.registry or (out / REGISTRY_NAME if out is not None else None)
    pseudonymise = (Pseudonymiser.for_registry(registry_path) if registry_path is not None
                    else Pseudonymiser(os.urandom(32)))
    grouper = Grouper(parse_group_by(options.group_by) if options.group_by else None,
                      in_root, pseudonymise)
    explicit: dict[str, tuple[str, str]] = {}
    if options.pairs is not None:
        explicit = {p.study: (str(p.ap.absolute()), str(p.lateral.absolute()))
                    for p in load_pairs(options.pairs)}
    listed = {path for pair in explicit.values() for path in pair}
    single: dict[str, _SingleView] = {}
    if options.from_registry and registry_path is not None and options.heatmap_root:
        images = _registry_images(registry_path, options.heatmap_root, pattern, single)
    else:
        classifier = load_model(options.classifier or default_weights(),
                                runtime=options.runtime, device=options.device)
        files, _young = scan_inputs(in_root, exclude, options.min_age)
        to_classify = [f for f in files if str(f.path) not in listed]
        say(f"classifying {len(to_classify)} film(s)")
        images = []
        for batch in predict_files(to_classify, classifier, batch_size=options.batch_size,
                                   workers=options.workers):
            for p in batch:
                im = _describe(p, pattern, pseudonymise, grouper) if p.status == "ok" else None
                if im is None:
                    continue
                images.append(im)
                if "fracture" in p.labels:
                    single[im.path] = _SingleView(
                        p.probabilities["fracture"]["fracture"], p.labels["fracture"],
                        classifier.card.thresholds.get("fracture"), classifier.sha256)
    sources = {im.path: im.view_source for im in images}
    studies = pair_views(images, explicit)
    paired = [s for s in studies if s.paired]
    say(f"{len(images) + len(listed)} hip film(s), {len(paired)} pair(s) to score")
    scores = predict_pairs([(Path(s.ap or ""), Path(s.lateral or "")) for s in paired],
                           hip_model, batch_size=options.batch_size, workers=options.workers)
    threshold = hip_model.card.thresholds.get("fracture", 0.5)
    by_key = {(s.study, s.side): pred for s, pred in zip(paired, scores)}
    scored = []
    for s in studies:
        pred = by_key.get((s.study, s.side))
        prob = decision = error = None
        if pred is not None and pred.status == "ok":
            prob = pred.probabilities["fracture"]["fracture"]
            decision = "fracture" if prob >= threshold else "no_fracture"
        elif pred is not None:
            error = pred.error
        views = {path: sources.get(path, "csv") for path in s.candidates}
        one = single.get(s.ap or "") if s.status == "missing_lateral" else None
        if one is not None:
            # An AP without a lateral: the film's own fracture head instead of no score.
            s = dataclasses.replace(s, status="single_view", reason=(
                "no lateral film: AP scored by the classifier's single-film fracture head"))
            scored.append(ScoredStudy(s, one.prob, one.decision, view_sources=views,
                                      threshold=one.threshold, model_sha256=one.model))
            continue
        scored.append(ScoredStudy(s, prob, decision, error, view_sources=views))
    if options.joined is not None:
        scored = [write_joined(s, options.joined, hip_model) for s in scored]
    if options.heatmaps:  # attributions need the torch checkpoint itself
        from xreg.model.checkpoint import load_checkpoint

        scored = add_heatmaps(scored, options.heatmap_root or out,
                               load_checkpoint(hip_weights(options.weights)))
    result = HipResult(scored, hip_model.sha256, threshold, len(images) + len(listed))
    if registry_path is None:
        result.studies = [_masked(s, grouper) for s in result.studies]
        return result
    # Placement and the registry both need each film's sha256: read each file once.
    # The registry keeps masked paths (see _masked), so look hashes up by those.
    sha = functools.cache(lambda path: file_sha256(Path(path)))
    labels = {grouper.label(Path(p)): p for s in result.studies for p in s.study.candidates
              if s.study.ap == p or s.study.lateral == p}
    sha_of = (lambda masked: sha(labels.get(masked, masked)))  # noqa: E731
    if out is not None:
        with output_lock(out):
            result.studies = [_masked(place_study(s, out, sha, grouper), grouper)
                              for s in result.studies]
            _record(result, registry_path, in_root, out, hip_model, options, sha_of)
    else:
        result.studies = [_masked(s, grouper) for s in result.studies]
        _record(result, registry_path, in_root, None, hip_model, options, sha_of)
    return result


def _masked(s: ScoredStudy, grouper: Grouper) -> ScoredStudy:
    """``s`` with its film paths as they may be stored and shown (``--group-by``:
    the patient folder reads as its key); the files were read by now."""
    if grouper.group_by is None:
        return s
    label = lambda path: grouper.label(Path(path)) if path else path  # noqa: E731
    st = s.study
    study = dataclasses.replace(st, ap=label(st.ap), lateral=label(st.lateral),
                                candidates=tuple(label(p) for p in st.candidates))
    error = grouper.scrub(s.error, Path(st.ap or st.lateral or "")) if s.error else None
    return dataclasses.replace(s, study=study, error=error,
                               view_sources={label(k): v for k, v in s.view_sources.items()})


@dataclass(frozen=True)
class _SingleView:
    """A hip film's own fracture score from the body-part model's fracture head."""

    prob: float
    decision: str
    threshold: float | None
    model: str | None


def _registry_images(registry_path: Path, out_root: Path, pattern: Any,
                     single: dict[str, _SingleView]) -> list[HipImage]:
    """Hip films a sort already classified and placed: no second pass of the model.

    Same rules as :func:`_describe`, from the registry's columns; the film
    used is the placed copy under OUT, the file name the source's.
    """
    images: list[HipImage] = []
    with Registry(registry_path, readonly=True) as reg:
        rows = reg.classified_images()
    for row in rows:
        path = str((out_root / row["dest_path"]).absolute())
        probs = json.loads(row["probabilities"] or "{}").get("view")
        image = _hip_image(
            path, Path(row["source"] or path).name, body_part=row["body_part"],
            header_part=row["body_part_examined"],
            study=row["study_uid"] or row["accession_key"] or row["study_key"],
            view=view_from_dicom(row["view_position"]), laterality=row["laterality"],
            model_view=max(probs, key=probs.__getitem__) if probs else None, pattern=pattern)
        # One content filed under two names that say the same thing is one film.
        if image is not None and image not in images:
            images.append(image)
            if row.get("fracture_prob") is not None:
                single[image.path] = _SingleView(
                    row["fracture_prob"], "fracture" if row["fracture"] else "no_fracture",
                    None, row["model_sha256"])
    return images


def _record(result: HipResult, registry_path: Path, in_root: Path, out: Path | None,
            model: Model, options: HipOptions, sha: Callable[[str], str]) -> None:
    with Registry(registry_path) as reg:
        run_id = reg.start_run(
            xreg_version=__version__, input_root=str(in_root.absolute()),
            output_root=str(out.absolute()) if out is not None else "",
            model_path=str(model.path), model_name=model.card.name,
            model_sha256=model.sha256, runtime=model.runtime_label,
            group_by=options.group_by,
            options={"command": "hip", "pairs": str(options.pairs or ""),
                     "pattern": options.pattern or "", "joined": str(options.joined or "")})
        counts: dict[str, int] = {}
        for s in result.studies:
            st = s.study
            status = "unreadable" if s.error else st.status
            counts[s.decision or status] = counts.get(s.decision or status, 0) + 1
            reg.add_hip_study(run_id, {
                "study": st.study, "side": st.side, "status": status,
                "reason": s.error or st.reason,
                "ap_sha256": sha(st.ap) if st.ap else None,
                "lateral_sha256": sha(st.lateral) if st.lateral else None,
                "ap_path": st.ap, "lateral_path": st.lateral,
                "view_sources": json.dumps(s.view_sources, sort_keys=True),
                "fracture_prob": s.fracture_prob, "decision": s.decision,
                "threshold": (s.threshold if s.model_sha256 else result.threshold)
                if s.decision else None,
                "model_sha256": s.model_sha256 or model.sha256, "dest": s.dest,
                "joined_path": s.joined,
                "heatmap_path": s.heatmap,
            })
        reg.finish_run(run_id, counts)
    result.registry, result.run_id = registry_path, run_id
