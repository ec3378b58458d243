"""The DICOM header as a second opinion: the pure rule, then ``xreg sort`` on real films."""

from __future__ import annotations

import json
import shutil
import sqlite3
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from tests.conftest import biased_checkpoint, make_old
from xreg.cli import app
from xreg.config import SortOptions, load_sort_options
from xreg.errors import ConfigError
from xreg.inference.predict import Prediction, SourceFile
from xreg.io import ImageMeta
from xreg.model.labels import EXTENDED_BODY_PARTS
from xreg.sort.audit import audit_headers, load_vocabulary
from xreg.sort.header_check import header_reason
from xreg.sort.record import judge
from xreg.sort.scope import decide_placement

VOCABULARY = load_vocabulary()


def reason(dicom: dict[str, str], model: str, mode: str = "review") -> str | None:
    audit = audit_headers(dicom, {"body_part": model}, VOCABULARY)
    return header_reason(audit, model, VOCABULARY, dicom, mode)


# ----------------------------------------------------------------- the pure rule


@pytest.mark.parametrize(("dicom", "model", "expected"), [
    ({"BodyPartExamined": "CHEST"}, "shoulder", "header says CHEST, model says shoulder"),
    ({"BodyPartExamined": "l-spine "}, "knee", "header says L-SPINE, model says knee"),
    ({"BodyPartExamined": "Tibia"}, "ankle", "header says TIBIA, model says ankle"),
    ({"StudyDescription": "XR left ankle 2 views"}, "hand",
     "header says ANKLE, model says hand"),  # a description term: the vocabulary's
    ({"BodyPartExamined": "KNEE"}, "knee", None),  # agrees
    ({"BodyPartExamined": "CHEST"}, "other", None),  # agrees (and other is reviewed anyway)
    ({"BodyPartExamined": "EXTREMITY"}, "knee", None),  # coarse, model inside it
    ({"BodyPartExamined": "EXTREMITY"}, "spine", None),  # coarse, model outside: no class
    ({"BodyPartExamined": ""}, "knee", None),  # empty
    ({"Modality": "CR"}, "knee", None),  # empty
    ({"BodyPartExamined": "GIZMO"}, "knee", None),  # unmapped
])
def test_header_reason(dicom: dict[str, str], model: str, expected: str | None) -> None:
    assert reason(dicom, model) == expected


def test_off_changes_nothing() -> None:
    assert reason({"BodyPartExamined": "CHEST"}, "shoulder", "off") is None
    assert header_reason(None, "knee", VOCABULARY, {}) is None  # a film without a header


def pred(dicom: dict[str, str] | None, label: str, p: float = 0.9) -> Prediction:
    meta = None if dicom is None else ImageMeta(format="dicom", original_shape=(8, 8),
                                                dicom=dicom)
    rest = (1.0 - p) / 2
    return Prediction(SourceFile(Path("film.dcm"), 1, 1), "a" * 64, "ok", meta,
                      {"body_part": {label: p, "x": rest, "y": rest}}, {"body_part": label})


@pytest.mark.parametrize(("dicom", "label", "mode", "status", "why"), [
    ({"BodyPartExamined": "CHEST"}, "shoulder", "review", "review",
     "header says CHEST, model says shoulder"),
    ({"BodyPartExamined": "HUMERUS"}, "shoulder", "review", "review",
     "header says HUMERUS, model says shoulder"),
    ({"BodyPartExamined": "SHOULDER"}, "shoulder", "review", "sorted", None),
    ({"BodyPartExamined": "EXTREMITY"}, "shoulder", "review", "sorted", None),
    ({"BodyPartExamined": ""}, "shoulder", "review", "sorted", None),
    ({"BodyPartExamined": "CHEST"}, "shoulder", "off", "sorted", None),
    (None, "shoulder", "review", "sorted", None),  # a PNG
])
def test_judge_on_both_sides(dicom: dict[str, str] | None, label: str, mode: str,
                             status: str, why: str | None) -> None:
    where, audit = judge(pred(dicom, label), 0.5, VOCABULARY, mode)
    assert (where.status, where.reason, where.scope) == (status, why, "nine")
    assert (audit is None) == (dicom is None)


def test_a_film_the_model_already_reviews_keeps_its_own_reason() -> None:
    low, _ = judge(pred({"BodyPartExamined": "CHEST"}, "shoulder", 0.4), 0.5, VOCABULARY)
    assert low.status == "review" and low.reason is not None
    assert low.reason.startswith("low confidence: shoulder")
    other, _ = judge(pred({"BodyPartExamined": "KNEE"}, "other"), 0.5, VOCABULARY)
    assert other.reason == "not one of the known body parts (other)"


def test_second_opinions_compose_and_the_first_reason_wins() -> None:
    assert decide_placement("knee", 0.9, 0.5, [None, "first", "second"]).reason == "first"
    assert decide_placement("knee", 0.9, 0.5, [None, None]).status == "sorted"
    assert decide_placement("knee", 0.2, 0.5, ["first"]).reason.startswith("low confidence")


def test_header_check_option_is_validated_and_merged(tmp_path: Path) -> None:
    assert SortOptions().header_check == "review"
    config = tmp_path / "sort.yaml"
    config.write_text("sort:\n  header_check: 'off'\n")
    assert load_sort_options(config, {}).header_check == "off"
    assert load_sort_options(config, {"header_check": "review"}).header_check == "review"
    config.write_text("sort:\n  header_check: maybe\n")
    with pytest.raises(ConfigError, match="header_check must be review or off, not 'maybe'"):
        load_sort_options(config, {})
    config.write_text("sort:\n  header_check: off\n")  # YAML 1.1: a bare off is false
    assert load_sort_options(config, {}).header_check == "off"
    config.write_text("sort:\n  header_check: yes\n")
    with pytest.raises(ConfigError, match="header_check must be review or off, not True"):
        load_sort_options(config, {})


# ----------------------------------------------------------------- xreg sort, real films

runner = CliRunner()


@pytest.fixture(scope="module")
def shoulder_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Calls every film shoulder, confidently: what the header says decides the rest."""
    return biased_checkpoint(tmp_path_factory.mktemp("w") / "shoulder.pt",
                             EXTENDED_BODY_PARTS, "shoulder")


@pytest.fixture(scope="module")
def films(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real chest CR (CHEST), a real extremity CR (EXTREMITY), and two relabelled copies."""
    root = tmp_path_factory.mktemp("in")
    shutil.copyfile(get_testdata_file("RG1_UNCR.dcm"), root / "chest")
    shutil.copyfile(get_testdata_file("RG3_UNCR.dcm"), root / "extremity")
    for name, term in (("tibfib", "TIB-FIB"), ("shoulder", "Shoulder")):
        ds = pydicom.dcmread(get_testdata_file("RG3_UNCR.dcm"))
        with warnings.catch_warnings():  # not valid CS, as real headers often are not
            warnings.simplefilter("ignore", UserWarning)
            ds.BodyPartExamined = term
        ds.save_as(root / name)
    for p in root.iterdir():
        make_old(p)
    return root


def sort(films: Path, out: Path, weights: Path, *extra: str) -> dict:  # type: ignore[type-arg]
    result = runner.invoke(app, ["sort", str(films), str(out), "--weights", str(weights),
                                 "--min-age", "0", "--json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def registry(out: Path, sql: str) -> list[sqlite3.Row]:
    db = sqlite3.connect(out / "registry.sqlite")
    db.row_factory = sqlite3.Row
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def by_name(report: dict) -> dict[str, dict]:  # type: ignore[type-arg]
    return {Path(f["source"]).name: f for f in report["files"]}


def test_sort_sends_a_film_whose_header_names_another_class_to_review(
        films: Path, shoulder_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = sort(films, out, shoulder_model)
    assert report["header_check"] == "review"
    files = by_name(report)
    assert files["chest"]["status"] == "review"
    assert files["chest"]["reason"] == "header says CHEST, model says shoulder"
    assert files["chest"]["dest"] == "_review/chest.dcm"
    assert files["tibfib"]["reason"] == "header says TIB-FIB, model says shoulder"
    assert files["tibfib"]["dest"] == "_review/tibfib.dcm"
    for name in ("extremity", "shoulder"):  # coarse; agrees
        assert files[name]["status"] == "sorted" and files[name]["reason"] is None
        assert files[name]["dest"] == f"shoulder/no_instrument/{name}.dcm"
    assert sorted(p.name for p in (out / "_review").iterdir()) == ["chest.dcm", "tibfib.dcm"]
    assert sorted(p.name for p in (out / "shoulder" / "no_instrument").iterdir()) == [
        "extremity.dcm", "shoulder.dcm"]
    rows = {Path(r["dest_path"]).stem: r for r in registry(out, "SELECT * FROM images")}
    assert rows["chest"]["status"] == "review"
    assert rows["chest"]["review_reason"] == "header says CHEST, model says shoulder"
    assert rows["chest"]["header_audit"] == "disagrees" and rows["chest"]["body_part"] == "shoulder"
    assert rows["tibfib"]["review_reason"] == "header says TIB-FIB, model says shoulder"
    assert rows["extremity"]["review_reason"] is None
    assert rows["extremity"]["header_audit"] == "coarse"
    assert rows["shoulder"]["header_audit"] == "agrees"
    assert [r["header_check"] for r in registry(out, "SELECT header_check FROM runs")] == [
        "review"]


def test_header_check_off_leaves_the_models_placement(
        films: Path, shoulder_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = sort(films, out, shoulder_model, "--header-check", "off")
    assert report["header_check"] == "off"
    assert {f["status"] for f in report["files"]} == {"sorted"}
    assert {f["reason"] for f in report["files"]} == {None}
    assert not (out / "_review").exists()
    assert sorted(p.name for p in (out / "shoulder" / "no_instrument").iterdir()) == [
        "chest.dcm", "extremity.dcm", "shoulder.dcm", "tibfib.dcm"]
    rows = registry(out, "SELECT review_reason, header_audit, dest_path FROM images")
    assert {r["review_reason"] for r in rows} == {None}
    assert {r["header_audit"] for r in rows} == {"disagrees", "coarse", "agrees"}  # still audited
    assert [r["header_check"] for r in registry(out, "SELECT header_check FROM runs")] == [
        "off"]


def test_the_config_file_sets_header_check_and_the_command_line_wins(
        films: Path, shoulder_model: Path, tmp_path: Path) -> None:
    config = tmp_path / "sort.yaml"
    config.write_text("sort:\n  header_check: off\n")
    report = sort(films, tmp_path / "a", shoulder_model, "--config", str(config))
    assert report["header_check"] == "off" and report["counts"]["review"] == 0
    report = sort(films, tmp_path / "b", shoulder_model, "--config", str(config),
                  "--header-check", "review")
    assert report["header_check"] == "review" and report["counts"]["review"] == 2
    bad = runner.invoke(app, ["sort", str(films), str(tmp_path / "c"), "--header-check",
                              "maybe"])
    assert bad.exit_code == 2 and not (tmp_path / "c").exists()


def test_a_chest_film_the_model_calls_other_keeps_the_models_reason(
        films: Path, tmp_path: Path) -> None:
    other = biased_checkpoint(tmp_path / "other.pt", EXTENDED_BODY_PARTS, "other")
    files = by_name(sort(films, tmp_path / "out", other))
    assert files["chest"]["reason"] == "not one of the known body parts (other)"
    assert {f["status"] for f in files.values()} == {"review"}


def test_the_web_upload_preview_and_add_use_the_same_rule(
        films: Path, shoulder_model: Path, tmp_path: Path) -> None:
    from xreg.model.checkpoint import load_checkpoint
    from xreg.serve.uploads import Analyser, UploadStore, add_to_registry

    store = UploadStore()
    try:
        analyser = Analyser(load_checkpoint(shoulder_model), store, heatmaps=False)
        chest, extremity = analyser.analyse([("chest.dcm", (films / "chest").read_bytes()),
                                             ("ext.dcm", (films / "extremity").read_bytes())])
        assert (chest.status, chest.reason) == ("review",
                                                "header says CHEST, model says shoulder")
        assert (extremity.status, extremity.reason) == ("sorted", None)
        out = tmp_path / "out"
        result, _ = add_to_registry(store, [chest.sha256, extremity.sha256], out,
                                    SortOptions(weights=shoulder_model, min_age=0.0),
                                    analyser.model)
        assert {o.status: o.reason for o in result.outcomes} == {
            "review": "header says CHEST, model says shoulder", "sorted": None}
        assert (out / "_review" / "chest.dcm").is_file()
    finally:
        store.close()


def test_the_ray_engine_decides_the_same(films: Path, shoulder_model: Path,
                                         tmp_path: Path) -> None:
    pytest.importorskip("ray", reason='the ray engine needs its extra: pip install "xreg[ray]"')
    from xreg.sort.runner import run_sort

    result = run_sort(films, tmp_path / "out", SortOptions(
        weights=shoulder_model, min_age=0, engine="ray", workers=1, batch_size=2))
    reasons = {Path(o.source).name: (o.status, o.reason) for o in result.outcomes}
    assert reasons == {
        "chest": ("review", "header says CHEST, model says shoulder"),
        "tibfib": ("review", "header says TIB-FIB, model says shoulder"),
        "extremity": ("sorted", None), "shoulder": ("sorted", None)}
    assert result.to_dict()["header_check"] == "review"
    assert (tmp_path / "out" / "_review" / "chest.dcm").is_file()
