"""Results as DICOM for PACS: a Structured Report of the findings and the heatmap as an image.

For each sorted DICOM film, built with highdicom (no hand-assembled SR trees):

- a Comprehensive 3D SR holding a TID 1500 Measurement Report: the finding
  site (SNOMED CT body-part codes; long-bone classes too), instrument and
  fracture (and, for a film of a paired and scored hip study, the two-view
  hip fracture decision) as coded qualitative evaluations, every head's top
  probability (and the hip score) as
  a measurement, the model's name and checkpoint sha256 as the algorithm
  identification, and a reference to the source SOP Instance;
- the body-part heatmap overlay as a Secondary Capture image.

Both join the source's study (same StudyInstanceUID) in new series. UIDs are
derived from the source SOP Instance UID and the model's sha256 under the
2.25 (UUID) root, so writing again gives the same UIDs and PACS sees one
object, not a duplicate. Patient and study attributes are copied from the
source only: nothing is invented. Files go to ``OUT/_dicom/<study>/``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xreg.errors import ConfigError

__all__ = ["DICOM_DIR", "SNOMED_BODY_PARTS", "Written", "derived_uid", "write_results"]

DICOM_DIR = "_dicom"
MANUFACTURER = "xreg"
#: SNOMED CT codes of the body parts (as DICOM CID 4031 uses them).
SNOMED_BODY_PARTS: Mapping[str, tuple[str, str]] = {
    "ankle": ("344001", "Ankle"), "elbow": ("127949000", "Elbow"),
    "foot": ("56459004", "Foot"), "hand": ("85562004", "Hand"),
    "hip": ("29836001", "Hip"), "knee": ("72696002", "Knee"),
    "shoulder": ("16982005", "Shoulder"), "spine": ("421060004", "Spine"),
    "wrist": ("74670003", "Wrist joint"), "forearm": ("14975008", "Forearm"),
    "humerus": ("85050009", "Humerus"), "lower_leg": ("30021000", "Lower leg"),
    "femur": ("71341001", "Femur"),
}
_LOCAL = "99XREG"  # xreg's own coding scheme, for concepts without a standard code
#: Type 2 patient and study attributes of the new objects: empty if the source lacks one.
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
          "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")


@dataclass(frozen=True)
class Written:
    """The DICOM objects written for one film (paths relative to OUT)."""

    kind: str  # sr | sc
    sop_uid: str
    series_uid: str
    path: str


def derived_uid(*parts: str) -> str:
    """A stable UID under 2.25: the same inputs always give the same UID."""
    digest = hashlib.sha256("|".join(parts).encode()).digest()[:16]
    return f"2.25.{int.from_bytes(digest, 'big')}"


def _code(value: str, scheme: str, meaning: str) -> Any:
    import highdicom as hd

    return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def _local(name: str) -> Any:
    return _code(name.upper().replace(" ", "_")[:16], _LOCAL, name)


def _report(source: Any, probabilities: Mapping[str, Mapping[str, float]],
            labels: Mapping[str, str], model_name: str, model_sha256: str,
            hip: Mapping[str, Any] | None = None) -> Any:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    body_part = labels.get("body_part", "")
    sites = []
    if body_part in SNOMED_BODY_PARTS:
        value, meaning = SNOMED_BODY_PARTS[body_part]
        sites.append(hd.sr.FindingSite(anatomic_location=_code(value, "SCT", meaning)))
    evaluations = [hd.sr.QualitativeEvaluation(
        name=_local("Body part"), value=_local(body_part or "unknown"))]
    for head, present in (("instrument", "instrument"), ("fracture", "fracture")):
        if head in labels:
            evaluations.append(hd.sr.QualitativeEvaluation(
                name=_local(head.capitalize()),
                value=_code("52101004", "SCT", "Present") if labels[head] == present
                else _code("2667000", "SCT", "Absent")))
    unit = _code("1", "UCUM", "no units")
    measurements = [hd.sr.Measurement(name=_local(f"P {head}: {label}"[:64]),
                                      value=float(probabilities[head][label]), unit=unit)
                    for head, label in labels.items() if head in probabilities]
    if hip is not None:  # the film's study was paired and scored by the two-view model
        evaluations.append(hd.sr.QualitativeEvaluation(
            name=_local("Hip fracture two views"),
            value=_code("52101004", "SCT", "Present") if hip["decision"] == "fracture"
            else _code("2667000", "SCT", "Absent")))
        measurements.append(hd.sr.Measurement(name=_local("P hip fracture two views"),
                                              value=float(hip["fracture_prob"]), unit=unit))
    algorithm = hd.sr.AlgorithmIdentification(name=model_name, version=model_sha256[:64])
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid(source.SOPInstanceUID, model_sha256, "group"),
            identifier="xreg findings"),
        algorithm_id=algorithm, finding_sites=sites or None, measurements=measurements,
        qualitative_evaluations=evaluations,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)])
    observer = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=derived_uid(model_sha256, "device"), name=model_name,
                manufacturer_name=MANUFACTURER, model_name=model_sha256[:64])))
    return hd.sr.MeasurementReport(
        observation_context=observer,
        procedure_reported=_code("363680008", "SCT", "Radiographic imaging procedure"),
        imaging_measurements=[group])


def write_results(out_root: Path, film: Path, probabilities: Mapping[str, Mapping[str, float]],
                  labels: Mapping[str, str], model_name: str, model_sha256: str,
                  overlay: Path | None = None,
                  hip: Mapping[str, Any] | None = None) -> list[Written]:
    """Write the SR (and, with ``overlay``, the SC) for one DICOM film; return them."""
    try:
        import highdicom as hd
        import pydicom
    except ImportError as exc:
        raise ConfigError(f'--dicom-out needs highdicom: pip install "xreg[train]" '
                          f"({exc.name} is missing)") from None
    source = pydicom.dcmread(film, stop_before_pixels=True)
    for keyword in _TYPE2:  # present but empty when the source lacks them: never invented
        if keyword not in source:
            setattr(source, keyword, "")
    folder = Path(DICOM_DIR) / _safe(str(source.StudyInstanceUID))
    written: list[Written] = []
    sr_series = derived_uid(source.StudyInstanceUID, model_sha256, "sr-series")
    sr = hd.sr.Comprehensive3DSR(
        evidence=[source], content=_report(source, probabilities, labels, model_name,
                                           model_sha256, hip),
        series_instance_uid=sr_series, series_number=9001,
        sop_instance_uid=derived_uid(source.SOPInstanceUID, model_sha256, "sr"),
        instance_number=1, manufacturer=MANUFACTURER, is_complete=True)
    written.append(_save(out_root, folder / f"sr_{_safe(sr.SOPInstanceUID)[-20:]}.dcm", sr,
                         "sr", sr_series))
    if overlay is not None:
        from PIL import Image

        rgb = np.asarray(Image.open(overlay).convert("RGB"))
        given = tuple(source.get("PatientOrientation") or ())
        known = len(given) == 2 and all(given)
        sc_series = derived_uid(source.StudyInstanceUID, model_sha256, "sc-series")
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source, pixel_array=rgb, photometric_interpretation="RGB",
            bits_allocated=8, coordinate_system="PATIENT", series_instance_uid=sc_series,
            series_number=9002,
            sop_instance_uid=derived_uid(source.SOPInstanceUID, model_sha256, "sc"),
            instance_number=1, manufacturer=MANUFACTURER,
            patient_orientation=(str(given[0]), str(given[1])) if known else ("L", "F"))
        if not known:  # the source does not say: leave it empty (Type 2), never guess
            del sc.PatientOrientation  # then set as present but empty (Type 2)
            sc.add_new(0x00200020, "CS", "")
        side = str(source.get("ImageLaterality") or source.get("Laterality") or "")
        sc.Laterality = side if side in ("L", "R") else ""  # Type 2C: empty when unknown
        sc.SeriesDescription = "xreg heatmap (integrated gradients, body part)"
        sc.BurnedInAnnotation = "YES"
        written.append(_save(out_root, folder / f"sc_{_safe(sc.SOPInstanceUID)[-20:]}.dcm",
                             sc, "sc", sc_series))
    return written


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)[:64]


def _save(out_root: Path, rel: Path, ds: Any, kind: str, series: str) -> Written:
    target = out_root / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    ds.save_as(tmp, enforce_file_format=True)
    os.replace(tmp, target)
    return Written(kind, str(ds.SOPInstanceUID), series, rel.as_posix())


@dataclass(frozen=True)
class DicomSummary:
    """What ``--dicom-out`` wrote (and sent) for a sorted folder."""

    films: int
    written: int
    seconds: float
    stowed: int = 0


def _labels(row: Mapping[str, Any]) -> dict[str, str]:
    labels = {"body_part": str(row["body_part"])}
    if row.get("instrument") is not None:
        labels["instrument"] = "instrument" if row["instrument"] else "no_instrument"
    if row.get("fracture") is not None:
        labels["fracture"] = "fracture" if row["fracture"] else "no_fracture"
    return labels


def write_sort_dicom(out_root: Path, registry_path: Path, model_name: str,
                     model_sha256: str, stow: str | None = None, *,
                     again: bool = False) -> DicomSummary:
    """SR + SC for each placed, classified DICOM film of the registry; record each.

    Films that already have objects from this model are skipped (an hourly
    cron writes and sends only what is new) unless ``again``. Overlays come
    from the registry's heatmaps (``xreg sort --dicom-out`` draws them
    first). With ``stow``, every object written is sent to that DICOMweb
    root (STOW-RS) and marked ``stowed``.
    """
    import json
    import time

    from xreg.registry import Registry

    started = time.monotonic()
    written: list[Written] = []
    films = 0
    with Registry(registry_path) as reg:
        scored = {}  # film sha256 -> its scored hip study (as AP or lateral)
        for study in reg.hip_studies():
            if study["decision"] in ("fracture", "no_fracture"):
                for key in ("ap_sha256", "lateral_sha256"):
                    if study[key]:
                        scored[study[key]] = study
        done_before = set() if again else {
            r["sha256"] for r in reg.dicom_outputs() if r["model_sha256"] == model_sha256}
        for row in reg.iter_images():
            if row["format"] != "dicom" or row["status"] not in ("sorted", "review") \
                    or not row["body_part"] or row["sha256"] in done_before:
                continue
            films += 1
            overlay = out_root / row["heatmap_path"] if row.get("heatmap_path") else None
            done = write_results(out_root, out_root / row["dest_path"],
                                 json.loads(row["probabilities"] or "{}"), _labels(row),
                                 model_name, model_sha256,
                                 overlay if overlay is not None and overlay.is_file() else None,
                                 scored.get(row["sha256"]))
            for w in done:
                reg.add_dicom_output(row["sha256"], w.kind, w.sop_uid, w.series_uid, w.path,
                                     model_sha256)
            written += done
        sent = 0
        if stow and written:
            stow_files(stow, [out_root / w.path for w in written])
            reg.mark_stowed([w.sop_uid for w in written])
            sent = len(written)
    return DicomSummary(films, len(written), time.monotonic() - started, sent)


def stow_files(url: str, paths: list[Path], batch: int = 32) -> None:
    """Send DICOM files to a DICOMweb server (STOW-RS, ``POST {url}/studies``)."""
    import secrets
    import urllib.error
    import urllib.request

    from xreg.errors import XregError

    for start in range(0, len(paths), batch):
        boundary = f"xreg-{secrets.token_hex(12)}"
        parts = []
        for path in paths[start:start + batch]:
            parts += [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(),
                      path.read_bytes(), b"\r\n"]
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        request = urllib.request.Request(
            f"{url.rstrip('/')}/studies", data=body, method="POST", headers={
                "Content-Type": f'multipart/related; type="application/dicom"; '
                                f"boundary={boundary}",
                "Accept": "application/dicom+json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                if response.status not in (200, 202):
                    raise XregError(f"STOW-RS to {url} answered {response.status}")
        except urllib.error.HTTPError as exc:
            raise XregError(f"STOW-RS to {url} refused the objects: HTTP {exc.code}") from None
        except urllib.error.URLError as exc:
            raise XregError(f"cannot reach the DICOMweb server {url}: {exc.reason}") from None
