"""The header audit: vocabulary checks, the pure comparison, and what `xreg sort` records."""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xreg.cli import app
from xreg.config import SortOptions
from xreg.errors import ConfigError
from xreg.model.card import shipped_weights
from xreg.sort.audit import audit_headers, load_vocabulary, normalise
from xreg.sort.runner import run_sort
from xreg.synth.generate import generate_dataset

runner = CliRunner()
VOCAB = load_vocabulary()
LABELS = {"body_part": "knee", "view": "AP"}


@pytest.mark.parametrize("dicom,verdict,term", [
    ({"BodyPartExamined": "knee"}, "agrees", "KNEE"),
    ({"BodyPartExamined": "ANKLE"}, "disagrees", "ANKLE"),
    ({"BodyPartExamined": "EXTREMITY"}, "coarse", "EXTREMITY"),
    ({"BodyPartExamined": "UPPER EXTREMITY"}, "disagrees", "UPPER EXTREMITY"),
    ({"BodyPartExamined": "", "StudyDescription": "XR KNEE 2 VIEWS RIGHT"}, "agrees", "KNEE"),
    ({"Modality": "CR", "SeriesDescription": "L-Spine lat"}, "disagrees", "L SPINE"),
    ({"Modality": "CR"}, "empty", ""),
    ({"BodyPartExamined": "ZZ_LOCAL_CODE"}, "unmapped", "ZZ LOCAL CODE"),
])
def test_the_header_is_compared_with_the_model(dicom: dict[str, str], verdict: str,
                                               term: str) -> None:
    audit = audit_headers(dicom, LABELS, VOCAB)
    assert audit is not None
    assert (audit.verdict, audit.header) == (verdict, term)


def test_views_and_films_without_headers() -> None:
    assert audit_headers({}, LABELS, VOCAB) is None  # a PNG has no header to audit
    views = [audit_headers({"BodyPartExamined": "KNEE", "ViewPosition": v}, LABELS, VOCAB)
             for v in ("PA", "LL", "", "OBLIQUE")]
    assert [a.view for a in views if a] == ["agrees", "disagrees", "empty", "unmapped"]
    no_view_head = audit_headers({"ViewPosition": "AP"}, {"body_part": "knee"}, VOCAB)
    assert no_view_head is not None and no_view_head.view == ""


@pytest.mark.parametrize("text,message", [
    ("bodypart: {}\n", "unknown key 'bodypart'"),
    ("body_part:\n  kneee: [KNEE]\n", "body_part.kneee: not a class"),
    ("body_part:\n  knee: [KNEE]\n  hip: [knee]\n", "term 'KNEE' is in both"),
    ("coarse:\n  LEG: [knee, shin]\n", "coarse.LEG: must list classes"),
    ("view:\n  OBLIQUE: [OBL]\n", "view.OBLIQUE: not a view"),
    ("body_part:\n  knee: KNEE\n", "body_part.knee must be a non-empty list"),
])
def test_a_bad_vocabulary_is_refused_naming_the_key(tmp_path: Path, text: str,
                                                    message: str) -> None:
    path = tmp_path / "v.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_vocabulary(path)


def test_normalising_makes_spellings_meet() -> None:
    assert normalise(" l-spine ") == normalise("L_SPINE") == "L SPINE"


def test_sort_flags_the_phantoms_whose_headers_are_wrong_or_empty(tmp_path: Path) -> None:
    # xreg synth leaves BodyPartExamined empty (10%) or wrong (5%) on purpose.
    generate_dataset(tmp_path / "in", 90, seed=3, size=256, formats=("dicom",), workers=1)
    out = tmp_path / "out"
    weights = shipped_weights("bodypart_instrument_phantom.pt")
    run_sort(tmp_path / "in", out, SortOptions(weights=weights, min_age=0, min_confidence=0.0,
                                               layout="{header_agrees}/{body_part}/{name}"))
    with (tmp_path / "in" / "labels.csv").open(newline="") as fh:
        truth = {str(tmp_path / "in" / r["path"]): r for r in csv.DictReader(fh)}
    with sqlite3.connect(out / "registry.sqlite") as db:
        rows = db.execute("SELECT i.dest_path, i.body_part, i.header_audit, i.header_class,"
                          " i.review_reason, s.path FROM images i JOIN sources s USING"
                          " (sha256)").fetchall()
    assert len(rows) == len(truth)
    kinds = {"empty": 0, "wrong": 0, "right": 0}
    for dest, model, verdict, header_class, reason, source in rows:
        label = truth[source]
        if reason and reason.startswith("header says"):  # the header check held it back
            assert Path(dest).parts[0] == "_review" and verdict == "disagrees", dest
        else:
            assert Path(dest).parts[0] == verdict  # the layout field is the verdict
        if model != label["body_part"]:
            continue  # the model erred: the audit then compares the wrong thing
        written = label["body_part_examined"]
        if not written:
            kinds["empty"] += 1
            assert verdict == "empty", dest
        elif VOCAB.body_part(written) == label["body_part"]:
            kinds["right"] += 1
            assert verdict == "agrees", dest
        else:
            kinds["wrong"] += 1
            assert verdict == "disagrees" and header_class == VOCAB.body_part(written), dest
    assert kinds["empty"] >= 2 and kinds["wrong"] >= 1 and kinds["right"] >= 40, kinds
    audit = runner.invoke(app, ["registry", "audit", str(out), "--format", "json"])
    assert audit.exit_code == 0, audit.output
    flagged = {r["header_audit"] for r in json.loads(audit.stdout)}
    assert {"agrees", "disagrees", "empty"} <= flagged
    table = runner.invoke(app, ["registry", "audit", str(out)])
    assert "disagrees with the model" in table.output
    stats = runner.invoke(app, ["registry", "stats", str(out)])
    assert "header audit" in stats.output
